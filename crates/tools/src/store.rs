//! Every SQL statement of the tools layer (tables `tl_…`).
//!
//! Writes go through [`Store::write`] and only run SQL; reads use the pool.

use std::sync::{Arc, LazyLock};

use serde_json::Value;
use sqlx::Row;
use strata_core::{Error, ErrorCode, Result};
use strata_store::Conn as Tx;
use strata_store::{Durability, Params, Store};

use crate::call::{CallRecord, ListCalls};
use crate::catalog::ToolDef;
use crate::connection::{Conn, NewConnection};
use crate::db;
use crate::grant::{Grant, Subject};
use crate::vault::{SealedSecret, SecretInfo};

/// Each logged call writes the last page of every B-tree of `tl_calls`; calls
/// made for no task stay out of the task index, and on SQLite the table is
/// keyed by its id (one B-tree where a rowid table needs two).
pub(crate) const LEANER_CALLS_POSTGRES: &str = "
DROP INDEX tl_calls_task;
CREATE INDEX tl_calls_task ON tl_calls (task, id) WHERE task IS NOT NULL;
";

/// As [`LEANER_CALLS_POSTGRES`], with the table rebuilt `WITHOUT ROWID`.
pub(crate) const LEANER_CALLS_SQLITE: &str = "
CREATE TABLE tl_calls_v3 (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    agent TEXT NOT NULL,
    task TEXT,
    tool TEXT NOT NULL,
    arguments_digest TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    attempts BIGINT NOT NULL,
    latency_us BIGINT NOT NULL,
    request_bytes BIGINT NOT NULL,
    response_bytes BIGINT NOT NULL,
    cost_key TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO tl_calls_v3 SELECT id, at, agent, task, tool, arguments_digest, status, error, attempts, latency_us, request_bytes, response_bytes, cost_key FROM tl_calls;
DROP TABLE tl_calls;
ALTER TABLE tl_calls_v3 RENAME TO tl_calls;
CREATE INDEX tl_calls_agent ON tl_calls (agent, id);
CREATE INDEX tl_calls_tool ON tl_calls (tool, id);
CREATE INDEX tl_calls_task ON tl_calls (task, id) WHERE task IS NOT NULL;
";

pub(crate) const SCHEMA: &str = "
CREATE TABLE tl_secrets (
    name TEXT PRIMARY KEY,
    description TEXT,
    sealed TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE tl_connections (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    synced_at BIGINT NOT NULL
);
CREATE TABLE tl_tools (
    connection_id TEXT NOT NULL REFERENCES tl_connections (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    input_schema TEXT NOT NULL,
    idempotent BIGINT NOT NULL,
    binding TEXT NOT NULL,
    PRIMARY KEY (connection_id, name)
);
CREATE TABLE tl_grants (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    tools TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE tl_calls (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    agent TEXT NOT NULL,
    task TEXT,
    tool TEXT NOT NULL,
    arguments_digest TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    attempts BIGINT NOT NULL,
    latency_us BIGINT NOT NULL,
    request_bytes BIGINT NOT NULL,
    response_bytes BIGINT NOT NULL,
    cost_key TEXT NOT NULL
);
CREATE INDEX tl_calls_agent ON tl_calls (agent, id);
CREATE INDEX tl_calls_tool ON tl_calls (tool, id);
CREATE INDEX tl_calls_task ON tl_calls (task, id);
";

/// Version 2: the upstream's output schema beside the input schema.
pub(crate) const OUTPUT_SCHEMA: &str = "ALTER TABLE tl_tools ADD COLUMN output_schema TEXT;";

/// Version 4: whether a tool is read-only (false until its connection syncs).
pub(crate) const READ_ONLY: &str = "ALTER TABLE tl_tools ADD COLUMN read_only BIGINT NOT NULL DEFAULT 0;";

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("corrupt {what} row: {e}"))
}

// --- vault ---

const SECRET_COLUMNS: &str = "name, description, sealed, version, created_at, updated_at";

fn read_secret(r: &sqlx::any::AnyRow) -> Result<SealedSecret> {
    let sealed: String = r.try_get(2).map_err(db)?;
    Ok(SealedSecret {
        name: r.try_get(0).map_err(db)?,
        description: r.try_get(1).map_err(db)?,
        sealed: hex::decode(sealed).map_err(|e| corrupt("secret", e))?,
        version: r.try_get(3).map_err(db)?,
        created_at: r.try_get(4).map_err(db)?,
        updated_at: r.try_get(5).map_err(db)?,
    })
}

pub(crate) async fn put_secret(
    store: &Store,
    name: String,
    description: Option<String>,
    sealed: Vec<u8>,
    now: i64,
) -> Result<SecretInfo> {
    store
        .write(move |c: &mut Tx| {
            Box::pin(async move {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO tl_secrets ({SECRET_COLUMNS}) VALUES ($1, $2, $3, 1, $4, $4)
                     ON CONFLICT (name) DO UPDATE SET description = excluded.description,
                        sealed = excluded.sealed, version = tl_secrets.version + 1,
                        updated_at = excluded.updated_at
                     RETURNING {SECRET_COLUMNS}"
                )))
                .bind(&name)
                .bind(&description)
                .bind(hex::encode(&sealed))
                .bind(now)
                .fetch_one(&mut *c)
                .await
                .map_err(db)?;
                Ok(read_secret(&row)?.info())
            })
        })
        .await
}

