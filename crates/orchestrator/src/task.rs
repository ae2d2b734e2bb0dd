//! Tasks: what to do (a capability and its input), how urgently, how often to try.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use strata_core::{Error, ErrorCode, Id, Result, time::rfc3339};
use strata_store::Conn;
use strata_store::Params;

use strata_identity::agent::Declared;

use crate::retry::Backoff;
use crate::{Orchestrator, db};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a capable agent.
    Queued,
    /// Held by an agent under a lease.
    Leased,
    /// Completed with a result.
    Succeeded,
    /// Failed without retry (non-retryable error or deadline).
    Failed,
    /// Cancelled by its submitter or an operator.
    Cancelled,
    /// Attempts exhausted: the dead-letter state, with the full history.
    Dead,
    /// Handed to a supervisor or a human.
    Escalated,
}

impl TaskState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Leased => "leased",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Dead => "dead",
            TaskState::Escalated => "escalated",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<TaskState> {
        Ok(match s {
            "queued" => TaskState::Queued,
            "leased" => TaskState::Leased,
            "succeeded" => TaskState::Succeeded,
            "failed" => TaskState::Failed,
            "cancelled" => TaskState::Cancelled,
            "dead" => TaskState::Dead,
            "escalated" => TaskState::Escalated,
            other => return Err(Error::internal(format!("unknown task state '{other}'"))),
        })
    }

    /// Whether nothing more will happen to the task.
    pub fn is_terminal(self) -> bool {
        !matches!(self, TaskState::Queued | TaskState::Leased)
    }
}

/// A request to submit a task.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// The capability an agent must declare to run it.
    pub capability: String,
    /// The input, validated against the capability's `input_schema`.
    #[serde(default)]
    pub input: serde_json::Value,
    /// 0 (default) to 9; higher is leased first.
    #[serde(default)]
    pub priority: u8,
    /// RFC 3339 time after which the task fails with `deadline_exceeded`.
    #[serde(default)]
    pub deadline: Option<String>,
    /// Attempts before the task is dead-lettered (1–100, default 3).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Delay between attempts.
    #[serde(default)]
    pub backoff: Option<Backoff>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The task this one is part of (`tsk_…`).
    #[serde(default)]
    pub parent: Option<String>,
    /// Pin the task to one agent (`agt_…`).
    #[serde(default)]
    pub agent: Option<String>,
    /// Let another capable agent take a pinned task after the steal delay.
    #[serde(default)]
    pub stealable: bool,
    /// Queue the task even if no live agent declares the capability yet.
    #[serde(default)]
    pub allow_unroutable: bool,
}

/// The answer to a submission.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Submitted {
    /// `tsk_…`
    pub id: String,
    /// Always `queued`.
    pub state: TaskState,
}

/// One try at a task.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Attempt {
    /// 1 for the first try.
    pub attempt: i64,
    /// The agent that held the lease.
    pub agent_id: String,
    /// When the lease was granted (RFC 3339).
    pub started_at: String,
    /// When it ended, if it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// `succeeded`, `failed`, `expired` or `cancelled`, once ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The error reported or recorded, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
}

/// A task as stored.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Task {
    /// `tsk_…`
    pub id: String,
    /// The capability it needs.
    pub capability: String,
    /// Its input.
    pub input: serde_json::Value,
    /// 0–9.
    pub priority: i64,
    /// Where it is in its life.
    pub state: TaskState,
    /// The agent it is pinned to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Whether another agent may take it when its pinned agent is slow.
    pub stealable: bool,
    /// The agent holding it now, when leased.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leased_by: Option<String>,
    /// When the current lease expires (RFC 3339), when leased.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<String>,
    /// Attempts made so far.
    pub attempts: i64,
    /// Attempts allowed.
    pub max_attempts: i64,
    /// RFC 3339 deadline, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Parent task, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Who submitted it.
    pub submitted_by: String,
    /// The result, once succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The last error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
    /// Submitted (RFC 3339).
    pub created_at: String,
    /// Last changed (RFC 3339).
    pub updated_at: String,
    /// The attempts, oldest first (on single-task reads).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Attempt>,
}

