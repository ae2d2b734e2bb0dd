//! Fresh, isolated databases for tests, on either backend.
//!
//! SQLite tests get a file in a temporary folder. PostgreSQL tests get their own
//! schema in the database named by `STRATA_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/test`), so concurrent runs never collide;
//! schemas left by runs over an hour old are dropped on the way.

use std::time::{Duration, SystemTime};

use sqlx::{Connection, Executor, Row};

use crate::Backend;

/// The PostgreSQL database tests use.
pub fn postgres_base_url() -> String {
    std::env::var("STRATA_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A fresh database URL for `backend`. For SQLite the file lives in `dir`.
pub async fn fresh_url(backend: Backend, dir: &std::path::Path) -> crate::Result<String> {
    match backend {
        Backend::Sqlite => Ok(crate::sqlite_url(dir)),
        Backend::Postgres => {
            sqlx::any::install_default_drivers();
            let base = postgres_base_url();
            let mut conn = sqlx::AnyConnection::connect(&base).await?;
            drop_stale_schemas(&mut conn).await?;
            let schema = format!(
                "strata_test_{}",
                ulid::Ulid::new().to_string().to_ascii_lowercase()
            );
            conn.execute(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .await?;
            let sep = if base.contains('?') { '&' } else { '?' };
            Ok(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
        }
    }
}

async fn drop_stale_schemas(conn: &mut sqlx::AnyConnection) -> crate::Result<()> {
    let rows = sqlx::query(
        "SELECT schema_name::text FROM information_schema.schemata WHERE schema_name LIKE 'strata_test_%'",
    )
    .fetch_all(&mut *conn)
    .await?;
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for r in rows {
        let name: String = r.try_get(0)?;
        let made = name
            .strip_prefix("strata_test_")
            .and_then(|u| ulid::Ulid::from_string(u).ok())
            .map(|u| u.datetime());
        if made.is_some_and(|t| t < hour_ago) {
            conn.execute(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE"
            )))
            .await?;
        }
    }
    Ok(())
}