/// Replaces a secret's value, keeping its description (a rotated refresh token).
pub(crate) async fn replace_secret_value(
    store: &Store,
    name: String,
    sealed: Vec<u8>,
    now: i64,
) -> Result<()> {
    store
        .write(move |c: &mut Tx| {
            Box::pin(async move {
                sqlx::query(
                    "UPDATE tl_secrets SET sealed = $1, version = version + 1, updated_at = $2 WHERE name = $3",
                )
                .bind(hex::encode(&sealed))
                .bind(now)
                .bind(&name)
                .execute(&mut *c)
                .await
                .map_err(db)?;
                Ok(())
            })
        })
        .await
}

pub(crate) async fn secrets(store: &Store) -> Result<Vec<SealedSecret>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SECRET_COLUMNS} FROM tl_secrets ORDER BY name"
    )))
    .fetch_all(store.pool())
    .await
    .map_err(db)?;
    rows.iter().map(read_secret).collect()
}

pub(crate) async fn secret(store: &Store, name: &str) -> Result<Option<SealedSecret>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SECRET_COLUMNS} FROM tl_secrets WHERE name = $1"
    )))
    .bind(name)
    .fetch_optional(store.pool())
    .await
    .map_err(db)?;
    row.as_ref().map(read_secret).transpose()
}

pub(crate) async fn delete_secret(store: &Store, name: String) -> Result<bool> {
    store
        .write(move |c: &mut Tx| {
            Box::pin(async move {
                let done = sqlx::query("DELETE FROM tl_secrets WHERE name = $1")
                    .bind(&name)
                    .execute(&mut *c)
                    .await
                    .map_err(db)?;
                Ok(done.rows_affected() > 0)
            })
        })
        .await
}

// --- connections and tools ---

