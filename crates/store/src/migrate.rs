//! Embedded migrations, owned by layers.
//!
//! Each layer declares its migrations as constants and the binary passes them all
//! to [`crate::Store::open`]. Applied migrations are recorded with a checksum in
//! `store_migrations`; editing one that has already run is an error, not a silent
//! drift.

use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Executor, Row};

use crate::{Backend, Error, Result};

/// One schema change of one layer.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The owning layer (`identity`, `governance`, …); its tables carry this prefix.
    pub layer: &'static str,
    /// Applied in increasing order within the layer.
    pub version: u32,
    /// What it does, in a few words.
    pub name: &'static str,
    /// The SQL for SQLite (several statements allowed).
    pub sqlite: &'static str,
    /// The SQL for PostgreSQL; often the same text.
    pub postgres: &'static str,
}

impl Migration {
    fn sql(&self, backend: Backend) -> &'static str {
        match backend {
            Backend::Sqlite => self.sqlite,
            Backend::Postgres => self.postgres,
        }
    }
}

const LOCK: i64 = 0x5354_5241_4d49;

pub(crate) async fn run(pool: &AnyPool, backend: Backend, sets: &[&[Migration]]) -> Result<()> {
    let mut conn = pool.acquire().await?;
    conn.execute(
        "CREATE TABLE IF NOT EXISTS store_migrations (
            layer TEXT NOT NULL, version BIGINT NOT NULL, name TEXT NOT NULL,
            checksum TEXT NOT NULL, applied_at BIGINT NOT NULL,
            PRIMARY KEY (layer, version))",
    )
    .await?;
    if backend == Backend::Postgres {
        // Replicas starting together apply each migration once.
        conn.execute(sqlx::query("SELECT pg_advisory_lock($1)").bind(LOCK))
            .await?;
    }
    let result = apply_all(&mut conn, backend, sets).await;
    if backend == Backend::Postgres {
        conn.execute(sqlx::query("SELECT pg_advisory_unlock($1)").bind(LOCK))
            .await?;
    }
    result
}

async fn apply_all(conn: &mut sqlx::AnyConnection, backend: Backend, sets: &[&[Migration]]) -> Result<()> {
    for m in sets.iter().flat_map(|s| s.iter()) {
        let sql = m.sql(backend);
        let checksum = hex::encode(Sha256::digest(sql.as_bytes()));
        let applied = sqlx::query("SELECT checksum FROM store_migrations WHERE layer = $1 AND version = $2")
            .bind(m.layer)
            .bind(i64::from(m.version))
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(row) = applied {
            let was: String = row.try_get(0)?;
            if was != checksum {
                return Err(Error::Migration {
                    layer: m.layer.into(),
                    version: m.version,
                    reason: "it was edited after being applied; add a new migration instead".into(),
                });
            }
            continue;
        }
        let fail = |e: sqlx::Error| Error::Migration {
            layer: m.layer.into(),
            version: m.version,
            reason: e.to_string(),
        };
        sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
        let applied = async {
            sqlx::raw_sql(sql).execute(&mut *conn).await?;
            sqlx::query(
                "INSERT INTO store_migrations (layer, version, name, checksum, applied_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(m.layer)
            .bind(i64::from(m.version))
            .bind(m.name)
            .bind(&checksum)
            .bind(strata_core::Clock::now_ms(&strata_core::SystemClock))
            .execute(&mut *conn)
            .await?;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        match applied {
            Ok(()) => {
                sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
                tracing::info!(
                    layer = m.layer,
                    version = m.version,
                    name = m.name,
                    "migration applied"
                );
            }
            Err(e) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                return Err(fail(e));
            }
        }
    }
    Ok(())
}

/// The store's own tables.
pub(crate) const STORE: &[Migration] = &[
    Migration {
        layer: "store",
        version: 1,
        name: "event log",
        sqlite: "CREATE TABLE store_events (
        seq BIGINT PRIMARY KEY, at BIGINT NOT NULL, kind TEXT NOT NULL,
        subject TEXT NOT NULL, data TEXT NOT NULL)",
        postgres: "CREATE TABLE store_events (
        seq BIGINT PRIMARY KEY, at BIGINT NOT NULL, kind TEXT NOT NULL,
        subject TEXT NOT NULL, data TEXT NOT NULL)",
    },
    Migration {
        layer: "store",
        version: 2,
        name: "the event's seq is SQLite's rowid (one B-tree, not two)",
        sqlite: "CREATE TABLE store_events_v2 (
            seq INTEGER PRIMARY KEY, at BIGINT NOT NULL, kind TEXT NOT NULL,
            subject TEXT NOT NULL, data TEXT NOT NULL);
            INSERT INTO store_events_v2 SELECT seq, at, kind, subject, data FROM store_events;
            DROP TABLE store_events;
            ALTER TABLE store_events_v2 RENAME TO store_events",
        postgres: "SELECT 1",
    },
];
