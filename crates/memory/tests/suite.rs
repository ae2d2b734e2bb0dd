//! The memory layer on both backends: curation decisions, history, time, filters,
//! isolation, bad input, handoffs, and the chat extractor and embeddings client
//! against small local servers.
//!
//! PostgreSQL is the server named by `STRATA_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/test`); each test gets its own schema.

#![allow(clippy::unwrap_used)]

mod suite {
    #[cfg(feature = "bert")]
    mod bert;
    mod chat;
    pub(crate) mod harness;
    mod scenarios;
}