async fn insert_tools(c: &mut Tx, conn_id: &str, defs: &[ToolDef]) -> Result<()> {
    for d in defs {
        sqlx::query(
            "INSERT INTO tl_tools (connection_id, name, description, input_schema, idempotent, binding, output_schema, read_only)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(conn_id)
        .bind(&d.upstream_name)
        .bind(&d.description)
        .bind(d.input_schema.to_string())
        .bind(i64::from(d.idempotent))
        .bind(d.binding.to_string())
        .bind(d.output_schema.as_ref().map(Value::to_string))
        .bind(i64::from(d.read_only))
        .execute(&mut *c)
        .await
        .map_err(|e| {
            let e = strata_store::Error::from(e);
            if e.is_unique_violation() {
                Error::new(
                    ErrorCode::InvalidConnection,
                    format!("the upstream lists tool '{}' twice", d.upstream_name),
                )
            } else {
                e.into()
            }
        })?;
    }
    Ok(())
}

pub(crate) async fn insert_connection(store: &Store, conn: &Conn, defs: Vec<ToolDef>) -> Result<()> {
    let spec = serde_json::to_string(&conn.spec).map_err(Error::internal)?;
    let (id, name, kind) = (
        conn.id.clone(),
        conn.name.clone(),
        conn.spec.upstream.kind().to_string(),
    );
    let (created, synced) = (conn.created_at, conn.synced_at);
    store
        .write(move |c: &mut Tx| {
            Box::pin(async move {
                let inserted = sqlx::query(
                    "INSERT INTO tl_connections (id, name, kind, spec, created_at, synced_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&id)
                .bind(&name)
                .bind(&kind)
                .bind(&spec)
                .bind(created)
                .bind(synced)
                .execute(&mut *c)
                .await;
                if let Err(e) = inserted {
                    let e = strata_store::Error::from(e);
                    if e.is_unique_violation() {
                        return Err(Error::new(
                            ErrorCode::Conflict,
                            format!("a connection named '{name}' already exists"),
                        ));
                    }
                    return Err(e.into());
                }
                insert_tools(c, &id, &defs).await
            })
        })
        .await
}

pub(crate) async fn replace_tools(
    store: &Store,
    conn_id: String,
    defs: Vec<ToolDef>,
    now: i64,
) -> Result<()> {
    store
        .write(move |c: &mut Tx| {
            Box::pin(async move {
                let found = sqlx::query("UPDATE tl_connections SET synced_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(&conn_id)
                    .execute(&mut *c)
                    .await
                    .map_err(db)?;
                if found.rows_affected() == 0 {
                    return Err(Error::not_found("connection", &conn_id));
                }
                sqlx::query("DELETE FROM tl_tools WHERE connection_id = $1")
                    .bind(&conn_id)
                    .execute(&mut *c)
                    .await
                    .map_err(db)?;
                insert_tools(c, &conn_id, &defs).await
            })
        })
        .await
}

pub(crate) async fn delete_connection(store: &Store, id: String) -> Result<()> {
    store
        .write(move |c: &mut Tx| {
            Box::pin(async move {
                sqlx::query("DELETE FROM tl_tools WHERE connection_id = $1")
                    .bind(&id)
                    .execute(&mut *c)
                    .await
                    .map_err(db)?;
                sqlx::query("DELETE FROM tl_connections WHERE id = $1")
                    .bind(&id)
                    .execute(&mut *c)
                    .await
                    .map_err(db)?;
                Ok(())
            })
        })
        .await
}

pub(crate) async fn connections(store: &Store) -> Result<Vec<Arc<Conn>>> {
    let rows = sqlx::query("SELECT id, spec, created_at, synced_at FROM tl_connections ORDER BY name")
        .fetch_all(store.pool())
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            let spec: String = r.try_get(1).map_err(db)?;
            let spec: NewConnection = serde_json::from_str(&spec).map_err(|e| corrupt("connection", e))?;
            Ok(Arc::new(Conn::parse(
                r.try_get(0).map_err(db)?,
                spec,
                r.try_get(2).map_err(db)?,
                r.try_get(3).map_err(db)?,
            )?))
        })
        .collect()
}

pub(crate) async fn all_tools(store: &Store) -> Result<Vec<(String, ToolDef)>> {
    let rows = sqlx::query(
        "SELECT connection_id, name, description, input_schema, idempotent, binding, output_schema, read_only FROM tl_tools ORDER BY connection_id, name",
    )
    .fetch_all(store.pool())
    .await
    .map_err(db)?;
    rows.iter()
        .map(|r| {
            let schema: String = r.try_get(3).map_err(db)?;
            let binding: String = r.try_get(5).map_err(db)?;
            let output: Option<String> = r.try_get(6).map_err(db)?;
            Ok((
                r.try_get(0).map_err(db)?,
                ToolDef {
                    upstream_name: r.try_get(1).map_err(db)?,
                    description: r.try_get(2).map_err(db)?,
                    input_schema: serde_json::from_str(&schema).map_err(|e| corrupt("tool", e))?,
                    output_schema: output
                        .map(|o| serde_json::from_str(&o))
                        .transpose()
                        .map_err(|e| corrupt("tool", e))?,
                    idempotent: r.try_get::<i64, _>(4).map_err(db)? != 0,
                    read_only: r.try_get::<i64, _>(7).map_err(db)? != 0,
                    binding: serde_json::from_str(&binding).map_err(|e| corrupt("tool", e))?,
                },
            ))
        })
        .collect()
}

// --- grants ---

pub(crate) async fn insert_grant(store: &Store, g: Grant, now: i64) -> Result<()> {
    let subject = serde_json::to_string(&g.subject).map_err(Error::internal)?;
    store
        .write(move |c: &mut Tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO tl_grants (id, subject, tools, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(&g.id)
                    .bind(&subject)
                    .bind(&g.tools)
                    .bind(now)
                    .execute(&mut *c)
                    .await
                    .map_err(db)?;
                Ok(())
            })
        })
        .await
}

