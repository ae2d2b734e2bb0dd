//! Orchestration (L6): work given to agents, guaranteed to finish or to fail visibly.
//!
//! - [`task`]: tasks — a capability, an input validated against the capability's
//!   schema, a priority, a deadline, a retry policy — and their attempt history.
//! - [`lease`]: agents lease tasks they are capable of (highest priority, then
//!   oldest), heartbeat, complete with a schema-checked result, or fail.
//! - [`retry`]: exponential backoff with jitter between attempts.
//! - [`discovery`]: capable agents ranked by success rate, load and trust.
//! - [`dispatch`]: waiting leases, woken best-ranked first when work arrives.
//! - [`fleet`]: the desired state of managed agents (the kernel reconciles it).
//! - [`leader`]: which server of several runs a once-per-cluster loop.
//! - [`presence`]: when each agent last called, for health and liveness.
//! - [`breaker`]: an agent whose attempts keep failing gets no tasks for a while.
//! - [`supervise`]: what happens when a task dies — reassignment, or an
//!   escalation to a supervisor agent or to operators — and its resolution.
//! - [`sweep`]: expired leases requeue their task (at-least-once); exhausted
//!   tasks go to the dead-letter state; tasks past their deadline fail.
//!
//! Like every layer, this crate prepares outside the store's writer and runs only
//! SQL inside it; the kernel wraps each change with its audit entry. Tables carry
//! the `orc_` prefix.

pub mod breaker;
pub mod discovery;
pub mod dispatch;
pub mod fleet;
pub mod leader;
pub mod lease;
pub mod presence;
pub mod retry;
pub mod supervise;
pub mod sweep;
pub mod task;

pub use lease::{LeaseRequest, Leased};
pub use task::{NewTask, Task, TaskState};

use std::sync::Arc;

use strata_core::time::Clock;
use strata_identity::Identity;
use strata_store::{Migration, Store};

/// Tunables of the orchestrator.
#[derive(Debug, Clone)]
pub struct Config {
    /// Lease length when the agent does not ask for one.
    pub default_lease_ms: i64,
    /// The longest lease an agent may ask for.
    pub max_lease_ms: i64,
    /// How long a task pinned to an agent waits before any capable agent may steal
    /// it (when the task is `stealable`).
    pub steal_after_ms: i64,
    /// Consecutive failed or expired attempts that open an agent's circuit breaker.
    pub breaker_failures: i64,
    /// How long an open breaker keeps tasks away from the agent, from its last failure.
    pub breaker_cooldown_ms: i64,
    /// Silence after which discovery reports an agent `offline` (or `stuck`
    /// when it still holds leases).
    pub offline_after_ms: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_lease_ms: 30_000,
            max_lease_ms: 600_000,
            steal_after_ms: 5_000,
            breaker_failures: 5,
            breaker_cooldown_ms: 30_000,
            offline_after_ms: 10_000,
        }
    }
}

/// The orchestration service.
#[derive(Clone)]
pub struct Orchestrator {
    store: Store,
    identity: Identity,
    config: Config,
    presence: presence::Presence,
    dispatcher: dispatch::Dispatcher,
}

impl Orchestrator {
    /// A service over `store`, routing by the capabilities `identity` knows,
    /// measuring presence with `clock`.
    pub fn new(store: Store, identity: Identity, config: Config, clock: Arc<dyn Clock>) -> Orchestrator {
        Orchestrator {
            dispatcher: dispatch::Dispatcher::new(store.followers().clone()),
            store,
            identity,
            config,
            presence: presence::Presence::new(clock),
        }
    }

    /// When agents were last seen.
    pub fn presence(&self) -> &presence::Presence {
        &self.presence
    }

    /// The leases waiting for work.
    pub fn dispatcher(&self) -> &dispatch::Dispatcher {
        &self.dispatcher
    }

    /// Refreshes the dispatcher's ranking of the agents able to do what some
    /// lease waits for (from discovery's scores).
    pub async fn rank_waiters(&self, now: i64) -> strata_core::Result<()> {
        for cap in self.dispatcher.wanted() {
            let ranking = self.discover(&cap, now).await?;
            self.dispatcher
                .set_scores(&cap, ranking.agents.into_iter().map(|a| (a.agent_id, a.score)));
        }
        Ok(())
    }

    /// Its tunables.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

fn db(e: sqlx::Error) -> strata_core::Error {
    strata_store::Error::from(e).into()
}

/// The orchestrator's tables.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        layer: "orchestrator",
        version: 1,
        name: "tasks and attempts",
        sqlite: SCHEMA,
        postgres: SCHEMA,
    },
    Migration {
        layer: "orchestrator",
        version: 2,
        name: "attempts by agent",
        sqlite: "CREATE INDEX orc_attempts_agent ON orc_attempts (agent_id, ended_at)",
        postgres: "CREATE INDEX orc_attempts_agent ON orc_attempts (agent_id, ended_at)",
    },
    Migration {
        layer: "orchestrator",
        version: 3,
        name: "supervision and escalations",
        sqlite: supervise::SCHEMA,
        postgres: supervise::SCHEMA,
    },
    Migration {
        layer: "orchestrator",
        version: 4,
        name: "managed agents",
        sqlite: fleet::SCHEMA,
        postgres: fleet::SCHEMA,
    },
    Migration {
        layer: "orchestrator",
        version: 5,
        name: "ready tasks in lease order",
        sqlite: READY_INDEX,
        postgres: READY_INDEX,
    },
    Migration {
        layer: "orchestrator",
        version: 6,
        name: "supervision per agent group",
        sqlite: supervise::GROUPS_SCHEMA,
        postgres: supervise::GROUPS_SCHEMA,
    },
    Migration {
        layer: "orchestrator",
        version: 7,
        name: "leaders",
        sqlite: leader::SCHEMA,
        postgres: leader::SCHEMA,
    },
];

/// Lets a lease read the ready tasks of a capability already in lease order and
/// stop at its limit, instead of sorting the whole queue on every lease. It
/// serves every query the older queue index served, which goes.
const READY_INDEX: &str = "
CREATE INDEX orc_tasks_ready ON orc_tasks (state, capability, priority DESC, created_at, id);
DROP INDEX orc_tasks_queue;
";

const SCHEMA: &str = "
CREATE TABLE orc_tasks (
    id TEXT PRIMARY KEY,
    capability TEXT NOT NULL,
    input TEXT NOT NULL,
    priority BIGINT NOT NULL,
    state TEXT NOT NULL,
    pinned_agent TEXT,
    stealable BIGINT NOT NULL,
    lease_id TEXT,
    lease_agent TEXT,
    lease_expires_at BIGINT,
    attempts BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    backoff_initial_ms BIGINT NOT NULL,
    backoff_max_ms BIGINT NOT NULL,
    not_before BIGINT NOT NULL,
    deadline BIGINT,
    labels TEXT NOT NULL,
    parent TEXT,
    submitted_by TEXT NOT NULL,
    result TEXT,
    error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX orc_tasks_queue ON orc_tasks (state, capability, priority, created_at);
CREATE INDEX orc_tasks_leases ON orc_tasks (state, lease_expires_at);
CREATE TABLE orc_attempts (
    task_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    agent_id TEXT NOT NULL,
    lease_id TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    outcome TEXT,
    error TEXT,
    PRIMARY KEY (task_id, attempt)
);
";
