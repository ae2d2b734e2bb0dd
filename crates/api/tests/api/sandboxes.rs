//! `sandbox.*` and `template.*` over HTTP, with real sandboxes (root, user
//! namespaces and the cgroup v1 controllers, as on the CI machine).

use axum::http::Method;
use serde_json::{Value, json};

use crate::harness::{App, Call, Resp};

async fn run(app: &App, token: &str, body: Value) -> Resp {
    app.post("/v1/sandboxes/run", token, &body).await
}

async fn exec(app: &App, id: &str, script: &str) -> Value {
    let r = app
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            &app.admin,
            &json!({"command": ["sh", "-c", script]}),
        )
        .await;
    r.expect(200);
    r.json()
}

async fn put(app: &App, id: &str, path: &str, body: Value) -> Resp {
    app.send(
        Call::new(Method::PUT, &format!("/v1/sandboxes/{id}/files/{path}"))
            .token(&app.admin)
            .json(&body),
    )
    .await
}

async fn sandbox_ids(app: &App) -> Vec<String> {
    let r = app.get("/v1/sandboxes", &app.admin).await;
    r.expect(200);
    r.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

fn names(listing: &Value) -> Vec<String> {
    let mut n: Vec<String> = listing["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|f| f["name"].as_str().expect("name").to_string())
        .collect();
    n.sort();
    n
}

#[tokio::test]
async fn ephemeral_run_returns_output_exit_code_and_usage_for_the_calling_agent_and_task() {
    let app = App::with_sandboxes(|_| {}).await;
    let a = app.agent_scoped("runner", &["sandbox.*"]).await;
    let task = "tsk_01jd3c5v7m2k9w8x4y6z0a1b2c";
    let r = run(
        &app,
        &a.token,
        json!({"command": ["sh", "-c", "echo hi; echo oops >&2; exit 3"], "task": task}),
    )
    .await;
    r.expect(200);
    let out = r.json();
    assert_eq!(out["status"], "exited", "{out}");
    assert_eq!(out["exit_code"], 3, "{out}");
    assert_eq!(out["stdout"], "hi\n");
    assert_eq!(out["stderr"], "oops\n");
    let usage = &out["usage"];
    assert_eq!(usage["agent_id"], a.id.as_str(), "{usage}");
    assert_eq!(usage["task_id"], task, "{usage}");
    assert!(usage["wall_ms"].is_u64() && usage["cpu_ms"].is_u64(), "{usage}");
    assert!(
        usage["peak_memory_bytes"].as_u64().is_some_and(|b| b > 0),
        "{usage}"
    );
    // The run is audited as an external effect of the agent.
    let audit = app.audit().await;
    assert!(
        audit.iter().any(|e| e["syscall"] == "sandbox.run"
            && e["principal"] == a.id.as_str()
            && e["outcome"] == "ok"),
        "{audit:?}"
    );
    // Stdin and seeded files reach the command.
    let r = run(
        &app,
        &app.admin,
        json!({"command": ["sh", "-c", "cat; cat in.txt"], "stdin": "from stdin\n",
               "files": [{"path": "in.txt", "content": "from a file\n"}]}),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["stdout"], "from stdin\nfrom a file\n");
}

#[tokio::test]
async fn persistent_sandbox_keeps_its_workspace_across_execs_stop_start_and_forks() {
    let app = App::with_sandboxes(|_| {}).await;
    let r = app.post("/v1/sandboxes", &app.admin, &json!({})).await;
    r.expect(201);
    let sbx = r.json();
    let id = sbx["id"].as_str().expect("id").to_string();
    assert_eq!(sbx["state"], "running", "{sbx}");

    // State in /workspace persists from one exec to the next.
    exec(&app, &id, "echo 1 > /workspace/counter").await;
    let second = exec(&app, &id, "echo $(( $(cat counter) + 1 )) > counter; cat counter").await;
    assert_eq!(second["stdout"], "2\n", "{second}");
    assert_eq!(second["usage"]["sandbox_id"], id.as_str(), "{second}");

    // Files in and out.
    put(&app, &id, "notes/a.txt", json!({"content": "hello\n"}))
        .await
        .expect(200);
    put(&app, &id, "bin.dat", json!({"content_base64": "AAEC/w=="}))
        .await
        .expect(200);
    let got = app
        .get(&format!("/v1/sandboxes/{id}/files/notes/a.txt"), &app.admin)
        .await;
    got.expect(200);
    assert_eq!(got.json()["content"], "hello\n");
    let bin = app
        .get(&format!("/v1/sandboxes/{id}/files/bin.dat"), &app.admin)
        .await;
    bin.expect(200);
    assert_eq!(bin.json()["content_base64"], "AAEC/w==");
    assert_eq!(bin.json()["size"], 4);
    let top = app.get(&format!("/v1/sandboxes/{id}/files"), &app.admin).await;
    top.expect(200);
    assert_eq!(names(&top.json()), ["bin.dat", "counter", "notes"]);
    let sub = app
        .get(&format!("/v1/sandboxes/{id}/files?dir=notes"), &app.admin)
        .await;
    sub.expect(200);
    assert_eq!(names(&sub.json()), ["a.txt"]);
    let seen = exec(&app, &id, "cat notes/a.txt").await;
    assert_eq!(seen["stdout"], "hello\n");

    // Stop: execs are refused, files still readable; start: everything is back.
    let stopped = app
        .post(&format!("/v1/sandboxes/{id}/stop"), &app.admin, &json!({}))
        .await;
    stopped.expect(200);
    assert_eq!(stopped.json()["state"], "stopped");
    let detail = app
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            &app.admin,
            &json!({"command": ["true"]}),
        )
        .await
        .problem(409, "sandbox_stopped");
    assert!(detail.contains(&id), "{detail}");
    app.get(&format!("/v1/sandboxes/{id}/files/counter"), &app.admin)
        .await
        .expect(200);
    let started = app
        .post(&format!("/v1/sandboxes/{id}/start"), &app.admin, &json!({}))
        .await;
    started.expect(200);
    assert_eq!(started.json()["state"], "running");
    let after = exec(&app, &id, "cat counter notes/a.txt").await;
    assert_eq!(after["stdout"], "2\nhello\n");

    // Snapshot, then fork: the fork starts with the snapshot's files and
    // diverges from its origin.
    let snap = app
        .post(&format!("/v1/sandboxes/{id}/snapshot"), &app.admin, &json!({}))
        .await;
    snap.expect(201);
    let snp = snap.json()["id"].as_str().expect("snapshot id").to_string();
    assert!(snp.starts_with("snp_"), "{snp}");
    exec(&app, &id, "echo changed > counter").await;
    let fork = app
        .post("/v1/sandboxes", &app.admin, &json!({"from_snapshot": snp}))
        .await;
    fork.expect(201);
    let fork_id = fork.json()["id"].as_str().expect("id").to_string();
    assert_eq!(fork.json()["from_snapshot"], snp.as_str());
    let forked = exec(&app, &fork_id, "cat counter notes/a.txt").await;
    assert_eq!(forked["stdout"], "2\nhello\n");
    let origin = exec(&app, &id, "cat counter").await;
    assert_eq!(origin["stdout"], "changed\n");

    let mut ids = sandbox_ids(&app).await;
    ids.sort();
    let mut want = vec![id.clone(), fork_id.clone()];
    want.sort();
    assert_eq!(ids, want);
    for s in [&id, &fork_id] {
        let r = app.delete(&format!("/v1/sandboxes/{s}"), &app.admin).await;
        r.expect(200);
        assert_eq!(r.json()["removed"], true);
        app.get(&format!("/v1/sandboxes/{s}"), &app.admin)
            .await
            .problem(404, "not_found");
    }
    assert!(sandbox_ids(&app).await.is_empty());
    let audit = app.audit().await;
    for name in [
        "sandbox.create",
        "sandbox.exec",
        "sandbox.files.put",
        "sandbox.stop",
        "sandbox.start",
        "sandbox.snapshot",
        "sandbox.delete",
    ] {
        assert!(
            audit.iter().any(|e| e["syscall"] == name),
            "{name} is not audited"
        );
    }
}

#[tokio::test]
async fn bad_run_input_is_a_4xx_with_its_code() {
    let app = App::with_sandboxes(|_| {}).await;
    let detail = run(&app, &app.admin, json!({"command": ["true"], "template": "nope"}))
        .await
        .problem(404, "unknown_template");
    assert!(detail.contains("nope"), "{detail}");
    run(&app, &app.admin, json!({"command": []}))
        .await
        .problem(400, "invalid_command");
    run(&app, &app.admin, json!({"command": [""]}))
        .await
        .problem(400, "invalid_command");
    for limits in [
        json!({"memory_bytes": 1u64 << 50}),
        json!({"pids": 0}),
        json!({"workspace_bytes": 1}),
    ] {
        let detail = run(&app, &app.admin, json!({"command": ["true"], "limits": limits}))
            .await
            .problem(400, "invalid_limits");
        assert!(detail.starts_with("limits."), "{detail}");
    }
    run(&app, &app.admin, json!({"command": ["true"], "timeout_ms": 0}))
        .await
        .problem(400, "invalid_limits");
    run(
        &app,
        &app.admin,
        json!({"command": ["true"], "limits": {"memory_bytes": -1}}),
    )
    .await
    .problem(400, "invalid_request");
    let detail = run(&app, &app.admin, json!({"command": ["/no/such/binary"]}))
        .await
        .problem(422, "exec_failed");
    assert!(detail.contains("/no/such/binary"), "{detail}");
    run(&app, &app.admin, json!({"command": ["true"], "colour": "blue"}))
        .await
        .problem(400, "invalid_request");
    run(
        &app,
        &app.admin,
        json!({"command": ["true"], "task": "not-a-task"}),
    )
    .await
    .problem(400, "invalid_request");
    let detail = run(
        &app,
        &app.admin,
        json!({"command": ["true"], "files": [{"path": "../x", "content": ""}]}),
    )
    .await
    .problem(400, "invalid_path");
    assert!(detail.contains("../x"), "{detail}");
    // An agent is not granted host networking.
    let a = app.agent_scoped("net", &["sandbox.*"]).await;
    run(
        &app,
        &a.token,
        json!({"command": ["true"], "network": "host-egress"}),
    )
    .await
    .problem(403, "network_not_granted");
    // Nothing was created.
    assert!(sandbox_ids(&app).await.is_empty());
    let again = app
        .post("/v1/sandboxes", &app.admin, &json!({"template": "nope"}))
        .await;
    again.problem(404, "unknown_template");
    app.post("/v1/sandboxes", &app.admin, &json!({"limits": {"cpu_millis": 1}}))
        .await
        .problem(400, "invalid_limits");
    app.post("/v1/sandboxes", &app.admin, &json!({"from_snapshot": "snp_nope"}))
        .await
        .problem(404, "not_found");
    assert!(sandbox_ids(&app).await.is_empty());
}

#[tokio::test]
async fn files_api_refuses_traversal_links_out_and_oversized_files_and_changes_nothing() {
    let app = App::with_sandboxes(|c| c.max_file_bytes = 200_000).await;
    let r = app
        .post(
            "/v1/sandboxes",
            &app.admin,
            &json!({"limits": {"workspace_bytes": 65536}}),
        )
        .await;
    r.expect(201);
    let id = r.json()["id"].as_str().expect("id").to_string();
    // Links a sandboxed command made, pointing out of the workspace.
    exec(
        &app,
        &id,
        "ln -s /etc etc; ln -s ../.. up; ln -s /etc/passwd pw; mkdir d",
    )
    .await;
    let before = app
        .get(&format!("/v1/sandboxes/{id}/files"), &app.admin)
        .await
        .json();

    for path in [
        "%2e%2e/x",
        "d/%2e%2e/%2e%2e/x",
        "/etc/passwd",
        "etc/passwd",
        "up/x",
        "pw",
        "etc",
    ] {
        let what = format!("PUT {path}");
        let r = put(&app, &id, path, json!({"content": "x"})).await;
        assert_eq!(r.status.as_u16(), 400, "{what}: {}", r.text());
        r.problem(400, "invalid_path");
    }
    for path in ["%2e%2e/x", "/etc/passwd", "etc/passwd", "up/etc/passwd", "pw"] {
        let r = app
            .get(&format!("/v1/sandboxes/{id}/files/{path}"), &app.admin)
            .await;
        assert_eq!(r.status.as_u16(), 400, "GET {path}: {}", r.text());
        r.problem(400, "invalid_path");
    }
    for dir in ["..", "/etc", "etc", "up"] {
        let r = app
            .get(&format!("/v1/sandboxes/{id}/files?dir={dir}"), &app.admin)
            .await;
        assert_eq!(r.status.as_u16(), 400, "list {dir}: {}", r.text());
        r.problem(400, "invalid_path");
    }
    let big = "x".repeat(200_001);
    let detail = put(&app, &id, "big.txt", json!({"content": big}))
        .await
        .problem(413, "file_too_large");
    assert!(detail.contains("200000"), "{detail}");
    let full = "y".repeat(150_000);
    put(&app, &id, "full.txt", json!({"content": full}))
        .await
        .problem(507, "workspace_full");
    put(
        &app,
        &id,
        "x.txt",
        json!({"content": "a", "content_base64": "YQ=="}),
    )
    .await
    .problem(400, "invalid_request");
    app.get(&format!("/v1/sandboxes/{id}/files/missing.txt"), &app.admin)
        .await
        .problem(404, "not_found");
    // Nothing was written anywhere: the workspace lists as before, and the
    // host's /etc was not touched through a link.
    let after = app
        .get(&format!("/v1/sandboxes/{id}/files"), &app.admin)
        .await
        .json();
    assert_eq!(names(&after), names(&before));
    assert!(!std::path::Path::new("/etc/x").exists());
    let inside = exec(&app, &id, "ls -A d; ls -A").await;
    assert_eq!(inside["stdout"], "d\netc\npw\nup\n", "{inside}");
    // Unknown sandboxes.
    app.get("/v1/sandboxes/sbx_01jd3c5v7m2k9w8x4y6z0a1b2c/files/a", &app.admin)
        .await
        .problem(404, "not_found");
    app.post(
        "/v1/sandboxes/nope/exec",
        &app.admin,
        &json!({"command": ["true"]}),
    )
    .await
    .problem(404, "not_found");
}

#[tokio::test]
async fn exec_of_a_missing_binary_is_exec_failed_and_the_sandbox_keeps_working() {
    let app = App::with_sandboxes(|_| {}).await;
    let id = app.post("/v1/sandboxes", &app.admin, &json!({})).await.json()["id"]
        .as_str()
        .expect("id")
        .to_string();
    let detail = app
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            &app.admin,
            &json!({"command": ["no-such-program"]}),
        )
        .await
        .problem(422, "exec_failed");
    assert!(detail.contains("no-such-program"), "{detail}");
    app.post(
        &format!("/v1/sandboxes/{id}/exec"),
        &app.admin,
        &json!({"command": []}),
    )
    .await
    .problem(400, "invalid_command");
    let ok = exec(&app, &id, "echo fine").await;
    assert_eq!(ok["stdout"], "fine\n");
}

