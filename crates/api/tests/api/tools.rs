//! The tool gateway over HTTP: secrets, connections, grants, tools and calls,
//! against the reference `server-everything` MCP server over stdio.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::harness::App;

const SECRET: &str = "hunter2-not-for-anyone-8c1f";

/// `node` and the `server-everything` entry script (installed by `npm ci` in
/// crates/tools/tests/upstreams).
fn everything_command() -> (String, String) {
    let script = std::env::var_os("STRATA_TOOLS_UPSTREAMS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/tests/upstreams"))
        .join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        script.exists(),
        "\n\n*** server-everything is not installed: run `npm ci` in crates/tools/tests/upstreams (CI does). ***\n\n"
    );
    ("node".into(), script.display().to_string())
}

fn everything(name: &str, env: Value) -> Value {
    let (cmd, script) = everything_command();
    json!({"name": name, "upstream": {"kind": "mcp_stdio", "command": cmd, "args": [script, "stdio"], "env": env}})
}

async fn connect(app: &App, spec: &Value) -> Value {
    let r = app.post("/v1/connections", &app.admin, spec).await;
    r.expect(201);
    r.json()
}

fn names(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_string())
        .collect()
}

#[tokio::test]
async fn a_secret_value_never_leaves_the_server() {
    let app = App::new().await;
    let set = app
        .post(
            "/v1/secrets",
            &app.admin,
            &json!({"name": "api_key", "value": SECRET, "description": "for the upstream"}),
        )
        .await;
    set.expect(200);
    assert_eq!(set.json()["name"], "api_key");
    assert_eq!(set.json()["version"], 1);
    let mut seen = vec![set.text()];
    let conn = connect(&app, &everything("ev", json!({"API_KEY": {"secret": "api_key"}}))).await;
    assert_eq!(conn["secrets"], json!(["api_key"]));
    seen.push(conn.to_string());
    let call = app
        .post(
            "/v1/tools/ev.echo/call",
            &app.admin,
            &json!({"arguments": {"message": "hello"}}),
        )
        .await;
    call.expect(200);
    seen.push(call.text());
    for uri in [
        "/v1/secrets",
        "/v1/connections",
        "/v1/connections/ev",
        "/v1/audit?limit=1000",
        "/v1/events?limit=1000",
        "/v1/tool-calls",
        "/openapi.json",
    ] {
        let r = app.get(uri, &app.admin).await;
        r.expect(200);
        seen.push(r.text());
    }
    for body in &seen {
        assert!(!body.contains(SECRET), "the secret value leaked: {body}");
    }
    // The secret is listed, by name only.
    let list = app.get("/v1/secrets", &app.admin).await.json();
    assert_eq!(names(&list), ["api_key"]);
    assert!(list["items"][0].get("value").is_none());
}

#[tokio::test]
async fn an_agent_without_a_grant_sees_no_tools_and_is_forbidden_to_call() {
    let app = App::new().await;
    connect(&app, &everything("ev", json!({}))).await;
    let agent = app.agent("worker").await;
    let list = app.get("/v1/tools", &agent.token).await;
    list.expect(200);
    assert!(names(&list.json()).is_empty(), "{}", list.text());
    let r = app
        .post(
            "/v1/tools/ev.echo/call",
            &agent.token,
            &json!({"arguments": {"message": "hi"}}),
        )
        .await;
    r.problem(403, "forbidden");
    // An unknown tool is refused the same way, so grants cannot be probed.
    let r = app
        .post("/v1/tools/ev.nothing/call", &agent.token, &json!({}))
        .await;
    r.problem(403, "forbidden");
    // Operators see every tool.
    let all = names(&app.get("/v1/tools", &app.admin).await.json());
    assert!(all.contains(&"ev.echo".to_string()), "{all:?}");
}

