//! The sweeper: what happens to tasks when nobody acts on them.
//!
//! A lease that expires (its agent died or stalled) ends its attempt as
//! `expired` and requeues the task at once — delivery is at-least-once — or
//! dead-letters it when attempts are exhausted. A task past its deadline fails
//! with `deadline_exceeded`. The kernel runs [`sweep`] periodically inside the
//! writer and audits each transition as the `system` principal.

use sqlx::Row;
use strata_core::Result;
use strata_store::Conn;

use crate::db;
use crate::lease::requeue_or_end;
use crate::supervise::Supervised;
use crate::task::{TaskState, end_attempt};

/// One transition the sweeper made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swept {
    /// The task.
    pub task_id: String,
    /// What happened: `lease_expired` or `deadline_exceeded`.
    pub reason: &'static str,
    /// The state it moved to.
    pub state: TaskState,
    /// What supervision did, when the task died.
    pub supervision: Option<Supervised>,
}

/// Handles up to `limit` expired leases and missed deadlines (inside the writer).
pub async fn sweep(conn: &mut Conn, now: i64, limit: i64) -> Result<Vec<Swept>> {
    let mut out = Vec::new();
    let overdue = sqlx::query(
        "SELECT id, state, attempts FROM orc_tasks WHERE state IN ('queued', 'leased') AND deadline IS NOT NULL AND deadline <= $1 LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    for r in overdue {
        let id: String = r.try_get(0).map_err(db)?;
        let error = serde_json::json!({"code": "deadline_exceeded"});
        if r.try_get::<String, _>(1).map_err(db)? == "leased" {
            end_attempt(conn, &id, r.try_get(2).map_err(db)?, "expired", Some(&error), now).await?;
        }
        sqlx::query(
            "UPDATE orc_tasks SET state = 'failed', error = $2, lease_id = NULL, lease_agent = NULL, lease_expires_at = NULL,
                updated_at = $3, finished_at = $3 WHERE id = $1",
        )
        .bind(&id)
        .bind(error.to_string())
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
        out.push(Swept {
            task_id: id,
            reason: "deadline_exceeded",
            state: TaskState::Failed,
            supervision: None,
        });
    }
    let expired = sqlx::query(
        "SELECT id, attempts, lease_agent FROM orc_tasks WHERE state = 'leased' AND lease_expires_at <= $1 ORDER BY lease_expires_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    for r in expired {
        let id: String = r.try_get(0).map_err(db)?;
        let attempt: i64 = r.try_get(1).map_err(db)?;
        let agent: String = r.try_get::<Option<String>, _>(2).map_err(db)?.unwrap_or_default();
        let error = serde_json::json!({"code": "lease_expired"});
        end_attempt(conn, &id, attempt, "expired", Some(&error), now).await?;
        // An expired lease is retried at once: the agent, not the task, failed.
        let outcome = requeue_or_end(conn, &id, &agent, attempt, true, &error, now, 0).await?;
        if outcome.state == TaskState::Queued {
            sqlx::query("UPDATE orc_tasks SET not_before = $2 WHERE id = $1")
                .bind(&id)
                .bind(now)
                .execute(&mut *conn)
                .await
                .map_err(db)?;
        }
        out.push(Swept {
            task_id: id,
            reason: "lease_expired",
            state: outcome.state,
            supervision: outcome.supervision,
        });
    }
    Ok(out)
}