#[tokio::test]
async fn templates_are_set_listed_used_and_deleted() {
    let app = App::with_sandboxes(|_| {}).await;
    let t = app
        .send(
            Call::new(Method::PUT, "/v1/templates/small")
                .token(&app.admin)
                .json(
                    &json!({"limits": {"memory_bytes": 67108864}, "env": {"GREETING": "hej"},
                              "setup": [["sh", "-c", "echo ready > /workspace/setup.txt"]]}),
                ),
        )
        .await;
    t.expect(200);
    assert_eq!(t.json()["name"], "small");
    let ls = app.get("/v1/templates", &app.admin).await;
    ls.expect(200);
    assert_eq!(ls.json()["items"][0]["name"], "small");
    let out = run(
        &app,
        &app.admin,
        json!({"command": ["sh", "-c", "echo $GREETING"], "template": "small"}),
    )
    .await;
    out.expect(200);
    assert_eq!(out.json()["stdout"], "hej\n");
    let sbx = app
        .post("/v1/sandboxes", &app.admin, &json!({"template": "small"}))
        .await;
    sbx.expect(201);
    assert_eq!(sbx.json()["limits"]["memory_bytes"], 67108864);
    let id = sbx.json()["id"].as_str().expect("id").to_string();
    let setup = exec(&app, &id, "cat setup.txt").await;
    assert_eq!(setup["stdout"], "ready\n");
    // A bad template changes nothing.
    app.send(
        Call::new(Method::PUT, "/v1/templates/bad")
            .token(&app.admin)
            .json(&json!({"ro_binds": ["/etc"]})),
    )
    .await
    .problem(400, "invalid_request");
    app.send(
        Call::new(Method::PUT, "/v1/templates/huge")
            .token(&app.admin)
            .json(&json!({"limits": {"pids": 1u64 << 40}})),
    )
    .await
    .problem(400, "invalid_limits");
    // Agents may read templates but not change them.
    let a = app.agent_scoped("reader", &["template.*"]).await;
    app.get("/v1/templates/small", &a.token).await.expect(200);
    app.delete("/v1/templates/small", &a.token)
        .await
        .problem(403, "forbidden");
    app.delete("/v1/templates/small", &app.admin).await.expect(200);
    app.get("/v1/templates/small", &app.admin)
        .await
        .problem(404, "unknown_template");
    app.delete("/v1/templates/small", &app.admin)
        .await
        .problem(404, "unknown_template");
    assert_eq!(
        app.get("/v1/templates", &app.admin).await.json()["items"],
        json!([])
    );
}

