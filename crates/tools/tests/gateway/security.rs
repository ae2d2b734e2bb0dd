//! Attacks on the gateway: leaking secrets, calling without a grant, sneaking
//! bad arguments past the schema, and hostile upstreams.

use serde_json::{Value, json};
use strata_core::ErrorCode;
use strata_store::Backend;
use strata_tools::{Caller, ListTools};

use super::harness::{Gateway, agent, everything, logs, openapi_connection, script, service, unique};
use crate::on_both_backends;

fn hostile(name: &str, env: Value) -> Value {
    json!({"name": name, "upstream": {"kind": "mcp_stdio", "command": "python3", "args": [script("hostile_mcp.py")], "env": env}})
}

/// Asserts `secret` appears nowhere the gateway lets out: results, errors, the
/// call log, the connection listing, and every log line of the test binary.
async fn assert_never_leaked(g: &Gateway, secret: &str, returned: &[String]) {
    for r in returned {
        assert!(!r.contains(secret), "a returned value holds the secret: {r}");
    }
    let log = g.log_text().await;
    assert!(!log.contains(secret), "the call log holds the secret");
    let conns = serde_json::to_string(&g.tools.list_connections()).unwrap();
    assert!(!conns.contains(secret), "the connection listing holds the secret");
    let secrets = serde_json::to_string(&g.tools.list_secrets().await.unwrap()).unwrap();
    assert!(!secrets.contains(secret));
    assert!(!logs().contains(secret), "a tracing line holds the secret");
}

async fn a_secret_in_an_upstreams_environment_never_comes_back(b: Backend) {
    let g = Gateway::new(b).await;
    let secret = unique("env-secret");
    g.secret("TOKEN", &secret).await;
    g.connect(everything(
        "ev",
        json!({"API_TOKEN": {"secret": "TOKEN"}, "WRAPPED": "pre-${secret:TOKEN}-post"}),
    ))
    .await;
    let (id, me) = agent();
    g.grant(&id, "ev.*").await;
    // server-everything's get-env answers with its whole environment.
    let out = g.call(&me, "ev.get-env", json!({})).await.unwrap();
    let text = out.result.to_string();
    assert!(text.contains("API_TOKEN"), "the variable was injected: {text}");
    assert!(text.contains("[redacted]"), "its value was scrubbed: {text}");
    assert!(text.contains("pre-[redacted]-post"));
    assert!(
        !text.contains("CARGO_PKG_NAME"),
        "the gateway's own environment does not reach the upstream"
    );
    let returned = vec![text, serde_json::to_string(&out).unwrap()];
    assert_never_leaked(&g, &secret, &returned).await;
    g.tools.shutdown().await;
}

