//! The store suite: every scenario runs against embedded SQLite and PostgreSQL.
//!
//! PostgreSQL is the server named by `STRATA_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/test`); each test gets its own schema.

#![allow(clippy::unwrap_used)]

mod suite {
    pub(crate) mod harness;
    mod identity;
    mod integrity;
    mod leader;
    mod store;
    mod supervision;
    mod tasks;
}
