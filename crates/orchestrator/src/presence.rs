//! Presence: when each agent last called Strata, for health and liveness.
//!
//! Every authenticated call by an agent counts as a heartbeat: the kernel marks
//! the agent present while the call runs (a long-poll for work keeps it present)
//! and records when it ended. Presence is kept in memory by the replica that
//! served the calls; after a restart an agent is `offline` until it calls again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use strata_core::time::Clock;

/// When agents were last seen.
#[derive(Clone)]
pub struct Presence {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    clock: Arc<dyn Clock>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    last_ms: i64,
    in_calls: u32,
}

/// Marks an agent present until dropped.
pub struct InCall {
    presence: Presence,
    agent: String,
}

impl Presence {
    /// Presence measured with `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Presence {
        Presence {
            seen: Arc::new(Mutex::new(HashMap::new())),
            clock,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Seen>) -> R) -> R {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut seen)
    }

    /// `agent` is calling now; it stays present until the guard drops.
    pub fn enter(&self, agent: &str) -> InCall {
        let now = self.clock.now_ms();
        self.with(|m| {
            let s = m.entry(agent.to_string()).or_default();
            s.last_ms = now;
            s.in_calls += 1;
        });
        InCall {
            presence: self.clone(),
            agent: agent.to_string(),
        }
    }

    /// How long since `agent` was last seen, in ms: 0 while it has a call in
    /// progress, `None` if never seen by this replica.
    pub fn silent_for(&self, agent: &str) -> Option<i64> {
        let now = self.clock.now_ms();
        self.with(|m| {
            m.get(agent).map(|s| {
                if s.in_calls > 0 {
                    0
                } else {
                    (now - s.last_ms).max(0)
                }
            })
        })
    }

    /// Forgets `agent` (a replica restarted under the same agent starts afresh).
    pub fn forget(&self, agent: &str) {
        self.with(|m| m.remove(agent));
    }
}

impl Drop for InCall {
    fn drop(&mut self) {
        let now = self.presence.clock.now_ms();
        self.presence.with(|m| {
            if let Some(s) = m.get_mut(&self.agent) {
                s.last_ms = now;
                s.in_calls = s.in_calls.saturating_sub(1);
            }
        });
    }
}
