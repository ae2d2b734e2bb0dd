//! Strata as an MCP server, driven by the official Python `mcp` client over
//! streamable HTTP (both the 2026-07-28 stateless revision and the
//! initialize-based one) and through `strata mcp` on stdio, with a proxied
//! `server-everything` tool beside the syscall tools.

mod support;

use std::path::PathBuf;
use std::process::Command;

use reqwest::Method;
use serde_json::{Value, json};
use support::{BIN, Server, WAIT, call, http, run_for};

fn everything_script() -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tools/tests/upstreams/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        script.exists(),
        "\n\n*** server-everything is not installed: run `npm ci` in crates/tools/tests/upstreams (CI does). ***\n\n"
    );
    script.display().to_string()
}

fn python_has_mcp() {
    let out = Command::new("python3")
        .args(["-c", "import mcp, httpx2"])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "\n\n*** the Python `mcp` package is missing: run `pip install -r crates/cli/tests/python/requirements.txt` (CI does). ***\n{}\n",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_mcp_client_lists_and_calls_syscalls_and_upstream_tools() {
    python_has_mcp();
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let server = Server::start(&tmp.path().join("data"));
    let http = http();
    let v1 = |p: &str| format!("{}/v1{p}", server.url);

    let conn = json!({"name": "ev", "upstream": {"kind": "mcp_stdio", "command": "node",
        "args": [everything_script(), "stdio"]}});
    let (status, body) = call(
        &http,
        Method::POST,
        &v1("/connections"),
        &server.admin_token,
        Some(&conn),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let agent = support::create_agent(&http, &server, "narrow").await;
    let id = agent["id"].as_str().expect("an agent id");
    let (status, token) = call(
        &http,
        Method::POST,
        &v1(&format!("/agents/{id}/tokens")),
        &server.admin_token,
        Some(&json!({"scopes": ["agent.get"]})),
    )
    .await;
    assert_eq!(status, 201, "{token}");
    let narrow = token["token"].as_str().expect("a token");

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/mcp_client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .args([&server.url, &server.admin_token, narrow, BIN]);
    let out = run_for(cmd, WAIT * 3);
    assert!(out.status.success(), "the Python MCP client failed:\n{out}");
    let summary: Value = serde_json::from_str(out.stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no summary ({e}):\n{out}"));

    // `auto` discovers the stateless revision; `legacy` forces initialize.
    assert_eq!(summary["auto"]["protocol_version"], "2026-07-28", "{summary}");
    let legacy = summary["legacy"]["protocol_version"].as_str().unwrap_or_default();
    assert!(legacy.starts_with("2025-"), "{summary}");
    assert!(summary["bad_token"].is_string(), "{summary}");

    // What the tools did is real: each agent exists once (the idempotent
    // replay made no second one), and every creation is audited.
    let (_, agents) = call(
        &http,
        Method::GET,
        &v1("/agents?limit=500"),
        &server.admin_token,
        None,
    )
    .await;
    for suffix in ["auto", "legacy", "stdio"] {
        let name = format!("mcp-{suffix}");
        let made: Vec<&Value> = agents["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|a| a["name"] == name.as_str())
            .collect();
        assert_eq!(made.len(), 1, "{name}: {agents}");
        assert_eq!(made[0]["id"], summary[suffix]["agent"], "{summary}");
    }
    let audit = support::audit_entries(&http, &server).await;
    let created = audit
        .iter()
        .filter(|e| e["syscall"] == "agent.create" && e["outcome"] == "ok")
        .count();
    assert_eq!(created, 4, "three over MCP and one over HTTP");
    let echo_calls = audit.iter().filter(|e| e["syscall"] == "tool.call").count();
    assert!(
        echo_calls >= 3,
        "each ev.echo went through tool.call: {echo_calls}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mcp_endpoint_refuses_a_request_without_a_token_with_a_problem() {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let server = Server::start(&tmp.path().join("data"));
    let resp = http()
        .post(format!("{}/mcp", server.url))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .send()
        .await
        .expect("a response");
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap_or_default(),
        "application/problem+json"
    );
    let body: Value = resp.json().await.expect("a problem document");
    assert_eq!(body["code"], "unauthenticated", "{body}");
}

/// An MCP client that forwards `notifications/tools/list_changed` to a channel.
#[derive(Clone)]
struct Watcher {
    info: rmcp::model::ClientConfig,
    seen: tokio::sync::mpsc::UnboundedSender<()>,
}

impl rmcp::ClientHandler for Watcher {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        self.info.clone()
    }

    async fn on_tool_list_changed(&self, _cx: rmcp::service::NotificationContext<rmcp::RoleClient>) {
        let _ = self.seen.send(());
    }
}

fn transport(server: &Server) -> rmcp::transport::StreamableHttpClientTransport<reqwest::Client> {
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", server.url))
        .auth_header(server.admin_token.clone());
    rmcp::transport::StreamableHttpClientTransport::from_config(config)
}

#[tokio::test(flavor = "multi_thread")]
async fn registering_a_connection_announces_tools_list_changed_to_sessions_and_subscriptions() {
    use rmcp::ServiceExt;
    use rmcp::model::{ProtocolVersion, ServerNotification, SubscriptionFilter};
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let server = Server::start(&tmp.path().join("data"));

    // An initialize-based session, which hears notifications on its stream.
    let (tx, mut legacy_seen) = tokio::sync::mpsc::unbounded_channel();
    let mut info = rmcp::model::ClientConfig::default();
    info.protocol_version = ProtocolVersion::LATEST_WITH_INITIALIZE;
    let legacy = Watcher { info, seen: tx }
        .serve(transport(&server))
        .await
        .expect("an initialize-based session");
    let before = legacy.peer().list_all_tools().await.expect("tools/list");
    assert!(
        !before.iter().any(|t| t.name.starts_with("ev.")),
        "no upstream yet"
    );

    // A 2026-07-28 client, which asks for them with subscriptions/listen.
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
    let (tx, _unused) = tokio::sync::mpsc::unbounded_channel();
    let modern = Watcher {
        info: rmcp::model::ClientConfig::default(),
        seen: tx,
    }
    .serve_with_lifecycle(
        transport(&server),
        ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::LATEST],
        },
    )
    .await
    .expect("a stateless client");
    let mut subscription = modern
        .peer()
        .listen(SubscriptionFilter::builder().tools_list_changed().build())
        .await
        .expect("subscriptions/listen is acknowledged");
    assert_eq!(
        subscription.acknowledged().tools_list_changed,
        Some(true),
        "the server accepts tools/list_changed"
    );

    let conn = json!({"name": "ev", "upstream": {"kind": "mcp_stdio", "command": "node",
        "args": [everything_script(), "stdio"]}});
    support::add_connection(&http(), &server, &conn).await;

    tokio::time::timeout(WAIT, legacy_seen.recv())
        .await
        .expect("the session hears tools/list_changed in time")
        .expect("the session is still open");
    let note = tokio::time::timeout(WAIT, subscription.next())
        .await
        .expect("the subscription hears a change in time")
        .expect("the subscription stream works")
        .expect("the subscription is still open");
    assert!(
        matches!(note, ServerNotification::ToolListChangedNotification(_)),
        "{note:?}"
    );
    let after = legacy.peer().list_all_tools().await.expect("tools/list");
    assert!(
        after.iter().any(|t| t.name == "ev.echo"),
        "the new tools are listed"
    );
    let _ = legacy.cancel().await;
    let _ = modern.cancel().await;
}
