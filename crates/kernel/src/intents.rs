//! Recovery of effects cut off by a crash.
//!
//! Every external effect's intent names this server's instance (an id made at
//! start). The instance keeps its liveness row fresh: with an intent it begins
//! once the row is a third of [`INSTANCE_TTL_MS`] old, and from the background
//! loop every 2 s. Any server's
//! recovery round finishes, as `interrupted`, the pending intents of instances
//! no longer alive, and audits each as `intent.interrupted` (with an event), so
//! an operator sees which effects may or may not have happened. A caller that
//! retries such a call with its idempotency key runs it again (no answer was
//! stored), which makes those effects at-least-once.

use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::json;
use strata_core::{Id, Result};
use strata_governance::intent::{self, Pending};

use crate::Kernel;
use crate::background::record_system;

/// How long an instance counts as alive after its last sign of life.
pub(crate) const INSTANCE_TTL_MS: i64 = 10_000;

/// Intents interrupted per recovery round.
const BATCH: i64 = 500;

/// This server's instance and when its liveness was last written.
pub(crate) struct Instance {
    pub(crate) id: String,
    renewed_at: AtomicI64,
}

impl Default for Instance {
    fn default() -> Instance {
        Instance {
            id: Id::new("srv").to_string(),
            renewed_at: AtomicI64::new(i64::MIN),
        }
    }
}

impl Instance {
    /// Whether the liveness row should be rewritten at `now`.
    pub(crate) fn stale(&self, now: i64) -> bool {
        now.saturating_sub(self.renewed_at.load(Ordering::Relaxed)) > INSTANCE_TTL_MS / 3
    }

    /// Notes that the liveness row was written at `now`.
    pub(crate) fn renewed(&self, now: i64) {
        self.renewed_at.fetch_max(now, Ordering::Relaxed);
    }
}

impl Kernel {
    /// One recovery round: renews this instance's liveness, then finishes as
    /// `interrupted` (and audits) the pending intents of dead instances.
    pub async fn recover_intents(&self) -> Result<Vec<Pending>> {
        let now = self.now_ms();
        let instance = self.inner.instance.id.clone();
        let orphans = self
            .store()
            .write(move |c| {
                Box::pin(async move {
                    intent::keep_alive(c, &instance, now, INSTANCE_TTL_MS).await?;
                    let orphans = intent::interrupt_orphans(c, now, BATCH).await?;
                    for o in &orphans {
                        strata_governance::idempotency::release_intent(c, &o.id).await?;
                        let data = json!({"syscall": o.syscall, "by": o.principal, "created_at": o.created_at,
                            "outcome": intent::INTERRUPTED});
                        record_system(c, now, "intent.interrupted", &o.id, data).await?;
                    }
                    Ok::<_, strata_core::Error>(orphans)
                })
            })
            .await?;
        self.inner.instance.renewed(now);
        if !orphans.is_empty() {
            tracing::warn!(
                intents = ?orphans.iter().map(|o| format!("{} {}", o.syscall, o.id)).collect::<Vec<_>>(),
                "effects cut off by a server that stopped are marked interrupted; they may or may not have happened"
            );
        }
        Ok(orphans)
    }
}