async fn a_secret_in_headers_and_query_never_comes_back_even_when_echoed(b: Backend) {
    let g = Gateway::new(b).await;
    let secret = unique("header-secret");
    g.secret("API_KEY", &secret).await;
    let svc = service(&secret).await;
    g.connect(openapi_connection(
        "svc",
        &svc,
        json!({"headers": {"x-api-key": {"secret": "API_KEY"}, "authorization": "Bearer ${secret:API_KEY}"},
               "query": {"key": {"secret": "API_KEY"}}}),
    ))
    .await;
    let (id, me) = agent();
    g.grant(&id, "svc.*").await;
    let ok = g
        .call(&me, "svc.getItem", json!({"id": 7, "verbose": true}))
        .await
        .unwrap();
    assert_eq!(
        ok.result["structuredContent"]["status"], 200,
        "the key reached the service: {}",
        ok.result
    );
    // The echo endpoint hands every header and query value back.
    let echoed = g.call(&me, "svc.echoHeaders", json!({})).await.unwrap();
    let text = echoed.result.to_string();
    assert!(text.contains("x-api-key"), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
    // Errors: a 401 body and a failing call.
    let mut returned = vec![text, ok.result.to_string()];
    let e = g
        .call(&me, "svc.getItem", json!({"id": "not a number"}))
        .await
        .unwrap_err();
    returned.push(e.to_string());
    assert_never_leaked(&g, &secret, &returned).await;
}

async fn an_agent_cannot_pull_a_secret_in_through_its_arguments(b: Backend) {
    let g = Gateway::new(b).await;
    let secret = unique("arg-secret");
    g.secret("TOKEN", &secret).await;
    g.connect(everything("ev", json!({"T": {"secret": "TOKEN"}})))
        .await;
    let (id, me) = agent();
    g.grant(&id, "ev.echo").await;
    for attempt in [json!("${secret:TOKEN}"), json!({"secret": "TOKEN"})] {
        let out = g
            .call(&me, "ev.echo", json!({"message": attempt.to_string()}))
            .await
            .unwrap();
        let text = out.result.to_string();
        assert!(
            text.contains("TOKEN"),
            "the reference came back literally: {text}"
        );
        assert!(!text.contains(&secret));
    }
    g.tools.shutdown().await;
}

async fn a_secret_never_appears_in_errors_from_a_failing_upstream(b: Backend) {
    let g = Gateway::new(b).await;
    let secret = unique("err-secret");
    g.secret("TOKEN", &secret).await;
    g.connect(hostile("h", json!({"TOKEN": {"secret": "TOKEN"}})))
        .await;
    let (id, me) = agent();
    g.grant(&id, "h.*").await;
    let echoed = g.call(&me, "h.echo_env", json!({})).await.unwrap();
    assert!(
        echoed.result.to_string().contains("token=[redacted]"),
        "{}",
        echoed.result
    );
    // The upstream's error message carries the secret.
    let err = g.call(&me, "h.fail_env", json!({})).await.unwrap_err();
    assert_eq!(err.error.code, ErrorCode::UpstreamRejected, "{err}");
    assert!(err.error.detail.contains("failed with token [redacted]"), "{err}");
    assert_never_leaked(
        &g,
        &secret,
        &[echoed.result.to_string(), err.to_string(), format!("{err:?}")],
    )
    .await;
    g.tools.shutdown().await;
}

async fn an_agent_without_a_grant_can_neither_list_nor_call(b: Backend) {
    let g = Gateway::new(b).await;
    g.secret("API_KEY", "k-123456").await;
    let svc = service("k-123456").await;
    g.connect(openapi_connection("svc", &svc, json!({}))).await;
    let (granted, with) = agent();
    let (_, without) = agent();
    g.grant(&granted, "svc.getItem").await;
    assert!(g.tools.list_tools(&without, &ListTools::default()).is_empty());
    assert_eq!(
        g.tools.get_tool(&without, "svc.getItem").unwrap_err().code,
        ErrorCode::NotFound
    );
    let e = g
        .call(&without, "svc.getItem", json!({"id": 1}))
        .await
        .unwrap_err();
    assert_eq!(e.error.code, ErrorCode::Forbidden);
    // Unknown tools look the same as forbidden ones to an agent without a grant.
    let e = g.call(&without, "svc.nope", json!({})).await.unwrap_err();
    assert_eq!(e.error.code, ErrorCode::Forbidden);
    assert_eq!(svc.calls.get(), 0, "nothing reached the upstream");
    // The granted agent sees and calls exactly what it was granted.
    let listed: Vec<String> = g
        .tools
        .list_tools(&with, &ListTools::default())
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(listed, vec!["svc.getItem"]);
    g.call(&with, "svc.getItem", json!({"id": 1})).await.unwrap();
    assert_eq!(
        g.call(&with, "svc.createItem", json!({"body": {"name": "x"}}))
            .await
            .unwrap_err()
            .error
            .code,
        ErrorCode::Forbidden
    );
    assert_eq!(svc.calls.get(), 1);
    // A label grant covers agents carrying the label.
    g.tools
        .grant(strata_tools::NewGrant {
            subject: strata_tools::Subject::Label {
                key: "team".into(),
                value: "ops".into(),
            },
            tools: "svc.*".into(),
        })
        .await
        .unwrap();
    let ops = Caller::Agent {
        id: strata_core::Id::new("agt").to_string(),
        labels: [("team".to_string(), "ops".to_string())].into(),
    };
    assert!(g.tools.list_tools(&ops, &ListTools::default()).len() > 5);
    assert!(g.tools.list_tools(&without, &ListTools::default()).is_empty());
    // Revoking takes effect at once.
    let grants = g.tools.list_grants().await.unwrap();
    g.tools.revoke_grant(&grants[0].id).await.unwrap();
    assert_eq!(
        g.call(&with, "svc.getItem", json!({"id": 1}))
            .await
            .unwrap_err()
            .error
            .code,
        ErrorCode::Forbidden
    );
    let log = g.log_text().await;
    assert!(
        log.contains("\"status\":\"forbidden\""),
        "refusals are logged too"
    );
}

async fn schema_violating_arguments_never_reach_the_upstream(b: Backend) {
    let g = Gateway::new(b).await;
    g.secret("API_KEY", "k-123456").await;
    let svc = service("k-123456").await;
    g.connect(openapi_connection("svc", &svc, json!({}))).await;
    let count_file = tempfile::NamedTempFile::new().unwrap();
    g.connect(hostile(
        "h",
        json!({"COUNT_FILE": count_file.path().display().to_string()}),
    ))
    .await;
    let (id, me) = agent();
    g.grant(&id, "*").await;
    for (tool, args) in [
        ("svc.getItem", json!({})),                       // missing path parameter
        ("svc.getItem", json!({"id": "1; DROP TABLE"})),  // wrong type
        ("svc.getItem", json!({"id": 1, "extra": true})), // unknown property
        ("svc.createItem", json!({"body": {"qty": 3}})),  // body misses a required field
        ("svc.createItem", json!({"body": {"name": "x", "qty": 0}})), // $ref'd minimum
        ("svc.createItem", json!([1, 2])),                // not an object
        ("h.count", json!({"n": -1})),
        ("h.count", json!({"n": 1, "sneaky": "x"})),
    ] {
        let e = g.call(&me, tool, args.clone()).await.unwrap_err();
        assert_eq!(e.error.code, ErrorCode::InvalidArguments, "{tool} {args}: {e}");
    }
    assert_eq!(svc.calls.get(), 0, "the OpenAPI upstream saw nothing");
    assert_eq!(
        std::fs::read_to_string(count_file.path()).unwrap(),
        "",
        "the MCP upstream saw nothing"
    );
    g.call(&me, "svc.createItem", json!({"body": {"name": "x", "qty": 2}}))
        .await
        .unwrap();
    g.call(&me, "h.count", json!({"n": 1})).await.unwrap();
    assert_eq!(svc.calls.get(), 1);
    assert_eq!(
        std::fs::read_to_string(count_file.path())
            .unwrap()
            .lines()
            .count(),
        1
    );
    g.tools.shutdown().await;
}

async fn a_hostile_mcp_upstream_is_cut_off_with_a_clear_error(b: Backend) {
    let g = Gateway::with(b, |c| c.max_response_bytes = 1024 * 1024).await;
    g.connect(hostile("h", json!({}))).await;
    let me = Caller::Operator;
    let e = g.call(&me, "h.huge", json!({})).await.unwrap_err();
    assert_eq!(e.error.code, ErrorCode::UpstreamTooLarge, "{e}");
    assert!(e.error.detail.contains("1048576"), "{e}");
    // The session was closed; the next call starts a fresh upstream.
    let ok = g.call(&me, "h.count", json!({})).await.unwrap();
    assert_eq!(
        ok.result["content"][0]["text"], "1",
        "a new process: {}",
        ok.result
    );
    let e = g.call(&me, "h.garbage", json!({})).await.unwrap_err();
    assert_eq!(e.error.code, ErrorCode::UpstreamMalformed, "{e}");
    let e = g.call(&me, "h.notjson", json!({})).await.unwrap_err();
    assert_eq!(e.error.code, ErrorCode::UpstreamMalformed, "{e}");
    assert!(e.error.detail.contains("not JSON-RPC"), "{e}");
    g.call(&me, "h.count", json!({})).await.unwrap();
    g.tools.shutdown().await;
}

/// The gateway takes a stdio upstream's answers to its calls off the pipe by
/// id. An upstream cannot use that to confuse it: a request carrying a call's
/// id is not taken for the call's answer, and answers to ids nobody waits for
/// (before and after the real one) are dropped, not handed to another call.
async fn a_stdio_upstream_cannot_spoof_or_stray_its_way_into_a_calls_answer(b: Backend) {
    let g = Gateway::new(b).await;
    g.connect(hostile("h", json!({}))).await;
    let me = Caller::Operator;
    let text = |r: &strata_tools::CallOutput| r.result["content"][0]["text"].clone();
    let spoofed = g.call(&me, "h.spoof", json!({})).await.unwrap();
    assert_eq!(text(&spoofed), "1", "{}", spoofed.result);
    let strayed = g.call(&me, "h.stray", json!({})).await.unwrap();
    assert_eq!(text(&strayed), "2", "{}", strayed.result);
    // The same process (the count goes on), and the late duplicate answer of
    // the last call did not become this call's answer.
    for n in 3..6 {
        let next = g.call(&me, "h.count", json!({})).await.unwrap();
        assert_eq!(text(&next), n.to_string(), "{}", next.result);
    }
    g.tools.shutdown().await;
}

/// A streamable-HTTP MCP server whose tools/call answers with `size` bytes of JSON.
async fn hostile_http_mcp(size: usize) -> String {
    use axum::response::IntoResponse;
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(move |axum::Json(msg): axum::Json<Value>| async move {
            let id = msg.get("id").cloned();
            let method = msg["method"].as_str().unwrap_or("").to_string();
            let Some(id) = id else {
                return axum::http::StatusCode::ACCEPTED.into_response();
            };
            let result = match method.as_str() {
                "initialize" => {
                    json!({"protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}},
                                        "serverInfo": {"name": "hostile-http", "version": "1"}})
                }
                "tools/list" => json!({"tools": [{"name": "huge", "inputSchema": {"type": "object"}}]}),
                "tools/call" => json!({"content": [{"type": "text", "text": "y".repeat(size)}]}),
                _ => {
                    return axum::Json(
                        json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "no"}}),
                    )
                    .into_response();
                }
            };
            axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

async fn a_hostile_http_mcp_upstream_is_cut_off_with_a_clear_error(b: Backend) {
    let g = Gateway::with(b, |c| c.max_response_bytes = 256 * 1024).await;
    let url = hostile_http_mcp(4 * 1024 * 1024).await;
    g.connect(json!({"name": "hh", "upstream": {"kind": "mcp_http", "url": url}}))
        .await;
    let e = g.call(&Caller::Operator, "hh.huge", json!({})).await.unwrap_err();
    assert_eq!(e.error.code, ErrorCode::UpstreamTooLarge, "{e}");
    g.tools.shutdown().await;
}

async fn a_stalling_mcp_upstream_times_out_and_is_not_retried(b: Backend) {
    let g = Gateway::new(b).await;
    let count_file = tempfile::NamedTempFile::new().unwrap();
    let mut spec = hostile(
        "h",
        json!({"COUNT_FILE": count_file.path().display().to_string()}),
    );
    spec["timeout_ms"] = json!(300);
    g.connect(spec).await;
    let started = std::time::Instant::now();
    let e = g.call(&Caller::Operator, "h.stall", json!({})).await.unwrap_err();
    assert_eq!(e.error.code, ErrorCode::UpstreamTimeout, "{e}");
    assert!(started.elapsed() < std::time::Duration::from_millis(2000));
    assert_eq!(
        std::fs::read_to_string(count_file.path())
            .unwrap()
            .lines()
            .count(),
        1,
        "a tool not marked idempotent is tried once"
    );
    g.tools.shutdown().await;
}

async fn a_hostile_openapi_upstream_is_cut_off_with_a_clear_error(b: Backend) {
    let g = Gateway::with(b, |c| c.max_response_bytes = 1024 * 1024).await;
    g.secret("API_KEY", "k-123456").await;
    let svc = service("k-123456").await;
    g.connect(openapi_connection("svc", &svc, json!({}))).await;
    let me = Caller::Operator;
    let e = g.call(&me, "svc.huge", json!({})).await.unwrap_err();
    assert_eq!(e.error.code, ErrorCode::UpstreamTooLarge, "{e}");
    let e = g.call(&me, "svc.garbage", json!({})).await.unwrap_err();
    assert_eq!(e.error.code, ErrorCode::UpstreamMalformed, "{e}");
    assert!(e.error.detail.contains("not"), "{e}");
    // Not retried: both are idempotent GETs, yet each reached the service once.
    assert_eq!(svc.calls.get(), 2);
}

on_both_backends!(
    a_secret_in_an_upstreams_environment_never_comes_back,
    a_secret_in_headers_and_query_never_comes_back_even_when_echoed,
    a_secret_never_appears_in_errors_from_a_failing_upstream,
    an_agent_cannot_pull_a_secret_in_through_its_arguments,
    an_agent_without_a_grant_can_neither_list_nor_call,
    schema_violating_arguments_never_reach_the_upstream,
    a_hostile_mcp_upstream_is_cut_off_with_a_clear_error,
    a_stdio_upstream_cannot_spoof_or_stray_its_way_into_a_calls_answer,
    a_hostile_openapi_upstream_is_cut_off_with_a_clear_error,
    a_hostile_http_mcp_upstream_is_cut_off_with_a_clear_error,
    a_stalling_mcp_upstream_times_out_and_is_not_retried,
);