/// Checks `value` against the JSON Schema `schema`; the error names the path.
pub fn validate(
    schema: &serde_json::Value,
    value: &serde_json::Value,
    code: ErrorCode,
    what: &str,
) -> Result<()> {
    let validator = jsonschema::validator_for(schema).map_err(|e| {
        Error::new(
            ErrorCode::InvalidRequest,
            format!("the capability's {what} schema is invalid: {e}"),
        )
    })?;
    if let Some(e) = validator.iter_errors(value).next() {
        let path = e.instance_path().to_string();
        let at = if path.is_empty() {
            what.to_string()
        } else {
            format!("{what}{path}")
        };
        return Err(Error::new(code, format!("{at}: {e}")));
    }
    Ok(())
}

/// A task ready to insert.
#[derive(Debug)]
pub struct PreparedTask {
    id: String,
    req: NewTask,
    deadline: Option<i64>,
    max_attempts: i64,
    backoff: Backoff,
    submitted_by: String,
    now: i64,
}

impl PreparedTask {
    /// A task Strata submits itself (a review task), without a deadline.
    pub(crate) fn new(
        req: NewTask,
        max_attempts: i64,
        backoff: Backoff,
        submitted_by: String,
        now: i64,
    ) -> PreparedTask {
        PreparedTask {
            id: Id::new("tsk").to_string(),
            req,
            deadline: None,
            max_attempts,
            backoff,
            submitted_by,
            now,
        }
    }

    /// The id the task will have.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the dispatcher is told once the task is queued.
    pub fn ready(&self) -> crate::dispatch::Ready<'_> {
        crate::dispatch::Ready {
            capability: &self.req.capability,
            pinned: self.req.agent.as_deref(),
            count: 1,
        }
    }
}

fn parse_time(field: &str, s: &str) -> Result<i64> {
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| Error::invalid(field, format!("not an RFC 3339 time: {e}")))?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| Error::invalid(field, "is before 1970"))?
        .as_millis();
    i64::try_from(ms).map_err(|_| Error::invalid(field, "is too far in the future"))
}

impl Orchestrator {
    /// Validates a submission: routable capability, input matching its schema,
    /// sane limits. Reads only.
    pub async fn prepare_task(&self, req: NewTask, submitted_by: String, now: i64) -> Result<PreparedTask> {
        let declared = self.identity.declarations(&req.capability).await?;
        self.prepare_with(req, &declared, submitted_by, now).await
    }

    /// Checks many submissions (one read of the declarations per capability);
    /// the first invalid one fails the whole batch, its error naming `tasks[i]`.
    pub async fn prepare_tasks(
        &self,
        reqs: Vec<NewTask>,
        submitted_by: String,
        now: i64,
    ) -> Result<Vec<PreparedTask>> {
        let mut declared: std::collections::HashMap<String, Vec<Declared>> = Default::default();
        let mut out = Vec::with_capacity(reqs.len());
        for (i, req) in reqs.into_iter().enumerate() {
            if !declared.contains_key(&req.capability) {
                let d = self.identity.declarations(&req.capability).await?;
                declared.insert(req.capability.clone(), d);
            }
            let d = declared.get(&req.capability).map_or(&[][..], Vec::as_slice);
            let t = self
                .prepare_with(req, d, submitted_by.clone(), now)
                .await
                .map_err(|e| Error::new(e.code, format!("tasks[{i}].{}", e.detail)))?;
            out.push(t);
        }
        Ok(out)
    }

    async fn prepare_with(
        &self,
        req: NewTask,
        declared: &[Declared],
        submitted_by: String,
        now: i64,
    ) -> Result<PreparedTask> {
        if req.capability.is_empty() || req.capability.len() > 64 {
            return Err(Error::invalid("capability", "must be 1 to 64 characters"));
        }
        if req.priority > 9 {
            return Err(Error::invalid("priority", "must be 0 to 9"));
        }
        let max_attempts = i64::from(req.max_attempts.unwrap_or(3));
        if !(1..=100).contains(&max_attempts) {
            return Err(Error::invalid("max_attempts", "must be 1 to 100"));
        }
        let backoff = req.backoff.unwrap_or_default();
        if backoff.initial_ms > backoff.max_ms || backoff.max_ms > 24 * 3600 * 1000 {
            return Err(Error::invalid(
                "backoff",
                "initial_ms must not exceed max_ms, and max_ms is at most a day",
            ));
        }
        let deadline = req
            .deadline
            .as_deref()
            .map(|d| parse_time("deadline", d))
            .transpose()?;
        if req.labels.len() > 64
            || req
                .labels
                .iter()
                .any(|(k, v)| k.chars().count() > 128 || v.chars().count() > 256)
        {
            return Err(Error::invalid(
                "labels",
                "at most 64 labels; keys up to 128 and values up to 256 characters",
            ));
        }
        if req.input.to_string().len() > 512 * 1024 {
            return Err(Error::invalid("input", "must be at most 512 KiB of JSON"));
        }
        if let Some(agent) = &req.agent
            && !declared.iter().any(|d| &d.agent_id == agent)
            && !req.allow_unroutable
        {
            return Err(Error::new(
                ErrorCode::NoCapableAgent,
                format!("agent '{agent}' does not declare capability '{}'", req.capability),
            ));
        }
        match declared.first() {
            Some(d) => validate(
                &d.capability.input_schema,
                &req.input,
                ErrorCode::InvalidInput,
                "input",
            )?,
            None if req.allow_unroutable => {}
            None => {
                return Err(Error::new(
                    ErrorCode::NoCapableAgent,
                    format!("no live agent declares capability '{}'", req.capability),
                ));
            }
        }
        if let Some(p) = &req.parent {
            self.get(p)
                .await
                .map_err(|_| Error::invalid("parent", format!("task '{p}' does not exist")))?;
        }
        Ok(PreparedTask {
            id: Id::new("tsk").to_string(),
            req,
            deadline,
            max_attempts,
            backoff,
            submitted_by,
            now,
        })
    }

