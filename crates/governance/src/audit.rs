//! The audit log: an append-only hash chain over every mutating syscall.
//!
//! Entry `n` stores `hash = sha256(prev_hash | canonical(n))`, where `prev_hash` is
//! entry `n-1`'s hash (64 zeros for the first) and `canonical` is a JSON array of
//! the entry's fields in a fixed order. `gov_audit_head` holds the last sequence
//! number and hash, updated in the same transaction, so removing entries from the
//! end is caught as well as altering, removing or reordering any in the middle.
//!
//! Entries are appended only inside the store's writer transaction, which
//! serialises them; sequence numbers are dense from 1.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use strata_store::Conn;
use strata_store::{Params, Store};

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What the kernel knows about a syscall when it audits it.
#[derive(Debug, Clone)]
pub struct AuditDraft {
    /// When (epoch ms).
    pub at: i64,
    /// Who: `admin:tok_…` or `agt_…`.
    pub principal: String,
    /// What: the syscall name.
    pub syscall: String,
    /// On what: the resource id, or the resource kind when none exists.
    pub resource: String,
    /// The intent this entry records the outcome of.
    pub intent_id: String,
    /// `ok` or the problem code.
    pub outcome: String,
    /// The HTTP-equivalent status.
    pub status: u16,
    /// SHA-256 of the request as received (never the request itself: it may hold secrets).
    pub request_digest: String,
}

/// One entry of the chain.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct AuditEntry {
    /// Position in the chain, dense from 1.
    pub seq: i64,
    /// When, RFC 3339.
    pub at: String,
    /// Who.
    pub principal: String,
    /// What.
    pub syscall: String,
    /// On what.
    pub resource: String,
    /// The intent recorded.
    pub intent_id: String,
    /// `ok` or the problem code.
    pub outcome: String,
    /// Status.
    pub status: u16,
    /// SHA-256 of the request.
    pub request_digest: String,
    /// The previous entry's hash.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// The result of checking the whole chain.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
pub struct Verification {
    /// Whether every entry and the head check out.
    pub ok: bool,
    /// Entries checked.
    pub entries: i64,
    /// The first entry found bad, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad: Option<i64>,
    /// Why it is bad, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

struct Row_ {
    seq: i64,
    at: i64,
    principal: String,
    syscall: String,
    resource: String,
    intent_id: String,
    outcome: String,
    status: i64,
    request_digest: String,
    prev_hash: String,
    hash: String,
}

fn chain_hash(prev: &str, seq: i64, d: &AuditDraft) -> String {
    let canonical = serde_json::json!([
        seq,
        d.at,
        d.principal,
        d.syscall,
        d.resource,
        d.intent_id,
        d.outcome,
        d.status,
        d.request_digest
    ]);
    crate::digest(format!("{prev}|{canonical}").as_bytes())
}

/// Appends `d` to the chain inside the writer's transaction; returns its sequence number.
pub async fn append(conn: &mut Conn, d: &AuditDraft) -> strata_store::Result<i64> {
    append_many(conn, std::slice::from_ref(d)).await
}

/// Appends `drafts`, in order, inside the writer's transaction: one read of the
/// head, one insert per 32 entries, one head update. Returns the last sequence number.
pub async fn append_many(conn: &mut Conn, drafts: &[AuditDraft]) -> strata_store::Result<i64> {
    const COLUMNS: usize = 11;
    const CHUNK: usize = 64;
    let head = sqlx::query("SELECT seq, hash FROM gov_audit_head WHERE id = 1")
        .fetch_optional(&mut *conn)
        .await?;
    let (first_seq, mut prev_hash) = match head {
        Some(r) => (r.try_get::<i64, _>(0)?, r.try_get::<String, _>(1)?),
        None => (0, GENESIS.to_string()),
    };
    if drafts.is_empty() {
        return Ok(first_seq);
    }
    let mut seq = first_seq;
    for chunk in drafts.chunks(CHUNK) {
        let mut p = Params::on(conn);
        let mut sql = String::from(
            "INSERT INTO gov_audit (seq, at, principal, syscall, resource, intent_id, outcome, status, request_digest, prev_hash, hash) VALUES ",
        );
        let mut rows = Vec::with_capacity(chunk.len());
        for (i, d) in chunk.iter().enumerate() {
            seq += 1;
            let hash = chain_hash(&prev_hash, seq, d);
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&p.row(COLUMNS));
            rows.push((seq, std::mem::replace(&mut prev_hash, hash.clone()), hash));
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (d, (seq, prev, hash)) in chunk.iter().zip(rows) {
            q = q
                .bind(seq)
                .bind(d.at)
                .bind(d.principal.clone())
                .bind(d.syscall.clone())
                .bind(d.resource.clone())
                .bind(d.intent_id.clone())
                .bind(d.outcome.clone())
                .bind(i64::from(d.status))
                .bind(d.request_digest.clone())
                .bind(prev)
                .bind(hash);
        }
        q.execute(&mut *conn).await?;
    }
    let q = if first_seq == 0 {
        "INSERT INTO gov_audit_head (id, seq, hash) VALUES (1, $1, $2)"
    } else {
        "UPDATE gov_audit_head SET seq = $1, hash = $2 WHERE id = 1"
    };
    sqlx::query(q)
        .bind(seq)
        .bind(&prev_hash)
        .execute(&mut *conn)
        .await?;
    Ok(seq)
}

const SELECT: &str = "SELECT seq, at, principal, syscall, resource, intent_id, outcome, status, request_digest, prev_hash, hash FROM gov_audit";

fn read_row(r: &sqlx::any::AnyRow) -> Result<Row_, sqlx::Error> {
    Ok(Row_ {
        seq: r.try_get(0)?,
        at: r.try_get(1)?,
        principal: r.try_get(2)?,
        syscall: r.try_get(3)?,
        resource: r.try_get(4)?,
        intent_id: r.try_get(5)?,
        outcome: r.try_get(6)?,
        status: r.try_get(7)?,
        request_digest: r.try_get(8)?,
        prev_hash: r.try_get(9)?,
        hash: r.try_get(10)?,
    })
}

/// Up to `limit` entries after sequence number `after`, oldest first.
pub async fn list(store: &Store, after: i64, limit: i64) -> strata_store::Result<Vec<AuditEntry>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE seq > $1 ORDER BY seq LIMIT $2"
    )))
    .bind(after)
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let r = read_row(r)?;
            Ok(AuditEntry {
                seq: r.seq,
                at: strata_core::time::rfc3339(r.at),
                principal: r.principal,
                syscall: r.syscall,
                resource: r.resource,
                intent_id: r.intent_id,
                outcome: r.outcome,
                status: u16::try_from(r.status).unwrap_or(0),
                request_digest: r.request_digest,
                prev_hash: r.prev_hash,
                hash: r.hash,
            })
        })
        .collect()
}

