//! Intents: a durable note, written before an external side effect, that it is
//! about to happen; the outcome is written after. On restart, intents still
//! `pending` are the side effects whose fate is unknown.
//!
//! Store-only syscalls need no separate intent row: their effect and audit entry
//! (which carries the intent id) commit in one transaction.
//!
//! Each intent names the server instance running its effect, and each instance
//! keeps a liveness row (`gov_instances`) fresh while it runs. An intent still
//! pending whose instance is no longer alive was cut off by a crash:
//! [`interrupt_orphans`] finishes it with the outcome `interrupted`. An instance
//! that stalls past its liveness without dying has its in-flight intents
//! interrupted too; their real outcome, when it comes, overwrites that one.

use serde::Serialize;
use sqlx::Row;
use strata_store::Conn;
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

/// The outcome given to an intent whose server died before finishing it.
pub const INTERRUPTED: &str = "interrupted";

/// What an intent is about to do.
#[derive(Debug, Clone, Copy)]
pub struct Begin<'a> {
    /// The intent id.
    pub id: &'a str,
    /// The server instance running the effect (kept alive by [`keep_alive`]).
    pub instance: &'a str,
    /// Who asked.
    pub principal: &'a str,
    /// The syscall.
    pub syscall: &'a str,
    /// The digest of the request.
    pub request_digest: &'a str,
}

/// Records that an effect is about to happen.
pub async fn begin(conn: &mut Conn, b: Begin<'_>, now: i64) -> strata_store::Result<()> {
    sqlx::query(
        "INSERT INTO gov_intents (id, principal, syscall, request_digest, state, created_at, instance) VALUES ($1, $2, $3, $4, 'pending', $5, $6)",
    )
    .bind(b.id)
    .bind(b.principal)
    .bind(b.syscall)
    .bind(b.request_digest)
    .bind(now)
    .bind(b.instance)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records the outcome (`ok` or a problem code) of intent `id`.
pub async fn finish(conn: &mut Conn, id: &str, outcome: &str, now: i64) -> strata_store::Result<()> {
    sqlx::query("UPDATE gov_intents SET state = 'done', outcome = $2, finished_at = $3 WHERE id = $1")
        .bind(id)
        .bind(outcome)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Marks server `instance` alive until `now + ttl_ms`, and forgets instances
/// dead for an hour.
pub async fn keep_alive(conn: &mut Conn, instance: &str, now: i64, ttl_ms: i64) -> strata_store::Result<()> {
    sqlx::query(
        "INSERT INTO gov_instances (id, expires_at) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at",
    )
    .bind(instance)
    .bind(now + ttl_ms)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM gov_instances WHERE expires_at < $1")
        .bind(now - 3_600_000)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Finishes, as [`INTERRUPTED`], up to `limit` pending intents whose instance
/// is not alive at `now` (inside the writer); returns them, oldest first.
pub async fn interrupt_orphans(conn: &mut Conn, now: i64, limit: i64) -> strata_store::Result<Vec<Pending>> {
    let rows = sqlx::query(
        "SELECT id, principal, syscall, created_at FROM gov_intents WHERE state = 'pending'
         AND NOT EXISTS (SELECT 1 FROM gov_instances i WHERE i.id = gov_intents.instance AND i.expires_at > $1)
         ORDER BY created_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let orphans = rows.iter().map(pending_row).collect::<Result<Vec<_>, _>>()?;
    for o in &orphans {
        sqlx::query(
            "UPDATE gov_intents SET state = 'done', outcome = $2, finished_at = $3 WHERE id = $1 AND state = 'pending'",
        )
        .bind(&o.id)
        .bind(INTERRUPTED)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(orphans)
}

fn pending_row(r: &sqlx::any::AnyRow) -> Result<Pending, sqlx::Error> {
    Ok(Pending {
        id: r.try_get(0)?,
        principal: r.try_get(1)?,
        syscall: r.try_get(2)?,
        created_at: r.try_get(3)?,
    })
}

/// Intents recorded but never finished, oldest first.
pub async fn pending(store: &Store) -> strata_store::Result<Vec<Pending>> {
    let rows = sqlx::query(
        "SELECT id, principal, syscall, created_at FROM gov_intents WHERE state = 'pending' ORDER BY created_at LIMIT 1000",
    )
    .fetch_all(store.pool())
    .await?;
    Ok(rows.iter().map(pending_row).collect::<Result<Vec<_>, _>>()?)
}
