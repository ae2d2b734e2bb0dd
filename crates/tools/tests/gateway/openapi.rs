//! OpenAPI upstreams: a document inline or fetched, operations as tools.

use serde_json::json;
use strata_core::ErrorCode;
use strata_store::Backend;
use strata_tools::{Caller, ListTools};

use super::harness::{Gateway, openapi_connection, service, service_document};
use crate::on_both_backends;

async fn each_operation_is_a_tool_called_with_path_query_and_body(b: Backend) {
    let g = Gateway::new(b).await;
    g.secret("API_KEY", "k-123456").await;
    let svc = service("k-123456").await;
    let info = g.connect(openapi_connection("svc", &svc, json!({}))).await;
    assert_eq!(info.kind, "openapi");
    assert_eq!(info.secrets, vec!["API_KEY"]);
    let tools = g.tools.list_tools(&Caller::Operator, &ListTools::default());
    let create = tools.iter().find(|t| t.name == "svc.createItem").unwrap();
    assert!(!create.idempotent);
    assert_eq!(create.input_schema["required"], json!(["body"]));
    assert!(tools.iter().find(|t| t.name == "svc.getItem").unwrap().idempotent);
    let got = g
        .call(
            &Caller::Operator,
            "svc.getItem",
            json!({"id": 42, "verbose": true}),
        )
        .await
        .unwrap();
    assert_eq!(
        got.result["structuredContent"],
        json!({"status": 200, "body": {"id": 42, "verbose": "true"}})
    );
    let made = g
        .call(
            &Caller::Operator,
            "svc.createItem",
            json!({"body": {"name": "bolt", "qty": 3}}),
        )
        .await
        .unwrap();
    assert_eq!(made.result["structuredContent"]["status"], 201);
    assert_eq!(
        made.result["structuredContent"]["body"]["created"]["name"],
        "bolt"
    );
    assert_eq!(svc.calls.get(), 2);
}

async fn a_4xx_answer_is_a_tool_error_not_a_gateway_failure(b: Backend) {
    let g = Gateway::new(b).await;
    g.secret("API_KEY", "wrong-key").await;
    let svc = service("right-key").await;
    g.connect(openapi_connection("svc", &svc, json!({}))).await;
    let out = g
        .call(&Caller::Operator, "svc.getItem", json!({"id": 1}))
        .await
        .unwrap();
    assert!(out.is_error);
    assert_eq!(out.result["structuredContent"]["status"], 401);
    g.tools.flush_log().await;
    let log = g.tools.list_calls(&Default::default()).await.unwrap();
    assert_eq!(log.items[0].status, "tool_error");
}

async fn a_document_can_be_fetched_from_a_url(b: Backend) {
    let g = Gateway::new(b).await;
    g.secret("API_KEY", "k-123456").await;
    let svc = service("k-123456").await;
    // Serve the document itself from a second tiny server.
    let doc = service_document(&format!("{}/api", svc.base));
    let app = axum::Router::new().route("/openapi.yaml", axum::routing::get(move || async move { doc }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    g.connect(json!({"name": "fetched", "upstream": {"kind": "openapi",
        "document_url": format!("http://{addr}/openapi.yaml"),
        "headers": {"x-api-key": {"secret": "API_KEY"}}}}))
        .await;
    let out = g
        .call(&Caller::Operator, "fetched.getItem", json!({"id": 5}))
        .await
        .unwrap();
    assert_eq!(out.result["structuredContent"]["body"]["id"], 5);
}

async fn bad_connection_definitions_are_refused(b: Backend) {
    let g = Gateway::new(b).await;
    let cases = [
        json!({"name": "Bad Name", "upstream": {"kind": "openapi", "document": {"openapi": "3.0.0", "paths": {}}, "base_url": "http://x"}}),
        json!({"name": "a", "upstream": {"kind": "openapi", "document": {"swagger": "2.0"}, "base_url": "http://x"}}),
        json!({"name": "a", "upstream": {"kind": "openapi", "document": {"openapi": "3.0.0", "paths": {}}}}),
        json!({"name": "a", "upstream": {"kind": "openapi", "document": "{ not yaml: [", "base_url": "http://x"}}),
        json!({"name": "a", "upstream": {"kind": "mcp_http", "url": "file:///etc/passwd"}}),
        json!({"name": "a", "upstream": {"kind": "mcp_stdio", "command": "x", "env": {"K": {"secret": "MISSING"}}}}),
        json!({"name": "a", "upstream": {"kind": "mcp_stdio", "command": "x", "env": {"K": "${secret:unclosed"}}}),
    ];
    for c in cases {
        let spec = serde_json::from_value(c.clone()).unwrap();
        let e = g.tools.add_connection(spec).await.unwrap_err();
        assert!(
            matches!(
                e.code,
                ErrorCode::InvalidConnection | ErrorCode::InvalidRequest | ErrorCode::UnknownSecret
            ),
            "{c}: {e}"
        );
    }
    assert!(g.tools.list_connections().is_empty());
    g.secret("S", "value-1234").await;
    let svc = service("x").await;
    g.connect(openapi_connection(
        "svc",
        &svc,
        json!({"headers": {"x-api-key": {"secret": "S"}}}),
    ))
    .await;
    let e = g.tools.remove_secret("S").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::SecretInUse);
    let dup = serde_json::from_value(openapi_connection("svc", &svc, json!({"headers": {}}))).unwrap();
    assert_eq!(
        g.tools.add_connection(dup).await.unwrap_err().code,
        ErrorCode::Conflict
    );
}

on_both_backends!(
    each_operation_is_a_tool_called_with_path_query_and_body,
    a_4xx_answer_is_a_tool_error_not_a_gateway_failure,
    a_document_can_be_fetched_from_a_url,
    bad_connection_definitions_are_refused,
);