    /// The capability task `id` needs (one indexed read, for hot paths).
    pub async fn capability_of(&self, id: &str) -> Result<String> {
        let row = sqlx::query("SELECT capability FROM orc_tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(self.store.pool())
            .await
            .map_err(db)?
            .ok_or_else(|| Error::not_found("task", id))?;
        row.try_get(0).map_err(db)
    }

    /// A task with its attempt history.
    pub async fn get(&self, id: &str) -> Result<Task> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM orc_tasks WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.store.pool())
        .await
        .map_err(db)?
        .ok_or_else(|| Error::not_found("task", id))?;
        let mut task = read(&row)?;
        task.history = history(self.store.pool(), id).await?;
        Ok(task)
    }

    /// Tasks matching the filters, oldest first, `limit` after cursor `after`.
    pub async fn list(&self, f: &TaskFilter) -> Result<(Vec<Task>, Option<String>)> {
        let limit = i64::from(f.limit.unwrap_or(50).clamp(1, 500));
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM orc_tasks WHERE id > $1
               AND ($2 = '' OR state = $2) AND ($3 = '' OR capability = $3)
               AND ($4 = '' OR lease_agent = $4 OR pinned_agent = $4)
             ORDER BY id LIMIT $5"
        )))
        .bind(f.after.as_deref().unwrap_or(""))
        .bind(f.state.map(TaskState::as_str).unwrap_or(""))
        .bind(f.capability.as_deref().unwrap_or(""))
        .bind(f.agent.as_deref().unwrap_or(""))
        .bind(limit + 1)
        .fetch_all(self.store.pool())
        .await
        .map_err(db)?;
        let items = rows.iter().map(read).collect::<Result<Vec<_>>>()?;
        Ok(strata_core::page::split(items, limit, |t| t.id.clone()))
    }
}

/// The attempts at task `id`, oldest first.
pub(crate) async fn history<'e, E>(exec: E, id: &str) -> Result<Vec<Attempt>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(
        "SELECT attempt, agent_id, started_at, ended_at, outcome, error FROM orc_attempts WHERE task_id = $1 ORDER BY attempt",
    )
    .bind(id)
    .fetch_all(exec)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|r| {
            Ok(Attempt {
                attempt: r.try_get(0).map_err(db)?,
                agent_id: r.try_get(1).map_err(db)?,
                started_at: rfc3339(r.try_get(2).map_err(db)?),
                ended_at: r.try_get::<Option<i64>, _>(3).map_err(db)?.map(rfc3339),
                outcome: r.try_get(4).map_err(db)?,
                error: json_opt(r.try_get(5).map_err(db)?)?,
            })
        })
        .collect()
}

/// Filters for listing tasks.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskFilter {
    /// Only tasks in this state.
    #[serde(default)]
    pub state: Option<TaskState>,
    /// Only tasks needing this capability.
    #[serde(default)]
    pub capability: Option<String>,
    /// Only tasks pinned to or leased by this agent.
    #[serde(default)]
    pub agent: Option<String>,
    /// Return tasks after this id.
    #[serde(default)]
    pub after: Option<String>,
    /// Page size, 1–500 (default 50).
    #[serde(default)]
    pub limit: Option<u32>,
}

