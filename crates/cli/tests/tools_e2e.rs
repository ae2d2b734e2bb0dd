//! End-to-end test of the tool-gateway commands against the real binary and the
//! reference `server-everything` MCP server over stdio.

mod support;

use std::path::PathBuf;

use support::{Server, WAIT, run_for, strata};

const SECRET: &str = "e2e-secret-value-5d2a9";

fn everything_script() -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tools/tests/upstreams/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        script.exists(),
        "\n\n*** server-everything is not installed: run `npm ci` in crates/tools/tests/upstreams (CI does). ***\n\n"
    );
    script.display().to_string()
}

fn cli(server: &Server, args: &[&str]) -> support::Output {
    let mut cmd = strata();
    cmd.args(args).arg("--data-dir").arg(&server.dir);
    cmd.env("STRATA_URL", &server.url);
    cmd.env("E2E_SECRET", SECRET);
    run_for(cmd, WAIT)
}

#[test]
fn secret_connection_and_tool_commands_round_trip_without_showing_the_secret() {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let server = Server::start(&tmp.path().join("data"));
    let set = cli(
        &server,
        &["secret", "set", "k", "--from-env", "E2E_SECRET", "-o", "json"],
    )
    .success();
    assert_eq!(set.json()["name"], "k");
    let def = tmp.path().join("ev.json");
    let spec = serde_json::json!({"name": "ev", "upstream": {"kind": "mcp_stdio", "command": "node",
        "args": [everything_script(), "stdio"], "env": {"API_KEY": {"secret": "k"}}}});
    std::fs::write(&def, spec.to_string()).expect("write the definition");
    let def = def.display().to_string();
    let added = cli(&server, &["connection", "add", "-f", &def, "-o", "json"]).success();
    assert_eq!(added.json()["secrets"], serde_json::json!(["k"]));
    let ls = cli(&server, &["connection", "ls"]).success();
    assert!(
        ls.stdout.contains("ev") && ls.stdout.contains("mcp_stdio"),
        "{ls}"
    );
    let tools = cli(&server, &["tool", "ls", "echo", "-o", "json"])
        .success()
        .json();
    assert_eq!(tools["items"][0]["name"], "ev.echo", "{tools}");
    // The table says which tools are read-only (their calls record no intent).
    let table = cli(&server, &["tool", "ls", "echo"]).success();
    let header = table.stdout.lines().next().unwrap_or_default();
    let row = table
        .stdout
        .lines()
        .find(|l| l.starts_with("ev.echo"))
        .unwrap_or_default();
    assert!(header.contains("READ_ONLY") && row.contains("true"), "{table}");
    let called = cli(
        &server,
        &[
            "tool",
            "call",
            "ev.echo",
            "--args",
            r#"{"message": "from the cli"}"#,
            "-o",
            "json",
        ],
    )
    .success()
    .json();
    assert!(called["result"].to_string().contains("from the cli"), "{called}");
    let bad = cli(
        &server,
        &["tool", "call", "ev.echo", "--args", r#"{"message": 1}"#],
    )
    .failure();
    assert!(bad.stderr.contains("invalid_arguments"), "{bad}");
    let synced = cli(&server, &["connection", "sync", "ev", "-o", "json"])
        .success()
        .json();
    assert_eq!(synced["added"], serde_json::json!([]));
    let secrets = cli(&server, &["secret", "ls"]).success();
    assert!(secrets.stdout.contains('k'), "{secrets}");
    let in_use = cli(&server, &["secret", "rm", "k"]).failure();
    assert!(in_use.stderr.contains("secret_in_use"), "{in_use}");
    cli(&server, &["connection", "rm", "ev"]).success();
    cli(&server, &["secret", "rm", "k"]).success();
    let no_source = cli(&server, &["secret", "set", "x"]).failure();
    assert!(no_source.stderr.contains("--value-stdin"), "{no_source}");
    for out in [set.stdout, added.stdout, ls.stdout, secrets.stdout, server.log()] {
        assert!(!out.contains(SECRET), "the secret leaked: {out}");
    }
}

/// The hostile test upstream (its `stall` tool answers after three seconds).
fn hostile_script() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tools/tests/upstreams/hostile_mcp.py")
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_call_cut_off_by_kill_9_is_marked_interrupted_and_audited_after_restart() {
    use reqwest::Method;
    use serde_json::json;
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let data = tmp.path().join("data");
    let mut server = Server::start(&data);
    let http = support::http();
    let conn = json!({"name": "h", "upstream": {"kind": "mcp_stdio", "command": "python3",
        "args": [hostile_script()]}});
    support::add_connection(&http, &server, &conn).await;
    // A call the upstream holds for three seconds, cut off after one and a half.
    let call = {
        let (http, url, token) = (
            http.clone(),
            format!("{}/v1/tools/h.stall/call", server.url),
            server.admin_token.clone(),
        );
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(token)
                .json(&json!({"arguments": {}}))
                .send()
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    server.kill();
    assert!(
        call.await.expect("the client task ends").is_err(),
        "the call was answered before the kill; the test needs it in flight"
    );

    // After a restart the intent's server is known dead once its liveness
    // lapses (10 s); the recovery round then marks it interrupted.
    let server = Server::start(&data);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let interrupted = loop {
        let (status, page) = support::call(
            &http,
            Method::GET,
            &format!("{}/v1/events?after=0&limit=1000", server.url),
            &server.admin_token,
            None,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let found: Vec<serde_json::Value> = page["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|e| e["kind"] == "intent.interrupted")
            .cloned()
            .collect();
        if !found.is_empty() {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no intent.interrupted event within 40 s:\n{}",
            server.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert_eq!(interrupted.len(), 1, "{interrupted:?}");
    assert_eq!(interrupted[0]["data"]["syscall"], "tool.call", "{interrupted:?}");
    let by = interrupted[0]["data"]["by"].as_str().unwrap_or_default();
    assert!(by.starts_with("admin:"), "{interrupted:?}");
    let audit = support::audit_entries(&http, &server).await;
    let entry = audit
        .iter()
        .find(|e| e["syscall"] == "intent.interrupted")
        .expect("the interruption is audited");
    assert_eq!(entry["resource"], interrupted[0]["subject"]);
    assert_eq!(entry["principal"], "system");
    // The cut-off call itself never got an outcome entry of its own.
    assert!(!audit.iter().any(|e| e["syscall"] == "tool.call"), "{audit:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_tool_calls_loses_no_answered_calls_log_row() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use reqwest::Method;
    use serde_json::json;
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let data = tmp.path().join("data");
    // The gateway's rate limits raised out of the way: as many calls as the
    // machine can carry are in flight when the kill lands.
    let mut serve = support::strata();
    serve.args(["serve", "--tool-agent-rate", "1000000", "--tool-rate", "1000000"]);
    let mut server = Server::try_start_with(&data, serve)
        .unwrap_or_else(|r| panic!("strata serve exited ({:?}):\n{}", r.status, r.stderr));
    let http = support::http();
    let conn = json!({"name": "ev", "upstream": {"kind": "mcp_stdio", "command": "node",
        "args": [everything_script(), "stdio"]}});
    support::add_connection(&http, &server, &conn).await;

    // Eight clients call `echo` until the server is killed under them; a call
    // counts as answered only once its whole 200 body has arrived.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (url, token, stop, http) = (
            format!("{}/v1/tools/ev.echo/call", server.url),
            server.admin_token.clone(),
            stop.clone(),
            http.clone(),
        );
        clients.push(tokio::spawn(async move {
            let (mut answered, mut refused, mut unreachable) = (Vec::new(), Vec::new(), 0);
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let body = json!({"arguments": {"message": format!("c{c}-{i}")}});
                let Ok(resp) = http.post(&url).bearer_auth(&token).json(&body).send().await else {
                    unreachable += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let status = resp.status().as_u16();
                match resp.json::<serde_json::Value>().await {
                    // Over the gateway's default call rate: wait as told.
                    Ok(v) if status == 429 => {
                        let ms = v["retry_after_ms"].as_u64().unwrap_or(10);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    Ok(v) if status == 200 => answered.push(
                        v["call_id"]
                            .as_str()
                            .unwrap_or_else(|| panic!("200 without a call_id: {v}"))
                            .to_string(),
                    ),
                    Ok(v) => refused.push(format!("{status} {v}")),
                    Err(_) => {} // cut off by the kill: not answered
                }
            }
            (answered, refused, unreachable)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut answered, mut refused, mut unreachable) = (Vec::new(), Vec::new(), 0);
    for c in clients {
        let (a, r, u) = tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("clients stop within 60 s")
            .expect("client task");
        answered.extend(a);
        refused.extend(r);
        unreachable += u;
    }
    println!("tool calls answered before SIGKILL: {}", answered.len());
    assert!(!answered.is_empty(), "no call was answered in 2 s");
    assert!(
        refused.is_empty(),
        "{} calls refused before the kill, e.g. {:?}",
        refused.len(),
        &refused[..refused.len().min(3)]
    );
    assert!(unreachable > 0, "the clients had stopped calling before the kill");

    let server = Server::start(&data);
    let mut logged = std::collections::HashSet::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/tool-calls?tool=ev.echo&limit=500", server.url);
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let (status, page) = support::call(&http, Method::GET, &url, &server.admin_token, None).await;
        assert_eq!(status, 200, "{page}");
        for row in page["items"].as_array().expect("items") {
            logged.insert(row["id"].as_str().expect("id").to_string());
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    let missing: Vec<&String> = answered.iter().filter(|id| !logged.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered calls are missing from the call log after the kill: {:?}",
        missing.len(),
        answered.len(),
        &missing[..missing.len().min(5)]
    );
}
