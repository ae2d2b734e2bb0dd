//! The 2026-07-28 stateless `tools/call`, answered without the SDK's per-request
//! machinery.
//!
//! Most of an agent's `/mcp` traffic is this one request: a stateless
//! `tools/call` answered by one JSON message. For each one `rmcp` builds and
//! spawns a service, routes the request through channels to it, parses the
//! message into its typed model and serialises it again to check the standard
//! headers. On two cores with 8 calls in flight that cost about a third of the
//! server's CPU per call (`strata bench tools --paths mcp`), so the middleware
//! here answers the common, well-formed case itself, with the same handler
//! code and the SDK's own wire types, and hands everything else to the SDK
//! untouched.
//!
//! **It takes a request only if all of this holds**, and otherwise the SDK
//! answers it (and any error in it) exactly as before: `POST`; no
//! `Mcp-Session-Id` and no `Origin`; a `Host`; `MCP-Protocol-Version: 2026-07-28`;
//! `Accept` names `application/json` and `text/event-stream`, without parameters; `Content-Type`
//! is `application/json`; a `Content-Length` within the body limit;
//! `Mcp-Method: tools/call` and `Mcp-Name` equal to the tool called, with no
//! `Mcp-Param-*` headers; a body with only `jsonrpc: "2.0"`, an `id`, the
//! `method` and `params` made of `name`, `arguments` and `_meta`, whose
//! `_meta` names protocol version 2026-07-28 and carries the client's
//! capabilities. The handler never sends progress, so the answer is always one
//! JSON message, as the SDK sends it with `json_response` on.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    JsonObject, JsonRpcError, JsonRpcResponse, JsonRpcVersion2_0, RequestId, ServerJsonRpcMessage,
    ServerResult,
};
use serde::Deserialize;
use serde_json::Value;

use super::{Caller, Handler};

/// The only revision this path answers.
const VERSION: &str = "2026-07-28";
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";

/// A `tools/call` message with nothing this path does not understand.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    jsonrpc: String,
    id: RequestId,
    method: String,
    params: Params,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    name: String,
    #[serde(default)]
    arguments: Option<JsonObject>,
    #[serde(rename = "_meta")]
    meta: JsonObject,
}

/// Answers a plain stateless `tools/call`; passes anything else on to the SDK.
pub(super) async fn tools_call(State(handler): State<Handler>, req: Request, next: Next) -> Response {
    let Some(limit) = eligible(req.method(), req.headers(), handler.max_body_bytes) else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        // Shorter than its Content-Length, or a broken connection.
        Err(e) => {
            let e = strata_core::Error::new(
                strata_core::ErrorCode::InvalidRequest,
                format!("the request body could not be read: {e}"),
            );
            return crate::problem::problem_response(&e);
        }
    };
    let message = serde_json::from_slice::<Message>(&bytes)
        .ok()
        .filter(|m| plain_call(m, &parts.headers));
    let (Some(message), Some(caller)) = (message, parts.extensions.get::<Caller>().cloned()) else {
        return next.run(Request::from_parts(parts, Body::from(bytes))).await;
    };
    let key = message
        .params
        .meta
        .get("idempotencyKey")
        .and_then(Value::as_str)
        .map(str::to_string);
    let arguments = Value::Object(message.params.arguments.unwrap_or_default());
    let answer = handler.call(&caller, &message.params.name, arguments, key).await;
    let reply = match answer {
        Ok(result) => ServerJsonRpcMessage::Response(JsonRpcResponse {
            jsonrpc: JsonRpcVersion2_0,
            id: message.id,
            result: ServerResult::from(result),
        }),
        Err(error) => ServerJsonRpcMessage::Error(JsonRpcError {
            jsonrpc: JsonRpcVersion2_0,
            id: Some(message.id),
            error,
        }),
    };
    // The SDK's status for an in-band error of a well-formed request is 200 too.
    match serde_json::to_vec(&reply) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => crate::problem::problem_response(&strata_core::Error::internal(e)),
    }
}