#[tokio::test]
async fn agents_need_the_scope_and_see_only_their_own_sandboxes() {
    let app = App::with_sandboxes(|_| {}).await;
    let plain = app.agent_scoped("plain", &["agent.get"]).await;
    let detail = run(&app, &plain.token, json!({"command": ["true"]}))
        .await
        .problem(403, "forbidden");
    assert!(detail.contains("sandbox.run"), "{detail}");
    app.post("/v1/sandboxes", &plain.token, &json!({}))
        .await
        .problem(403, "forbidden");
    assert!(sandbox_ids(&app).await.is_empty());

    let a = app.agent_scoped("a", &["sandbox.*"]).await;
    let b = app.agent_scoped("b", &["sandbox.*"]).await;
    let r = app.post("/v1/sandboxes", &a.token, &json!({})).await;
    r.expect(201);
    assert_eq!(r.json()["owner_agent"], a.id.as_str());
    let id = r.json()["id"].as_str().expect("id").to_string();
    // b cannot see, run in, read or delete a's sandbox.
    app.get(&format!("/v1/sandboxes/{id}"), &b.token)
        .await
        .problem(404, "not_found");
    app.post(
        &format!("/v1/sandboxes/{id}/exec"),
        &b.token,
        &json!({"command": ["true"]}),
    )
    .await
    .problem(404, "not_found");
    app.get(&format!("/v1/sandboxes/{id}/files"), &b.token)
        .await
        .problem(404, "not_found");
    app.delete(&format!("/v1/sandboxes/{id}"), &b.token)
        .await
        .problem(404, "not_found");
    assert_eq!(
        app.get("/v1/sandboxes", &b.token).await.json()["items"],
        json!([])
    );
    // a can.
    let listed = app.get("/v1/sandboxes", &a.token).await.json();
    assert_eq!(listed["items"][0]["id"], id.as_str());
    let r = app
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            &a.token,
            &json!({"command": ["sh", "-c", "id -u"]}),
        )
        .await;
    r.expect(200);
    assert_eq!(r.json()["stdout"], "1000\n");
    assert_eq!(r.json()["usage"]["agent_id"], a.id.as_str());
    app.delete(&format!("/v1/sandboxes/{id}"), &a.token)
        .await
        .expect(200);
}

