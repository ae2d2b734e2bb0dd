//! Idempotency records: the stored response of a mutating call, keyed by the
//! caller and its `Idempotency-Key`.
//!
//! The record is written in the same transaction as the effect, under a unique
//! key, so two concurrent calls with one key can never both take effect: the
//! second one's insert fails, its effect rolls back, and it is answered from the
//! first one's record.

use sqlx::{AnyConnection, Row};
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
    conn: &mut AnyConnection,
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
