//! Supervision: what happens when a task dies, and how a person or a supervisor
//! agent settles it.
//!
//! A policy per capability (or `*`, for every capability without its own), and
//! optionally per agent group, says what to do when a task's attempts are
//! exhausted. An agent's group is its `strata.group` label (a managed agent's is
//! its deployment's name unless its labels say otherwise). The policy that applies
//! to a task is the first that exists of: its capability for the group of the
//! agent that held it last, `*` for that group, its capability, `*`.
//!
//!
//! - `dead_letter` (the default): the task stays `dead`, with its history.
//! - `reassign`: the task is queued again with one more attempt, for any capable
//!   agent but the one that failed last, up to `reassigns` times; after that (or
//!   when no other capable agent exists) the `then` action applies.
//! - `escalate_to_agent`: the task becomes `escalated`, an escalation is opened,
//!   and a review task for the `supervisor` capability is submitted with the
//!   escalation id and the failed task's input, error and history as its input.
//!   The reviewer settles it with [`resolve`].
//! - `escalate_to_human`: the task becomes `escalated` and an escalation is
//!   opened for operators (`GET /v1/escalations`).
//!
//! Resolving an escalation `retry`s the task (queued with more attempts),
//! `cancel`s it, or `complete_with` a result. Each step runs in the writer's
//! transaction with the change that caused it; the kernel audits it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use strata_core::{Error, ErrorCode, Id, Result, time::rfc3339};
use strata_store::Conn;

use crate::task::{NewTask, PreparedTask, TaskState, history, insert, validate};
use crate::{Orchestrator, db, retry::Backoff};

/// What to do with a task whose attempts are exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnDead {
    /// Leave it in the dead-letter state.
    DeadLetter,
    /// Queue it again for another capable agent.
    Reassign,
    /// Open an escalation and submit a review task for a supervisor capability.
    EscalateToAgent,
    /// Open an escalation for operators.
    EscalateToHuman,
}

/// A supervision policy, as set by `PUT /v1/supervision/{capability}`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPolicy {
    /// The capability it governs, or `*` for every capability without its own.
    pub capability: String,
    /// The agent group it governs (the `strata.group` label of the agent that held
    /// the task last); absent: every agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// What to do when a task dies.
    pub on_dead: OnDead,
    /// The capability that reviews escalated tasks (for `escalate_to_agent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<String>,
    /// How many times `reassign` may requeue one task (1–10, default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reassigns: Option<u32>,
    /// What to do once reassigning is exhausted (default `dead_letter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<OnDead>,
}

/// What supervision did to a task that died.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Supervised {
    /// `reassigned`, `escalated_to_agent` or `escalated_to_human`.
    pub action: String,
    /// The escalation opened, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalation: Option<String>,
    /// The review task submitted, for `escalated_to_agent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_task: Option<String>,
}

impl SetPolicy {
    /// How the policy is named in the audit log: `capability` or `capability@group`.
    pub fn key(&self) -> String {
        policy_key(&self.capability, self.group.as_deref())
    }
}

/// `capability` or `capability@group`.
pub fn policy_key(capability: &str, group: Option<&str>) -> String {
    match group {
        Some(g) => format!("{capability}@{g}"),
        None => capability.to_string(),
    }
}

/// Whether an escalation still needs a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EscalationState {
    /// Waiting for a decision.
    Open,
    /// Decided.
    Resolved,
}

/// A task handed to a supervisor or a person.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Escalation {
    /// `esc_…`
    pub id: String,
    /// The escalated task.
    pub task_id: String,
    /// Its capability.
    pub capability: String,
    /// `human`, or the supervisor capability that reviews it.
    pub assignee: String,
    /// The review task, when a supervisor agent reviews it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_task: Option<String>,
    /// The task's last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
    /// Why it went to people rather than to the policy's supervisor, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Open or resolved.
    pub state: EscalationState,
    /// The decision, once resolved: `{"action", "note", "by"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<serde_json::Value>,
    /// Opened (RFC 3339).
    pub created_at: String,
    /// Resolved (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
}

