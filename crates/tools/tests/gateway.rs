//! The tools gateway against real upstreams: the reference MCP servers from npm
//! (over stdio and streamable HTTP), an OpenAPI service written for the tests,
//! and deliberately broken upstreams. Store-backed scenarios run on SQLite and
//! on PostgreSQL.
//!
//! The npm servers come from `crates/tools/tests/upstreams` (`npm ci` there; CI
//! does it) or the folder `STRATA_TOOLS_UPSTREAMS` names.

#![allow(clippy::unwrap_used)]

mod gateway {
    pub(crate) mod harness;
    mod limits;
    mod mcp;
    mod oauth;
    mod openapi;
    mod security;
    mod vault;
}
