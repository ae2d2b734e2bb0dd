//! Leases: an agent holds a task for a while, proves it is alive, and finishes it.
//!
//! Leasing picks the highest-priority, oldest queued task among the capabilities
//! the agent declares — its own pinned tasks, unpinned ones, and stealable tasks
//! pinned elsewhere once they have waited the steal delay. Every check of "who
//! holds the lease" happens inside the writer's transaction, so a stale holder
//! can never complete a task that has moved on.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use strata_core::{Error, ErrorCode, Id, Result, time::rfc3339};
use strata_store::Conn;
use strata_store::Params;

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

/// Many completions in one call (each checked and applied on its own).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Completions {
    /// 1 to 100 completions, each for a different task.
    pub completions: Vec<BatchCompletion>,
}

/// One completion of a batch.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchCompletion {
    /// `tsk_…`
    pub id: String,
    /// The lease held.
    pub lease_id: String,
    /// The result, validated against the capability's `output_schema`.
    #[serde(default)]
    pub result: serde_json::Value,
}

/// Why one item of a batch was refused: the problem it would have had alone.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ItemProblem {
    /// The stable problem code, e.g. `lease_lost`.
    pub code: String,
    /// The HTTP status the item would have had alone.
    pub status: u16,
    /// What went wrong.
    pub detail: String,
}

impl From<&Error> for ItemProblem {
    fn from(e: &Error) -> Self {
        ItemProblem {
            code: e.code.as_str().to_string(),
            status: e.status(),
            detail: e.detail.clone(),
        }
    }
}

/// Where one task of a batch stands.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ItemOutcome {
    /// `tsk_…`
    pub id: String,
    /// Its state now, when the item was applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<TaskState>,
    /// Why the item was refused (nothing changed for that task).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ItemProblem>,
}

/// The outcome of each completion, in the order sent.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BatchOutcome {
    /// One per completion.
    pub outcomes: Vec<ItemOutcome>,
    /// How many were applied.
    pub completed: usize,
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

/// The ready tasks `agent` may take, in lease order. Binds: now, agent, agent,
/// the steal cutoff, each capability, the limit.
fn candidates_sql(select: &str, n_caps: usize, mut p: Params) -> String {
    format!(
        "SELECT {select} FROM orc_tasks WHERE state = 'queued' AND not_before <= {}
           AND (pinned_agent IS NULL OR pinned_agent = {} OR (stealable = 1 AND created_at <= {}))
           AND (avoid_agent IS NULL OR avoid_agent <> {})
           AND capability IN ({})
         ORDER BY priority DESC, created_at, id LIMIT {}",
        p.one(),
        p.one(),
        p.one(),
        p.one(),
        p.list(n_caps),
        p.one()
    )
}

impl Orchestrator {
    /// Whether any task is ready for `agent` with `caps` (a cheap read before leasing).
    pub async fn has_candidates(&self, agent: &str, caps: &[String], now: i64) -> Result<bool> {
        if caps.is_empty() {
            return Ok(false);
        }
        let sql = candidates_sql("id", caps.len(), Params::new(self.store.backend()));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(agent)
            .bind(now - self.config.steal_after_ms)
            .bind(agent);
        for c in caps {
            q = q.bind(c.clone());
        }
        Ok(q.bind(1_i64)
            .fetch_optional(self.store.pool())
            .await
            .map_err(db)?
            .is_some())
    }
}

