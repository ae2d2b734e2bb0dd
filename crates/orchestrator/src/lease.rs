//! Leases: an agent holds a task for a while, proves it is alive, and finishes it.
//!
//! Leasing picks the highest-priority, oldest queued task among the capabilities
//! the agent declares — its own pinned tasks, unpinned ones, and stealable tasks
//! pinned elsewhere once they have waited the steal delay. Every check of "who
//! holds the lease" happens inside the writer's transaction, so a stale holder
//! can never complete a task that has moved on.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};
use strata_core::{Error, ErrorCode, Id, Result, time::rfc3339};

use crate::supervise::{Supervised, after_death};
use crate::task::{TaskState, current, end_attempt};
use crate::{Orchestrator, db, retry};

/// A request for work.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// How long to wait for a task when none is ready, in ms (0–60000, default 0).
    #[serde(default)]
    pub wait_ms: Option<u64>,
    /// The most tasks to take (1–100, default 1).
    #[serde(default)]
    pub max: Option<u32>,
    /// Lease length in ms (default 30000).
    #[serde(default)]
    pub lease_ms: Option<u64>,
}

/// A task handed to an agent.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Leased {
    /// `tsk_…`
    pub id: String,
    /// The capability to apply.
    pub capability: String,
    /// The input.
    pub input: serde_json::Value,
    /// Pass back on heartbeat, complete and fail.
    pub lease_id: String,
    /// Heartbeat before this time (RFC 3339) or the task goes to another agent.
    pub lease_expires_at: String,
    /// 1 for the first try.
    pub attempt: i64,
    /// The task's deadline (RFC 3339), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
}

/// The tasks leased (possibly none).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct LeaseResponse {
    /// The tasks, highest priority first.
    pub tasks: Vec<Leased>,
}

/// A lease proof: which lease the caller believes it holds.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The task (from the path).
    pub id: String,
    /// The lease being extended.
    pub lease_id: String,
    /// New lease length from now, in ms (default: the orchestrator's default).
    #[serde(default)]
    pub lease_ms: Option<u64>,
}

/// The extended lease.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Extended {
    /// `tsk_…`
    pub id: String,
    /// The new expiry (RFC 3339).
    pub lease_expires_at: String,
}

/// A completion.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Completion {
    /// The task (from the path).
    pub id: String,
    /// The lease held.
    pub lease_id: String,
    /// The result, validated against the capability's `output_schema`.
    #[serde(default)]
    pub result: serde_json::Value,
}

/// A failure report.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// The task (from the path).
    pub id: String,
    /// The lease held.
    pub lease_id: String,
    /// What went wrong (any JSON: a message or an object).
    pub error: serde_json::Value,
    /// Whether another attempt may succeed (default true).
    #[serde(default = "yes")]
    pub retryable: bool,
}

fn yes() -> bool {
    true
}

/// Where a task stands after a call.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Outcome {
    /// `tsk_…`
    pub id: String,
    /// Its state now.
    pub state: TaskState,
    /// When it will next be leasable, when requeued for a retry (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
    /// What supervision did when the task died (reassigned or escalated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supervision: Option<Supervised>,
}

impl LeaseRequest {
    /// The clamped (wait, max, lease length) of the request.
    pub fn bounds(&self, o: &Orchestrator) -> Result<(u64, i64, i64)> {
        let wait = self.wait_ms.unwrap_or(0);
        if wait > 60_000 {
            return Err(Error::invalid("wait_ms", "at most 60000"));
        }
        let max = i64::from(self.max.unwrap_or(1));
        if !(1..=100).contains(&max) {
            return Err(Error::invalid("max", "must be 1 to 100"));
        }
        Ok((wait, max, lease_len(o, self.lease_ms, "lease_ms")?))
    }
}

