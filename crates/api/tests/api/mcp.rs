//! `/mcp`: the stateless (2026-07-28) `tools/call` that the server answers
//! itself gives the same answer as the SDK does for the same message.

use axum::http::Method;
use serde_json::{Value, json};

use crate::harness::{App, Call, Resp};

/// A 2026-07-28 `tools/call` of `name`. With `length`, it has every header the
/// server's own path needs; without, its body has no `Content-Length`, so the
/// SDK answers it.
async fn call(app: &App, token: &str, name: &str, arguments: Value, length: bool) -> Resp {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": name, "arguments": arguments,
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {},
                  "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"}}}})
    .to_string()
    .into_bytes();
    let mut c = Call::new(Method::POST, "/mcp")
        .token(token)
        .header("host", "localhost:7433")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", name);
    if length {
        c = c.header("content-length", &body.len().to_string());
    }
    app.send(c.raw("application/json", body)).await
}

/// The answer both ways: the same status, content type and JSON.
async fn both(app: &App, token: &str, name: &str, arguments: Value) -> Value {
    let own = call(app, token, name, arguments.clone(), true).await;
    let sdk = call(app, token, name, arguments, false).await;
    assert_eq!(own.status, sdk.status, "{} / {}", own.text(), sdk.text());
    assert_eq!(own.header("content-type"), sdk.header("content-type"));
    assert_eq!(own.json(), sdk.json());
    own.json()
}

#[tokio::test]
async fn a_stateless_tools_call_is_answered_as_the_sdk_answers_it() {
    let app = App::new().await;
    let agent = app.agent("worker").await;

    // A syscall that succeeds: its reply as text and as structured content.
    let got = both(&app, &app.admin, "agent.get", json!({"id": agent.id})).await;
    assert_eq!(got["id"], 7);
    assert_eq!(
        got["result"]["structuredContent"]["id"],
        agent.id.as_str(),
        "{got}"
    );
    assert!(got["result"].get("isError").is_none_or(|e| e == false), "{got}");

    // A refused syscall: a tool error carrying the problem document.
    let got = both(&app, &agent.token, "agent.delete", json!({"id": agent.id})).await;
    assert_eq!(got["result"]["isError"], true, "{got}");
    assert_eq!(got["result"]["structuredContent"]["code"], "forbidden", "{got}");

    // Arguments that break the syscall's schema.
    let got = both(&app, &app.admin, "agent.get", json!({"id": 42})).await;
    assert_eq!(got["result"]["isError"], true, "{got}");

    // An unknown tool: a JSON-RPC error, not a result.
    let got = both(&app, &app.admin, "nowhere.nothing", json!({})).await;
    assert!(got.get("result").is_none(), "{got}");
    assert_eq!(got["error"]["code"], -32602, "{got}");
}

#[tokio::test]
async fn a_stateless_tools_call_still_needs_a_valid_token() {
    let app = App::new().await;
    let r = call(&app, "stk_not-a-token", "agent.list", json!({}), true).await;
    assert_eq!(r.status, 401, "{}", r.text());
}
