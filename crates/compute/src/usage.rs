//! Stored usage: one record per run and per exec, for the ledger to price.
//!
//! Every outcome [`Compute::run`], [`Compute::exec`] and
//! [`Compute::exec_stream`] return is queued for `cmp_usage` before it is
//! handed back: wall and CPU time, peak memory, and the agent, task and
//! sandbox it is attributed to. The reply does not wait for that commit: the
//! store commits in queue order, so the kernel's outcome write for the call,
//! queued after it, is never durable before the record is — an acknowledged
//! run always has its usage — and [`Compute::usage`] waits for the records
//! queued before it, so a caller reads its own runs. A record that cannot be
//! written is logged and the outcome still returned — the command has run,
//! and failing the call would only invite a retry that runs it again.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use strata_core::{Error, Id, Result};
use tokio::sync::watch;

use crate::exec::{RunOutcome, Status};
use crate::{Compute, repo};

/// What a run or exec used, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UsageRecord {
    /// `use_…`.
    pub id: String,
    /// `run` (ephemeral) or `exec` (in a persistent sandbox).
    pub kind: String,
    /// How the command ended (`exited`, `timeout`, `oom`, `killed`, `exec_failed`).
    pub status: String,
    /// The agent charged (none for an operator).
    pub agent_id: Option<String>,
    /// The task charged.
    pub task_id: Option<String>,
    /// The persistent sandbox, for an exec.
    pub sandbox_id: Option<String>,
    /// Wall-clock time, ms.
    pub wall_ms: u64,
    /// CPU time of all its processes, ms.
    pub cpu_ms: u64,
    /// Peak memory, bytes.
    pub peak_memory_bytes: u64,
    /// When it ended (RFC 3339).
    pub at: String,
}

/// Which records to read; unset fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageFilter {
    /// Only this agent's.
    pub agent: Option<String>,
    /// Only this task's.
    pub task: Option<String>,
    /// Only this sandbox's.
    pub sandbox: Option<String>,
}

/// Sums over every record a filter matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UsageTotals {
    /// How many records.
    pub records: u64,
    /// Wall-clock time, ms, summed.
    pub wall_ms: u64,
    /// CPU time, ms, summed.
    pub cpu_ms: u64,
    /// The highest peak memory of any one record, bytes.
    pub peak_memory_bytes: u64,
}

/// A page of usage records and the totals of all that match.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct UsagePage {
    /// The records, oldest first.
    pub items: Vec<UsageRecord>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Over every matching record, not only this page.
    pub totals: UsageTotals,
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Exited => "exited",
        Status::Timeout => "timeout",
        Status::Oom => "oom",
        Status::Killed => "killed",
        Status::ExecFailed => "exec_failed",
    }
}

/// The usage writes queued so far, and how many of them have settled
/// (committed or failed), so that [`Compute::usage`] reads its own writes.
pub(crate) struct Queue {
    /// Held while a record is numbered and queued, so numbers follow queue order.
    next: tokio::sync::Mutex<u64>,
    settled: watch::Sender<u64>,
}

impl Default for Queue {
    fn default() -> Queue {
        Queue {
            next: tokio::sync::Mutex::new(0),
            settled: watch::Sender::new(0),
        }
    }
}

impl Compute {
    /// Queues the usage record of `out` (`kind`: `run`, `exec` or `service`)
    /// and returns once it is queued, with a future that resolves when it has
    /// committed. The reply need not wait for it: the store commits writes in
    /// queue order, so the kernel's outcome write for the same call, queued
    /// later, commits with it or after it.
    pub(crate) async fn queue_usage(
        &self,
        kind: &'static str,
        out: &RunOutcome,
    ) -> impl Future<Output = ()> + Send + 'static {
        let u = &out.usage;
        let record = UsageRecord {
            id: Id::new("use").to_string(),
            kind: kind.to_string(),
            status: status_name(out.status).to_string(),
            agent_id: u.agent_id.clone(),
            task_id: u.task_id.clone(),
            sandbox_id: u.sandbox_id.clone(),
            wall_ms: u.wall_ms,
            cpu_ms: u.cpu_ms,
            peak_memory_bytes: u.peak_memory_bytes,
            at: String::new(),
        };
        let agent = u.agent_id.clone();
        let inner = self.inner.clone();
        let mut next = inner.usage_queue.next.lock().await;
        *next += 1;
        let seq = *next;
        let queued = repo::queue_usage(&inner.store, record, self.now()).await;
        drop(next);
        async move {
            let stored = match queued {
                Ok(q) => q.await,
                Err(e) => Err(e),
            };
            if let Err(e) = stored {
                tracing::error!(%e, kind, ?agent, "storing a sandbox's usage failed");
            }
            // Writes settle in queue order, so every record numbered before
            // this one has settled too.
            inner.usage_queue.settled.send_modify(|s| *s = (*s).max(seq));
        }
    }

    /// Queues the usage of `out` and waits until it has committed.
    pub(crate) async fn store_usage(&self, kind: &'static str, out: &RunOutcome) {
        self.queue_usage(kind, out).await.await;
    }

    /// Waits until every usage record queued before this call has settled.
    async fn usage_settled(&self) {
        let q = &self.inner.usage_queue;
        let target = *q.next.lock().await;
        let mut settled = q.settled.subscribe();
        let _ = settled.wait_for(|s| *s >= target).await;
    }

    /// Usage records matching `filter`, `limit` (1–500) at a time after the
    /// cursor `after`, with the totals of all that match.
    pub async fn usage(&self, filter: &UsageFilter, after: Option<&str>, limit: u32) -> Result<UsagePage> {
        if let Some(a) = after
            && Id::parse("use", a).is_err()
        {
            return Err(Error::invalid("after", format!("'{a}' is not a use_… id")));
        }
        let limit = i64::from(limit.clamp(1, 500));
        self.usage_settled().await;
        let store = &self.inner.store;
        let items = repo::usage(store, filter, after, limit).await?;
        let (items, next) = strata_core::page::split(items, limit, |r| r.id.clone());
        let totals = repo::usage_totals(store, filter).await?;
        Ok(UsagePage { items, next, totals })
    }
}