#[tokio::test]
async fn without_sandboxes_the_server_answers_sandbox_unavailable() {
    let app = App::new().await;
    let detail = run(&app, &app.admin, json!({"command": ["true"]}))
        .await
        .problem(503, "sandbox_unavailable");
    assert!(detail.contains("without sandboxes"), "{detail}");
    app.get("/v1/sandboxes", &app.admin)
        .await
        .problem(503, "sandbox_unavailable");
    // Everything else still works.
    app.get("/v1/agents", &app.admin).await.expect(200);
}

/// The events of a Server-Sent Events body: (event, data) in order.
fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter_map(|frame| {
            let event = frame
                .lines()
                .find_map(|l| l.strip_prefix("event:"))?
                .trim()
                .to_string();
            let data: String = frame
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n");
            Some((event, serde_json::from_str(&data).ok()?))
        })
        .collect()
}

#[tokio::test]
async fn exec_streams_stdout_and_stderr_in_order_then_the_exit() {
    let app = App::with_sandboxes(|_| {}).await;
    let id = app.post("/v1/sandboxes", &app.admin, &json!({})).await.json()["id"]
        .as_str()
        .expect("id")
        .to_string();
    let stream = |body: Value| {
        Call::new(Method::POST, &format!("/v1/sandboxes/{id}/exec"))
            .token(&app.admin)
            .header("accept", "text/event-stream")
            .json(&body)
    };
    let script = "for i in 1 2 3; do echo out$i; sleep 0.05; echo err$i >&2; sleep 0.05; done; exit 4";
    let r = app.send(stream(json!({"command": ["sh", "-c", script]}))).await;
    r.expect(200);
    assert!(
        r.content_type()
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "{:?}",
        r.content_type()
    );
    let events = sse_events(&r.text());
    let (last, exit) = events.last().expect("events");
    assert_eq!(last, "exit", "{events:?}");
    assert_eq!(exit["exit_code"], 4, "{exit}");
    assert_eq!(exit["status"], "exited", "{exit}");
    assert_eq!(exit["usage"]["sandbox_id"], id.as_str(), "{exit}");
    // The output came as chunks, in the order it was written.
    let mut text = String::new();
    for (event, data) in &events[..events.len() - 1] {
        let prefix = match event.as_str() {
            "stdout" => "",
            "stderr" => "!",
            other => panic!("unexpected event {other}: {events:?}"),
        };
        for line in data["data"].as_str().expect("data").lines() {
            text.push_str(&format!("{prefix}{line} "));
        }
    }
    assert_eq!(text, "out1 !err1 out2 !err2 out3 !err3 ", "{events:?}");
    // A refusal before any output is a plain problem, not a stream.
    app.send(stream(json!({"command": ["no-such-program"]})))
        .await
        .problem(422, "exec_failed");
    app.send(stream(json!({"command": []})))
        .await
        .problem(400, "invalid_command");
    // A command without output still ends with its exit.
    let quiet = app.send(stream(json!({"command": ["true"]}))).await;
    quiet.expect(200);
    let events = sse_events(&quiet.text());
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "exit");
    assert_eq!(events[0].1["exit_code"], 0);
    let audit = app.audit().await;
    let execs = audit.iter().filter(|e| e["syscall"] == "sandbox.exec").count();
    assert_eq!(
        execs, 4,
        "every streamed exec is audited, refusals too: {audit:?}"
    );
}

