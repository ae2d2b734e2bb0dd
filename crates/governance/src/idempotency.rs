//! Idempotency records: the stored response of a mutating call, keyed by the
//! caller and its `Idempotency-Key`.
//!
//! The record is written in the same transaction as the effect, under a unique
//! key, so two concurrent calls with one key can never both take effect: the
//! second one's insert fails, its effect rolls back, and it is answered from the
//! first one's record.
//!
//! An external effect (an upstream tool call) runs outside any transaction, so
//! its key is *claimed* before the effect starts, with the intent, and the
//! claim becomes the record when the effect succeeds (or is dropped when it
//! fails or is interrupted by a crash). A second call with the key meanwhile is
//! refused as in flight rather than running the effect twice.

use sqlx::Row;
use strata_store::Conn;
use strata_store::Store;

/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// A stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The syscall the key was used for.
    pub syscall: String,
    /// SHA-256 of the syscall name and the request.
    pub request_hash: String,
    /// The response status.
    pub status: u16,
    /// The response body (JSON, or empty for none).
    pub response: String,
}

/// Whether `key` is acceptable: 1–255 printable ASCII characters.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// The stored record for `key` in `scope`, if any.
pub async fn lookup(store: &Store, scope: &str, key: &str) -> strata_store::Result<Option<Record>> {
    let row = sqlx::query(
        "SELECT syscall, request_hash, status, response FROM gov_idempotency WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(store.pool())
    .await?;
    row.map(|r| {
        Ok(Record {
            syscall: r.try_get(0)?,
            request_hash: r.try_get(1)?,
            status: u16::try_from(r.try_get::<i64, _>(2)?).unwrap_or(500),
            response: r.try_get(3)?,
        })
    })
    .transpose()
}

/// Records the response for `key` inside the effect's transaction. Fails with a
/// unique violation when the key was taken meanwhile.
pub async fn record(
    conn: &mut Conn,
    scope: &str,
    key: &str,
    rec: &Record,
    now: i64,
) -> strata_store::Result<()> {
    sqlx::query(
        "INSERT INTO gov_idempotency (scope, key, syscall, request_hash, status, response, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(scope)
    .bind(key)
    .bind(&rec.syscall)
    .bind(&rec.request_hash)
    .bind(i64::from(rec.status))
    .bind(&rec.response)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The `status` of a key claimed by an external effect that is still running.
const IN_FLIGHT: i64 = 0;

/// Whether `rec` is a claim of a call still running, not a stored response.
pub fn in_flight(rec: &Record) -> bool {
    i64::from(rec.status) == IN_FLIGHT
}

/// Claims `key` for an external effect about to run, inside the transaction of
/// its intent `intent_id`: a placeholder that [`complete`] turns into the
/// record or [`release`] removes, so a concurrent call with the same key is
/// turned away instead of running the effect a second time. Fails with a
/// unique violation when the key is taken.
pub async fn claim(
    conn: &mut Conn,
    scope: &str,
    key: &str,
    syscall: &str,
    request_hash: &str,
    intent_id: &str,
    now: i64,
) -> strata_store::Result<()> {
    let placeholder = Record {
        syscall: syscall.to_string(),
        request_hash: request_hash.to_string(),
        status: 0,
        response: intent_id.to_string(),
    };
    record(conn, scope, key, &placeholder, now).await
}

/// Turns the claim on `key` into the stored response (inside the outcome's
/// transaction). If the claim is gone (recovery released it, thinking this
/// server dead), records afresh, failing with a unique violation when another
/// call took the key meanwhile.
pub async fn complete(
    conn: &mut Conn,
    scope: &str,
    key: &str,
    rec: &Record,
    now: i64,
) -> strata_store::Result<()> {
    let done = sqlx::query(
        "UPDATE gov_idempotency SET syscall = $3, request_hash = $4, status = $5, response = $6
         WHERE scope = $1 AND key = $2 AND status = $7",
    )
    .bind(scope)
    .bind(key)
    .bind(&rec.syscall)
    .bind(&rec.request_hash)
    .bind(i64::from(rec.status))
    .bind(&rec.response)
    .bind(IN_FLIGHT)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        record(conn, scope, key, rec, now).await?;
    }
    Ok(())
}

/// Drops the claim on `key` (the effect failed, so a retry may run it again).
pub async fn release(conn: &mut Conn, scope: &str, key: &str) -> strata_store::Result<()> {
    sqlx::query("DELETE FROM gov_idempotency WHERE scope = $1 AND key = $2 AND status = $3")
        .bind(scope)
        .bind(key)
        .bind(IN_FLIGHT)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Drops the claim made with intent `intent_id`, if any (the intent was
/// interrupted: no answer will come, and a retry runs the call again).
pub async fn release_intent(conn: &mut Conn, intent_id: &str) -> strata_store::Result<()> {
    sqlx::query("DELETE FROM gov_idempotency WHERE status = $1 AND response = $2")
        .bind(IN_FLIGHT)
        .bind(intent_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
