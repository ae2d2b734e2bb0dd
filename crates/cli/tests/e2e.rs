//! End-to-end tests: each starts the real `strata` binary as a child process and
//! talks to it over HTTP and through its command line, the way an operator would.
//!
//! Every wait has a deadline, and every child is killed when its guard drops, so a
//! misbehaving binary fails a test instead of hanging the suite.

mod support;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::{
    Server, audit_entries, call, client_cmd, create_agent, http, run, run_for, strata, verify_offline,
};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("make a temporary folder")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_concurrent_creates_loses_no_acknowledged_agent() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut server = Server::start(&dir);

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (url, token, stop) = (server.url.clone(), server.admin_token.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let http = http();
            let (mut acked, mut other, mut unreachable) = (Vec::new(), Vec::new(), 0);
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let body = json!({"name": format!("crash-{c}-{i}"), "capabilities": [{"name": "summarize"}]});
                let sent = http
                    .post(format!("{url}/v1/agents"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await;
                let Ok(resp) = sent else {
                    // The server is gone (killed): keep knocking until told to stop.
                    unreachable += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let status = resp.status().as_u16();
                // Acknowledged only once the whole 201 body has arrived.
                match resp.json::<Value>().await {
                    Ok(v) if status == 201 => {
                        let id = v["id"]
                            .as_str()
                            .unwrap_or_else(|| panic!("201 without an id: {v}"));
                        acked.push(id.to_string());
                    }
                    Ok(v) => other.push(format!("{status} {v}")),
                    Err(_) => {} // cut off by the kill: not acknowledged
                }
            }
            (acked, other, unreachable)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut acked, mut other, mut unreachable) = (Vec::new(), Vec::new(), 0);
    for c in clients {
        let (a, o, u) = tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("clients stop within 60 s")
            .expect("client task");
        acked.extend(a);
        other.extend(o);
        unreachable += u;
    }
    println!("acknowledged creates before SIGKILL: {}", acked.len());
    assert!(!acked.is_empty(), "no create was acknowledged in 2 s");
    assert!(other.is_empty(), "creates refused before the kill: {other:?}");
    assert!(unreachable > 0, "the clients had stopped sending before the kill");

    let mut server = Server::start(&dir);
    let server_ref = Arc::new((server.url.clone(), server.admin_token.clone()));
    let mut readers = Vec::new();
    for chunk in acked.chunks(acked.len().div_ceil(8)) {
        let (chunk, s) = (chunk.to_vec(), server_ref.clone());
        readers.push(tokio::spawn(async move {
            let http = http();
            let mut missing = Vec::new();
            for id in chunk {
                let (status, v) =
                    call(&http, Method::GET, &format!("{}/v1/agents/{id}", s.0), &s.1, None).await;
                if status != 200 {
                    missing.push(format!("{id}: {status} {v}"));
                }
            }
            missing
        }));
    }
    let mut missing = Vec::new();
    for r in readers {
        missing.extend(r.await.expect("reader task"));
    }
    assert!(missing.is_empty(), "acknowledged agents lost: {missing:?}");

    let http = http();
    let url = format!("{}/v1/audit/verify", server.url);
    let (status, verify) = call(&http, Method::GET, &url, &server.admin_token, None).await;
    assert_eq!(status, 200, "{verify}");
    assert_eq!(verify["ok"], true, "online verify: {verify}");
    let online_entries = verify["entries"].as_i64().expect("entries");
    assert!(
        online_entries >= acked.len() as i64,
        "{verify} for {} creates",
        acked.len()
    );

    let created: HashSet<String> = audit_entries(&http, &server)
        .await
        .iter()
        .filter(|e| e["syscall"] == "agent.create" && e["outcome"] == "ok")
        .filter_map(|e| e["resource"].as_str().map(str::to_string))
        .collect();
    let unaudited: Vec<&String> = acked.iter().filter(|id| !created.contains(*id)).collect();
    assert!(
        unaudited.is_empty(),
        "acknowledged creates missing from the audit log: {unaudited:?}"
    );

    server.stop();
    let (out, report) = verify_offline(&dir);
    assert!(out.status.success(), "offline verify:\n{out}");
    assert_eq!(report["ok"], true, "{out}");
    assert_eq!(report["entries"].as_i64(), Some(online_entries), "{out}");
}

/// Copies the database files (the WAL holds the recent commits) of `from` into a new folder `to`.
fn copy_db(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("make the copy folder");
    for name in ["strata.db", "strata.db-wal", "strata.db-shm"] {
        if from.join(name).exists() {
            std::fs::copy(from.join(name), to.join(name)).expect("copy a database file");
        }
    }
}

/// Runs `sql` on the database in `dir` directly, as an attacker with file access would.
async fn tamper(dir: &Path, sql: &'static str) {
    use sqlx::Connection;
    let url = format!("sqlite://{}", dir.join("strata.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("open the copy");
    let done = sqlx::raw_sql(sql).execute(&mut conn).await.expect("tamper");
    assert!(done.rows_affected() > 0, "`{sql}` changed nothing");
    conn.close().await.expect("close the copy");
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_audit_verify_detects_altered_removed_reordered_and_truncated_rows() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut server = Server::start(&dir);
    let http = http();
    for name in ["a1", "a2", "a3", "a4", "a5"] {
        create_agent(&http, &server, name).await;
    }
    // SIGTERM would checkpoint the WAL, but the server currently never exits on it
    // after a write (see `sigterm_stops_the_server_cleanly`). Killing it is as good
    // here: every commit is in strata.db + strata.db-wal, and both are copied.
    server.kill();
    let entries = 6; // the bootstrap admin token, then five agents

    let cases: [(&str, Option<&'static str>, Option<i64>); 5] = [
        ("untouched", None, None),
        (
            "altered",
            Some("UPDATE gov_audit SET principal = 'mallory' WHERE seq = 3"),
            Some(3),
        ),
        ("removed", Some("DELETE FROM gov_audit WHERE seq = 3"), Some(3)),
        (
            "reordered",
            Some(
                "UPDATE gov_audit SET seq = -2 WHERE seq = 2;
                 UPDATE gov_audit SET seq = 2 WHERE seq = 3;
                 UPDATE gov_audit SET seq = 3 WHERE seq = -2;",
            ),
            Some(2),
        ),
        (
            "truncated",
            Some("DELETE FROM gov_audit WHERE seq = (SELECT MAX(seq) FROM gov_audit)"),
            Some(entries),
        ),
    ];
    for (case, sql, first_bad) in cases {
        let copy = tmp.path().join(case);
        copy_db(&dir, &copy);
        if let Some(sql) = sql {
            tamper(&copy, sql).await;
        }
        let (out, report) = verify_offline(&copy);
        let mut text_cmd = strata();
        text_cmd.args(["audit", "verify", "--data-dir"]).arg(&copy);
        let text = run_for(text_cmd, support::WAIT);
        match first_bad {
            None => {
                assert_eq!(out.status.code(), Some(0), "{case}:\n{out}");
                assert_eq!(report, json!({"ok": true, "entries": entries}), "{case}");
                assert_eq!(text.status.code(), Some(0), "{case}:\n{text}");
                let expected = format!("audit chain ok: {entries} entries verified");
                assert!(text.stdout.contains(&expected), "{case}:\n{text}");
            }
            Some(seq) => {
                assert_eq!(out.status.code(), Some(1), "{case}:\n{out}");
                assert_eq!(report["ok"], false, "{case}: {report}");
                assert_eq!(report["first_bad"].as_i64(), Some(seq), "{case}: {report}");
                assert!(
                    report["reason"].as_str().is_some_and(|r| !r.is_empty()),
                    "{case}: {report}"
                );
                assert_eq!(text.status.code(), Some(1), "{case}:\n{text}");
                let expected = format!("audit chain BROKEN at entry {seq}:");
                assert!(text.stdout.contains(&expected), "{case}:\n{text}");
            }
        }
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn first_start_writes_private_admin_token_and_master_key() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut server = Server::start(&dir);
    let token_path = dir.join("admin.token");
    let key_path = dir.join("master.key");
    assert_eq!(mode(&token_path), 0o600, "admin.token mode");
    assert_eq!(mode(&key_path), 0o600, "master.key mode");
    // Traversable (not listable) so sandboxes reach their mounts under it;
    // what is private in it is owner-only.
    assert_eq!(mode(&dir), 0o711, "data folder mode");
    assert!(dir.join("strata.db").exists());
    assert_eq!(mode(&dir.join("strata.db")), 0o600, "database mode");
    let token_file = std::fs::read(&token_path).expect("read admin.token");
    let key_file = std::fs::read(&key_path).expect("read master.key");
    assert!(!server.admin_token.is_empty());
    let key_hex = String::from_utf8_lossy(&key_file).trim().to_string();
    assert!(
        key_hex.len() == 64 && key_hex.chars().all(|c| c.is_ascii_hexdigit()),
        "master.key: {key_hex}"
    );

    let http = http();
    let agents = format!("{}/v1/agents", server.url);
    let (status, v) = call(&http, Method::GET, &agents, &server.admin_token, None).await;
    assert_eq!(status, 200, "the admin token works: {v}");
    let (status, v) = call(&http, Method::GET, &agents, "stk_not-a-real-token", None).await;
    assert_eq!(status, 401, "a made-up token is refused: {v}");

    server.kill();
    let server = Server::start(&dir);
    assert_eq!(
        std::fs::read(&token_path).expect("read admin.token"),
        token_file,
        "admin.token rewritten"
    );
    assert_eq!(
        std::fs::read(&key_path).expect("read master.key"),
        key_file,
        "master.key rewritten"
    );
    assert_eq!(mode(&token_path), 0o600, "admin.token mode after restart");
    let agents = format!("{}/v1/agents", server.url);
    let (status, v) = call(&http, Method::GET, &agents, &server.admin_token, None).await;
    assert_eq!(status, 200, "the admin token works after a restart: {v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn second_server_on_same_data_dir_is_refused() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut first = Server::start(&dir);
    let Err(refused) = Server::try_start(&dir) else {
        panic!("a second server started on the same data folder");
    };
    let status = refused.status.expect("the refused server exits");
    assert!(
        !status.success(),
        "refused server exit: {status}\n{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("another strata server is using")
            && refused.stderr.contains(&*dir.to_string_lossy()),
        "unclear refusal:\n{}",
        refused.stderr
    );

    let http = http();
    let agents = format!("{}/v1/agents", first.url);
    let (code, v) = call(&http, Method::GET, &agents, &first.admin_token, None).await;
    assert_eq!(code, 200, "the first server still serves: {v}");

    first.kill();
    let again = Server::start(&dir);
    assert!(again.url.starts_with("http://127.0.0.1:"), "{}", again.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_client_commands_round_trip() {
    let tmp = tempdir();
    let server = Server::start(&tmp.path().join("data"));
    let http = http();

    let created = client_cmd(
        &server,
        None,
        &[
            "agent",
            "create",
            "cli-agent",
            "-c",
            "summarize",
            "-l",
            "team=x",
            "-o",
            "json",
        ],
    )
    .success()
    .json();
    let id = created["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("agt_"), "{created}");
    assert!(
        created["did"]
            .as_str()
            .is_some_and(|d| d.starts_with("did:key:z")),
        "{created}"
    );
    assert!(
        created["token"].as_str().is_some_and(|t| t.starts_with("stk_")),
        "{created}"
    );
    assert!(
        created["token_id"]
            .as_str()
            .is_some_and(|t| t.starts_with("tok_")),
        "{created}"
    );
    assert_eq!(created["capabilities"][0]["name"], "summarize", "{created}");
    assert_eq!(created["labels"], json!({"team": "x"}), "{created}");

    let dup = client_cmd(&server, None, &["agent", "create", "cli-agent", "-o", "json"]).failure();
    assert!(dup.stderr.contains("error: agent_name_taken (409)"), "{dup}");

    let list = client_cmd(&server, None, &["agent", "list", "-o", "json"])
        .success()
        .json();
    let listed: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert_eq!(listed, [id.as_str()], "{list}");

    let got = client_cmd(&server, None, &["agent", "get", &id, "-o", "json"])
        .success()
        .json();
    assert_eq!(got["name"], "cli-agent", "{got}");
    assert_eq!(got["did"], created["did"], "{got}");

    // A scoped, expiring token: it may read one agent and nothing else.
    let scoped = client_cmd(
        &server,
        None,
        &[
            "token",
            "create",
            &id,
            "--scope",
            "agent.get",
            "--expires-in",
            "1h",
            "-o",
            "json",
        ],
    )
    .success()
    .json();
    let scoped_token = scoped["token"].as_str().expect("token").to_string();
    let scoped_id = scoped["id"].as_str().expect("id").to_string();
    assert!(scoped_id.starts_with("tok_"), "{scoped}");
    assert_eq!(scoped["scopes"], json!(["agent.get"]), "{scoped}");
    assert_eq!(scoped["agent_id"], id.as_str(), "{scoped}");
    assert!(scoped["expires_at"].is_string(), "{scoped}");
    client_cmd(&server, Some(&scoped_token), &["agent", "get", &id, "-o", "json"]).success();
    let denied = client_cmd(&server, Some(&scoped_token), &["agent", "list"]).failure();
    assert!(denied.stderr.contains("error: forbidden (403)"), "{denied}");

    // Another operator token works like the first.
    let admin2 = client_cmd(&server, None, &["token", "create", "--admin", "-o", "json"])
        .success()
        .json();
    let admin2_token = admin2["token"].as_str().expect("token").to_string();
    let admin2_id = admin2["id"].as_str().expect("id").to_string();
    client_cmd(&server, Some(&admin2_token), &["agent", "list", "-o", "json"]).success();

    // Revoked tokens get 401 at once.
    client_cmd(&server, None, &["token", "revoke", &scoped_id]).success();
    client_cmd(&server, None, &["token", "revoke", &admin2_id]).success();
    let agent_url = format!("{}/v1/agents/{id}", server.url);
    for token in [&scoped_token, &admin2_token] {
        let (status, v) = call(&http, Method::GET, &agent_url, token, None).await;
        assert_eq!(status, 401, "a revoked token: {v}");
        assert_eq!(v["code"], "token_revoked", "{v}");
    }
    let revoked = client_cmd(&server, Some(&scoped_token), &["agent", "get", &id]).failure();
    assert!(revoked.stderr.contains("error: token_revoked (401)"), "{revoked}");

    // Deleting the agent removes it and revokes its first token.
    client_cmd(&server, None, &["agent", "delete", &id]).success();
    let gone = client_cmd(&server, None, &["agent", "get", &id]).failure();
    assert!(gone.stderr.contains("error: not_found (404)"), "{gone}");
    let first_token = created["token"].as_str().expect("token");
    let (status, v) = call(
        &http,
        Method::GET,
        &format!("{}/v1/agents", server.url),
        first_token,
        None,
    )
    .await;
    assert_eq!(status, 401, "the deleted agent's token: {v}");

    let bad = client_cmd(&server, None, &["agent", "get", "agt_00000000000000000000000000"]).failure();
    assert!(bad.stderr.contains("error: not_found (404)"), "{bad}");
    assert!(bad.stdout.is_empty(), "{bad}");
}

#[test]
fn every_subcommand_has_help() {
    let commands: &[&[&str]] = &[
        &[],
        &["serve"],
        &["demo"],
        &["bench"],
        &["bench", "api"],
        &["bench", "tasks"],
        &["audit"],
        &["audit", "verify"],
        &["audit", "list"],
        &["agent"],
        &["agent", "create"],
        &["agent", "list"],
        &["agent", "get"],
        &["agent", "delete"],
        &["token"],
        &["token", "create"],
        &["token", "revoke"],
        &["task"],
        &["task", "submit"],
        &["task", "get"],
        &["task", "list"],
        &["task", "cancel"],
        &["task", "watch"],
        &["secret"],
        &["secret", "set"],
        &["secret", "ls"],
        &["secret", "rm"],
        &["connection"],
        &["connection", "add"],
        &["connection", "ls"],
        &["connection", "sync"],
        &["connection", "rm"],
        &["tool"],
        &["tool", "ls"],
        &["tool", "call"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = run(&args);
        assert!(out.status.success(), "strata {}:\n{out}", args.join(" "));
        assert!(out.stdout.contains("Usage:"), "strata {}:\n{out}", args.join(" "));
    }
    let version = run(&["--version"]).success();
    assert!(version.stdout.starts_with("strata "), "{version}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_server_cleanly() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut server = Server::start(&dir);
    create_agent(&http(), &server, "before-sigterm").await;
    let started = Instant::now();
    let status = server.terminate(Duration::from_secs(20));
    let Some(status) = status else {
        panic!(
            "strata serve still running 20 s after SIGTERM; its log:\n{}",
            server.log()
        );
    };
    assert!(status.success(), "exit after SIGTERM: {status}\n{}", server.log());
    println!("stopped {:?} after SIGTERM", started.elapsed());
    let (out, report) = verify_offline(&dir);
    assert!(out.status.success(), "{out}");
    assert_eq!(report["entries"], 2, "{out}");
}

#[test]
fn demo_runs_end_to_end() {
    let tmp = tempdir();
    let mut cmd = strata();
    // The demo's throwaway data folder goes under our temporary folder.
    cmd.arg("demo").env("TMPDIR", tmp.path());
    let out = run_for(cmd, Duration::from_secs(60)).success();
    assert!(out.stdout.contains("\"ok\":true"), "{out}");
    assert!(out.stdout.contains("Done."), "{out}");
}