/// The body limit, if the request's method and headers allow this path.
fn eligible(method: &Method, headers: &HeaderMap, max_body: usize) -> Option<usize> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if method != Method::POST
        || headers.contains_key("mcp-session-id")
        || headers.contains_key(header::ORIGIN)
        || !headers.contains_key(header::HOST)
        || text("mcp-protocol-version") != Some(VERSION)
        || text("mcp-method") != Some("tools/call")
        || headers.keys().any(|k| k.as_str().starts_with("mcp-param-"))
    {
        return None;
    }
    // Accept entries with parameters (a weight of 0 refuses a type) are left
    // to the SDK, which weighs them.
    let accept = text(header::ACCEPT.as_str())?;
    let accepts = |media: &str| accept.split(',').any(|a| a.trim().eq_ignore_ascii_case(media));
    let content_type = text(header::CONTENT_TYPE.as_str())?;
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if !accepts("application/json")
        || !accepts("text/event-stream")
        || !essence.eq_ignore_ascii_case("application/json")
    {
        return None;
    }
    let length: usize = text(header::CONTENT_LENGTH.as_str())?.parse().ok()?;
    (length <= max_body).then_some(length)
}

/// Whether the parsed message is the call its headers announced, in the
/// 2026-07-28 form this path answers.
fn plain_call(m: &Message, headers: &HeaderMap) -> bool {
    let meta = &m.params.meta;
    m.jsonrpc == "2.0"
        && m.method == "tools/call"
        && headers.get("mcp-name").and_then(|v| v.to_str().ok()) == Some(m.params.name.as_str())
        && meta.get(META_VERSION).and_then(Value::as_str) == Some(VERSION)
        && meta.get(META_CAPABILITIES).is_some_and(Value::is_object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("a valid header name"),
                v.parse().expect("a valid header value"),
            );
        }
        h
    }

    const PLAIN: [(&str, &str); 7] = [
        ("host", "127.0.0.1:7433"),
        ("accept", "text/event-stream, application/json"),
        ("content-type", "application/json"),
        ("content-length", "300"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "t.echo"),
    ];

    #[test]
    fn only_a_plain_stateless_call_is_taken() {
        let plain = headers(&PLAIN);
        assert_eq!(eligible(&Method::POST, &plain, 1000), Some(300));
        assert_eq!(eligible(&Method::GET, &plain, 1000), None);
        assert_eq!(eligible(&Method::POST, &plain, 299), None, "over the body limit");
        let with = |extra: (&str, &str)| {
            let mut pairs: Vec<(&str, &str)> = PLAIN.iter().filter(|(k, _)| *k != extra.0).copied().collect();
            pairs.push(extra);
            eligible(&Method::POST, &headers(&pairs), 1000)
        };
        assert_eq!(with(("mcp-session-id", "s1")), None);
        assert_eq!(with(("origin", "http://localhost:3000")), None);
        assert_eq!(with(("mcp-protocol-version", "2025-11-25")), None);
        assert_eq!(with(("mcp-method", "tools/list")), None);
        assert_eq!(with(("mcp-param-path", "x")), None);
        assert_eq!(with(("accept", "application/json")), None);
        assert_eq!(with(("accept", "application/json;q=0, text/event-stream")), None);
        assert_eq!(with(("accept", "Application/JSON, text/event-stream")), Some(300));
        assert_eq!(with(("content-type", "text/plain")), None);
        assert_eq!(
            with(("content-type", "application/json; charset=utf-8")),
            Some(300)
        );
        let no_length: Vec<(&str, &str)> = PLAIN
            .iter()
            .filter(|(k, _)| *k != "content-length")
            .copied()
            .collect();
        assert_eq!(eligible(&Method::POST, &headers(&no_length), 1000), None);
    }

    #[test]
    fn a_message_must_match_its_headers_and_revision() {
        let h = headers(&PLAIN);
        let parse = |v: Value| serde_json::from_value::<Message>(v).ok();
        let meta = serde_json::json!({META_VERSION: VERSION, META_CAPABILITIES: {}});
        let call = |name: &str, meta: &Value| {
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": name, "arguments": {}, "_meta": meta}})
        };
        let ok = parse(call("t.echo", &meta)).expect("a plain call parses");
        assert!(plain_call(&ok, &h));
        let other = parse(call("t.other", &meta)).expect("parses");
        assert!(!plain_call(&other, &h), "Mcp-Name must name the tool called");
        let old = parse(call(
            "t.echo",
            &serde_json::json!({META_VERSION: "2025-11-25", META_CAPABILITIES: {}}),
        ))
        .expect("parses");
        assert!(!plain_call(&old, &h));
        let bare = parse(call("t.echo", &serde_json::json!({META_VERSION: VERSION}))).expect("parses");
        assert!(!plain_call(&bare, &h), "the client's capabilities are required");
        let mut task = call("t.echo", &meta);
        task["params"]["task"] = serde_json::json!({"ttl": 1000});
        assert!(parse(task).is_none(), "anything else in params goes to the SDK");
        assert!(parse(serde_json::json!({"jsonrpc": "2.0", "method": "tools/call", "params": {}})).is_none());
    }
}
