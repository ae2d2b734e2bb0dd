//! The compute layer's SQL, all of it: `cmp_sandboxes`, `cmp_snapshots`,
//! `cmp_templates`, `cmp_usage`.

use sqlx::Row;
use sqlx::any::AnyRow;
use strata_core::{Error, Result};
use strata_store::{Migration, Queued, Store};

use crate::exec::Backend;
use crate::sandbox::{SandboxSpec, SandboxState, Snapshot, Stored};
use crate::template::Template;
use crate::usage::{UsageFilter, UsageRecord, UsageTotals};

/// The compute layer's tables.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        layer: "compute",
        version: 1,
        name: "sandboxes, snapshots and templates",
        sqlite: SCHEMA,
        postgres: SCHEMA,
    },
    Migration {
        layer: "compute",
        version: 2,
        name: "snapshot owners and stored usage",
        sqlite: SCHEMA_2,
        postgres: SCHEMA_2,
    },
    Migration {
        layer: "compute",
        version: 3,
        name: "sandbox backends",
        sqlite: SCHEMA_3,
        postgres: SCHEMA_3,
    },
];

const SCHEMA: &str = "
CREATE TABLE cmp_sandboxes (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    owner_agent TEXT,
    owner_task TEXT,
    from_snapshot TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    expires_at BIGINT
);
CREATE INDEX cmp_sandboxes_state ON cmp_sandboxes (state, last_used_at);
CREATE TABLE cmp_snapshots (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL,
    spec TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE cmp_templates (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
";

// Snapshots taken before version 2 have no owner: only operators see them.
const SCHEMA_2: &str = "
ALTER TABLE cmp_snapshots ADD COLUMN owner_agent TEXT;
CREATE INDEX cmp_snapshots_owner ON cmp_snapshots (owner_agent, id);
CREATE TABLE cmp_usage (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    agent_id TEXT,
    task_id TEXT,
    sandbox_id TEXT,
    wall_ms BIGINT NOT NULL,
    cpu_ms BIGINT NOT NULL,
    peak_memory_bytes BIGINT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX cmp_usage_agent ON cmp_usage (agent_id, id);
CREATE INDEX cmp_usage_task ON cmp_usage (task_id, id);
CREATE INDEX cmp_usage_sandbox ON cmp_usage (sandbox_id, id);
";

// Sandboxes created before version 3 ran processes.
const SCHEMA_3: &str = "
ALTER TABLE cmp_sandboxes ADD COLUMN backend TEXT NOT NULL DEFAULT 'process';
";

fn db(e: sqlx::Error) -> Error {
    strata_store::Error::from(e).into()
}

fn corrupt(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("corrupt compute row: {e}"))
}

const SANDBOX_COLUMNS: &str = "id, state, backend, spec, owner_agent, owner_task, from_snapshot, created_at, updated_at, last_used_at, expires_at";

fn read_sandbox(r: &AnyRow) -> Result<Stored> {
    let state: String = r.try_get("state").map_err(db)?;
    let spec: String = r.try_get("spec").map_err(db)?;
    let backend: String = r.try_get("backend").map_err(db)?;
    let mut spec: SandboxSpec = serde_json::from_str(&spec).map_err(corrupt)?;
    spec.backend = Backend::parse(&backend).ok_or_else(|| corrupt(&backend))?;
    Ok(Stored {
        id: r.try_get("id").map_err(db)?,
        state: SandboxState::parse(&state).ok_or_else(|| corrupt(&state))?,
        spec,
        owner_agent: r.try_get("owner_agent").map_err(db)?,
        owner_task: r.try_get("owner_task").map_err(db)?,
        from_snapshot: r.try_get("from_snapshot").map_err(db)?,
        created_at: r.try_get("created_at").map_err(db)?,
        updated_at: r.try_get("updated_at").map_err(db)?,
        last_used_at: r.try_get("last_used_at").map_err(db)?,
        expires_at: r.try_get("expires_at").map_err(db)?,
    })
}

pub(crate) async fn insert_sandbox(store: &Store, s: &Stored) -> Result<()> {
    let spec = serde_json::to_string(&s.spec).map_err(Error::internal)?;
    let s = s.clone();
    store
        .write(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO cmp_sandboxes (id, state, spec, owner_agent, owner_task, from_snapshot, created_at, updated_at, last_used_at, expires_at, backend)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(s.id)
                .bind(s.state.as_str())
                .bind(spec)
                .bind(s.owner_agent)
                .bind(s.owner_task)
                .bind(s.from_snapshot)
                .bind(s.created_at)
                .bind(s.updated_at)
                .bind(s.last_used_at)
                .bind(s.expires_at)
                .bind(s.spec.backend.as_str())
                .execute(&mut *c)
                .await
                .map_err(db)?;
                Ok(())
            })
        })
        .await
}