/// A lease length within the orchestrator's bounds.
pub fn lease_len(o: &Orchestrator, asked: Option<u64>, field: &str) -> Result<i64> {
    let ms = asked.map_or(o.config.default_lease_ms, |m| m.min(i64::MAX as u64) as i64);
    if !(100..=o.config.max_lease_ms).contains(&ms) {
        return Err(Error::invalid(
            field,
            format!("must be 100 to {} ms", o.config.max_lease_ms),
        ));
    }
    Ok(ms)
}

fn candidates_sql(select: &str, n_caps: usize) -> String {
    let caps: Vec<String> = (0..n_caps).map(|i| format!("${}", i + 5)).collect();
    format!(
        "SELECT {select} FROM orc_tasks WHERE state = 'queued' AND not_before <= $1
           AND (pinned_agent IS NULL OR pinned_agent = $2 OR (stealable = 1 AND created_at <= $3))
           AND (avoid_agent IS NULL OR avoid_agent <> $2)
           AND capability IN ({})
         ORDER BY priority DESC, created_at, id LIMIT $4",
        caps.join(", ")
    )
}

impl Orchestrator {
    /// Whether any task is ready for `agent` with `caps` (a cheap read before leasing).
    pub async fn has_candidates(&self, agent: &str, caps: &[String], now: i64) -> Result<bool> {
        if caps.is_empty() {
            return Ok(false);
        }
        let sql = candidates_sql("id", caps.len());
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(agent)
            .bind(now - self.config.steal_after_ms)
            .bind(1_i64);
        for c in caps {
            q = q.bind(c.clone());
        }
        Ok(q.fetch_optional(self.store.pool()).await.map_err(db)?.is_some())
    }
}

/// Leases up to `max` ready tasks to `agent` (inside the writer).
pub async fn lease(
    conn: &mut AnyConnection,
    agent: &str,
    caps: &[String],
    max: i64,
    lease_ms: i64,
    steal_after_ms: i64,
    now: i64,
) -> Result<Vec<Leased>> {
    if caps.is_empty() {
        return Ok(Vec::new());
    }
    let sql = candidates_sql("id, capability, input, attempts, deadline", caps.len());
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(agent)
        .bind(now - steal_after_ms)
        .bind(max);
    for c in caps {
        q = q.bind(c.clone());
    }
    let rows = q.fetch_all(&mut *conn).await.map_err(db)?;
    let expires = now + lease_ms;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: String = r.try_get(0).map_err(db)?;
        let input: String = r.try_get(2).map_err(db)?;
        let attempt = r.try_get::<i64, _>(3).map_err(db)? + 1;
        let lease_id = Id::new("lse").to_string();
        sqlx::query(
            "UPDATE orc_tasks SET state = 'leased', lease_id = $2, lease_agent = $3, lease_expires_at = $4,
                attempts = $5, updated_at = $6 WHERE id = $1",
        )
        .bind(&id)
        .bind(&lease_id)
        .bind(agent)
        .bind(expires)
        .bind(attempt)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
        sqlx::query(
            "INSERT INTO orc_attempts (task_id, attempt, agent_id, lease_id, started_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(attempt)
        .bind(agent)
        .bind(&lease_id)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
        out.push(Leased {
            id,
            capability: r.try_get(1).map_err(db)?,
            input: serde_json::from_str(&input).map_err(|e| Error::internal(format!("task input: {e}")))?,
            lease_id,
            lease_expires_at: rfc3339(expires),
            attempt,
            deadline: r.try_get::<Option<i64>, _>(4).map_err(db)?.map(rfc3339),
        });
    }
    Ok(out)
}

/// Checks that `agent` holds lease `lease_id` on task `id`; returns the attempt number.
async fn holding(conn: &mut AnyConnection, id: &str, agent: &str, lease_id: &str) -> Result<i64> {
    let (state, held, holder, attempts) = current(conn, id).await?;
    if state.is_terminal() {
        return Err(Error::new(
            ErrorCode::TaskFinished,
            format!("task '{id}' is already {}", state.as_str()),
        ));
    }
    if state != TaskState::Leased || held.as_deref() != Some(lease_id) || holder.as_deref() != Some(agent) {
        return Err(Error::new(
            ErrorCode::LeaseLost,
            format!(
                "lease '{lease_id}' on task '{id}' is not held by this agent (it expired or was never granted)"
            ),
        ));
    }
    Ok(attempts)
}