/// How to settle an escalation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Queue the task again with `attempts` more tries.
    Retry,
    /// Cancel the task.
    Cancel,
    /// Mark the task succeeded with `result` (checked against the output schema).
    CompleteWith,
}

/// A resolution, as sent to `POST /v1/escalations/{id}/resolve`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resolve {
    /// The escalation (from the path).
    pub id: String,
    /// What to do with the task.
    pub action: Decision,
    /// The task's result, for `complete_with`.
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    /// More attempts for `retry` (1–100, default 1).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Why (kept with the resolution).
    #[serde(default)]
    pub note: Option<String>,
}

/// Filters for listing escalations.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EscalationFilter {
    /// Only open or only resolved escalations.
    #[serde(default)]
    pub state: Option<EscalationState>,
    /// Return escalations after this id.
    #[serde(default)]
    pub after: Option<String>,
    /// Page size, 1–500 (default 50).
    #[serde(default)]
    pub limit: Option<u32>,
}

impl SetPolicy {
    /// Checks the policy's fields.
    pub fn check(&self) -> Result<()> {
        if self.capability.is_empty() || self.capability.len() > 64 {
            return Err(Error::invalid("capability", "must be 1 to 64 characters"));
        }
        if let Some(g) = &self.group
            && (g.is_empty() || g.len() > 64 || g.contains('@'))
        {
            return Err(Error::invalid("group", "must be 1 to 64 characters, without '@'"));
        }
        if self.on_dead == OnDead::EscalateToAgent || self.then == Some(OnDead::EscalateToAgent) {
            match self.supervisor.as_deref() {
                None | Some("") => {
                    return Err(Error::invalid(
                        "supervisor",
                        "escalate_to_agent needs the supervisor capability that reviews the task",
                    ));
                }
                Some(s) if s == self.capability => {
                    return Err(Error::invalid(
                        "supervisor",
                        "a capability cannot supervise itself",
                    ));
                }
                Some(_) => {}
            }
        }
        if !(1..=10).contains(&self.reassigns.unwrap_or(1)) {
            return Err(Error::invalid("reassigns", "must be 1 to 10"));
        }
        if self.then == Some(OnDead::Reassign) {
            return Err(Error::invalid("then", "cannot be reassign"));
        }
        Ok(())
    }
}

impl Orchestrator {
    /// Every supervision policy, by capability.
    pub async fn policies(&self) -> Result<Vec<SetPolicy>> {
        let rows = sqlx::query("SELECT policy FROM orc_supervision ORDER BY capability, grp")
            .fetch_all(self.store.pool())
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| parse_policy(r.try_get(0).map_err(db)?))
            .collect()
    }

    /// One escalation.
    pub async fn escalation(&self, id: &str) -> Result<Escalation> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ESC_COLUMNS} FROM orc_escalations WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.store.pool())
        .await
        .map_err(db)?
        .ok_or_else(|| Error::not_found("escalation", id))?;
        read_escalation(&row)
    }

    /// Escalations, oldest first, a page at a time.
    pub async fn escalations(&self, f: &EscalationFilter) -> Result<(Vec<Escalation>, Option<String>)> {
        let limit = i64::from(f.limit.unwrap_or(50).clamp(1, 500));
        let state = match f.state {
            Some(EscalationState::Open) => "open",
            Some(EscalationState::Resolved) => "resolved",
            None => "",
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ESC_COLUMNS} FROM orc_escalations WHERE id > $1 AND ($2 = '' OR state = $2) ORDER BY id LIMIT $3"
        )))
        .bind(f.after.as_deref().unwrap_or(""))
        .bind(state)
        .bind(limit + 1)
        .fetch_all(self.store.pool())
        .await
        .map_err(db)?;
        let items = rows.iter().map(read_escalation).collect::<Result<Vec<_>>>()?;
        Ok(strata_core::page::split(items, limit, |e| e.id.clone()))
    }
}

fn parse_policy(s: String) -> Result<SetPolicy> {
    serde_json::from_str(&s).map_err(|e| Error::internal(format!("supervision policy: {e}")))
}