pub(crate) async fn set_state(
    store: &Store,
    id: &str,
    state: SandboxState,
    now: i64,
    last_used_at: i64,
) -> Result<()> {
    let id = id.to_string();
    store
        .write(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "UPDATE cmp_sandboxes SET state = $1, updated_at = $2, last_used_at = $3 WHERE id = $4",
                )
                .bind(state.as_str())
                .bind(now)
                .bind(last_used_at)
                .bind(id)
                .execute(&mut *c)
                .await
                .map_err(db)?;
                Ok(())
            })
        })
        .await
}

pub(crate) async fn delete_sandbox(store: &Store, id: &str) -> Result<()> {
    let id = id.to_string();
    store
        .write(move |c| {
            Box::pin(async move {
                sqlx::query("DELETE FROM cmp_sandboxes WHERE id = $1")
                    .bind(id)
                    .execute(&mut *c)
                    .await
                    .map_err(db)?;
                Ok(())
            })
        })
        .await
}

pub(crate) async fn sandbox(store: &Store, id: &str) -> Result<Option<Stored>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SANDBOX_COLUMNS} FROM cmp_sandboxes WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(store.pool())
    .await
    .map_err(db)?;
    row.as_ref().map(read_sandbox).transpose()
}

pub(crate) async fn sandboxes(store: &Store, state: Option<SandboxState>) -> Result<Vec<Stored>> {
    let rows = match state {
        Some(s) => sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SANDBOX_COLUMNS} FROM cmp_sandboxes WHERE state = $1 ORDER BY id"
        )))
        .bind(s.as_str())
        .fetch_all(store.pool())
        .await
        .map_err(db)?,
        None => sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SANDBOX_COLUMNS} FROM cmp_sandboxes ORDER BY id"
        )))
        .fetch_all(store.pool())
        .await
        .map_err(db)?,
    };
    rows.iter().map(read_sandbox).collect()
}

pub(crate) async fn insert_snapshot(store: &Store, s: &Snapshot, spec: &str) -> Result<()> {
    let (s, spec) = (s.clone(), spec.to_string());
    store
        .write(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO cmp_snapshots (id, sandbox_id, spec, bytes, created_at, owner_agent) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(s.id)
                .bind(s.sandbox_id)
                .bind(spec)
                .bind(s.bytes as i64)
                .bind(s.created_at)
                .bind(s.owner_agent)
                .execute(&mut *c)
                .await
                .map_err(db)?;
                Ok(())
            })
        })
        .await
}

fn read_snapshot(r: &AnyRow) -> Result<Snapshot> {
    let bytes: i64 = r.try_get("bytes").map_err(db)?;
    Ok(Snapshot {
        id: r.try_get("id").map_err(db)?,
        sandbox_id: r.try_get("sandbox_id").map_err(db)?,
        owner_agent: r.try_get("owner_agent").map_err(db)?,
        bytes: bytes.max(0) as u64,
        created_at: r.try_get("created_at").map_err(db)?,
    })
}

