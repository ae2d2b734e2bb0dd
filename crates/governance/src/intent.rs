//! Intents: a durable note, written before an external side effect, that it is
//! about to happen; the outcome is written after. On restart, intents still
//! `pending` are the side effects whose fate is unknown.
//!
//! Store-only syscalls need no separate intent row: their effect and audit entry
//! (which carries the intent id) commit in one transaction.

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use strata_store::Store;

/// An intent whose outcome was never recorded.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Pending {
    /// The intent id.
    pub id: String,
    /// Who asked.
    pub principal: String,
    /// The syscall.
    pub syscall: String,
    /// When it was recorded (epoch ms).
    pub created_at: i64,
}

/// Records that `principal` is about to perform `syscall`.
pub async fn begin(
    conn: &mut AnyConnection,
    id: &str,
    principal: &str,
    syscall: &str,
    request_digest: &str,
    now: i64,
) -> strata_store::Result<()> {
    sqlx::query(
        "INSERT INTO gov_intents (id, principal, syscall, request_digest, state, created_at) VALUES ($1, $2, $3, $4, 'pending', $5)",
    )
    .bind(id)
    .bind(principal)
    .bind(syscall)
    .bind(request_digest)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records the outcome (`ok` or a problem code) of intent `id`.
pub async fn finish(conn: &mut AnyConnection, id: &str, outcome: &str, now: i64) -> strata_store::Result<()> {
    sqlx::query("UPDATE gov_intents SET state = 'done', outcome = $2, finished_at = $3 WHERE id = $1")
        .bind(id)
        .bind(outcome)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Intents recorded but never finished, oldest first.
pub async fn pending(store: &Store) -> strata_store::Result<Vec<Pending>> {
    let rows = sqlx::query(
        "SELECT id, principal, syscall, created_at FROM gov_intents WHERE state = 'pending' ORDER BY created_at LIMIT 1000",
    )
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Pending {
                id: r.try_get(0)?,
                principal: r.try_get(1)?,
                syscall: r.try_get(2)?,
                created_at: r.try_get(3)?,
            })
        })
        .collect()
}
