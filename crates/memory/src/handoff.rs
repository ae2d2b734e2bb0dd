//! Handoffs: session continuity from one agent to another.
//!
//! Agent A hands agent B a summary, memories (by id, or by a memory query that is
//! resolved when the handoff is made, as A sees them), open task ids and an
//! opaque state blob. B lists what is handed to it, then accepts or rejects.
//! Accepting grants B read access to the handed memories (`mem_grants`) in the
//! same write. Moving the tasks' ownership is the orchestrator's: the kernel
//! runs [`decide_in`] inside its own write and transfers [`Decided::task_ids`]
//! in the same transaction, auditing the handoff and each task moved.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use strata_core::{Error, ErrorCode, Id, Result, time::rfc3339};

use strata_store::Conn;

use crate::Memory;
use crate::index::Viewer;
use crate::search::SearchRequest;
use crate::store::{self, HandoffRow};

/// The most memories or tasks one handoff may carry.
const MAX_ITEMS: usize = 1000;

/// A request to hand context to another agent.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewHandoff {
    /// The receiving agent.
    pub to: String,
    /// What B needs to know, in prose.
    pub summary: String,
    /// Memories to hand over, by id.
    #[serde(default)]
    pub memory_ids: Vec<String>,
    /// Or a memory search (run now, as the sender sees memories) whose hits are handed over.
    #[serde(default)]
    pub memory_query: Option<Value>,
    /// Open tasks whose ownership should move to B on accept.
    #[serde(default)]
    pub task_ids: Vec<String>,
    /// Opaque state for B (any JSON, at most 256 KiB).
    #[serde(default)]
    pub state: Value,
}

/// Where a handoff stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HandoffStatus {
    /// Waiting for the receiver.
    Pending,
    /// Accepted: the receiver reads the memories; the tasks are to move.
    Accepted,
    /// Rejected by the receiver.
    Rejected,
}

impl HandoffStatus {
    fn as_str(self) -> &'static str {
        match self {
            HandoffStatus::Pending => "pending",
            HandoffStatus::Accepted => "accepted",
            HandoffStatus::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Result<HandoffStatus> {
        match s {
            "pending" => Ok(HandoffStatus::Pending),
            "accepted" => Ok(HandoffStatus::Accepted),
            "rejected" => Ok(HandoffStatus::Rejected),
            other => Err(Error::internal(format!("unknown handoff status '{other}'"))),
        }
    }
}

/// A handoff as stored.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Handoff {
    /// `hof_…`
    pub id: String,
    /// The sending agent.
    pub from: String,
    /// The receiving agent.
    pub to: String,
    /// The summary.
    pub summary: String,
    /// The memories handed over (query hits resolved at creation).
    pub memory_ids: Vec<String>,
    /// The query the memories came from, if any.
    pub memory_query: Option<Value>,
    /// The tasks to move.
    pub task_ids: Vec<String>,
    /// The opaque state.
    pub state: Value,
    /// Where it stands.
    pub status: HandoffStatus,
    /// The receiver's reason, on rejection.
    pub reason: Option<String>,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// When it was accepted or rejected (RFC 3339).
    pub decided_at: Option<String>,
}

impl TryFrom<HandoffRow> for Handoff {
    type Error = Error;
    fn try_from(r: HandoffRow) -> Result<Handoff> {
        Ok(Handoff {
            id: r.id,
            from: r.from_agent,
            to: r.to_agent,
            summary: r.summary,
            memory_ids: r.memory_ids,
            memory_query: r.memory_query,
            task_ids: r.task_ids,
            state: r.state,
            status: HandoffStatus::parse(&r.status)?,
            reason: r.reason,
            created_at: rfc3339(r.created_at),
            decided_at: r.decided_at.map(rfc3339),
        })
    }
}

/// A listing of handoffs.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListHandoffs {
    /// Handed to this agent (`me` is resolved by the caller).
    #[serde(default)]
    pub to: Option<String>,
    /// Handed by this agent.
    #[serde(default)]
    pub from: Option<String>,
    /// In this state.
    #[serde(default)]
    pub status: Option<HandoffStatus>,
    /// Page size (1–500, default 100).
    #[serde(default)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// A page of handoffs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct HandoffPage {
    /// This page, oldest first.
    pub results: Vec<Handoff>,
    /// The cursor of the next page.
    pub next_cursor: Option<String>,
}

/// The outcome of an accept or reject, with what the kernel must do next.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Decided {
    /// The handoff after the decision.
    pub handoff: Handoff,
    /// Tasks whose ownership should move to the receiver (empty on reject).
    pub task_ids: Vec<String>,
}

fn agent_id(field: &str, s: &str) -> Result<()> {
    if s.trim().is_empty() || s.len() > 256 {
        return Err(Error::invalid(field, "must be 1 to 256 characters"));
    }
    Ok(())
}