#[tokio::test]
async fn snapshots_belong_to_the_agent_that_took_them_and_deleting_one_removes_its_files() {
    let mut data = std::path::PathBuf::new();
    let app = App::with_sandboxes(|c| data = c.data_dir.clone()).await;
    let a = app.agent_scoped("a", &["sandbox.*"]).await;
    let b = app.agent_scoped("b", &["sandbox.*"]).await;
    let r = app.post("/v1/sandboxes", &a.token, &json!({})).await;
    r.expect(201);
    let sbx = r.json()["id"].as_str().expect("id").to_string();
    let r = app
        .post(&format!("/v1/sandboxes/{sbx}/snapshot"), &a.token, &json!({}))
        .await;
    r.expect(201);
    assert_eq!(r.json()["owner_agent"], a.id.as_str(), "{}", r.json());
    let snp = r.json()["id"].as_str().expect("snapshot id").to_string();
    let r = app
        .post(&format!("/v1/sandboxes/{sbx}/snapshot"), &a.token, &json!({}))
        .await;
    r.expect(201);
    let snp2 = r.json()["id"].as_str().expect("snapshot id").to_string();

    // b can neither fork, list nor delete a's snapshots.
    app.post("/v1/sandboxes", &b.token, &json!({"from_snapshot": snp}))
        .await
        .problem(404, "not_found");
    assert_eq!(
        app.get("/v1/snapshots", &b.token).await.json()["items"],
        json!([])
    );
    assert_eq!(
        app.get(&format!("/v1/snapshots?sandbox={sbx}"), &b.token)
            .await
            .json()["items"],
        json!([])
    );
    app.delete(&format!("/v1/snapshots/{snp}"), &b.token)
        .await
        .problem(404, "not_found");
    assert!(data.join("snapshots").join(&snp).is_dir());

    // a lists its own, a page at a time; the operator sees them too.
    let page = app.get("/v1/snapshots?limit=1", &a.token).await;
    page.expect(200);
    let page = page.json();
    assert_eq!(page["items"][0]["id"], snp.as_str(), "{page}");
    assert_eq!(page["next"], snp.as_str(), "{page}");
    let rest = app
        .get(&format!("/v1/snapshots?limit=1&after={snp}"), &a.token)
        .await
        .json();
    assert_eq!(rest["items"][0]["id"], snp2.as_str(), "{rest}");
    assert!(rest.get("next").is_none(), "{rest}");
    let all = app
        .get(&format!("/v1/snapshots?sandbox={sbx}"), &app.admin)
        .await
        .json();
    assert_eq!(all["items"].as_array().map(Vec::len), Some(2), "{all}");

    // a deletes one: its files go, and a later fork is not_found.
    let r = app.delete(&format!("/v1/snapshots/{snp}"), &a.token).await;
    r.expect(200);
    assert_eq!(r.json()["removed"], true);
    assert!(!data.join("snapshots").join(&snp).exists());
    assert!(data.join("snapshots").join(&snp2).is_dir());
    app.post("/v1/sandboxes", &a.token, &json!({"from_snapshot": snp}))
        .await
        .problem(404, "not_found");
    app.delete(&format!("/v1/snapshots/{snp}"), &a.token)
        .await
        .problem(404, "not_found");
    let left = app.get("/v1/snapshots", &app.admin).await.json();
    assert_eq!(left["items"][0]["id"], snp2.as_str(), "{left}");
    assert_eq!(left["items"].as_array().map(Vec::len), Some(1), "{left}");

    // Bad ids are 4xx.
    app.delete("/v1/snapshots/nonsense", &a.token)
        .await
        .problem(404, "not_found");
    app.delete("/v1/snapshots/sbx_01jd3c5v7m2k9w8x4y6z0a1b2c", &app.admin)
        .await
        .problem(404, "not_found");
    app.get("/v1/snapshots?sandbox=nope", &a.token)
        .await
        .problem(400, "invalid_request");
    app.get("/v1/snapshots?after=nope", &a.token)
        .await
        .problem(400, "invalid_request");
    app.get("/v1/snapshots?colour=red", &a.token)
        .await
        .problem(400, "invalid_request");
}

