//! Operational endpoints: liveness, readiness, metrics, the OpenAPI document.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use strata_core::{Error, ErrorCode};

use crate::problem::problem_response;
use crate::route::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
}

async fn ready(State(s): State<AppState>) -> Response {
    match s.kernel.store().ping().await {
        Ok(()) => axum::Json(serde_json::json!({"status": "ready"})).into_response(),
        Err(e) => problem_response(&Error::new(
            ErrorCode::Unavailable,
            format!("the store is not reachable: {e}"),
        )),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.kernel.metrics().render(),
    )
        .into_response()
}

async fn openapi(State(s): State<AppState>) -> Response {
    axum::Json(crate::openapi::document(&s.kernel)).into_response()
}
