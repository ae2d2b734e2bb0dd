//! The per-agent circuit breaker.
//!
//! When an agent's last `breaker_failures` attempts all ended `failed` or
//! `expired`, its breaker is open: it is offered no tasks until
//! `breaker_cooldown_ms` after the last of those failures. Then it is offered
//! work again (half-open); one success closes the breaker, another failure opens
//! it for another cooldown. The state is derived from the attempt history, so it
//! survives restarts and is the same on every replica.

use sqlx::Row;
use strata_core::Result;

use crate::{Orchestrator, db};

impl Orchestrator {
    /// When `agent`'s breaker is open at `now`, the time (epoch ms) it closes.
    pub async fn breaker_open_until(&self, agent: &str, now: i64) -> Result<Option<i64>> {
        let n = self.config.breaker_failures;
        if n <= 0 {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT outcome, ended_at FROM orc_attempts WHERE agent_id = $1 AND ended_at IS NOT NULL
             ORDER BY ended_at DESC LIMIT $2",
        )
        .bind(agent)
        .bind(n)
        .fetch_all(self.store.pool())
        .await
        .map_err(db)?;
        if (rows.len() as i64) < n {
            return Ok(None);
        }
        let mut last_failure = 0;
        for (i, r) in rows.iter().enumerate() {
            let outcome: Option<String> = r.try_get(0).map_err(db)?;
            if !matches!(outcome.as_deref(), Some("failed" | "expired")) {
                return Ok(None);
            }
            if i == 0 {
                last_failure = r.try_get::<i64, _>(1).map_err(db)?;
            }
        }
        let until = last_failure + self.config.breaker_cooldown_ms;
        Ok((until > now).then_some(until))
    }
}