#[tokio::test]
async fn usage_of_runs_and_execs_is_stored_with_totals_and_agents_see_only_their_own() {
    let app = App::with_sandboxes(|_| {}).await;
    let a = app.agent_scoped("a", &["sandbox.*"]).await;
    let b = app.agent_scoped("b", &["sandbox.*"]).await;
    let task = "tsk_01jd3c5v7m2k9w8x4y6z0a1b2c";
    let r = run(
        &app,
        &a.token,
        json!({"command": ["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"], "task": task}),
    )
    .await;
    r.expect(200);
    let mut reported = vec![r.json()["usage"].clone()];
    let r = app.post("/v1/sandboxes", &a.token, &json!({})).await;
    r.expect(201);
    let sbx = r.json()["id"].as_str().expect("id").to_string();
    for script in ["echo one", "head -c 1000000 /dev/zero > big"] {
        let r = app
            .post(
                &format!("/v1/sandboxes/{sbx}/exec"),
                &a.token,
                &json!({"command": ["sh", "-c", script], "task": task}),
            )
            .await;
        r.expect(200);
        reported.push(r.json()["usage"].clone());
    }
    // b's own run, which a must not see.
    run(&app, &b.token, json!({"command": ["true"]}))
        .await
        .expect(200);

    let got = app.get("/v1/sandbox-usage", &a.token).await;
    got.expect(200);
    let got = got.json();
    let items = got["items"].as_array().expect("items");
    assert_eq!(items.len(), 3, "{got}");
    for (rec, rep) in items.iter().zip(&reported) {
        for f in ["wall_ms", "cpu_ms", "peak_memory_bytes", "agent_id", "task_id"] {
            assert_eq!(rec[f], rep[f], "{f}: {rec} vs {rep}");
        }
        assert_eq!(
            rec["sandbox_id"],
            rep.get("sandbox_id").cloned().unwrap_or(Value::Null)
        );
    }
    assert_eq!(items[0]["kind"], "run");
    assert_eq!(items[1]["kind"], "exec");
    assert_eq!(items[2]["sandbox_id"], sbx.as_str());
    let sum = |f: &str| reported.iter().map(|u| u[f].as_u64().expect(f)).sum::<u64>();
    let max = reported
        .iter()
        .map(|u| u["peak_memory_bytes"].as_u64().expect("peak"))
        .max();
    let totals = &got["totals"];
    assert_eq!(totals["records"], 3, "{totals}");
    assert_eq!(totals["wall_ms"], sum("wall_ms"), "{totals}");
    assert_eq!(totals["cpu_ms"], sum("cpu_ms"), "{totals}");
    assert_eq!(totals["peak_memory_bytes"].as_u64(), max, "{totals}");

    // Filters: by sandbox, by task; a page at a time with totals of all.
    let by_sbx = app
        .get(&format!("/v1/sandbox-usage?sandbox={sbx}"), &a.token)
        .await
        .json();
    assert_eq!(by_sbx["totals"]["records"], 2, "{by_sbx}");
    let page = app
        .get(&format!("/v1/sandbox-usage?task={task}&limit=2"), &a.token)
        .await
        .json();
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2), "{page}");
    assert_eq!(page["totals"]["records"], 3, "{page}");
    let next = page["next"].as_str().expect("next").to_string();
    let last = app
        .get(&format!("/v1/sandbox-usage?task={task}&after={next}"), &a.token)
        .await
        .json();
    assert_eq!(last["items"].as_array().map(Vec::len), Some(1), "{last}");

    // b sees only its own run, also when it names a; the operator sees all.
    let theirs = app.get("/v1/sandbox-usage", &b.token).await.json();
    assert_eq!(theirs["totals"]["records"], 1, "{theirs}");
    assert_eq!(theirs["items"][0]["agent_id"], b.id.as_str());
    let sneaky = app
        .get(&format!("/v1/sandbox-usage?agent={}", a.id), &b.token)
        .await
        .json();
    assert_eq!(sneaky["totals"]["records"], 0, "{sneaky}");
    let all = app.get("/v1/sandbox-usage", &app.admin).await.json();
    assert_eq!(all["totals"]["records"], 4, "{all}");
    let of_a = app
        .get(&format!("/v1/sandbox-usage?agent={}", a.id), &app.admin)
        .await
        .json();
    assert_eq!(of_a["totals"], got["totals"], "{of_a}");
    app.get("/v1/sandbox-usage?task=nope", &app.admin)
        .await
        .problem(400, "invalid_request");
    app.get("/v1/sandbox-usage?after=nope", &app.admin)
        .await
        .problem(400, "invalid_request");
}

