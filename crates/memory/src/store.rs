//! Every SQL statement of the memory layer, and its migrations.
//!
//! Tables (all `mem_`):
//! - `mem_versions`: one row per version of a memory. A version is never
//!   rewritten except to close it (`valid_to`, `closed_at`, `closed_by`), so the
//!   text of every past version stays. `seq` grows on every insert or close, in
//!   commit order (the store has one writer, serialised across replicas), and is
//!   what the in-process index follows to stay in step with the database.
//! - `mem_sources`: every source object of every add that produced, updated or
//!   confirmed a memory, verbatim, in arrival order.
//! - `mem_links`: the entity graph: entities and relations of each version.
//! - `mem_grants`: memories an agent may read besides its own (from handoffs).
//! - `mem_handoffs`: context handed from one agent to another.

use sqlx::Row;
use strata_core::{Error, Result};
use strata_store::Conn;
use strata_store::{Migration, Params, Store};

/// The memory layer's tables.
pub const MIGRATIONS: &[Migration] = &[Migration {
    layer: "memory",
    version: 1,
    name: "versions, sources, entity links, grants and handoffs",
    sqlite: SCHEMA_SQLITE,
    postgres: SCHEMA_POSTGRES,
}];

macro_rules! schema {
    ($blob:literal) => {
        concat!(
            "
CREATE TABLE mem_versions (
    version_id TEXT PRIMARY KEY,
    memory_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    event TEXT NOT NULL,
    memory TEXT NOT NULL,
    hash TEXT NOT NULL,
    scope TEXT NOT NULL,
    user_id TEXT,
    agent_id TEXT,
    run_id TEXT,
    metadata TEXT NOT NULL,
    slot TEXT,
    embedding ",
            $blob,
            ",
    embed_model TEXT,
    valid_from BIGINT NOT NULL,
    valid_to BIGINT,
    recorded_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    closed_at BIGINT,
    closed_by TEXT,
    UNIQUE (memory_id, version)
);
CREATE INDEX mem_versions_seq ON mem_versions (seq);
CREATE INDEX mem_versions_open_hash ON mem_versions (hash, valid_to);
CREATE INDEX mem_versions_open_slot ON mem_versions (scope, slot, valid_to);
CREATE TABLE mem_sources (
    memory_id TEXT NOT NULL,
    n BIGINT NOT NULL,
    version_id TEXT NOT NULL,
    event TEXT NOT NULL,
    source TEXT NOT NULL,
    observed_at BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (memory_id, n)
);
CREATE TABLE mem_links (
    version_id TEXT NOT NULL,
    memory_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    relation TEXT NOT NULL,
    object TEXT NOT NULL
);
CREATE INDEX mem_links_version ON mem_links (version_id);
CREATE TABLE mem_grants (
    memory_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    handoff_id TEXT NOT NULL,
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (memory_id, agent_id)
);
CREATE INDEX mem_grants_agent ON mem_grants (agent_id);
CREATE TABLE mem_handoffs (
    id TEXT PRIMARY KEY,
    from_agent TEXT NOT NULL,
    to_agent TEXT NOT NULL,
    summary TEXT NOT NULL,
    memory_ids TEXT NOT NULL,
    memory_query TEXT,
    task_ids TEXT NOT NULL,
    state TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    created_at BIGINT NOT NULL,
    decided_at BIGINT
);
CREATE INDEX mem_handoffs_to ON mem_handoffs (to_agent, status, id);
"
        )
    };
}

const SCHEMA_SQLITE: &str = schema!("BLOB");
const SCHEMA_POSTGRES: &str = schema!("BYTEA");

pub(crate) fn db(e: sqlx::Error) -> Error {
    strata_store::Error::from(e).into()
}

/// One version row as stored.
#[derive(Debug, Clone)]
pub(crate) struct VersionRow {
    pub version_id: String,
    pub memory_id: String,
    pub version: i64,
    pub seq: i64,
    pub event: String,
    pub memory: String,
    pub hash: String,
    pub scope: String,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub run_id: Option<String>,
    pub metadata: serde_json::Value,
    pub slot: Option<String>,
    pub embedding: Option<Vec<f32>>,
    pub embed_model: Option<String>,
    pub valid_from: i64,
    pub valid_to: Option<i64>,
    pub recorded_at: i64,
    pub created_at: i64,
    pub closed_at: Option<i64>,
    pub closed_by: Option<String>,
}

