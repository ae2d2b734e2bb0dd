//! Leadership: which server runs a loop that must run once per cluster.
//!
//! The managed-agent reconciler starts processes, so on several replicas sharing
//! one PostgreSQL exactly one of them may run it. Leadership of a `role` is a row
//! (`orc_leaders`) holding the leader's id and when its claim expires; the leader
//! renews it well before then, and any server may take it over once it has
//! expired. Claims go through the writer, which serialises them across replicas
//! (PostgreSQL's advisory lock), so two servers never both hold a live claim.
//! A leader that cannot renew — its database is unreachable, or another server
//! took over after it stalled — must stop acting as leader.

use sqlx::Row;
use strata_core::Result;
use strata_store::Conn;

use crate::db;

/// The outcome of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Who leads now.
    pub holder: String,
    /// Since when (epoch ms); equal to the claim's `now` when it just changed hands.
    pub since: i64,
}

/// Claims or renews the leadership of `role` for `holder` until `now + ttl_ms`
/// (inside the writer). `holder` leads afterwards if it did already or the
/// previous claim had expired; the answer says who leads.
pub async fn claim(conn: &mut Conn, role: &str, holder: &str, now: i64, ttl_ms: i64) -> Result<Claim> {
    sqlx::query(
        "INSERT INTO orc_leaders (role, holder, expires_at, since) VALUES ($1, $2, $3, $4)
         ON CONFLICT (role) DO UPDATE SET
             since = CASE WHEN orc_leaders.holder = excluded.holder THEN orc_leaders.since ELSE excluded.since END,
             holder = excluded.holder, expires_at = excluded.expires_at
         WHERE orc_leaders.holder = excluded.holder OR orc_leaders.expires_at <= $4",
    )
    .bind(role)
    .bind(holder)
    .bind(now + ttl_ms)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    let row = sqlx::query("SELECT holder, since FROM orc_leaders WHERE role = $1")
        .bind(role)
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
    Ok(Claim {
        holder: row.try_get(0).map_err(db)?,
        since: row.try_get(1).map_err(db)?,
    })
}

/// Gives up `role` if `holder` leads it (inside the writer), so another server
/// need not wait for the claim to expire (a clean shutdown).
pub async fn release(conn: &mut Conn, role: &str, holder: &str) -> Result<()> {
    sqlx::query("DELETE FROM orc_leaders WHERE role = $1 AND holder = $2")
        .bind(role)
        .bind(holder)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(())
}

/// The leaders table.
pub(crate) const SCHEMA: &str = "
CREATE TABLE orc_leaders (
    role TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    since BIGINT NOT NULL
);
";