/// Leases up to `max` ready tasks to `agent` (inside the writer).
pub async fn lease(
    conn: &mut Conn,
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
    let sql = candidates_sql(
        "id, capability, input, attempts, deadline",
        caps.len(),
        Params::on(conn),
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(agent)
        .bind(now - steal_after_ms)
        .bind(agent);
    for c in caps {
        q = q.bind(c.clone());
    }
    let rows = q.bind(max).fetch_all(&mut *conn).await.map_err(db)?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // One lease id covers the tasks of one call: a holder is always checked by
    // task, lease and agent together, and a requeued task gets a new lease.
    let expires = now + lease_ms;
    let lease_id = Id::new("lse").to_string();
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, _>>()
        .map_err(db)?;
    let mut p = Params::on(conn);
    let sql = format!(
        "UPDATE orc_tasks SET state = 'leased', lease_id = {}, lease_agent = {}, lease_expires_at = {},
            attempts = attempts + 1, updated_at = {} WHERE id IN ({})",
        p.one(),
        p.one(),
        p.one(),
        p.one(),
        p.list(ids.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&lease_id)
        .bind(agent)
        .bind(expires)
        .bind(now);
    for id in &ids {
        q = q.bind(id.clone());
    }
    q.execute(&mut *conn).await.map_err(db)?;
    let mut p = Params::on(conn);
    let sql = format!(
        "INSERT INTO orc_attempts (task_id, attempt, agent_id, lease_id, started_at)
         SELECT id, attempts, {}, {}, {} FROM orc_tasks WHERE id IN ({})",
        p.one(),
        p.one(),
        p.one(),
        p.list(ids.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(agent)
        .bind(&lease_id)
        .bind(now);
    for id in &ids {
        q = q.bind(id.clone());
    }
    q.execute(&mut *conn).await.map_err(db)?;
    let mut out = Vec::with_capacity(rows.len());
    for (r, id) in rows.iter().zip(ids) {
        let input: String = r.try_get(2).map_err(db)?;
        out.push(Leased {
            id,
            capability: r.try_get(1).map_err(db)?,
            input: serde_json::from_str(&input).map_err(|e| Error::internal(format!("task input: {e}")))?,
            lease_id: lease_id.clone(),
            lease_expires_at: rfc3339(expires),
            attempt: r.try_get::<i64, _>(3).map_err(db)? + 1,
            deadline: r.try_get::<Option<i64>, _>(4).map_err(db)?.map(rfc3339),
        });
    }
    Ok(out)
}

/// Checks that `agent` holds lease `lease_id` on task `id`; returns the attempt number.
async fn holding(conn: &mut Conn, id: &str, agent: &str, lease_id: &str) -> Result<i64> {
    let (state, held, holder, attempts) = current(conn, id).await?;
    held_by(id, agent, lease_id, state, held, holder)?;
    Ok(attempts)
}

/// Whether a task in `state`, leased as `held` to `holder`, is held by `agent` under `lease_id`.
fn held_by(
    id: &str,
    agent: &str,
    lease_id: &str,
    state: TaskState,
    held: Option<String>,
    holder: Option<String>,
) -> Result<()> {
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
    Ok(())
}

/// Extends a held lease (inside the writer).
pub async fn heartbeat(
    conn: &mut Conn,
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
    conn: &mut Conn,
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

/// Completes many held tasks (inside the writer): the items in `refused` (by
/// index, e.g. an invalid result) and those whose lease is not held are answered
/// with their problem and change nothing; the rest succeed, in a fixed number of
/// statements. Returns the outcomes and the ids completed.
pub async fn complete_many(
    conn: &mut Conn,
    items: &[BatchCompletion],
    mut refused: Vec<Option<Error>>,
    agent: &str,
    now: i64,
) -> Result<(BatchOutcome, Vec<String>)> {
    refused.resize_with(items.len(), || None);
    let ids: Vec<&str> = items.iter().map(|c| c.id.as_str()).collect();
    let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, state, lease_id, lease_agent, attempts FROM orc_tasks WHERE id IN ({})",
        Params::on(conn).list(ids.len())
    )));
    for id in &ids {
        q = q.bind(id.to_string());
    }
    let mut found = std::collections::HashMap::new();
    for r in q.fetch_all(&mut *conn).await.map_err(db)? {
        let id: String = r.try_get(0).map_err(db)?;
        let state = TaskState::parse(&r.try_get::<String, _>(1).map_err(db)?)?;
        let row: (TaskState, Option<String>, Option<String>, i64) = (
            state,
            r.try_get(2).map_err(db)?,
            r.try_get(3).map_err(db)?,
            r.try_get(4).map_err(db)?,
        );
        found.insert(id, row);
    }
    let mut done: Vec<(&BatchCompletion, i64)> = Vec::new();
    for (c, refusal) in items.iter().zip(refused.iter_mut()) {
        if refusal.is_some() {
            continue;
        }
        let checked = match found.remove(&c.id) {
            None => Err(Error::not_found("task", &c.id)),
            Some((state, held, holder, attempt)) => {
                held_by(&c.id, agent, &c.lease_id, state, held, holder).map(|()| attempt)
            }
        };
        match checked {
            Ok(attempt) => done.push((c, attempt)),
            Err(e) => *refusal = Some(e),
        }
    }
    if !done.is_empty() {
        let mut p = Params::on(conn);
        let sql = format!(
            "UPDATE orc_attempts SET ended_at = {}, outcome = 'succeeded', error = NULL
             WHERE (task_id, attempt) IN (VALUES {})",
            p.one(),
            done.iter().map(|_| p.row(2)).collect::<Vec<_>>().join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
        for (c, attempt) in &done {
            q = q.bind(c.id.clone()).bind(*attempt);
        }
        q.execute(&mut *conn).await.map_err(db)?;
        let mut p = Params::on(conn);
        let whens: Vec<String> = done
            .iter()
            .map(|_| format!("WHEN {} THEN {}", p.one(), p.one()))
            .collect();
        let sql = format!(
            "UPDATE orc_tasks SET state = 'succeeded', result = CASE id {} END, lease_id = NULL,
                lease_expires_at = NULL, updated_at = {}, finished_at = {} WHERE id IN ({})",
            whens.join(" "),
            p.one(),
            p.one(),
            p.list(done.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (c, _) in &done {
            q = q.bind(c.id.clone()).bind(c.result.to_string());
        }
        q = q.bind(now).bind(now);
        for (c, _) in &done {
            q = q.bind(c.id.clone());
        }
        q.execute(&mut *conn).await.map_err(db)?;
    }
    let outcomes = items
        .iter()
        .zip(refused)
        .map(|(c, refusal)| ItemOutcome {
            id: c.id.clone(),
            state: refusal.is_none().then_some(TaskState::Succeeded),
            error: refusal.as_ref().map(ItemProblem::from),
        })
        .collect();
    let completed: Vec<String> = done.iter().map(|(c, _)| c.id.clone()).collect();
    Ok((
        BatchOutcome {
            outcomes,
            completed: completed.len(),
        },
        completed,
    ))
}

/// Records a failed attempt: requeue with backoff, dead-letter when attempts are
/// exhausted, or fail at once when not retryable (inside the writer).
pub async fn fail(conn: &mut Conn, f: &Failure, agent: &str, now: i64, random: u64) -> Result<Outcome> {
    let attempt = holding(conn, &f.id, agent, &f.lease_id).await?;
    end_attempt(conn, &f.id, attempt, "failed", Some(&f.error), now).await?;
    requeue_or_end(conn, &f.id, agent, attempt, f.retryable, &f.error, now, random).await
}

/// After a failed or expired attempt by `agent`: back to the queue, or to
/// `failed`, or to `dead` — and then whatever its supervision policy says.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn requeue_or_end(
    conn: &mut Conn,
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
