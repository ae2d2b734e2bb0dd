//! Strata's HTTP adapter: a thin map from HTTP to kernel calls.
//!
//! Routes are not written by hand: [`router`] walks the kernel's registry and
//! serves each syscall at its declared method and path, turning path parameters,
//! the query string and the JSON body into one request object. Errors leave as
//! RFC 9457 `application/problem+json` with the kernel's stable `code`. Beside the
//! syscalls it serves `/healthz`, `/readyz`, `/metrics`, `/openapi.json` and the
//! SSE form of `/v1/events`, `/mcp` (Strata as an MCP server, see the `mcp`
//! module) and the Mem0-compatible memory API under `/compat/mem0`.

mod mcp;
mod mem0;
pub mod openapi;
mod ops;
mod problem;
mod route;
mod sse;

pub use problem::problem_response;

use axum::Router;
use strata_kernel::Kernel;

/// Options of the HTTP adapter.
#[derive(Debug, Clone)]
pub struct Options {
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Cancelled when the server stops, to end the MCP endpoint's open streams
    /// (a graceful shutdown would otherwise wait for them).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Browser origins `/mcp` accepts besides loopback ones (`https://app.example.com:443`,
    /// `http://host:*`); a request with any other `Origin` is refused.
    pub mcp_origins: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_body_bytes: 1024 * 1024,
            shutdown: tokio_util::sync::CancellationToken::new(),
            mcp_origins: Vec::new(),
        }
    }
}

/// The whole HTTP surface over `kernel`.
pub fn router(kernel: Kernel, options: Options) -> Router {
    route::syscalls(&kernel, &options)
        .merge(ops::router())
        .merge(mcp::router(kernel.clone(), &options))
        .merge(mem0::router())
        .method_not_allowed_fallback(route::wrong_method)
        .fallback(route::no_route)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            problem::panicked,
        ))
        .with_state(route::AppState::new(kernel, options))
}