/// Extends a held lease (inside the writer).
pub async fn heartbeat(
    conn: &mut AnyConnection,
    id: &str,
    agent: &str,
    lease_id: &str,
    lease_ms: i64,
    now: i64,
) -> Result<Extended> {
    holding(conn, id, agent, lease_id).await?;
    let expires = now + lease_ms;
    sqlx::query("UPDATE orc_tasks SET lease_expires_at = $2, updated_at = $3 WHERE id = $1")
        .bind(id)
        .bind(expires)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(Extended {
        id: id.to_string(),
        lease_expires_at: rfc3339(expires),
    })
}

/// Completes a held task with its (already validated) result (inside the writer).
pub async fn complete(
    conn: &mut AnyConnection,
    id: &str,
    agent: &str,
    lease_id: &str,
    result: &serde_json::Value,
    now: i64,
) -> Result<Outcome> {
    let attempt = holding(conn, id, agent, lease_id).await?;
    end_attempt(conn, id, attempt, "succeeded", None, now).await?;
    sqlx::query(
        "UPDATE orc_tasks SET state = 'succeeded', result = $2, lease_id = NULL, lease_expires_at = NULL,
            updated_at = $3, finished_at = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(result.to_string())
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(Outcome {
        id: id.to_string(),
        state: TaskState::Succeeded,
        retry_at: None,
        supervision: None,
    })
}

/// Records a failed attempt: requeue with backoff, dead-letter when attempts are
/// exhausted, or fail at once when not retryable (inside the writer).
pub async fn fail(
    conn: &mut AnyConnection,
    f: &Failure,
    agent: &str,
    now: i64,
    random: u64,
) -> Result<Outcome> {
    let attempt = holding(conn, &f.id, agent, &f.lease_id).await?;
    end_attempt(conn, &f.id, attempt, "failed", Some(&f.error), now).await?;
    requeue_or_end(conn, &f.id, agent, attempt, f.retryable, &f.error, now, random).await
}

/// After a failed or expired attempt by `agent`: back to the queue, or to
/// `failed`, or to `dead` — and then whatever its supervision policy says.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn requeue_or_end(
    conn: &mut AnyConnection,
    id: &str,
    agent: &str,
    attempt: i64,
    retryable: bool,
    error: &serde_json::Value,
    now: i64,
    random: u64,
) -> Result<Outcome> {
    let r =
        sqlx::query("SELECT max_attempts, backoff_initial_ms, backoff_max_ms FROM orc_tasks WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *conn)
            .await
            .map_err(db)?;
    let (max_attempts, initial, max): (i64, i64, i64) = (
        r.try_get(0).map_err(db)?,
        r.try_get(1).map_err(db)?,
        r.try_get(2).map_err(db)?,
    );
    let (state, not_before) = if !retryable {
        (TaskState::Failed, None)
    } else if attempt >= max_attempts {
        (TaskState::Dead, None)
    } else {
        (
            TaskState::Queued,
            Some(now + retry::delay_ms(initial, max, attempt, random)),
        )
    };
    let finished = state.is_terminal().then_some(now);
    sqlx::query(
        "UPDATE orc_tasks SET state = $2, error = $3, lease_id = NULL, lease_agent = NULL, lease_expires_at = NULL,
            not_before = COALESCE($4, not_before), updated_at = $5, finished_at = $6 WHERE id = $1",
    )
    .bind(id)
    .bind(state.as_str())
    .bind(error.to_string())
    .bind(not_before)
    .bind(now)
    .bind(finished)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    let (state, supervision) = if state == TaskState::Dead {
        after_death(conn, id, agent, now).await?
    } else {
        (state, None)
    };
    Ok(Outcome {
        id: id.to_string(),
        state,
        retry_at: not_before.map(rfc3339),
        supervision,
    })
}