/// A snapshot and the spec of the sandbox it was taken from.
pub(crate) async fn snapshot(store: &Store, id: &str) -> Result<Option<(Snapshot, String)>> {
    let row = sqlx::query(
        "SELECT id, sandbox_id, owner_agent, spec, bytes, created_at FROM cmp_snapshots WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(store.pool())
    .await
    .map_err(db)?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some((read_snapshot(&r)?, r.try_get("spec").map_err(db)?)))
}

/// Snapshots in id (creation) order after `after`, at most `limit + 1` of
/// them (the extra one tells the caller a next page exists).
pub(crate) async fn snapshots(
    store: &Store,
    owner: Option<&str>,
    sandbox: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Snapshot>> {
    let mut sql = String::from(
        "SELECT id, sandbox_id, owner_agent, bytes, created_at FROM cmp_snapshots WHERE id > $1",
    );
    let mut binds = vec![after.unwrap_or("").to_string()];
    for (column, value) in [("owner_agent", owner), ("sandbox_id", sandbox)] {
        if let Some(v) = value {
            binds.push(v.to_string());
            sql.push_str(&format!(" AND {column} = ${}", binds.len()));
        }
    }
    sql.push_str(&format!(" ORDER BY id LIMIT ${}", binds.len() + 1));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for b in binds {
        q = q.bind(b);
    }
    let rows = q.bind(limit + 1).fetch_all(store.pool()).await.map_err(db)?;
    rows.iter().map(read_snapshot).collect()
}

pub(crate) async fn delete_snapshot(store: &Store, id: &str) -> Result<bool> {
    let id = id.to_string();
    store
        .write(move |c| {
            Box::pin(async move {
                let r = sqlx::query("DELETE FROM cmp_snapshots WHERE id = $1")
                    .bind(id)
                    .execute(&mut *c)
                    .await
                    .map_err(db)?;
                Ok(r.rows_affected() > 0)
            })
        })
        .await
}

pub(crate) async fn put_template(store: &Store, t: &Template, now: i64) -> Result<()> {
    let spec = serde_json::to_string(t).map_err(Error::internal)?;
    let name = t.name.clone();
    store
        .write(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO cmp_templates (name, spec, created_at, updated_at) VALUES ($1, $2, $3, $3)
                     ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
                )
                .bind(name)
                .bind(spec)
                .bind(now)
                .execute(&mut *c)
                .await
                .map_err(db)?;
                Ok(())
            })
        })
        .await
}

pub(crate) async fn template(store: &Store, name: &str) -> Result<Option<Template>> {
    let row = sqlx::query("SELECT spec FROM cmp_templates WHERE name = $1")
        .bind(name)
        .fetch_optional(store.pool())
        .await
        .map_err(db)?;
    let Some(r) = row else { return Ok(None) };
    let spec: String = r.try_get("spec").map_err(db)?;
    serde_json::from_str(&spec).map(Some).map_err(corrupt)
}

pub(crate) async fn templates(store: &Store) -> Result<Vec<Template>> {
    let rows = sqlx::query("SELECT spec FROM cmp_templates ORDER BY name")
        .fetch_all(store.pool())
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            let spec: String = r.try_get("spec").map_err(db)?;
            serde_json::from_str(&spec).map_err(corrupt)
        })
        .collect()
}

pub(crate) async fn delete_template(store: &Store, name: &str) -> Result<bool> {
    let name = name.to_string();
    store
        .write(move |c| {
            Box::pin(async move {
                let r = sqlx::query("DELETE FROM cmp_templates WHERE name = $1")
                    .bind(name)
                    .execute(&mut *c)
                    .await
                    .map_err(db)?;
                Ok(r.rows_affected() > 0)
            })
        })
        .await
}

