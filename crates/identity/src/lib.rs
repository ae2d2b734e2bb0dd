//! Identity (L2): who the agents are and how they prove it.
//!
//! - [`agent`]: agents with an Ed25519 key pair (published as a `did:key`), a
//!   capability manifest and labels.
//! - [`token`]: bearer tokens — scoped, expiring, revocable, stored only as hashes.
//!
//! The service prepares everything that needs randomness or CPU (keys, tokens)
//! outside the store's writer, then writes with plain SQL inside it. Tables carry
//! the `id_` prefix.

pub mod agent;
pub mod did;
pub mod token;

pub use agent::{Agent, AgentCreated, Capability, NewAgent};
pub use token::{NewToken, TokenCreated, TokenInfo};

use std::sync::Arc;

use strata_core::{Clock, MasterKey};
use strata_store::{Migration, Store};

/// The identity layer's service.
#[derive(Clone)]
pub struct Identity {
    store: Store,
    clock: Arc<dyn Clock>,
    master_key: MasterKey,
}

impl Identity {
    /// A service over `store` that seals private keys with `master_key`.
    pub fn new(store: Store, clock: Arc<dyn Clock>, master_key: MasterKey) -> Identity {
        Identity {
            store,
            clock,
            master_key,
        }
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }
}

/// A page of results and the cursor for the next one.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct Page<T> {
    /// The items, oldest first.
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The identity tables.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        layer: "identity",
        version: 1,
        name: "agents and tokens",
        sqlite: SCHEMA,
        postgres: SCHEMA,
    },
    Migration {
        layer: "identity",
        version: 2,
        name: "capability index",
        sqlite: CAPABILITIES,
        postgres: CAPABILITIES,
    },
    Migration {
        layer: "identity",
        version: 3,
        name: "capability concurrency",
        sqlite: "ALTER TABLE id_capabilities ADD COLUMN max_concurrent BIGINT NOT NULL DEFAULT 1",
        postgres: "ALTER TABLE id_capabilities ADD COLUMN max_concurrent BIGINT NOT NULL DEFAULT 1",
    },
];

/// One row per live agent and capability, so routing finds capable agents by name.
const CAPABILITIES: &str = "
CREATE TABLE id_capabilities (
    agent_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    input_schema TEXT NOT NULL,
    output_schema TEXT NOT NULL,
    PRIMARY KEY (agent_id, name)
);
CREATE INDEX id_capabilities_name ON id_capabilities (name);
";

const SCHEMA: &str = "
CREATE TABLE id_agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    did TEXT NOT NULL,
    public_key TEXT NOT NULL,
    sealed_private_key TEXT,
    capabilities TEXT NOT NULL,
    labels TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE UNIQUE INDEX id_agents_live_name ON id_agents (name) WHERE deleted_at IS NULL;
CREATE TABLE id_tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    agent_id TEXT,
    admin BIGINT NOT NULL,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX id_tokens_agent ON id_tokens (agent_id);
";

fn db(e: sqlx::Error) -> strata_core::Error {
    strata_store::Error::from(e).into()
}
