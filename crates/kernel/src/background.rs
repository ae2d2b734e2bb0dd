//! Work the kernel does on its own: sweeping expired leases and missed deadlines,
//! ranking the agents that wait for work, and stopping idle sandboxes and
//! deleting those past their TTL (once a second; the compute layer keeps its
//! own rows, so those are logged, not audited), and every 2 s renewing this
//! server's liveness and marking interrupted the intents of servers that died
//! (`intents`).
//!
//! Each transition is audited with the `system` principal and published as an
//! event, in the same transaction as the change. On PostgreSQL every replica
//! sweeps; the writer lock serialises them and the sweep's conditions make a
//! repeated sweep a no-op, so no leader is needed for correctness.

use std::time::Duration;

use serde_json::{Value, json};
use strata_core::{Id, Result};
use strata_governance::{AuditDraft, audit};
use strata_orchestrator::TaskState;
use strata_orchestrator::supervise::Supervised;
use strata_orchestrator::sweep::{Swept, sweep};
use strata_store::{Conn, event};

use crate::Kernel;

/// How often the sweeper runs.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// How often idle sandboxes are stopped and expired ones deleted.
const COMPUTE_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Every how many sweeps the dispatcher's ranking of waiting agents is refreshed.
const RANK_EVERY: u64 = 4;

/// Every how many sweeps this instance's liveness is renewed and intents cut
/// off by dead instances are marked interrupted (see `intents`).
const RECOVER_EVERY: u64 = 8;

impl Kernel {
    /// Runs one sweep now and returns what it changed.
    pub async fn sweep_once(&self) -> Result<Vec<Swept>> {
        let now = self.now_ms();
        self.store()
            .write(move |c| {
                Box::pin(async move {
                    let swept = sweep(c, now, 500).await?;
                    for s in &swept {
                        let data = json!({"state": s.state, "reason": s.reason});
                        record_system(c, now, &format!("task.{}", s.reason), &s.task_id, data).await?;
                        if let Some(sup) = &s.supervision {
                            record_supervision(c, now, &s.task_id, sup).await?;
                        }
                    }
                    Ok(swept)
                })
            })
            .await
    }

    /// Starts the background loops; they stop when the store closes.
    pub fn spawn_background(&self) -> tokio::task::JoinHandle<()> {
        if let Ok(compute) = self.compute() {
            // A loop of its own: stopping a sandbox copies its workspace, which
            // must not delay lease expiry.
            let (compute, k) = (compute.clone(), self.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(COMPUTE_SWEEP_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    match compute.sweep(k.now_ms()).await {
                        Ok(r) if !(r.stopped.is_empty() && r.deleted.is_empty()) => tracing::info!(
                            stopped = ?r.stopped,
                            deleted = ?r.deleted,
                            "sandbox sweeper stopped idle sandboxes and deleted expired ones"
                        ),
                        Ok(_) => {}
                        Err(e) if e.code == strata_core::ErrorCode::Unavailable => break,
                        Err(e) => tracing::warn!(error = %e, "sandbox sweep failed"),
                    }
                }
            });
        }
        let k = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for round in 0u64.. {
                tick.tick().await;
                if round % RANK_EVERY == 0
                    && let Err(e) = k.orchestrator().rank_waiters(k.now_ms()).await
                {
                    tracing::warn!(error = %e, "ranking waiting agents failed");
                }
                if round % RECOVER_EVERY == 0
                    && let Err(e) = k.recover_intents().await
                {
                    tracing::warn!(error = %e, "recovering interrupted intents failed");
                }
                match k.sweep_once().await {
                    Ok(swept) if !swept.is_empty() => {
                        if swept
                            .iter()
                            .any(|s| s.state == TaskState::Queued || s.supervision.is_some())
                        {
                            k.orchestrator().dispatcher().ready_any();
                        }
                        tracing::info!(transitions = swept.len(), "sweeper moved tasks")
                    }
                    Ok(_) => {}
                    Err(e) if e.code == strata_core::ErrorCode::Unavailable => break,
                    Err(e) => tracing::warn!(error = %e, "sweep failed"),
                }
            }
        })
    }
}

/// Audits and publishes a transition Strata made on its own, as `system`
/// (inside the writer).
pub(crate) async fn record_system(
    c: &mut Conn,
    now: i64,
    syscall: &str,
    resource: &str,
    mut data: Value,
) -> Result<()> {
    let draft = AuditDraft {
        at: now,
        principal: "system".into(),
        syscall: syscall.to_string(),
        resource: resource.to_string(),
        intent_id: Id::new("int").to_string(),
        outcome: "ok".into(),
        status: 200,
        request_digest: String::new(),
    };
    audit::append(c, &draft).await?;
    data["principal"] = json!("system");
    event::append(c, now, syscall, resource, &data).await?;
    Ok(())
}

/// Audits what supervision did to a task that died: `task.reassigned`,
/// `task.escalated_to_agent` or `task.escalated_to_human` (inside the writer).
pub(crate) async fn record_supervision(c: &mut Conn, now: i64, task_id: &str, s: &Supervised) -> Result<()> {
    let data = serde_json::to_value(s).map_err(strata_core::Error::internal)?;
    record_system(c, now, &format!("task.{}", s.action), task_id, data).await
}