/// Queues a usage record; the [`Queued`] resolves once it has committed.
pub(crate) async fn queue_usage(store: &Store, u: UsageRecord, at: i64) -> Result<Queued<(), Error>> {
    store
        .write_queued(move |c| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO cmp_usage (id, kind, status, agent_id, task_id, sandbox_id, wall_ms, cpu_ms, peak_memory_bytes, at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(u.id)
                .bind(u.kind)
                .bind(u.status)
                .bind(u.agent_id)
                .bind(u.task_id)
                .bind(u.sandbox_id)
                .bind(clamp(u.wall_ms))
                .bind(clamp(u.cpu_ms))
                .bind(clamp(u.peak_memory_bytes))
                .bind(at)
                .execute(&mut *c)
                .await
                .map_err(db)?;
                Ok(())
            })
        })
        .await
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The `WHERE` clause of a usage filter and its values (`$1…`).
fn usage_where(f: &UsageFilter) -> (String, Vec<String>) {
    let mut sql = String::from(" WHERE 1 = 1");
    let mut binds = Vec::new();
    for (column, value) in [
        ("agent_id", &f.agent),
        ("task_id", &f.task),
        ("sandbox_id", &f.sandbox),
    ] {
        if let Some(v) = value {
            binds.push(v.clone());
            sql.push_str(&format!(" AND {column} = ${}", binds.len()));
        }
    }
    (sql, binds)
}

/// Usage records matching `f` after `after`, at most `limit + 1`, oldest first.
pub(crate) async fn usage(
    store: &Store,
    f: &UsageFilter,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<UsageRecord>> {
    let (mut sql, mut binds) = usage_where(f);
    binds.push(after.unwrap_or("").to_string());
    sql = format!(
        "SELECT id, kind, status, agent_id, task_id, sandbox_id, wall_ms, cpu_ms, peak_memory_bytes, at FROM cmp_usage{sql} AND id > ${} ORDER BY id LIMIT ${}",
        binds.len(),
        binds.len() + 1
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for b in binds {
        q = q.bind(b);
    }
    let rows = q.bind(limit + 1).fetch_all(store.pool()).await.map_err(db)?;
    rows.iter()
        .map(|r| {
            let n = |c: &str| -> Result<u64> { Ok(r.try_get::<i64, _>(c).map_err(db)?.max(0) as u64) };
            Ok(UsageRecord {
                id: r.try_get("id").map_err(db)?,
                kind: r.try_get("kind").map_err(db)?,
                status: r.try_get("status").map_err(db)?,
                agent_id: r.try_get("agent_id").map_err(db)?,
                task_id: r.try_get("task_id").map_err(db)?,
                sandbox_id: r.try_get("sandbox_id").map_err(db)?,
                wall_ms: n("wall_ms")?,
                cpu_ms: n("cpu_ms")?,
                peak_memory_bytes: n("peak_memory_bytes")?,
                at: strata_core::time::rfc3339(r.try_get("at").map_err(db)?),
            })
        })
        .collect()
}

/// Sums over every record matching `f` (not only one page).
pub(crate) async fn usage_totals(store: &Store, f: &UsageFilter) -> Result<UsageTotals> {
    let (filter, binds) = usage_where(f);
    // PostgreSQL sums BIGINTs as NUMERIC; the casts keep every backend's answer an integer.
    let sql = format!(
        "SELECT CAST(COUNT(*) AS BIGINT) AS records,
                CAST(COALESCE(SUM(wall_ms), 0) AS BIGINT) AS wall_ms,
                CAST(COALESCE(SUM(cpu_ms), 0) AS BIGINT) AS cpu_ms,
                CAST(COALESCE(MAX(peak_memory_bytes), 0) AS BIGINT) AS peak_memory_bytes
         FROM cmp_usage{filter}"
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for b in binds {
        q = q.bind(b);
    }
    let r = q.fetch_one(store.pool()).await.map_err(db)?;
    let n = |c: &str| -> Result<u64> { Ok(r.try_get::<i64, _>(c).map_err(db)?.max(0) as u64) };
    Ok(UsageTotals {
        records: n("records")?,
        wall_ms: n("wall_ms")?,
        cpu_ms: n("cpu_ms")?,
        peak_memory_bytes: n("peak_memory_bytes")?,
    })
}