/// Stores a checked policy, replacing any for the same capability and group
/// (inside the writer).
pub async fn set_policy(conn: &mut Conn, p: &SetPolicy, now: i64) -> Result<()> {
    let json = serde_json::to_string(p).map_err(Error::internal)?;
    sqlx::query(
        "INSERT INTO orc_supervision (capability, grp, policy, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (capability, grp) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at",
    )
    .bind(&p.capability)
    .bind(p.group.as_deref().unwrap_or(""))
    .bind(json)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// Removes the policy of `capability` for `group` (all agents when `None`),
/// inside the writer.
pub async fn delete_policy(conn: &mut Conn, capability: &str, group: Option<&str>) -> Result<()> {
    let done = sqlx::query("DELETE FROM orc_supervision WHERE capability = $1 AND grp = $2")
        .bind(capability)
        .bind(group.unwrap_or(""))
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    if done.rows_affected() == 0 {
        return Err(Error::not_found(
            "supervision policy",
            &policy_key(capability, group),
        ));
    }
    Ok(())
}

/// Applies the supervision policy to task `id`, which just became `dead`
/// (inside the writer). Returns its new state and what was done, if anything.
pub(crate) async fn after_death(
    conn: &mut Conn,
    id: &str,
    last_agent: &str,
    now: i64,
) -> Result<(TaskState, Option<Supervised>)> {
    let r = sqlx::query("SELECT capability, input, priority, reassigns, error FROM orc_tasks WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
    let capability: String = r.try_get(0).map_err(db)?;
    let reassigns: i64 = r.try_get(3).map_err(db)?;
    let group = if last_agent.is_empty() {
        None
    } else {
        strata_identity::agent::group_of(conn, last_agent).await?
    };
    // Group policies before capability-wide ones, exact capabilities before `*`.
    let policy = sqlx::query(
        "SELECT policy FROM orc_supervision WHERE capability IN ($1, '*') AND grp IN ($2, '')
         ORDER BY CASE WHEN grp = '' THEN 1 ELSE 0 END, CASE WHEN capability = '*' THEN 1 ELSE 0 END LIMIT 1",
    )
    .bind(&capability)
    .bind(group.as_deref().unwrap_or(""))
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    let Some(policy) = policy else {
        return Ok((TaskState::Dead, None));
    };
    let policy = parse_policy(policy.try_get(0).map_err(db)?)?;
    let mut action = policy.on_dead;
    if action == OnDead::Reassign {
        let others = strata_identity::agent::declarers(conn, &capability)
            .await?
            .into_iter()
            .any(|a| a != last_agent);
        if others && reassigns < i64::from(policy.reassigns.unwrap_or(1)) {
            sqlx::query(
                "UPDATE orc_tasks SET state = 'queued', max_attempts = attempts + 1, reassigns = reassigns + 1,
                    avoid_agent = $2, pinned_agent = NULL, not_before = $3, updated_at = $3, finished_at = NULL WHERE id = $1",
            )
            .bind(id)
            .bind(last_agent)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
            return Ok((
                TaskState::Queued,
                Some(Supervised {
                    action: "reassigned".into(),
                    escalation: None,
                    review_task: None,
                }),
            ));
        }
        action = policy.then.unwrap_or(OnDead::DeadLetter);
    }
    let mut supervisor = match action {
        OnDead::DeadLetter | OnDead::Reassign => return Ok((TaskState::Dead, None)),
        OnDead::EscalateToHuman => None,
        // A dying review task goes to people, never to another review of itself.
        OnDead::EscalateToAgent => policy.supervisor.filter(|s| *s != capability),
    };
    let esc = Id::new("esc").to_string();
    let error: Option<String> = r.try_get(4).map_err(db)?;
    let mut reason = None;
    let review_input = match &supervisor {
        None => None,
        Some(sup) => {
            let input = serde_json::json!({
                "escalation": esc,
                "task": {
                    "id": id,
                    "capability": capability,
                    "input": serde_json::from_str::<serde_json::Value>(&r.try_get::<String, _>(1).map_err(db)?)
                        .map_err(|e| Error::internal(format!("task input: {e}")))?,
                    "error": error.as_deref().map(serde_json::from_str::<serde_json::Value>).transpose()
                        .map_err(|e| Error::internal(format!("task error: {e}")))?,
                    "history": history(&mut *conn, id).await?,
                },
            });
            // The review task is checked like any submission; one its supervisor
            // could not accept goes to people instead, saying why.
            match strata_identity::agent::input_schema_of(conn, sup).await? {
                Some(schema) => match validate(&schema, &input, ErrorCode::InvalidInput, "input") {
                    Ok(()) => Some(input),
                    Err(e) => {
                        reason = Some(format!(
                            "the review task does not match the input schema of '{sup}': {}",
                            e.detail
                        ));
                        None
                    }
                },
                None => Some(input),
            }
        }
    };
    if review_input.is_none() {
        supervisor = None;
    }
    let review_task = match (&supervisor, review_input) {
        (Some(sup), Some(input)) => {
            let review = PreparedTask::new(
                NewTask {
                    capability: sup.clone(),
                    input,
                    priority: u8::try_from(r.try_get::<i64, _>(2).map_err(db)?).unwrap_or(0),
                    labels: [("strata.escalation".to_string(), esc.clone())].into(),
                    parent: Some(id.to_string()),
                    allow_unroutable: true,
                    ..NewTask::default()
                },
                3,
                Backoff::default(),
                "system".into(),
                now,
            );
            Some(insert(conn, &review).await?.id)
        }
        _ => None,
    };
    sqlx::query(
        "INSERT INTO orc_escalations (id, task_id, capability, assignee, review_task, error, state, created_at, reason)
         VALUES ($1, $2, $3, $4, $5, $6, 'open', $7, $8)",
    )
    .bind(&esc)
    .bind(id)
    .bind(&capability)
    .bind(supervisor.as_deref().unwrap_or("human"))
    .bind(&review_task)
    .bind(&error)
    .bind(now)
    .bind(&reason)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    sqlx::query("UPDATE orc_tasks SET state = 'escalated', updated_at = $2 WHERE id = $1")
        .bind(id)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    let action = if supervisor.is_some() {
        "escalated_to_agent"
    } else {
        "escalated_to_human"
    };
    Ok((
        TaskState::Escalated,
        Some(Supervised {
            action: action.into(),
            escalation: Some(esc),
            review_task,
        }),
    ))
}

/// Settles an open escalation (inside the writer); `result` has been checked
/// against the task's output schema. Returns the escalation as resolved.
pub async fn resolve(conn: &mut Conn, r: &Resolve, by: &str, now: i64) -> Result<Escalation> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ESC_COLUMNS} FROM orc_escalations WHERE id = $1"
    )))
    .bind(&r.id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?
    .ok_or_else(|| Error::not_found("escalation", &r.id))?;
    let esc = read_escalation(&row)?;
    if esc.state == EscalationState::Resolved {
        return Err(Error::new(
            ErrorCode::EscalationResolved,
            format!("escalation '{}' was already resolved", r.id),
        ));
    }
    let attempts = i64::from(r.attempts.unwrap_or(1));
    if !(1..=100).contains(&attempts) {
        return Err(Error::invalid("attempts", "must be 1 to 100"));
    }
    let update = match r.action {
        Decision::Retry => sqlx::query(
            "UPDATE orc_tasks SET state = 'queued', max_attempts = attempts + $3, avoid_agent = NULL,
                not_before = $2, finished_at = NULL, updated_at = $2 WHERE id = $1 AND state = 'escalated'",
        )
        .bind(&esc.task_id)
        .bind(now)
        .bind(attempts),
        Decision::Cancel => sqlx::query(
            "UPDATE orc_tasks SET state = 'cancelled', finished_at = $2, updated_at = $2
             WHERE id = $1 AND state = 'escalated'",
        )
        .bind(&esc.task_id)
        .bind(now),
        Decision::CompleteWith => sqlx::query(
            "UPDATE orc_tasks SET state = 'succeeded', result = $3, finished_at = $2, updated_at = $2
             WHERE id = $1 AND state = 'escalated'",
        )
        .bind(&esc.task_id)
        .bind(now)
        .bind(r.result.clone().unwrap_or_default().to_string()),
    };
    let done = update.execute(&mut *conn).await.map_err(db)?;
    if done.rows_affected() == 0 {
        return Err(Error::new(
            ErrorCode::Conflict,
            format!("task '{}' is no longer escalated", esc.task_id),
        ));
    }
    // A review task nobody has taken yet has nothing left to decide.
    if let Some(review) = &esc.review_task {
        sqlx::query(
            "UPDATE orc_tasks SET state = 'cancelled', lease_id = NULL, lease_expires_at = NULL,
                updated_at = $2, finished_at = $2 WHERE id = $1 AND state = 'queued'",
        )
        .bind(review)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    let resolution = serde_json::json!({"action": r.action, "note": r.note, "by": by});
    sqlx::query(
        "UPDATE orc_escalations SET state = 'resolved', resolution = $2, resolved_at = $3 WHERE id = $1",
    )
    .bind(&r.id)
    .bind(resolution.to_string())
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(Escalation {
        state: EscalationState::Resolved,
        resolution: Some(resolution),
        resolved_at: Some(rfc3339(now)),
        ..esc
    })
}

const ESC_COLUMNS: &str = "id, task_id, capability, assignee, review_task, error, state, resolution, created_at, resolved_at, reason";

fn read_escalation(r: &sqlx::any::AnyRow) -> Result<Escalation> {
    let json = |i: usize| -> Result<Option<serde_json::Value>> {
        r.try_get::<Option<String>, _>(i)
            .map_err(db)?
            .map(|s| serde_json::from_str(&s).map_err(|e| Error::internal(format!("escalation row: {e}"))))
            .transpose()
    };
    Ok(Escalation {
        id: r.try_get(0).map_err(db)?,
        task_id: r.try_get(1).map_err(db)?,
        capability: r.try_get(2).map_err(db)?,
        assignee: r.try_get(3).map_err(db)?,
        review_task: r.try_get(4).map_err(db)?,
        error: json(5)?,
        state: if r.try_get::<String, _>(6).map_err(db)? == "open" {
            EscalationState::Open
        } else {
            EscalationState::Resolved
        },
        resolution: json(7)?,
        created_at: rfc3339(r.try_get(8).map_err(db)?),
        resolved_at: r.try_get::<Option<i64>, _>(9).map_err(db)?.map(rfc3339),
        reason: r.try_get(10).map_err(db)?,
    })
}

/// The supervision tables.
pub(crate) const SCHEMA: &str = "
ALTER TABLE orc_tasks ADD COLUMN reassigns BIGINT NOT NULL DEFAULT 0;
ALTER TABLE orc_tasks ADD COLUMN avoid_agent TEXT;
CREATE TABLE orc_supervision (
    capability TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE orc_escalations (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    capability TEXT NOT NULL,
    assignee TEXT NOT NULL,
    review_task TEXT,
    error TEXT,
    state TEXT NOT NULL,
    resolution TEXT,
    created_at BIGINT NOT NULL,
    resolved_at BIGINT
);
CREATE INDEX orc_escalations_state ON orc_escalations (state, id);
";

/// Policies per agent group: the policy key becomes (capability, group), `''`
/// standing for every agent; escalations say why they skipped a supervisor.
pub(crate) const GROUPS_SCHEMA: &str = "
CREATE TABLE orc_supervision_new (
    capability TEXT NOT NULL,
    grp TEXT NOT NULL DEFAULT '',
    policy TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (capability, grp)
);
INSERT INTO orc_supervision_new (capability, grp, policy, updated_at)
    SELECT capability, '', policy, updated_at FROM orc_supervision;
DROP TABLE orc_supervision;
ALTER TABLE orc_supervision_new RENAME TO orc_supervision;
ALTER TABLE orc_escalations ADD COLUMN reason TEXT;
";