#[tokio::test]
async fn a_granted_agent_lists_searches_and_calls_and_sees_only_its_own_calls() {
    let app = App::new().await;
    connect(&app, &everything("ev", json!({}))).await;
    let worker = app
        .agent_with(json!({"name": "worker", "labels": {"team": "blue"}}))
        .await;
    let other = app.agent("other").await;
    let g = app
        .post(
            "/v1/grants",
            &app.admin,
            &json!({"subject": {"label": {"key": "team", "value": "blue"}}, "tools": "ev.echo"}),
        )
        .await;
    g.expect(201);
    let grant_id = g.json()["id"].as_str().expect("id").to_string();
    assert_eq!(
        names(&app.get("/v1/tools", &worker.token).await.json()),
        ["ev.echo"]
    );
    assert_eq!(
        names(&app.get("/v1/tools?query=echo", &worker.token).await.json()),
        ["ev.echo"]
    );
    assert!(names(&app.get("/v1/tools?query=zzz", &worker.token).await.json()).is_empty());
    let r = app
        .post(
            "/v1/tools/ev.echo/call",
            &worker.token,
            &json!({"arguments": {"message": "over http"}}),
        )
        .await;
    r.expect(200);
    let out = r.json();
    assert_eq!(out["tool"], "ev.echo");
    assert_eq!(out["is_error"], false);
    assert!(out["result"].to_string().contains("over http"), "{out}");
    // The worker sees its call; the other agent sees none and may not ask for the worker's.
    let mine = app.get("/v1/tool-calls", &worker.token).await.json();
    assert_eq!(mine["items"].as_array().map(Vec::len), Some(1), "{mine}");
    assert_eq!(mine["items"][0]["agent"], worker.id.as_str());
    let theirs = app.get("/v1/tool-calls", &other.token).await.json();
    assert_eq!(theirs["items"], json!([]));
    app.get(&format!("/v1/tool-calls?agent={}", worker.id), &other.token)
        .await
        .problem(403, "forbidden");
    // The call is audited under an intent that was recorded before it ran.
    let audit = app.audit().await;
    let entry = audit
        .iter()
        .find(|e| e["syscall"] == "tool.call")
        .expect("tool.call is audited");
    assert_eq!(entry["outcome"], "ok");
    assert_eq!(entry["resource"], "ev.echo");
    // Revoking the grant takes the tool away at once.
    app.delete(&format!("/v1/grants/{grant_id}"), &app.admin)
        .await
        .expect(200);
    assert!(names(&app.get("/v1/tools", &worker.token).await.json()).is_empty());
    app.post(
        "/v1/tools/ev.echo/call",
        &worker.token,
        &json!({"arguments": {"message": "again"}}),
    )
    .await
    .problem(403, "forbidden");
}

#[tokio::test]
async fn an_agent_may_not_manage_secrets_connections_or_grants() {
    let app = App::new().await;
    let agent = app.agent("worker").await;
    for (method, uri, body) in [
        ("POST", "/v1/secrets", json!({"name": "x", "value": "y"})),
        ("GET", "/v1/secrets", json!(null)),
        ("GET", "/v1/connections", json!(null)),
        (
            "POST",
            "/v1/grants",
            json!({"subject": {"agent": agent.id}, "tools": "*"}),
        ),
        ("GET", "/v1/grants", json!(null)),
    ] {
        let r = if method == "POST" {
            app.post(uri, &agent.token, &body).await
        } else {
            app.get(uri, &agent.token).await
        };
        r.problem(403, "forbidden");
    }
}

#[tokio::test]
async fn arguments_that_do_not_match_the_schema_are_invalid_arguments() {
    let app = App::new().await;
    connect(&app, &everything("ev", json!({}))).await;
    let r = app
        .post(
            "/v1/tools/ev.echo/call",
            &app.admin,
            &json!({"arguments": {"message": 42}}),
        )
        .await;
    let detail = r.problem(400, "invalid_arguments");
    assert!(detail.contains("message"), "{detail}");
}