/// A WASI module as `.wat` text: prints its stdin after "hello, ", to stdout,
/// and exits with 3 through `proc_exit`.
const GREETER_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "hello, ")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 7))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 1024))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 4) (i32.load (i32.const 8)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $proc_exit (i32.const 3))))"#;

#[tokio::test]
async fn a_wasm_module_runs_through_the_run_route() {
    let app = App::with_sandboxes(|_| {}).await;
    let a = app.agent_scoped("wasm-runner", &["sandbox.*"]).await;
    let r = run(
        &app,
        &a.token,
        json!({"backend": "wasm", "command": ["greeter.wat"], "stdin": "wasm\n",
               "files": [{"path": "greeter.wat", "content": GREETER_WAT}]}),
    )
    .await;
    r.expect(200);
    let out = r.json();
    assert_eq!(out["status"], "exited", "{out}");
    assert_eq!(out["exit_code"], 3, "{out}");
    assert_eq!(out["stdout"], "hello, wasm\n", "{out}");
    assert_eq!(out["usage"]["agent_id"], a.id.as_str(), "{out}");
    assert_eq!(out["usage"]["peak_memory_bytes"], 65_536, "{out}");
    let usage = app.get("/v1/sandbox-usage", &a.token).await.json();
    assert_eq!(usage["totals"]["records"], 1, "{usage}");

    // A module that is not WebAssembly is the caller's mistake, named.
    let detail = run(
        &app,
        &a.token,
        json!({"backend": "wasm", "command": ["bad.wasm"],
               "files": [{"path": "bad.wasm", "content": "not wasm"}]}),
    )
    .await
    .problem(422, "exec_failed");
    assert!(detail.contains("not a valid WebAssembly module"), "{detail}");
    let detail = run(
        &app,
        &a.token,
        json!({"backend": "wasm", "command": ["nothing.wasm"]}),
    )
    .await
    .problem(422, "exec_failed");
    assert!(detail.contains("no such module"), "{detail}");
    // An unknown backend is refused before anything runs.
    let detail = run(&app, &a.token, json!({"backend": "jvm", "command": ["x"]}))
        .await
        .problem(400, "invalid_request");
    assert!(detail.contains("backend"), "{detail}");

    // A persistent wasm sandbox says so, and its modules' files persist.
    let r = app
        .post("/v1/sandboxes", &app.admin, &json!({"backend": "wasm"}))
        .await;
    r.expect(201);
    let sbx = r.json();
    assert_eq!(sbx["backend"], "wasm", "{sbx}");
    let id = sbx["id"].as_str().expect("id").to_string();
    put(&app, &id, "greeter.wat", json!({"content": GREETER_WAT}))
        .await
        .expect(200);
    let r = app
        .post(
            &format!("/v1/sandboxes/{id}/exec"),
            &app.admin,
            &json!({"command": ["/workspace/greeter.wat"], "stdin": "again"}),
        )
        .await;
    r.expect(200);
    assert_eq!(r.json()["stdout"], "hello, again", "{}", r.text());
    let got = app.get(&format!("/v1/sandboxes/{id}"), &app.admin).await.json();
    assert_eq!(got["backend"], "wasm", "{got}");
    app.post("/v1/sandboxes", &app.admin, &json!({"backend": "vm"}))
        .await
        .problem(400, "invalid_request");
}
