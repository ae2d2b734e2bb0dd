//! The MCP conformance suite (`@modelcontextprotocol/conformance`) against the
//! real server's `/mcp`. The suite cannot send a bearer token, so a test-only
//! proxy (tests/conformance/proxy.mjs) adds the admin token. The scenarios that
//! need the suite's own fixture tools, resources or prompts are listed, with
//! why, in tests/conformance/expected-failures.yaml; the suite fails the run if
//! any other scenario fails or a listed one starts to pass.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use support::{Server, WAIT, run_for};

#[test]
fn the_mcp_conformance_suite_passes_but_for_its_fixture_scenarios() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    let suite = dir.join("node_modules/@modelcontextprotocol/conformance/dist/index.js");
    assert!(
        suite.exists(),
        "\n\n*** the MCP conformance suite is not installed: run `npm ci` in crates/cli/tests/conformance (CI does). ***\n\n"
    );
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let server = Server::start(&tmp.path().join("data"));

    let mut proxy = Command::new("node")
        .arg(dir.join("proxy.mjs"))
        .args([&server.url, &server.admin_token])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs the proxy");
    let mut port = String::new();
    BufReader::new(proxy.stdout.take().expect("piped stdout"))
        .read_line(&mut port)
        .expect("the proxy prints its port");
    let url = format!("http://127.0.0.1:{}/mcp", port.trim());

    let mut cmd = Command::new("node");
    cmd.arg(&suite)
        .args(["server", "--url", &url, "--expected-failures"])
        .arg(dir.join("expected-failures.yaml"))
        .current_dir(&dir);
    let out = run_for(cmd, WAIT * 5);
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert!(out.status.success(), "the conformance suite failed:\n{out}");
    assert!(out.stdout.contains("✓ tools-list"), "{out}");
    assert!(out.stdout.contains("✓ server-initialize"), "{out}");
}