pub(crate) const COLUMNS: &str = "id, capability, input, priority, state, pinned_agent, stealable, lease_agent, \
     lease_expires_at, attempts, max_attempts, deadline, labels, parent, submitted_by, result, error, created_at, updated_at";

fn json_opt(s: Option<String>) -> Result<Option<serde_json::Value>> {
    s.map(|s| serde_json::from_str(&s).map_err(|e| Error::internal(format!("task row: {e}"))))
        .transpose()
}

pub(crate) fn read(r: &sqlx::any::AnyRow) -> Result<Task> {
    let input: String = r.try_get(2).map_err(db)?;
    let labels: String = r.try_get(12).map_err(db)?;
    Ok(Task {
        id: r.try_get(0).map_err(db)?,
        capability: r.try_get(1).map_err(db)?,
        input: serde_json::from_str(&input).map_err(|e| Error::internal(format!("task input: {e}")))?,
        priority: r.try_get(3).map_err(db)?,
        state: TaskState::parse(&r.try_get::<String, _>(4).map_err(db)?)?,
        agent: r.try_get(5).map_err(db)?,
        stealable: r.try_get::<i64, _>(6).map_err(db)? == 1,
        leased_by: r.try_get(7).map_err(db)?,
        lease_expires_at: r.try_get::<Option<i64>, _>(8).map_err(db)?.map(rfc3339),
        attempts: r.try_get(9).map_err(db)?,
        max_attempts: r.try_get(10).map_err(db)?,
        deadline: r.try_get::<Option<i64>, _>(11).map_err(db)?.map(rfc3339),
        labels: serde_json::from_str(&labels).map_err(|e| Error::internal(format!("task labels: {e}")))?,
        parent: r.try_get(13).map_err(db)?,
        submitted_by: r.try_get(14).map_err(db)?,
        result: json_opt(r.try_get(15).map_err(db)?)?,
        error: json_opt(r.try_get(16).map_err(db)?)?,
        created_at: rfc3339(r.try_get(17).map_err(db)?),
        updated_at: rfc3339(r.try_get(18).map_err(db)?),
        history: Vec::new(),
    })
}

/// Inserts a prepared task (inside the writer).
pub async fn insert(conn: &mut Conn, t: &PreparedTask) -> Result<Submitted> {
    let mut out = insert_many(conn, std::slice::from_ref(t)).await?;
    out.pop().ok_or_else(|| Error::internal("no task inserted"))
}

/// Queues prepared tasks (inside the writer), in one statement per 25.
pub async fn insert_many(conn: &mut Conn, tasks: &[PreparedTask]) -> Result<Vec<Submitted>> {
    const COLUMNS: usize = 16;
    for chunk in tasks.chunks(50) {
        let mut p = Params::on(conn);
        // id, capability, input, priority, 'queued', pinned_agent, stealable, 0,
        // max_attempts, backoff_initial_ms, backoff_max_ms, not_before, deadline,
        // labels, parent, submitted_by, created_at, updated_at.
        let rows: Vec<String> = chunk
            .iter()
            .map(|_| {
                format!(
                    "({}, {}, {}, {}, 'queued', {}, {}, 0, {})",
                    p.one(),
                    p.one(),
                    p.one(),
                    p.one(),
                    p.one(),
                    p.one(),
                    p.list(COLUMNS - 6)
                )
            })
            .collect();
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO orc_tasks (id, capability, input, priority, state, pinned_agent, stealable, attempts, max_attempts,
                backoff_initial_ms, backoff_max_ms, not_before, deadline, labels, parent, submitted_by, created_at, updated_at)
             VALUES {}",
            rows.join(", ")
        )));
        for t in chunk {
            q = q
                .bind(t.id.clone())
                .bind(t.req.capability.clone())
                .bind(t.req.input.to_string())
                .bind(i64::from(t.req.priority))
                .bind(t.req.agent.clone())
                .bind(i64::from(t.req.stealable))
                .bind(t.max_attempts)
                .bind(t.backoff.initial_ms as i64)
                .bind(t.backoff.max_ms as i64)
                .bind(t.now)
                .bind(t.deadline)
                .bind(serde_json::to_string(&t.req.labels).map_err(Error::internal)?)
                .bind(t.req.parent.clone())
                .bind(t.submitted_by.clone())
                .bind(t.now)
                .bind(t.now);
        }
        q.execute(&mut *conn).await.map_err(db)?;
    }
    Ok(tasks
        .iter()
        .map(|t| Submitted {
            id: t.id.clone(),
            state: TaskState::Queued,
        })
        .collect())
}