const VERSION_COLUMNS: &str = "version_id, memory_id, version, seq, event, memory, hash, scope, user_id, agent_id, run_id, \
     metadata, slot, embedding, embed_model, valid_from, valid_to, recorded_at, created_at, closed_at, closed_by";

fn version_row(r: &sqlx::any::AnyRow) -> Result<VersionRow> {
    let metadata: String = r.try_get("metadata").map_err(db)?;
    let embedding: Option<Vec<u8>> = r.try_get("embedding").map_err(db)?;
    Ok(VersionRow {
        version_id: r.try_get("version_id").map_err(db)?,
        memory_id: r.try_get("memory_id").map_err(db)?,
        version: r.try_get("version").map_err(db)?,
        seq: r.try_get("seq").map_err(db)?,
        event: r.try_get("event").map_err(db)?,
        memory: r.try_get("memory").map_err(db)?,
        hash: r.try_get("hash").map_err(db)?,
        scope: r.try_get("scope").map_err(db)?,
        user_id: r.try_get("user_id").map_err(db)?,
        agent_id: r.try_get("agent_id").map_err(db)?,
        run_id: r.try_get("run_id").map_err(db)?,
        metadata: serde_json::from_str(&metadata)
            .map_err(|e| Error::internal(format!("corrupt memory metadata: {e}")))?,
        slot: r.try_get("slot").map_err(db)?,
        embedding: embedding.map(|b| decode_vector(&b)),
        embed_model: r.try_get("embed_model").map_err(db)?,
        valid_from: r.try_get("valid_from").map_err(db)?,
        valid_to: r.try_get("valid_to").map_err(db)?,
        recorded_at: r.try_get("recorded_at").map_err(db)?,
        created_at: r.try_get("created_at").map_err(db)?,
        closed_at: r.try_get("closed_at").map_err(db)?,
        closed_by: r.try_get("closed_by").map_err(db)?,
    })
}

/// Little-endian `f32`s: the same bytes on both backends.
pub(crate) fn encode_vector(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn decode_vector(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A link of the entity graph: `subject —relation→ object`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinkRow {
    pub version_id: String,
    pub subject: String,
    pub relation: String,
    pub object: String,
}

/// Versions inserted or closed after `seq`, oldest change first, with their links.
pub(crate) async fn changes_since(store: &Store, seq: i64) -> Result<(Vec<VersionRow>, Vec<LinkRow>)> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {VERSION_COLUMNS} FROM mem_versions WHERE seq > $1 ORDER BY seq"
    )))
    .bind(seq)
    .fetch_all(store.pool())
    .await
    .map_err(db)?;
    let versions = rows.iter().map(version_row).collect::<Result<Vec<_>>>()?;
    // Links never change after insert, so only those of versions new to the index matter;
    // reading them for every changed version is simpler and just as correct.
    let links = if versions.is_empty() {
        Vec::new()
    } else {
        let rows = sqlx::query(
            "SELECT l.version_id, l.subject, l.relation, l.object FROM mem_links l \
             JOIN mem_versions v ON v.version_id = l.version_id WHERE v.seq > $1",
        )
        .bind(seq)
        .fetch_all(store.pool())
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(LinkRow {
                    version_id: r.try_get(0).map_err(db)?,
                    subject: r.try_get(1).map_err(db)?,
                    relation: r.try_get(2).map_err(db)?,
                    object: r.try_get(3).map_err(db)?,
                })
            })
            .collect::<Result<Vec<_>>>()?
    };
    Ok((versions, links))
}

/// Every version of a memory, oldest first.
pub(crate) async fn versions_of(store: &Store, memory_id: &str) -> Result<Vec<VersionRow>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {VERSION_COLUMNS} FROM mem_versions WHERE memory_id = $1 ORDER BY version"
    )))
    .bind(memory_id)
    .fetch_all(store.pool())
    .await
    .map_err(db)?;
    rows.iter().map(version_row).collect()
}