/// Walks the whole chain in pages and checks every link and the head.
pub async fn verify(pool: &sqlx::AnyPool) -> strata_store::Result<Verification> {
    const PAGE: i64 = 5000;
    let mut expected_seq = 1;
    let mut prev = GENESIS.to_string();
    let bad = |seq: i64, checked: i64, why: String| Verification {
        ok: false,
        entries: checked,
        first_bad: Some(seq),
        reason: Some(why),
    };
    loop {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT} WHERE seq >= $1 ORDER BY seq LIMIT $2"
        )))
        .bind(expected_seq)
        .bind(PAGE)
        .fetch_all(pool)
        .await?;
        let n = rows.len();
        for r in &rows {
            let r = read_row(r)?;
            let checked = expected_seq - 1;
            if r.seq != expected_seq {
                return Ok(bad(
                    expected_seq,
                    checked,
                    format!("entry {expected_seq} is missing (next present is {})", r.seq),
                ));
            }
            if r.prev_hash != prev {
                return Ok(bad(
                    r.seq,
                    checked,
                    "prev_hash does not match the previous entry's hash (removed or reordered)".into(),
                ));
            }
            let draft = AuditDraft {
                at: r.at,
                principal: r.principal,
                syscall: r.syscall,
                resource: r.resource,
                intent_id: r.intent_id,
                outcome: r.outcome,
                status: u16::try_from(r.status).unwrap_or(u16::MAX),
                request_digest: r.request_digest,
            };
            if chain_hash(&r.prev_hash, r.seq, &draft) != r.hash {
                return Ok(bad(
                    r.seq,
                    checked,
                    "hash does not match the entry's contents (altered)".into(),
                ));
            }
            prev = r.hash;
            expected_seq += 1;
        }
        if (n as i64) < PAGE {
            break;
        }
    }
    let entries = expected_seq - 1;
    let head = sqlx::query("SELECT seq, hash FROM gov_audit_head WHERE id = 1")
        .fetch_optional(pool)
        .await?;
    let (head_seq, head_hash) = match head {
        Some(r) => (r.try_get::<i64, _>(0)?, r.try_get::<String, _>(1)?),
        None => (0, GENESIS.to_string()),
    };
    if head_seq != entries || head_hash != prev {
        return Ok(bad(
            entries + 1,
            entries,
            format!(
                "the chain ends at entry {entries} but its head records entry {head_seq} (entries removed from the end)"
            ),
        ));
    }
    Ok(Verification {
        ok: true,
        entries,
        first_bad: None,
        reason: None,
    })
}
