//! A circuit breaker per connection: after `failures` upstream failures in a
//! row, calls are refused for `cooldown`; then one probe goes through, and its
//! outcome closes the breaker or opens it again.
//!
//! Only upstream failures count (unreachable, timed out, malformed, too large,
//! 5xx) — not a tool reporting an error in its result, nor a call the gateway
//! refused before sending it.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open_until: Option<i64>,
    probing: bool,
}

/// Breakers by connection id.
#[derive(Debug, Default)]
pub(crate) struct Breakers {
    states: Mutex<HashMap<String, State>>,
}

impl Breakers {
    /// Whether a call may go to `conn` now; `Err(ms)` is how long the breaker stays open.
    pub(crate) fn admit(&self, conn: &str, now_ms: i64) -> Result<(), u64> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let s = states.entry(conn.to_string()).or_default();
        match s.open_until {
            None => Ok(()),
            Some(until) if now_ms < until => Err((until - now_ms) as u64),
            Some(_) if s.probing => Err(1000),
            Some(_) => {
                s.probing = true;
                Ok(())
            }
        }
    }

    /// Records a call's outcome at the upstream.
    pub(crate) fn record(&self, conn: &str, ok: bool, now_ms: i64, failures: u32, cooldown_ms: i64) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let s = states.entry(conn.to_string()).or_default();
        if ok {
            *s = State::default();
            return;
        }
        s.failures += 1;
        if s.probing || s.failures >= failures.max(1) {
            s.open_until = Some(now_ms + cooldown_ms);
            s.probing = false;
        }
    }

    /// Forgets `conn` (removed or re-registered).
    pub(crate) fn reset(&self, conn: &str) {
        self.states.lock().unwrap_or_else(|p| p.into_inner()).remove(conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_failures_and_one_probe_decides() {
        let b = Breakers::default();
        for _ in 0..3 {
            assert!(b.admit("c", 0).is_ok());
            b.record("c", false, 0, 3, 1000);
        }
        assert_eq!(b.admit("c", 10), Err(990));
        assert!(b.admit("c", 1000).is_ok(), "one probe after the cooldown");
        assert!(b.admit("c", 1000).is_err(), "only one probe at a time");
        b.record("c", false, 1000, 3, 1000);
        assert!(b.admit("c", 1500).is_err(), "a failed probe reopens it");
        assert!(b.admit("c", 2000).is_ok());
        b.record("c", true, 2000, 3, 1000);
        assert!(b.admit("c", 2000).is_ok());
        assert!(b.admit("c", 2000).is_ok());
    }
}
