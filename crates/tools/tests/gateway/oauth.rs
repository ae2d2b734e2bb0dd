//! OAuth 2 access tokens, against a token endpoint in the test service.

use std::time::Duration;

use serde_json::json;
use strata_core::ErrorCode;
use strata_store::Backend;
use strata_tools::Caller;

use super::harness::{Gateway, openapi_connection, service};
use crate::on_both_backends;

async fn client_credentials_tokens_are_cached_and_refreshed_before_expiry(b: Backend) {
    let g = Gateway::new(b).await;
    g.secret("API_KEY", "client-secret-1").await;
    let svc = service("client-secret-1").await;
    let mut spec = openapi_connection("svc", &svc, json!({}));
    spec["auth"] = json!({"flow": "client_credentials", "token_url": format!("{}/oauth/token", svc.base),
                          "client_id": "cid", "client_secret": {"secret": "API_KEY"}, "scope": "read"});
    g.connect(spec).await;
    let me = Caller::Operator;
    let out = g.call(&me, "svc.secure", json!({})).await.unwrap();
    assert_eq!(out.result["structuredContent"]["status"], 200, "{}", out.result);
    g.call(&me, "svc.secure", json!({})).await.unwrap();
    assert_eq!(
        svc.state.lock().unwrap().token_requests,
        1,
        "the token is reused while fresh"
    );
    // expires_in is 60 s; within 30 s of expiry a new one is fetched.
    g.clock.advance(Duration::from_secs(31));
    let out = g.call(&me, "svc.secure", json!({})).await.unwrap();
    assert_eq!(out.result["structuredContent"]["status"], 200);
    let tokens = {
        let st = svc.state.lock().unwrap();
        assert_eq!(st.token_requests, 2);
        assert_eq!(st.last_grant_type, "client_credentials");
        st.tokens_issued.clone()
    };
    let log = g.log_text().await;
    for t in tokens {
        assert!(!log.contains(&t));
        assert!(!out.result.to_string().contains(&t));
    }
}

async fn a_rotated_refresh_token_is_kept_in_the_vault(b: Backend) {
    let g = Gateway::new(b).await;
    g.secret("API_KEY", "k-123456").await;
    g.secret("RT", "rt-0").await;
    let svc = service("k-123456").await;
    let mut spec = openapi_connection("svc", &svc, json!({}));
    spec["auth"] = json!({"flow": "refresh_token", "token_url": format!("{}/oauth/token", svc.base),
                          "client_id": "cid", "refresh_token": "RT"});
    g.connect(spec).await;
    let me = Caller::Operator;
    assert_eq!(
        g.call(&me, "svc.secure", json!({})).await.unwrap().result["structuredContent"]["status"],
        200
    );
    let rt = g
        .tools
        .list_secrets()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == "RT")
        .unwrap();
    assert_eq!(rt.version, 2, "the rotated refresh token was stored");
    g.clock.advance(Duration::from_secs(40));
    // The endpoint only accepts the rotated token now.
    assert_eq!(
        g.call(&me, "svc.secure", json!({})).await.unwrap().result["structuredContent"]["status"],
        200
    );
    assert_eq!(svc.state.lock().unwrap().token_requests, 2);
}

async fn a_refused_token_request_is_a_clear_error_without_the_secret(b: Backend) {
    let g = Gateway::new(b).await;
    g.secret("API_KEY", "wrong-client-secret").await;
    let svc = service("right").await;
    let mut spec = openapi_connection("svc", &svc, json!({}));
    spec["auth"] = json!({"flow": "client_credentials", "token_url": format!("{}/oauth/token", svc.base),
                          "client_id": "cid", "client_secret": {"secret": "API_KEY"}});
    g.connect(spec).await;
    let e = g
        .call(&Caller::Operator, "svc.secure", json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.error.code, ErrorCode::UpstreamFailed);
    assert!(e.error.detail.contains("invalid_grant"), "{e}");
    assert!(!e.to_string().contains("wrong-client-secret"), "{e}");
    assert!(!g.log_text().await.contains("wrong-client-secret"));
    assert_eq!(svc.calls.get(), 0);
}

on_both_backends!(
    client_credentials_tokens_are_cached_and_refreshed_before_expiry,
    a_rotated_refresh_token_is_kept_in_the_vault,
    a_refused_token_request_is_a_clear_error_without_the_secret,
);