#[tokio::test]
async fn a_connection_with_a_bad_url_is_invalid_connection() {
    let app = App::new().await;
    let r = app
        .post(
            "/v1/connections",
            &app.admin,
            &json!({"name": "web", "upstream": {"kind": "mcp_http", "url": "ftp://127.0.0.1/mcp"}}),
        )
        .await;
    r.problem(400, "invalid_connection");
    assert_eq!(
        app.get("/v1/connections", &app.admin).await.json()["items"],
        json!([])
    );
}

#[tokio::test]
async fn a_connection_naming_a_missing_secret_is_unknown_secret() {
    let app = App::new().await;
    let r = app
        .post(
            "/v1/connections",
            &app.admin,
            &everything("ev", json!({"API_KEY": {"secret": "nope"}})),
        )
        .await;
    let detail = r.problem(422, "unknown_secret");
    assert!(detail.contains("nope"), "{detail}");
}

#[tokio::test]
async fn a_referenced_secret_cannot_be_removed_until_its_connection_goes() {
    let app = App::new().await;
    app.post("/v1/secrets", &app.admin, &json!({"name": "k", "value": SECRET}))
        .await
        .expect(200);
    connect(&app, &everything("ev", json!({"API_KEY": {"secret": "k"}}))).await;
    let detail = app
        .delete("/v1/secrets/k", &app.admin)
        .await
        .problem(409, "secret_in_use");
    assert!(detail.contains("ev"), "{detail}");
    app.delete("/v1/connections/ev", &app.admin).await.expect(200);
    app.delete("/v1/secrets/k", &app.admin).await.expect(200);
    assert_eq!(
        app.get("/v1/secrets", &app.admin).await.json()["items"],
        json!([])
    );
    // The refusal and both removals are audited.
    let outcomes: Vec<(String, String)> = app
        .audit()
        .await
        .iter()
        .filter(|e| e["syscall"] == "secret.remove")
        .map(|e| (e["resource"].to_string(), e["outcome"].to_string()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("\"k\"".to_string(), "\"secret_in_use\"".to_string()),
            ("\"k\"".to_string(), "\"ok\"".to_string())
        ]
    );
}

#[tokio::test]
async fn an_agent_over_its_rate_gets_429_with_retry_after() {
    let app = App::with(strata_api::Options::default(), |c| {
        c.tools.agent_rate = strata_tools::Rate {
            burst: 2,
            per_second: 1,
        };
    })
    .await;
    connect(&app, &everything("ev", json!({}))).await;
    let agent = app.agent("worker").await;
    app.post(
        "/v1/grants",
        &app.admin,
        &json!({"subject": {"agent": agent.id}, "tools": "ev.*"}),
    )
    .await
    .expect(201);
    let body = json!({"arguments": {"message": "x"}});
    app.post("/v1/tools/ev.echo/call", &agent.token, &body)
        .await
        .expect(200);
    app.post("/v1/tools/ev.echo/call", &agent.token, &body)
        .await
        .expect(200);
    let r = app.post("/v1/tools/ev.echo/call", &agent.token, &body).await;
    r.problem(429, "rate_limited");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["retry_after_ms"], 1000);
}

#[tokio::test]
async fn an_upstream_that_cannot_start_is_upstream_failed_and_not_registered() {
    let app = App::new().await;
    let r = app
        .post(
            "/v1/connections",
            &app.admin,
            &json!({"name": "nope", "upstream": {"kind": "mcp_stdio", "command": "/nonexistent/binary"}}),
        )
        .await;
    r.problem(502, "upstream_failed");
    assert_eq!(
        app.get("/v1/connections", &app.admin).await.json()["items"],
        json!([])
    );
}

