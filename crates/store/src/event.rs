//! The event log: an ordered record of what changed, for `/v1/events` and replicas.
//!
//! Events are appended by writes, inside the writer's transaction, so an event
//! exists exactly when its change committed. Sequence numbers are dense and
//! increase in commit order (the writer is the only appender).

use serde::Serialize;
use sqlx::Row;

use crate::Conn;

use crate::{Params, Result, Store};

/// One committed change.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Event {
    /// Position in the log; resume after it with `Last-Event-ID`.
    pub seq: i64,
    /// When it committed (epoch ms).
    pub at: i64,
    /// What happened: the syscall name, e.g. `agent.create`.
    pub kind: String,
    /// The resource it happened to, e.g. `agt_…`.
    pub subject: String,
    /// Details, as JSON.
    pub data: serde_json::Value,
}

/// Appends an event inside the writer's transaction and returns its sequence number.
pub async fn append(
    conn: &mut Conn,
    at: i64,
    kind: &str,
    subject: &str,
    data: &serde_json::Value,
) -> Result<i64> {
    // One statement: reading the last number and inserting after it would be two
    // round trips to the database for every write.
    let row = sqlx::query(
        "INSERT INTO store_events (seq, at, kind, subject, data)
         SELECT COALESCE(MAX(seq), 0) + 1, $1, $2, $3, $4 FROM store_events RETURNING seq",
    )
    .bind(at)
    .bind(kind)
    .bind(subject)
    .bind(data.to_string())
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get(0)?)
}

/// An event to append with [`append_many`].
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// When (epoch ms).
    pub at: i64,
    /// What happened.
    pub kind: String,
    /// To what.
    pub subject: String,
    /// Details.
    pub data: serde_json::Value,
}

/// Appends `events`, in order, inside the writer's transaction: one read of the
/// last number and one insert per 64 events.
pub async fn append_many(conn: &mut Conn, events: &[NewEvent]) -> Result<()> {
    const CHUNK: usize = 100;
    if events.is_empty() {
        return Ok(());
    }
    // The writer is the only appender (on PostgreSQL it holds the writers' lock),
    // so nothing can take these numbers between the read and the insert.
    let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM store_events")
        .fetch_one(&mut *conn)
        .await?;
    let mut seq: i64 = row.try_get(0)?;
    for chunk in events.chunks(CHUNK) {
        let mut p = Params::on(conn);
        let values: Vec<String> = chunk.iter().map(|_| p.row(5)).collect();
        let sql = format!(
            "INSERT INTO store_events (seq, at, kind, subject, data) VALUES {}",
            values.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for e in chunk {
            seq += 1;
            q = q
                .bind(seq)
                .bind(e.at)
                .bind(e.kind.clone())
                .bind(e.subject.clone())
                .bind(e.data.to_string());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

impl Store {
    /// Up to `limit` events after sequence number `after`, oldest first.
    pub async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT seq, at, kind, subject, data FROM store_events WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let data: String = r.try_get(4)?;
                Ok(Event {
                    seq: r.try_get(0)?,
                    at: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    subject: r.try_get(3)?,
                    data: serde_json::from_str(&data)
                        .map_err(|e| crate::Error::Corrupt(format!("event data: {e}")))?,
                })
            })
            .collect()
    }
}