impl Orchestrator {
    /// The capability of each task in `ids` that exists, by id (one read).
    pub async fn capabilities_of_tasks(
        &self,
        ids: &[&str],
    ) -> Result<std::collections::HashMap<String, String>> {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, capability FROM orc_tasks WHERE id IN ({})",
            Params::new(self.store.backend()).list(ids.len())
        )));
        for id in ids {
            q = q.bind(id.to_string());
        }
        let rows = q.fetch_all(self.store.pool()).await.map_err(db)?;
        rows.iter()
            .map(|r| Ok((r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?)))
            .collect()
    }
}

/// The state of task `id` inside the writer, with its lease holder.
pub(crate) async fn current(
    conn: &mut Conn,
    id: &str,
) -> Result<(TaskState, Option<String>, Option<String>, i64)> {
    let r = sqlx::query("SELECT state, lease_id, lease_agent, attempts FROM orc_tasks WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?
        .ok_or_else(|| Error::not_found("task", id))?;
    Ok((
        TaskState::parse(&r.try_get::<String, _>(0).map_err(db)?)?,
        r.try_get(1).map_err(db)?,
        r.try_get(2).map_err(db)?,
        r.try_get(3).map_err(db)?,
    ))
}

/// Ends the current attempt of task `id` with `outcome` (inside the writer).
pub(crate) async fn end_attempt(
    conn: &mut Conn,
    id: &str,
    attempt: i64,
    outcome: &str,
    error: Option<&serde_json::Value>,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE orc_attempts SET ended_at = $3, outcome = $4, error = $5 WHERE task_id = $1 AND attempt = $2",
    )
    .bind(id)
    .bind(attempt)
    .bind(now)
    .bind(outcome)
    .bind(error.map(|e| e.to_string()))
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// Moves open task `id` from agent `from` to agent `to` (inside the writer), as
/// an accepted handoff does: the task is pinned to `to` (not stealable) and, if
/// `from` holds its lease, the lease ends (attempt outcome `handed_off`, one more
/// attempt allowed) and the task is queued again for `to`. Only a task `from`
/// submitted, is pinned to or holds moves; returns whether it moved (false when
/// it has finished, is someone else's, or does not exist).
pub async fn transfer(conn: &mut Conn, id: &str, from: &str, to: &str, now: i64) -> Result<bool> {
    let Some(r) = sqlx::query(
        "SELECT state, lease_agent, pinned_agent, submitted_by, attempts FROM orc_tasks WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?
    else {
        return Ok(false);
    };
    let state = TaskState::parse(&r.try_get::<String, _>(0).map_err(db)?)?;
    let lease_agent: Option<String> = r.try_get(1).map_err(db)?;
    let pinned: Option<String> = r.try_get(2).map_err(db)?;
    let submitted_by: String = r.try_get(3).map_err(db)?;
    let attempts: i64 = r.try_get(4).map_err(db)?;
    let mine =
        submitted_by == from || pinned.as_deref() == Some(from) || lease_agent.as_deref() == Some(from);
    if state.is_terminal() || !mine {
        return Ok(false);
    }
    if state == TaskState::Leased {
        end_attempt(conn, id, attempts, "handed_off", None, now).await?;
    }
    let extra = i64::from(state == TaskState::Leased);
    sqlx::query(
        "UPDATE orc_tasks SET state = 'queued', pinned_agent = $2, stealable = 0, lease_id = NULL,
         lease_agent = NULL, lease_expires_at = NULL, max_attempts = max_attempts + $3, updated_at = $4
         WHERE id = $1",
    )
    .bind(id)
    .bind(to)
    .bind(extra)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(true)
}

/// Cancels a task that has not finished (inside the writer).
pub async fn cancel(conn: &mut Conn, id: &str, now: i64) -> Result<TaskState> {
    let (state, _, _, attempts) = current(conn, id).await?;
    if state.is_terminal() {
        return Err(Error::new(
            ErrorCode::TaskFinished,
            format!("task '{id}' is already {}", state.as_str()),
        ));
    }
    if state == TaskState::Leased {
        end_attempt(conn, id, attempts, "cancelled", None, now).await?;
    }
    sqlx::query(
        "UPDATE orc_tasks SET state = 'cancelled', lease_id = NULL, lease_expires_at = NULL, updated_at = $2, finished_at = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(TaskState::Cancelled)
}
