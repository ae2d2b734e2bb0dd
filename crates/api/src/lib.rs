//! Strata's HTTP adapter: a thin map from HTTP to kernel calls.
//!
//! Routes are not written by hand: [`router`] walks the kernel's registry and
//! serves each syscall at its declared method and path, turning path parameters,
//! the query string and the JSON body into one request object. Errors leave as
//! RFC 9457 `application/problem+json` with the kernel's stable `code`. Beside the
//! syscalls it serves `/healthz`, `/readyz`, `/metrics`, `/openapi.json` and the
//! SSE form of `/v1/events`, and the Mem0-compatible memory API under
//! `/compat/mem0`.

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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// The whole HTTP surface over `kernel`.
pub fn router(kernel: Kernel, options: Options) -> Router {
    route::syscalls(&kernel, &options)
        .merge(ops::router())
        .merge(mem0::router())
        .method_not_allowed_fallback(route::wrong_method)
        .fallback(route::no_route)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            problem::panicked,
        ))
        .with_state(route::AppState::new(kernel, options))
}