pub(crate) async fn grants(store: &Store) -> Result<Vec<Grant>> {
    let rows = sqlx::query("SELECT id, subject, tools, created_at FROM tl_grants ORDER BY id")
        .fetch_all(store.pool())
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            let subject: String = r.try_get(1).map_err(db)?;
            let subject: Subject = serde_json::from_str(&subject).map_err(|e| corrupt("grant", e))?;
            Ok(Grant {
                id: r.try_get(0).map_err(db)?,
                subject,
                tools: r.try_get(2).map_err(db)?,
                created_at: strata_core::time::rfc3339(r.try_get(3).map_err(db)?),
            })
        })
        .collect()
}

pub(crate) async fn delete_grant(store: &Store, id: String) -> Result<bool> {
    store
        .write(move |c: &mut Tx| {
            Box::pin(async move {
                let done = sqlx::query("DELETE FROM tl_grants WHERE id = $1")
                    .bind(&id)
                    .execute(&mut *c)
                    .await
                    .map_err(db)?;
                Ok(done.rows_affected() > 0)
            })
        })
        .await
}

// --- call log ---

const CALL_COLUMNS: &str = "id, at, agent, task, tool, arguments_digest, status, error, attempts, \
                            latency_us, request_bytes, response_bytes, cost_key";

/// The insert of one call-log row, built once.
static INSERT_CALL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO tl_calls ({CALL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    )
});

/// Queues the insert of one call-log row and returns once it is queued (see
/// the `call` module doc for why nobody waits for it). A failure is logged.
pub(crate) async fn queue_call(store: &Store, r: CallRecord, at: i64) {
    let id = r.id.clone();
    // Its durability is the kernel's outcome write's, queued after it.
    let queued = store
        .write_queued_as(Durability::Committed, move |c: &mut Tx| {
            Box::pin(async move {
                let done = sqlx::query(sqlx::AssertSqlSafe(INSERT_CALL.as_str()))
                    .bind(&r.id)
                    .bind(at)
                    .bind(&r.agent)
                    .bind(&r.task)
                    .bind(&r.tool)
                    .bind(&r.arguments_digest)
                    .bind(&r.status)
                    .bind(&r.error)
                    .bind(i64::from(r.attempts))
                    .bind(r.latency_us as i64)
                    .bind(r.request_bytes as i64)
                    .bind(r.response_bytes as i64)
                    .bind(&r.cost_key)
                    .execute(&mut *c)
                    .await;
                if let Err(e) = &done {
                    tracing::error!(error = %e, call = %r.id, "the call log row could not be written");
                }
                done.map(|_| ()).map_err(db)
            })
        })
        .await;
    if let Err(e) = queued {
        tracing::error!(code = %e.code, call = %id, "the call log row could not be queued");
    }
}

pub(crate) async fn calls(store: &Store, f: &ListCalls, limit: i64) -> Result<Vec<CallRecord>> {
    let mut p = Params::new(store.backend());
    let mut wheres = Vec::new();
    let mut binds: Vec<String> = Vec::new();
    for (col, v) in [
        ("agent", &f.agent),
        ("tool", &f.tool),
        ("task", &f.task),
        ("id <", &f.after),
    ] {
        if let Some(v) = v {
            let op = if col.ends_with('<') { "" } else { " =" };
            wheres.push(format!("{col}{op} {}", p.one()));
            binds.push(v.clone());
        }
    }
    let filter = if wheres.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", wheres.join(" AND "))
    };
    let sql = format!(
        "SELECT {CALL_COLUMNS} FROM tl_calls {filter} ORDER BY id DESC LIMIT {}",
        p.one()
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for b in &binds {
        q = q.bind(b);
    }
    let rows = q.bind(limit).fetch_all(store.pool()).await.map_err(db)?;
    rows.iter()
        .map(|r| {
            Ok(CallRecord {
                id: r.try_get(0).map_err(db)?,
                at: strata_core::time::rfc3339(r.try_get(1).map_err(db)?),
                agent: r.try_get(2).map_err(db)?,
                task: r.try_get(3).map_err(db)?,
                tool: r.try_get(4).map_err(db)?,
                arguments_digest: r.try_get(5).map_err(db)?,
                status: r.try_get(6).map_err(db)?,
                error: r.try_get(7).map_err(db)?,
                attempts: u32::try_from(r.try_get::<i64, _>(8).map_err(db)?).unwrap_or(0),
                latency_us: r.try_get::<i64, _>(9).map_err(db)?.max(0) as u64,
                request_bytes: r.try_get::<i64, _>(10).map_err(db)?.max(0) as u64,
                response_bytes: r.try_get::<i64, _>(11).map_err(db)?.max(0) as u64,
                cost_key: r.try_get(12).map_err(db)?,
            })
        })
        .collect()
}
