//! The compute suite: real sandboxes on this host, attacks against them, and
//! the persistent-sandbox metadata on SQLite and PostgreSQL.
//!
//! Needs root, user namespaces and the cgroup v1 controllers (as on the CI
//! machine). PostgreSQL is the server named by `STRATA_TEST_POSTGRES`.

#![allow(clippy::unwrap_used, missing_docs)]

mod suite {
    mod attacks;
    pub(crate) mod harness;
    mod input;
    mod leaks;
    mod persistent;
    mod pool;
    mod run;
    #[cfg(feature = "wasm")]
    mod wasm;
    #[cfg(not(feature = "wasm"))]
    mod without_wasm;
}
