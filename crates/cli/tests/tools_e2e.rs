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
