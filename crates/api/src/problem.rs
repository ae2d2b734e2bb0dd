//! RFC 9457 problem details.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use strata_core::{Error, ErrorCode};

/// The base of every problem `type` URI; the code is appended.
pub(crate) const TYPE_BASE: &str = "https://strata.dev/problems/";

/// A handler panicked: log it and answer 500 as a problem, keeping the server up.
pub(crate) fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    problem_response(&Error::internal("a request handler panicked"))
}

/// The problem document for `e`. Internal details are logged, not sent.
pub(crate) fn problem_body(e: &Error) -> serde_json::Value {
    let detail = if e.code == ErrorCode::Internal {
        tracing::error!(detail = %e.detail, "internal error");
        "an unexpected error occurred; the server log has details".to_string()
    } else {
        e.detail.clone()
    };
    let mut body = serde_json::json!({
        "type": format!("{TYPE_BASE}{}", e.code),
        "title": e.code.title(),
        "status": e.status(),
        "detail": detail,
        "code": e.code.as_str(),
    });
    if let Some(ms) = e.retry_after_ms {
        body["retry_after_ms"] = ms.into();
    }
    body
}

/// Renders `e` as `application/problem+json`. Internal details are logged, not sent.
pub fn problem_response(e: &Error) -> Response {
    let body = problem_body(e);
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, body.to_string()).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(ms) = e.retry_after_ms {
        // Retry-After counts whole seconds; round up so a client never retries early.
        headers.insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000)));
    }
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}