#[tokio::test]
async fn a_repeated_call_with_one_idempotency_key_runs_once() {
    let app = App::new().await;
    connect(&app, &everything("ev", json!({}))).await;
    let call = || {
        crate::harness::Call::new(axum::http::Method::POST, "/v1/tools/ev.echo/call")
            .token(&app.admin)
            .key("call-1")
            .json(&json!({"arguments": {"message": "once"}}))
    };
    let first = app.send(call()).await;
    first.expect(200);
    let again = app.send(call()).await;
    again.expect(200);
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    assert_eq!(first.json(), again.json());
    let calls = app.get("/v1/tool-calls", &app.admin).await.json();
    assert_eq!(calls["items"].as_array().map(Vec::len), Some(1), "{calls}");
}

#[tokio::test]
async fn a_second_call_with_a_key_in_flight_is_refused_and_the_effect_runs_once() {
    let app = App::new().await;
    let counts = tempfile::NamedTempFile::new().expect("a count file");
    let count_file = counts.path().display().to_string();
    // The upstream counts the calls it sees in $COUNT_FILE.
    let mut spec = hostile("h", json!({"timeout_ms": 10000}));
    spec["upstream"]["env"] = json!({"COUNT_FILE": count_file});
    connect(&app, &spec).await;
    let call = || {
        crate::harness::Call::new(axum::http::Method::POST, "/v1/tools/h.stall/call")
            .token(&app.admin)
            .key("stall-1")
            .json(&json!({}))
            .build()
    };
    let router = app.router.clone();
    let first = tokio::spawn({
        let req = call();
        async move { crate::harness::send(&router, req).await }
    });
    // Wait until the first call's intent (and so its claim) is committed.
    for _ in 0..200 {
        if !strata_governance::intent::pending(app.kernel.store())
            .await
            .expect("pending intents")
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let second = crate::harness::send(&app.router, call()).await;
    second.problem(409, "idempotency_key_in_flight");
    assert!(
        second.header("retry-after").is_some(),
        "in flight says when to retry"
    );
    first.await.expect("the first call ends").expect(200);
    // Once finished, the same key replays the first answer without calling again.
    let third = crate::harness::send(&app.router, call()).await;
    third.expect(200);
    assert_eq!(third.header("idempotency-replayed"), Some("true"));
    let seen = std::fs::read_to_string(counts.path()).expect("the count file");
    assert_eq!(
        seen.lines().count(),
        1,
        "the upstream ran the call once: {seen:?}"
    );
}

#[tokio::test]
async fn a_failed_call_releases_its_key_so_a_retry_runs_again() {
    let app = App::new().await;
    connect(&app, &hostile("h", json!({}))).await;
    let call = |tool: &str| {
        crate::harness::Call::new(axum::http::Method::POST, &format!("/v1/tools/h.{tool}/call"))
            .token(&app.admin)
            .key("retry-1")
            .json(&json!({}))
            .build()
    };
    crate::harness::send(&app.router, call("garbage"))
        .await
        .problem(502, "upstream_malformed");
    crate::harness::send(&app.router, call("garbage"))
        .await
        .problem(502, "upstream_malformed");
    let calls = app.get("/v1/tool-calls", &app.admin).await.json();
    assert_eq!(
        calls["items"].as_array().map(Vec::len),
        Some(2),
        "both tries ran: {calls}"
    );
}

#[tokio::test]
async fn connection_sync_reports_no_change_for_an_unchanged_upstream() {
    let app = App::new().await;
    connect(&app, &everything("ev", json!({}))).await;
    let r = app.post("/v1/connections/ev/sync", &app.admin, &json!({})).await;
    r.expect(200);
    let report = r.json();
    assert_eq!(report["connection"], "ev");
    assert_eq!(report["added"], json!([]));
    assert_eq!(report["removed"], json!([]));
    app.get("/v1/connections/nope", &app.admin)
        .await
        .problem(404, "not_found");
}

fn hostile(name: &str, extra: Value) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/tests/upstreams/hostile_mcp.py");
    let mut spec = json!({"name": name, "upstream": {"kind": "mcp_stdio", "command": "python3",
        "args": [script.display().to_string()]}});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    spec
}