/// Every version of a memory, oldest first, read inside a write.
pub(crate) async fn versions_of_in(conn: &mut Conn, memory_id: &str) -> Result<Vec<VersionRow>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {VERSION_COLUMNS} FROM mem_versions WHERE memory_id = $1 ORDER BY version"
    )))
    .bind(memory_id)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    rows.iter().map(version_row).collect()
}

/// A source as stored.
#[derive(Debug, Clone)]
pub(crate) struct SourceRow {
    pub memory_id: String,
    pub source: serde_json::Value,
}

/// The sources of the given memories, in arrival order.
pub(crate) async fn sources_of(store: &Store, memory_ids: &[&str]) -> Result<Vec<SourceRow>> {
    if memory_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut p = Params::new(store.backend());
    let sql = format!(
        "SELECT memory_id, source FROM mem_sources \
         WHERE memory_id IN ({}) ORDER BY memory_id, n",
        p.list(memory_ids.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in memory_ids {
        q = q.bind(*id);
    }
    let rows = q.fetch_all(store.pool()).await.map_err(db)?;
    rows.iter()
        .map(|r| {
            let source: String = r.try_get("source").map_err(db)?;
            Ok(SourceRow {
                memory_id: r.try_get("memory_id").map_err(db)?,
                source: serde_json::from_str(&source)
                    .map_err(|e| Error::internal(format!("corrupt memory source: {e}")))?,
            })
        })
        .collect()
}

/// The memories `agent_id` was granted by accepted handoffs.
pub(crate) async fn grants_of(store: &Store, agent_id: &str) -> Result<Vec<String>> {
    let rows = sqlx::query("SELECT memory_id FROM mem_grants WHERE agent_id = $1")
        .bind(agent_id)
        .fetch_all(store.pool())
        .await
        .map_err(db)?;
    rows.iter().map(|r| r.try_get(0).map_err(db)).collect()
}

async fn next_seq(conn: &mut Conn) -> Result<i64> {
    // Safe without a sequence object: every write runs in the store's single writer.
    let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) + 1 FROM mem_versions")
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
    row.try_get(0).map_err(db)
}

/// A version to insert.
#[derive(Debug, Clone)]
pub(crate) struct NewVersion {
    pub version_id: String,
    pub memory_id: String,
    pub version: i64,
    pub event: &'static str,
    pub memory: String,
    pub hash: String,
    pub scope: String,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub run_id: Option<String>,
    pub metadata: serde_json::Value,
    pub slot: Option<String>,
    pub embedding: Option<Vec<f32>>,
    pub embed_model: Option<String>,
    pub valid_from: i64,
    pub recorded_at: i64,
    pub created_at: i64,
    pub links: Vec<(String, String, String)>,
}

pub(crate) async fn insert_version(conn: &mut Conn, v: &NewVersion) -> Result<()> {
    let seq = next_seq(conn).await?;
    sqlx::query(
        "INSERT INTO mem_versions (version_id, memory_id, version, seq, event, memory, hash, scope, user_id, \
         agent_id, run_id, metadata, slot, embedding, embed_model, valid_from, valid_to, recorded_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, NULL, $17, $18)",
    )
    .bind(&v.version_id)
    .bind(&v.memory_id)
    .bind(v.version)
    .bind(seq)
    .bind(v.event)
    .bind(&v.memory)
    .bind(&v.hash)
    .bind(&v.scope)
    .bind(v.user_id.as_deref())
    .bind(v.agent_id.as_deref())
    .bind(v.run_id.as_deref())
    .bind(v.metadata.to_string())
    .bind(v.slot.as_deref())
    .bind(v.embedding.as_deref().map(encode_vector))
    .bind(v.embed_model.as_deref())
    .bind(v.valid_from)
    .bind(v.recorded_at)
    .bind(v.created_at)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    if !v.links.is_empty() {
        let mut p = Params::on(conn);
        let rows: Vec<String> = v.links.iter().map(|_| p.row(5)).collect();
        let sql = format!(
            "INSERT INTO mem_links (version_id, memory_id, subject, relation, object) VALUES {}",
            rows.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (s, r, o) in &v.links {
            q = q.bind(&v.version_id).bind(&v.memory_id).bind(s).bind(r).bind(o);
        }
        q.execute(&mut *conn).await.map_err(db)?;
    }
    Ok(())
}

/// Closes an open version; false when it was already closed (a concurrent change won).
pub(crate) async fn close_version(
    conn: &mut Conn,
    version_id: &str,
    valid_to: i64,
    now: i64,
    closed_by: &str,
) -> Result<bool> {
    let seq = next_seq(conn).await?;
    let done = sqlx::query(
        "UPDATE mem_versions SET valid_to = $1, closed_at = $2, closed_by = $3, seq = $4 \
         WHERE version_id = $5 AND valid_to IS NULL",
    )
    .bind(valid_to)
    .bind(now)
    .bind(closed_by)
    .bind(seq)
    .bind(version_id)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(done.rows_affected() == 1)
}

/// The open version of a memory, read inside a write.
pub(crate) async fn open_version(conn: &mut Conn, memory_id: &str) -> Result<Option<(String, i64, i64)>> {
    let row = sqlx::query(
        "SELECT version_id, version, valid_from FROM mem_versions WHERE memory_id = $1 AND valid_to IS NULL",
    )
    .bind(memory_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.map(|r| {
        Ok((
            r.try_get(0).map_err(db)?,
            r.try_get(1).map_err(db)?,
            r.try_get(2).map_err(db)?,
        ))
    })
    .transpose()
}

/// The open memory holding exactly this content in this scope, read inside a write.
pub(crate) async fn open_by_hash(conn: &mut Conn, hash: &str) -> Result<Option<(String, String)>> {
    let row =
        sqlx::query("SELECT memory_id, version_id FROM mem_versions WHERE hash = $1 AND valid_to IS NULL")
            .bind(hash)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
    row.map(|r| Ok((r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?)))
        .transpose()
}

/// The earliest creation time of a memory, read inside a write.
pub(crate) async fn created_at(conn: &mut Conn, memory_id: &str) -> Result<Option<i64>> {
    let row = sqlx::query("SELECT MIN(created_at) FROM mem_versions WHERE memory_id = $1")
        .bind(memory_id)
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
    row.try_get::<Option<i64>, _>(0).map_err(db)
}

/// Appends a source to a memory unless an equal one is already there; true if appended.
pub(crate) async fn add_source(
    conn: &mut Conn,
    memory_id: &str,
    version_id: &str,
    event: &str,
    source: &serde_json::Value,
    observed_at: i64,
    now: i64,
) -> Result<bool> {
    let text = source.to_string();
    let dup = sqlx::query("SELECT 1 FROM mem_sources WHERE memory_id = $1 AND source = $2")
        .bind(memory_id)
        .bind(&text)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
    if dup.is_some() {
        return Ok(false);
    }
    let n: i64 = sqlx::query("SELECT COALESCE(MAX(n), 0) + 1 FROM mem_sources WHERE memory_id = $1")
        .bind(memory_id)
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?
        .try_get(0)
        .map_err(db)?;
    sqlx::query(
        "INSERT INTO mem_sources (memory_id, n, version_id, event, source, observed_at, recorded_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(memory_id)
    .bind(n)
    .bind(version_id)
    .bind(event)
    .bind(&text)
    .bind(observed_at)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(true)
}

/// Grants `agent_id` read access to `memory_ids` (idempotent).
pub(crate) async fn grant(
    conn: &mut Conn,
    memory_ids: &[String],
    agent_id: &str,
    handoff_id: &str,
    now: i64,
) -> Result<()> {
    for m in memory_ids {
        sqlx::query(
            "INSERT INTO mem_grants (memory_id, agent_id, handoff_id, granted_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (memory_id, agent_id) DO NOTHING",
        )
        .bind(m)
        .bind(agent_id)
        .bind(handoff_id)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    Ok(())
}

/// A handoff as stored.
#[derive(Debug, Clone)]
pub(crate) struct HandoffRow {
    pub id: String,
    pub from_agent: String,
    pub to_agent: String,
    pub summary: String,
    pub memory_ids: Vec<String>,
    pub memory_query: Option<serde_json::Value>,
    pub task_ids: Vec<String>,
    pub state: serde_json::Value,
    pub status: String,
    pub reason: Option<String>,
    pub created_at: i64,
    pub decided_at: Option<i64>,
}

fn json_col<T: serde::de::DeserializeOwned>(r: &sqlx::any::AnyRow, col: &str) -> Result<T> {
    let s: String = r.try_get(col).map_err(db)?;
    serde_json::from_str(&s).map_err(|e| Error::internal(format!("corrupt handoff {col}: {e}")))
}

fn handoff_row(r: &sqlx::any::AnyRow) -> Result<HandoffRow> {
    let query: Option<String> = r.try_get("memory_query").map_err(db)?;
    Ok(HandoffRow {
        id: r.try_get("id").map_err(db)?,
        from_agent: r.try_get("from_agent").map_err(db)?,
        to_agent: r.try_get("to_agent").map_err(db)?,
        summary: r.try_get("summary").map_err(db)?,
        memory_ids: json_col(r, "memory_ids")?,
        memory_query: query
            .map(|q| serde_json::from_str(&q))
            .transpose()
            .map_err(|e| Error::internal(format!("corrupt handoff query: {e}")))?,
        task_ids: json_col(r, "task_ids")?,
        state: json_col(r, "state")?,
        status: r.try_get("status").map_err(db)?,
        reason: r.try_get("reason").map_err(db)?,
        created_at: r.try_get("created_at").map_err(db)?,
        decided_at: r.try_get("decided_at").map_err(db)?,
    })
}

const HANDOFF_COLUMNS: &str = "id, from_agent, to_agent, summary, memory_ids, memory_query, task_ids, state, status, \
     reason, created_at, decided_at";

pub(crate) async fn insert_handoff(conn: &mut Conn, h: &HandoffRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO mem_handoffs (id, from_agent, to_agent, summary, memory_ids, memory_query, task_ids, state, \
         status, reason, created_at, decided_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10, NULL)",
    )
    .bind(&h.id)
    .bind(&h.from_agent)
    .bind(&h.to_agent)
    .bind(&h.summary)
    .bind(serde_json::Value::from(h.memory_ids.clone()).to_string())
    .bind(h.memory_query.as_ref().map(|q| q.to_string()))
    .bind(serde_json::Value::from(h.task_ids.clone()).to_string())
    .bind(h.state.to_string())
    .bind(&h.status)
    .bind(h.created_at)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

pub(crate) async fn handoff(store: &Store, id: &str) -> Result<Option<HandoffRow>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {HANDOFF_COLUMNS} FROM mem_handoffs WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(store.pool())
    .await
    .map_err(db)?;
    row.as_ref().map(handoff_row).transpose()
}

pub(crate) async fn handoff_in(conn: &mut Conn, id: &str) -> Result<Option<HandoffRow>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {HANDOFF_COLUMNS} FROM mem_handoffs WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.as_ref().map(handoff_row).transpose()
}

pub(crate) async fn list_handoffs(
    store: &Store,
    to_agent: Option<&str>,
    from_agent: Option<&str>,
    status: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<HandoffRow>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {HANDOFF_COLUMNS} FROM mem_handoffs \
         WHERE ($1 IS NULL OR to_agent = $1) AND ($2 IS NULL OR from_agent = $2) \
         AND ($3 IS NULL OR status = $3) AND ($4 IS NULL OR id > $4) ORDER BY id LIMIT $5"
    )))
    .bind(to_agent)
    .bind(from_agent)
    .bind(status)
    .bind(after)
    .bind(limit)
    .fetch_all(store.pool())
    .await
    .map_err(db)?;
    rows.iter().map(handoff_row).collect()
}

/// Moves a pending handoff to `status`; false if it was no longer pending.
pub(crate) async fn decide_handoff(
    conn: &mut Conn,
    id: &str,
    status: &str,
    reason: Option<&str>,
    now: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE mem_handoffs SET status = $1, reason = $2, decided_at = $3 WHERE id = $4 AND status = 'pending'",
    )
    .bind(status)
    .bind(reason)
    .bind(now)
    .bind(id)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(done.rows_affected() == 1)
}
