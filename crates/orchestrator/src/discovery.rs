//! Discovery: who can do X, and how well?
//!
//! For a capability, every live agent declaring it is scored from what Strata has
//! observed, with the parts shown:
//!
//! ```text
//! score = 0.5 · success_rate + 0.3 · (1 − load) + 0.2 · trust     (0 while the breaker is open)
//! success_rate = (succeeded + 1) / (ended + 2)   over its last 100 ended attempts at X
//! load         = min(1, tasks it holds / max_concurrent)
//! trust        = its `strata.trust` label (0–1), else 0.5
//! ```
//!
//! The +1/+2 smoothing gives a new agent 0.5 rather than 0 or 1 from one sample.
//! Health (healthy, busy, degraded, stuck, offline) is reported beside the score
//! and does not change it: an agent that is not calling takes no work anyway.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use strata_core::Result;

use crate::{Orchestrator, db};

/// A discovery query.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// The capability wanted.
    pub capability: String,
}

/// The weights of the score.
pub const WEIGHTS: (f64, f64, f64) = (0.5, 0.3, 0.2);

/// The parts a score is made of, each 0–1.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ScoreParts {
    /// Smoothed share of recent attempts that succeeded.
    pub success_rate: f64,
    /// Share of its concurrency in use.
    pub load: f64,
    /// Operator-set trust.
    pub trust: f64,
}

/// One capable agent, ranked.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Candidate {
    /// `agt_…`
    pub agent_id: String,
    /// Its name.
    pub name: String,
    /// The capability version it declares.
    pub version: String,
    /// The ranking score (see the module documentation).
    pub score: f64,
    /// What the score is made of.
    pub score_parts: ScoreParts,
    /// Mean duration of its recent successful attempts, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avg_duration_ms: Option<f64>,
    /// Attempts that ended among the last 100.
    pub recent_attempts: i64,
    /// Tasks it holds now.
    pub in_flight: i64,
    /// Its declared concurrency for this capability.
    pub max_concurrent: u32,
    /// `healthy`; `busy` (at its concurrency); `degraded` (breaker open, or most
    /// recent attempts failed); `stuck` (silent but holding leases); `offline`
    /// (silent, or not seen since this server started).
    pub health: String,
    /// Milliseconds since its last call to Strata (0 while a call is in
    /// progress); absent when not seen since this server started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub silent_ms: Option<i64>,
    /// When its circuit breaker closes (epoch ms), while open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker_open_until: Option<i64>,
}

/// The ranked answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Ranking {
    /// The capability asked about.
    pub capability: String,
    /// Capable agents, best first.
    pub agents: Vec<Candidate>,
}

impl Orchestrator {
    /// Ranks the live agents declaring `capability`.
    pub async fn discover(&self, capability: &str, now: i64) -> Result<Ranking> {
        let mut agents = Vec::new();
        for d in self.identity.declarations(capability).await? {
            let agent = self.identity.get(&d.agent_id).await?;
            let rows = sqlx::query(
                "SELECT a.outcome, a.started_at, a.ended_at FROM orc_attempts a JOIN orc_tasks t ON t.id = a.task_id
                 WHERE a.agent_id = $1 AND t.capability = $2 AND a.ended_at IS NOT NULL
                 ORDER BY a.ended_at DESC LIMIT 100",
            )
            .bind(&d.agent_id)
            .bind(capability)
            .fetch_all(self.store.pool())
            .await
            .map_err(db)?;
            let (mut ok, mut ok_ms) = (0i64, 0i64);
            for r in &rows {
                if r.try_get::<Option<String>, _>(0).map_err(db)?.as_deref() == Some("succeeded") {
                    ok += 1;
                    ok_ms += r.try_get::<i64, _>(2).map_err(db)? - r.try_get::<i64, _>(1).map_err(db)?;
                }
            }
            let ended = rows.len() as i64;
            let in_flight: i64 =
                sqlx::query("SELECT COUNT(*) FROM orc_tasks WHERE state = 'leased' AND lease_agent = $1")
                    .bind(&d.agent_id)
                    .fetch_one(self.store.pool())
                    .await
                    .map_err(db)?
                    .try_get(0)
                    .map_err(db)?;
            let max = d.capability.max_concurrent.max(1);
            let parts = ScoreParts {
                success_rate: (ok + 1) as f64 / (ended + 2) as f64,
                load: (in_flight as f64 / f64::from(max)).min(1.0),
                trust: agent
                    .labels
                    .get("strata.trust")
                    .and_then(|t| t.parse::<f64>().ok())
                    .filter(|t| t.is_finite())
                    .map_or(0.5, |t| t.clamp(0.0, 1.0)),
            };
            let breaker = self.breaker_open_until(&d.agent_id, now).await?;
            let (ws, wl, wt) = WEIGHTS;
            let score = if breaker.is_some() {
                0.0
            } else {
                ws * parts.success_rate + wl * (1.0 - parts.load) + wt * parts.trust
            };
            let silent_ms = self.presence.silent_for(&d.agent_id);
            let silent = silent_ms.is_none_or(|s| s > self.config.offline_after_ms);
            let failing = ended >= 5 && parts.success_rate < 0.5;
            let health = if silent && in_flight > 0 {
                "stuck"
            } else if silent {
                "offline"
            } else if breaker.is_some() || failing {
                "degraded"
            } else if in_flight >= i64::from(max) {
                "busy"
            } else {
                "healthy"
            };
            agents.push(Candidate {
                agent_id: d.agent_id,
                name: agent.name,
                version: d.capability.version,
                score: (score * 1000.0).round() / 1000.0,
                score_parts: parts,
                avg_duration_ms: (ok > 0).then(|| ok_ms as f64 / ok as f64),
                recent_attempts: ended,
                in_flight,
                max_concurrent: max,
                health: health.to_string(),
                silent_ms,
                breaker_open_until: breaker,
            });
        }
        agents.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.agent_id.cmp(&b.agent_id))
        });
        Ok(Ranking {
            capability: capability.to_string(),
            agents,
        })
    }
}