#[tokio::test]
async fn a_stalling_upstream_is_upstream_timeout_and_its_intent_is_pending_meanwhile() {
    let app = App::new().await;
    connect(&app, &hostile("h", json!({"timeout_ms": 1500}))).await;
    let router = app.router.clone();
    let admin = app.admin.clone();
    let stalled = tokio::spawn(async move {
        crate::harness::send(
            &router,
            crate::harness::Call::new(axum::http::Method::POST, "/v1/tools/h.stall/call")
                .token(&admin)
                .json(&json!({}))
                .build(),
        )
        .await
    });
    // While the upstream stalls, the call's intent is recorded and unfinished.
    let mut pending = Vec::new();
    for _ in 0..100 {
        pending = strata_governance::intent::pending(app.kernel.store())
            .await
            .expect("pending intents");
        if !pending.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].syscall, "tool.call");
    let r = stalled.await.expect("the call ends");
    r.problem(504, "upstream_timeout");
    // Afterwards the intent is finished and the audit entry carries its id.
    assert!(
        strata_governance::intent::pending(app.kernel.store())
            .await
            .expect("pending intents")
            .is_empty()
    );
    let audit = app.audit().await;
    let entry = audit
        .iter()
        .find(|e| e["syscall"] == "tool.call")
        .expect("the call is audited");
    assert_eq!(entry["outcome"], "upstream_timeout");
    assert_eq!(entry["intent_id"], pending[0].id.as_str());
}

/// Lines in the hostile upstream's count file: the calls it has seen.
async fn seen_calls(file: &std::path::Path, at_least: usize) -> usize {
    for _ in 0..300 {
        let n = std::fs::read_to_string(file).map_or(0, |s| s.lines().count());
        if n >= at_least {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the upstream never saw call {at_least}");
}

#[tokio::test]
async fn a_read_only_tool_records_no_intent_yet_is_audited_and_logged() {
    let app = App::new().await;
    let counts = tempfile::NamedTempFile::new().expect("a count file");
    // The connection marks `stall` read-only; the upstream itself does not.
    // (Read-only tools are retried: one try keeps the count to one per call.)
    let mut spec = hostile(
        "h",
        json!({"timeout_ms": 1500, "read_only": ["stall"],
            "retry": {"max_attempts": 1, "backoff_ms": 10}}),
    );
    spec["upstream"]["env"] = json!({"COUNT_FILE": counts.path().display().to_string()});
    connect(&app, &spec).await;
    let listed = app.get("/v1/tools?connection=h", &app.admin).await.json();
    let stall = listed["items"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "h.stall"))
        .cloned()
        .expect("h.stall is listed");
    assert_eq!(stall["read_only"], true, "{stall}");
    assert_eq!(stall["idempotent"], true, "read-only implies idempotent: {stall}");
    let stalled = |key: Option<&'static str>| {
        let router = app.router.clone();
        let mut call = crate::harness::Call::new(axum::http::Method::POST, "/v1/tools/h.stall/call")
            .token(&app.admin)
            .json(&json!({}));
        if let Some(k) = key {
            call = call.key(k);
        }
        let req = call.build();
        tokio::spawn(async move { crate::harness::send(&router, req).await })
    };
    let pending = || async {
        strata_governance::intent::pending(app.kernel.store())
            .await
            .expect("pending intents")
    };
    // Without a key: while the upstream holds the call, no intent is pending.
    let first = stalled(None);
    seen_calls(counts.path(), 1).await;
    let none = pending().await;
    assert!(none.is_empty(), "a read-only call records no intent: {none:?}");
    first
        .await
        .expect("the call ends")
        .problem(504, "upstream_timeout");
    // It is audited and logged all the same.
    let audit = app.audit().await;
    let entry = audit
        .iter()
        .find(|e| e["syscall"] == "tool.call")
        .expect("the read-only call is audited");
    assert_eq!(entry["outcome"], "upstream_timeout");
    let calls = app.get("/v1/tool-calls", &app.admin).await.json();
    assert_eq!(calls["items"][0]["status"], "upstream_timeout", "{calls}");
    // With a key, an intent holds the key's claim while the call runs. (The
    // upstream is still asleep on the first call, so this one may time out
    // before the upstream reads it: watch the intents, not the count file.)
    let second = stalled(Some("ro-1"));
    let mut held = pending().await;
    for _ in 0..100 {
        if !held.is_empty() || second.is_finished() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        held = pending().await;
    }
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].syscall, "tool.call");
    second
        .await
        .expect("the call ends")
        .problem(504, "upstream_timeout");
    assert!(pending().await.is_empty());
}

