//! In-process tests of the HTTP API: the Router is driven with `oneshot`, no socket.

mod api {
    pub(crate) mod harness;

    mod agents;
    mod audit;
    mod auth;
    mod errors;
    mod escalations;
    mod events;
    mod fuzz;
    mod idempotency;
    mod mcp;
    mod memories;
    mod ops;
    mod sandboxes;
    mod tasks;
    mod tools;
}

pub(crate) use api::harness;