impl Memory {
    /// Agent `from` hands context to `req.to`. Every handed memory must be one `from` may read.
    pub async fn handoff(&self, from: &str, req: NewHandoff) -> Result<Handoff> {
        agent_id("from", from)?;
        agent_id("to", &req.to)?;
        if req.to == from {
            return Err(Error::invalid("to", "an agent cannot hand off to itself"));
        }
        if req.summary.trim().is_empty() || req.summary.len() > 64 * 1024 {
            return Err(Error::invalid("summary", "must be 1 byte to 64 KiB"));
        }
        if req.memory_ids.len() > MAX_ITEMS || req.task_ids.len() > MAX_ITEMS {
            return Err(Error::invalid(
                "memory_ids",
                format!("at most {MAX_ITEMS} memories and tasks"),
            ));
        }
        if req.state.to_string().len() > 256 * 1024 {
            return Err(Error::new(ErrorCode::MemoryTooLarge, "state exceeds 256 KiB"));
        }
        let viewer = Viewer::Agent {
            agent_id: from.to_string(),
            granted: Default::default(),
        };
        let mut ids = Vec::new();
        for id in &req.memory_ids {
            // Only what the sender may read can be handed on; not_found otherwise.
            let m = self.get(id, &viewer).await?;
            if !ids.contains(&m.id) {
                ids.push(m.id);
            }
        }
        if let Some(q) = &req.memory_query {
            let search: SearchRequest =
                serde_json::from_value(q.clone()).map_err(|e| Error::invalid("memory_query", e))?;
            for hit in self.search(search, &viewer).await?.results {
                if !ids.contains(&hit.id) {
                    ids.push(hit.id);
                }
            }
        }
        let row = HandoffRow {
            id: Id::new("hof").to_string(),
            from_agent: from.to_string(),
            to_agent: req.to,
            summary: req.summary,
            memory_ids: ids,
            memory_query: req.memory_query,
            task_ids: req.task_ids,
            state: req.state,
            status: HandoffStatus::Pending.as_str().into(),
            reason: None,
            created_at: self.now(),
            decided_at: None,
        };
        let out = row.clone();
        self.store()
            .write(move |conn| Box::pin(async move { store::insert_handoff(conn, &row).await }))
            .await?;
        out.try_into()
    }

    /// A handoff, if `viewer` sent or receives it.
    pub async fn get_handoff(&self, id: &str, viewer: &Viewer) -> Result<Handoff> {
        let row = store::handoff(self.store(), id)
            .await?
            .filter(|h| match viewer {
                Viewer::All => true,
                Viewer::Agent { agent_id, .. } => &h.from_agent == agent_id || &h.to_agent == agent_id,
            })
            .ok_or_else(|| Error::not_found("handoff", id))?;
        row.try_into()
    }

    /// Handoffs by receiver, sender and state, a page at a time.
    pub async fn list_handoffs(&self, req: ListHandoffs) -> Result<HandoffPage> {
        let limit = req.limit.unwrap_or(100);
        if !(1..=500).contains(&limit) {
            return Err(Error::invalid("limit", "must be 1 to 500"));
        }
        let rows = store::list_handoffs(
            self.store(),
            req.to.as_deref(),
            req.from.as_deref(),
            req.status.map(HandoffStatus::as_str),
            req.cursor.as_deref(),
            i64::from(limit) + 1,
        )
        .await?;
        let (rows, next) = strata_core::page::split(rows, i64::from(limit), |h| h.id.clone());
        Ok(HandoffPage {
            results: rows.into_iter().map(Handoff::try_from).collect::<Result<_>>()?,
            next_cursor: next,
        })
    }

    /// The receiver accepts (`accept`) or rejects a pending handoff. Only the
    /// receiver may decide; a decided handoff stays as it is (`handoff_decided`).
    pub async fn decide_handoff(
        &self,
        id: &str,
        by: &str,
        accept: bool,
        reason: Option<String>,
    ) -> Result<Decided> {
        let (id, by, now) = (id.to_string(), by.to_string(), self.now());
        self.store()
            .write(move |conn| {
                Box::pin(async move { decide_in(conn, &id, &by, accept, reason.as_deref(), now).await })
            })
            .await
    }
}

/// [`Memory::decide_handoff`] inside a caller's write, so the kernel can move
/// the handoff's tasks in the same transaction: the decision, the memory grants
/// and the task transfer commit together or not at all.
pub async fn decide_in(
    conn: &mut Conn,
    id: &str,
    by: &str,
    accept: bool,
    reason: Option<&str>,
    now: i64,
) -> Result<Decided> {
    let h = store::handoff_in(conn, id)
        .await?
        .filter(|h| h.to_agent == by || h.from_agent == by)
        .ok_or_else(|| Error::not_found("handoff", id))?;
    if h.to_agent != by {
        return Err(Error::forbidden(
            "only the receiving agent may accept or reject a handoff",
        ));
    }
    if reason.is_some_and(|r| r.len() > 4096) {
        return Err(Error::invalid("reason", "at most 4096 bytes"));
    }
    let status = if accept { "accepted" } else { "rejected" };
    if !store::decide_handoff(conn, id, status, reason, now).await? {
        return Err(Error::new(
            ErrorCode::HandoffDecided,
            format!("handoff '{id}' is already {}", h.status),
        ));
    }
    if accept {
        store::grant(conn, &h.memory_ids, by, id, now).await?;
    }
    let row = store::handoff_in(conn, id)
        .await?
        .ok_or_else(|| Error::internal("handoff vanished inside the write"))?;
    let handoff: Handoff = row.try_into()?;
    let task_ids = if accept {
        handoff.task_ids.clone()
    } else {
        Vec::new()
    };
    Ok(Decided { handoff, task_ids })
}