/// Calls `h.count` (read-only by the connection) `n` times; for each call,
/// how many WAL syncs the store made between its request and its answer.
async fn syncs_per_read_only_call(app: &App, n: usize) -> Vec<u64> {
    let mut spec = hostile("h", json!({"read_only": ["count"]}));
    spec["upstream"]["env"] = json!({});
    connect(app, &spec).await;
    let mut syncs = Vec::new();
    for _ in 0..n {
        let before = app.kernel.store().wal_syncs();
        app.post("/v1/tools/h.count/call", &app.admin, &json!({"arguments": {}}))
            .await
            .expect(200);
        syncs.push(app.kernel.store().wal_syncs() - before);
    }
    // Answered or not, every call is logged.
    let calls = app.get("/v1/tool-calls?tool=h.count", &app.admin).await.json();
    assert_eq!(calls["items"].as_array().map(Vec::len), Some(n), "{calls}");
    syncs
}

#[tokio::test]
async fn a_read_only_call_is_answered_before_its_sync_unless_the_operator_asks_for_it() {
    // A sync window longer than the test: a sync it sees was made for a call.
    let long = |o: &mut strata_store::Options| o.sync_window = std::time::Duration::from_secs(3600);
    let lazy = App::with_store(long, |_| {}).await;
    assert_eq!(
        syncs_per_read_only_call(&lazy, 5).await,
        vec![0; 5],
        "a read-only call waited for the disk"
    );
    let strict = App::with_store(long, |c| c.tools.sync_read_only_calls = true).await;
    let syncs = syncs_per_read_only_call(&strict, 5).await;
    assert!(
        syncs.iter().all(|&n| n >= 1),
        "with sync_read_only_calls, a call was answered before its sync: {syncs:?}"
    );
}

#[tokio::test]
async fn malformed_and_oversized_upstream_answers_are_502s() {
    let app = App::new().await;
    connect(&app, &hostile("h", json!({"max_response_bytes": 65536}))).await;
    app.post("/v1/tools/h.garbage/call", &app.admin, &json!({}))
        .await
        .problem(502, "upstream_malformed");
    app.post("/v1/tools/h.huge/call", &app.admin, &json!({}))
        .await
        .problem(502, "upstream_too_large");
}

#[tokio::test]
async fn the_audited_digest_of_a_secret_set_is_keyed_so_the_value_cannot_be_guessed_from_it() {
    let app = App::new().await;
    let body = json!({"name": "k", "value": "1234"});
    app.post("/v1/secrets", &app.admin, &body).await.expect(200);
    let audit = app.audit().await;
    let entry = audit
        .iter()
        .find(|e| e["syscall"] == "secret.set")
        .expect("secret.set is audited");
    let unkeyed = strata_governance::digest(format!("secret.set\n{body}").as_bytes());
    assert_ne!(entry["request_digest"], unkeyed.as_str());
    // The same request still replays under its idempotency key.
    let call = || {
        crate::harness::Call::new(axum::http::Method::POST, "/v1/secrets")
            .token(&app.admin)
            .key("set-1")
            .json(&body)
    };
    app.send(call()).await.expect(200);
    let again = app.send(call()).await;
    again.expect(200);
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
}
