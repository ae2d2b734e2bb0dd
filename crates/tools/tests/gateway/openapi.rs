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
    assert!(!create.idempotent && !create.read_only);
    assert_eq!(create.input_schema["required"], json!(["body"]));
    let get = tools.iter().find(|t| t.name == "svc.getItem").unwrap();
    assert!(get.idempotent && get.read_only, "GET is read-only: {get:?}");
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

/// An HTTPS server on loopback with a self-signed certificate (made with the
/// `openssl` CLI), serving `openapi.yaml` from a folder; killed on drop.
struct SelfSigned {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for SelfSigned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn self_signed_https(document: &str) -> SelfSigned {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("openapi.yaml"), document).unwrap();
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args([
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ])
        .current_dir(dir.path())
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let port = super::harness::free_port();
    let script = format!(
        "import http.server, ssl\n\
         s = http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler)\n\
         c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
         c.load_cert_chain('cert.pem', 'key.pem')\n\
         s.socket = c.wrap_socket(s.socket, server_side=True)\n\
         s.serve_forever()\n"
    );
    let child = std::process::Command::new("python3")
        .args(["-c", &script])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 runs");
    super::harness::wait_for_port(port).await;
    SelfSigned {
        child,
        port,
        _dir: dir,
    }
}

#[tokio::test]
async fn https_upstreams_are_spoken_to_with_tls_and_an_untrusted_certificate_is_refused() {
    // The gateway speaks TLS (an HTTPS document URL is fetched, not refused as
    // an unknown scheme) and verifies certificates against the system's roots:
    // a self-signed one is a clear upstream failure naming the certificate.
    let g = Gateway::new(Backend::Sqlite).await;
    let https = self_signed_https(&service_document("https://127.0.0.1:1/api")).await;
    let spec = serde_json::from_value(json!({"name": "tls", "upstream": {"kind": "openapi",
        "document_url": format!("https://127.0.0.1:{}/openapi.yaml", https.port)}}))
    .unwrap();
    let e = g.tools.add_connection(spec).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::UpstreamFailed, "{e}");
    assert!(
        e.detail.to_lowercase().contains("certificate"),
        "the error names the certificate problem: {e}"
    );
    assert!(g.tools.list_connections().is_empty());
}
