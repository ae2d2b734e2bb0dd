//! Governance (L7): the rules every syscall passes through, as data in the store.
//!
//! - [`audit`]: the append-only, hash-chained audit log and its verifier.
//! - [`idempotency`]: stored responses keyed by `Idempotency-Key`, for exactly-once effects.
//! - [`intent`]: intents recorded before external side effects, outcomes after.
//! - [`policy`]: the authorization decision for a principal and a syscall.
//!
//! This crate owns the `gov_` tables. It knows nothing of HTTP and calls no layer.

pub mod audit;
pub mod idempotency;
pub mod intent;
pub mod policy;

pub use audit::{AuditDraft, AuditEntry, Verification};
pub use policy::{Policy, ScopePolicy};

use strata_store::Migration;

/// The governance tables.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        layer: "governance",
        version: 1,
        name: "audit chain, idempotency records, intents",
        sqlite: SCHEMA,
        postgres: SCHEMA,
    },
    Migration {
        layer: "governance",
        version: 2,
        name: "intents name the server running them; servers' liveness",
        sqlite: INSTANCES,
        postgres: INSTANCES,
    },
    Migration {
        layer: "governance",
        version: 3,
        name: "fewer index pages per write: only pending intents indexed; the audit's seq is SQLite's rowid",
        sqlite: LEANER_SQLITE,
        postgres: LEANER_POSTGRES,
    },
];

const INSTANCES: &str = "
ALTER TABLE gov_intents ADD COLUMN instance TEXT;
CREATE TABLE gov_instances (
    id TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
";

/// Every write touches the last page of each index it changes, and each such
/// page is another frame in the commit's WAL write: a finished intent leaves
/// the pending index rather than moving to a "done" corner of it, and the
/// audit's `seq` (a plain `BIGINT PRIMARY KEY` on SQLite, so a second B-tree)
/// becomes the table's own key.
const LEANER_POSTGRES: &str = "
DROP INDEX gov_intents_pending;
CREATE INDEX gov_intents_pending ON gov_intents (created_at) WHERE state = 'pending';
";

const LEANER_SQLITE: &str = "
DROP INDEX gov_intents_pending;
CREATE INDEX gov_intents_pending ON gov_intents (created_at) WHERE state = 'pending';
CREATE TABLE gov_audit_v3 (
    seq INTEGER PRIMARY KEY,
    at BIGINT NOT NULL,
    principal TEXT NOT NULL,
    syscall TEXT NOT NULL,
    resource TEXT NOT NULL,
    intent_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    status BIGINT NOT NULL,
    request_digest TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO gov_audit_v3 SELECT seq, at, principal, syscall, resource, intent_id, outcome, status, request_digest, prev_hash, hash FROM gov_audit;
DROP TABLE gov_audit;
ALTER TABLE gov_audit_v3 RENAME TO gov_audit;
";

const SCHEMA: &str = "
CREATE TABLE gov_audit (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    principal TEXT NOT NULL,
    syscall TEXT NOT NULL,
    resource TEXT NOT NULL,
    intent_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    status BIGINT NOT NULL,
    request_digest TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE gov_audit_head (
    id BIGINT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE gov_idempotency (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    syscall TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status BIGINT NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE TABLE gov_intents (
    id TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    syscall TEXT NOT NULL,
    request_digest TEXT NOT NULL,
    state TEXT NOT NULL,
    outcome TEXT,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX gov_intents_pending ON gov_intents (state, created_at);
";

/// A SHA-256 digest in lowercase hex.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}
