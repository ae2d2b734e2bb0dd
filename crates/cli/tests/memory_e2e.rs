//! End-to-end tests of the memory layer against the real `strata` binary: the
//! `strata memory` and `strata handoff` verbs, and the real `mem0ai` Python
//! package's `MemoryClient` on the Mem0-compatible API.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{Server, client_cmd, run_for};

fn as_json(server: &Server, token: Option<&str>, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    client_cmd(server, token, &all).success().json()
}

#[test]
fn memory_and_handoff_verbs_round_trip() {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let server = Server::start(&tmp.path().join("data"));
    let a = as_json(&server, None, &["agent", "create", "mem-a"]);
    let b = as_json(&server, None, &["agent", "create", "mem-b"]);
    let (a_token, b_token) = (
        a["token"].as_str().expect("token"),
        b["token"].as_str().expect("token"),
    );
    let b_id = b["id"].as_str().expect("id");

    let added = as_json(
        &server,
        Some(a_token),
        &[
            "memory",
            "add",
            "I adopted a golden retriever named Biscuit.",
            "--user",
            "alice",
            "--source",
            r#"{"msg":"m1"}"#,
        ],
    );
    assert_eq!(added["results"][0]["event"], "ADD", "{added}");
    let id = added["results"][0]["id"].as_str().expect("id").to_string();
    let found = as_json(
        &server,
        Some(a_token),
        // The test server has no embedding model: recall is lexical and graph.
        &[
            "memory",
            "search",
            "what is alice's golden retriever called?",
            "--user",
            "alice",
        ],
    );
    assert_eq!(found["results"][0]["id"], Value::from(id.clone()), "{found}");
    let table = client_cmd(
        &server,
        Some(a_token),
        &["memory", "search", "retriever", "--user", "alice"],
    )
    .success();
    assert!(
        table.stdout.contains("Biscuit") && table.stdout.contains("SCORE"),
        "{table}"
    );
    let got = as_json(&server, Some(a_token), &["memory", "get", &id]);
    assert_eq!(got["sources"], serde_json::json!([{"msg": "m1"}]));
    let listed = as_json(&server, None, &["memory", "ls", "--user", "alice"]);
    assert_eq!(listed["count"], 1, "{listed}");
    client_cmd(&server, Some(b_token), &["memory", "get", &id]).failure();

    let sent = as_json(
        &server,
        Some(a_token),
        &[
            "handoff",
            "send",
            b_id,
            "--summary",
            "Alice's dog",
            "--memory",
            &id,
            "--state",
            r#"{"step":1}"#,
        ],
    );
    assert_eq!(sent["status"], "pending", "{sent}");
    let hof = sent["id"].as_str().expect("id").to_string();
    let inbox = as_json(&server, Some(b_token), &["handoff", "ls"]);
    assert_eq!(inbox["results"][0]["id"], Value::from(hof.clone()), "{inbox}");
    let accepted = as_json(&server, Some(b_token), &["handoff", "accept", &hof]);
    assert_eq!(accepted["handoff"]["status"], "accepted", "{accepted}");
    as_json(&server, Some(b_token), &["memory", "get", &id]);
    let twice = client_cmd(&server, Some(b_token), &["handoff", "reject", &hof]).failure();
    assert!(twice.stderr.contains("handoff_decided"), "{twice}");

    let forgot = as_json(&server, Some(a_token), &["memory", "forget", &id]);
    assert_eq!(forgot["event"], "DELETE", "{forgot}");
    let history = as_json(&server, Some(a_token), &["memory", "history", &id]);
    let events: Vec<&str> = history["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert_eq!(events, ["ADD", "DELETE"], "{history}");
}

/// Fails (never skips) without the package: CI installs it in .ci/run.
fn require_mem0() {
    let probe = Command::new("python3")
        .args([
            "-c",
            "import mem0, importlib.metadata as m; print(m.version('mem0ai'))",
        ])
        .env("MEM0_TELEMETRY", "False")
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "\n\n*** the mem0ai Python package is missing: pip install mem0ai==2.2.1 (CI does) ***\n{}\n",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("\n\n*** python3 is missing ({e}); then: pip install mem0ai==2.2.1 ***\n"),
    }
}

#[test]
fn the_mem0_python_client_adds_searches_lists_updates_deletes_and_reads_history() {
    require_mem0();
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let server = Server::start(&tmp.path().join("data"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/mem0_client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .env("STRATA_URL", &server.url)
        .env("STRATA_TOKEN", &server.admin_token)
        .env("MEM0_TELEMETRY", "False")
        .env("MEM0_DIR", tmp.path().join("mem0"));
    let out = run_for(cmd, Duration::from_secs(180));
    assert!(
        out.status.success(),
        "the mem0 client script failed:\n{out}\n--- server log ---\n{}",
        server.log()
    );
    assert!(out.stdout.contains("OK"), "{out}");
}
