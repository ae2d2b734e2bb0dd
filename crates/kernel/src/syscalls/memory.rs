//! `memory.*` and `handoff.*`: the memory layer (L3).
//!
//! The memory layer commits its own rows (it extracts facts, embeds them and
//! updates its recall index around its write), so `memory.add`, `memory.update`,
//! `memory.delete` and `handoff.send` are planned as [`Action::External`]: an
//! intent before, the outcome and audit entry after. Accepting or rejecting a
//! handoff runs inside the kernel's own write ([`strata_memory::handoff::decide_in`]),
//! so the decision, the memory grants and the moved tasks commit in one
//! transaction, with one audit entry for the handoff and one for each task moved.
//!
//! **Scope.** An operator sees and writes every memory. An agent's token works in
//! that agent's own scope: what it adds is stored with `agent_id` = itself (it
//! may tag it with any `user_id` and `run_id`, and naming another agent is
//! `forbidden`), and it reads only memories of its own agent scope plus those
//! handed to it by handoffs it accepted. `user_id`, `run_id` and `filters` then
//! narrow within that.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use strata_core::{Error, Principal, Result, Spec, Syscall};
use strata_memory::handoff::{self, Handoff, HandoffPage, HandoffStatus, NewHandoff};
use strata_memory::memory::{HistoryResponse, ListRequest, ListResponse, UpdateRequest};
use strata_memory::{AddRequest, AddResponse, Change, MemoryItem, SearchRequest, SearchResponse, Viewer};
use strata_orchestrator::task;

use super::ById;
use crate::{Action, Cx, Each, Handler, Kernel};

/// What the principal may see of the memory layer.
pub fn viewer(principal: &Principal) -> Viewer {
    match principal {
        Principal::Admin { .. } => Viewer::All,
        Principal::Agent { agent_id, .. } => Viewer::Agent {
            agent_id: agent_id.clone(),
            granted: Default::default(),
        },
    }
}

fn agent_of(cx: &Cx) -> Result<&str> {
    match &cx.principal {
        Principal::Agent { agent_id, .. } => Ok(agent_id),
        Principal::Admin { .. } => Err(Error::forbidden("handoffs are made and decided by agents")),
    }
}

/// `memory.add`
pub struct AddMemory;

impl Syscall for AddMemory {
    type Request = AddRequest;
    type Response = AddResponse;
    const SPEC: Spec = spec!(
        "memory.add",
        "Remember messages or a text: extract atomic facts and curate each against the nearest memories in its scope (ADD, UPDATE, DELETE or NONE, with ids). An agent adds to its own scope.",
        "memory",
        External,
        Post,
        "/v1/memories",
        200
    );
}

impl Handler for AddMemory {
    async fn handle(k: &Kernel, cx: &Cx, req: AddRequest) -> Result<Action<AddResponse>> {
        let memory = k.memory().clone();
        let viewer = viewer(&cx.principal);
        Ok(Action::external("memory", async move {
            memory.add(req, &viewer).await
        }))
    }
}

/// `memory.search`
pub struct SearchMemories;

impl Syscall for SearchMemories {
    type Request = SearchRequest;
    type Response = SearchResponse;
    const SPEC: Spec = spec!(
        "memory.search",
        "Recall memories: lexical (BM25), vector, entity-graph and recency signals fused, best first, each with score_parts and sources; filters, top_k, as_of and a max_tokens budget.",
        "memory",
        Read,
        Post,
        "/v1/memories/search",
        200
    );
}

impl Handler for SearchMemories {
    async fn handle(k: &Kernel, cx: &Cx, req: SearchRequest) -> Result<Action<SearchResponse>> {
        Ok(Action::Done(
            k.memory().search(req, &viewer(&cx.principal)).await?,
        ))
    }
}

/// `memory.get`
pub struct GetMemory;

impl Syscall for GetMemory {
    type Request = ById;
    type Response = MemoryItem;
    const SPEC: Spec = spec!(
        "memory.get",
        "Get the current version of a memory, with its sources.",
        "memory",
        Read,
        Get,
        "/v1/memories/{id}",
        200
    );
}

impl Handler for GetMemory {
    async fn handle(k: &Kernel, cx: &Cx, req: ById) -> Result<Action<MemoryItem>> {
        Ok(Action::Done(
            k.memory().get(&req.id, &viewer(&cx.principal)).await?,
        ))
    }
}

/// A change to a memory (its id from the path).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMemoryRequest {
    /// The memory (`mem_…`).
    pub id: String,
    /// The new text.
    #[serde(default)]
    pub text: Option<String>,
    /// The new metadata (replaces the old).
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Where the change came from (any JSON object), added to the memory's sources.
    #[serde(default)]
    pub source: Option<Value>,
}

/// `memory.update`
pub struct UpdateMemory;

impl Syscall for UpdateMemory {
    type Request = UpdateMemoryRequest;
    type Response = Change;
    const SPEC: Spec = spec!(
        "memory.update",
        "Change a memory's text or metadata: a new version supersedes the current one, which stays in its history.",
        "memory",
        External,
        Patch,
        "/v1/memories/{id}",
        200
    );
}

impl Handler for UpdateMemory {
    async fn handle(k: &Kernel, cx: &Cx, req: UpdateMemoryRequest) -> Result<Action<Change>> {
        let memory = k.memory().clone();
        let viewer = viewer(&cx.principal);
        let change = UpdateRequest {
            text: req.text,
            metadata: req.metadata,
            source: req.source,
        };
        Ok(Action::external(req.id.clone(), async move {
            memory.update(&req.id, change, &viewer).await
        }))
    }
}

/// `memory.delete`
pub struct DeleteMemory;

impl Syscall for DeleteMemory {
    type Request = ById;
    type Response = Change;
    const SPEC: Spec = spec!(
        "memory.delete",
        "Retire a memory: it leaves search, get and list; its history stays.",
        "memory",
        External,
        Delete,
        "/v1/memories/{id}",
        200
    );
}

impl Handler for DeleteMemory {
    async fn handle(k: &Kernel, cx: &Cx, req: ById) -> Result<Action<Change>> {
        let memory = k.memory().clone();
        let viewer = viewer(&cx.principal);
        Ok(Action::external(req.id.clone(), async move {
            memory.delete(&req.id, &viewer).await
        }))
    }
}

/// `memory.history`
pub struct MemoryHistory;

impl Syscall for MemoryHistory {
    type Request = ById;
    type Response = HistoryResponse;
    const SPEC: Spec = spec!(
        "memory.history",
        "Every change to a memory, oldest first: ADD, each UPDATE with old and new text, and DELETE, with validity times.",
        "memory",
        Read,
        Get,
        "/v1/memories/{id}/history",
        200
    );
}

impl Handler for MemoryHistory {
    async fn handle(k: &Kernel, cx: &Cx, req: ById) -> Result<Action<HistoryResponse>> {
        Ok(Action::Done(
            k.memory().history(&req.id, &viewer(&cx.principal)).await?,
        ))
    }
}

/// A listing of memories (from the query string).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListMemoriesRequest {
    /// A filter: a JSON object, or its JSON text in a query string
    /// (`filters={"user_id":"u1"}`).
    #[serde(default)]
    pub filters: Option<Value>,
    /// Shorthand for a `user_id` filter.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Shorthand for an `agent_id` filter.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Shorthand for a `run_id` filter.
    #[serde(default)]
    pub run_id: Option<String>,
    /// Memories per page (1–1000, default 100).
    #[serde(default)]
    pub page_size: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// `memory.list`
pub struct ListMemories;

impl Syscall for ListMemories {
    type Request = ListMemoriesRequest;
    type Response = ListResponse;
    const SPEC: Spec = spec!(
        "memory.list",
        "List current memories matching a filter, by id, a page at a time.",
        "memory",
        Read,
        Get,
        "/v1/memories",
        200
    );
}

impl Handler for ListMemories {
    async fn handle(k: &Kernel, cx: &Cx, req: ListMemoriesRequest) -> Result<Action<ListResponse>> {
        let filters = match req.filters {
            Some(Value::String(s)) => Some(serde_json::from_str(&s).map_err(|e| {
                Error::new(
                    strata_core::ErrorCode::InvalidFilter,
                    format!("filters: not a JSON object: {e}"),
                )
            })?),
            other => other,
        };
        let list = ListRequest {
            filters,
            user_id: req.user_id,
            agent_id: req.agent_id,
            run_id: req.run_id,
            page_size: req.page_size,
            cursor: req.cursor,
        };
        Ok(Action::Done(k.memory().list(list, &viewer(&cx.principal)).await?))
    }
}

/// `handoff.send`
pub struct SendHandoff;

impl Syscall for SendHandoff {
    type Request = NewHandoff;
    type Response = Handoff;
    const SPEC: Spec = spec!(
        "handoff.send",
        "Hand context to another agent: a summary, memories (by id or by a search run now), open tasks of the sender's to move, and an opaque state. The receiver accepts or rejects.",
        "handoff",
        External,
        Post,
        "/v1/handoffs",
        201
    );
}

impl Handler for SendHandoff {
    async fn handle(k: &Kernel, cx: &Cx, req: NewHandoff) -> Result<Action<Handoff>> {
        let from = agent_of(cx)?.to_string();
        k.identity().get(&req.to).await?;
        for id in &req.task_ids {
            let t = k.orchestrator().get(id).await?;
            let mine = t.submitted_by == from
                || t.agent.as_deref() == Some(from.as_str())
                || t.leased_by.as_deref() == Some(from.as_str());
            if !mine {
                return Err(Error::forbidden(format!(
                    "task '{id}' is not the sender's (submitted by, pinned to or leased by it)"
                )));
            }
            if t.state.is_terminal() {
                return Err(Error::invalid(
                    "task_ids",
                    format!("task '{id}' is already {}", t.state.as_str()),
                ));
            }
        }
        let memory = k.memory().clone();
        Ok(Action::external("handoff", async move {
            memory.handoff(&from, req).await
        }))
    }
}

/// A listing of handoffs (from the query string).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListHandoffsRequest {
    /// Handed to this agent; `me` is the caller.
    #[serde(default)]
    pub to: Option<String>,
    /// Handed by this agent; `me` is the caller.
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

/// `handoff.list`
pub struct ListHandoffs;

impl Syscall for ListHandoffs {
    type Request = ListHandoffsRequest;
    type Response = HandoffPage;
    const SPEC: Spec = spec!(
        "handoff.list",
        "List handoffs by receiver (`to=me`), sender and state. An agent sees those it sent or receives (default: to it).",
        "handoff",
        Read,
        Get,
        "/v1/handoffs",
        200
    );
}

impl Handler for ListHandoffs {
    async fn handle(k: &Kernel, cx: &Cx, req: ListHandoffsRequest) -> Result<Action<HandoffPage>> {
        let me = match &cx.principal {
            Principal::Agent { agent_id, .. } => Some(agent_id.as_str()),
            Principal::Admin { .. } => None,
        };
        let resolve = |field: &str, v: Option<String>| -> Result<Option<String>> {
            match (v.as_deref(), me) {
                (Some("me"), Some(me)) => Ok(Some(me.to_string())),
                (Some("me"), None) => Err(Error::invalid(field, "`me` names an agent; an operator has none")),
                _ => Ok(v),
            }
        };
        let mut to = resolve("to", req.to)?;
        let from = resolve("from", req.from)?;
        if let Some(me) = me {
            match (&to, &from) {
                (None, None) => to = Some(me.to_string()),
                (Some(t), _) if t == me => {}
                (_, Some(f)) if f == me => {}
                _ => {
                    return Err(Error::forbidden(
                        "an agent may list only the handoffs it sent or receives",
                    ));
                }
            }
        }
        let list = handoff::ListHandoffs {
            to,
            from,
            status: req.status,
            limit: req.limit,
            cursor: req.cursor,
        };
        Ok(Action::Done(k.memory().list_handoffs(list).await?))
    }
}

/// `handoff.get`
pub struct GetHandoff;

impl Syscall for GetHandoff {
    type Request = ById;
    type Response = Handoff;
    const SPEC: Spec = spec!(
        "handoff.get",
        "Get one handoff (its sender, its receiver, or an operator).",
        "handoff",
        Read,
        Get,
        "/v1/handoffs/{id}",
        200
    );
}

impl Handler for GetHandoff {
    async fn handle(k: &Kernel, cx: &Cx, req: ById) -> Result<Action<Handoff>> {
        Ok(Action::Done(
            k.memory().get_handoff(&req.id, &viewer(&cx.principal)).await?,
        ))
    }
}

/// A decision on a handoff (its id from the path).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// The handoff (`hof_…`).
    pub id: String,
    /// Why (kept with a rejection; at most 4096 bytes).
    #[serde(default)]
    pub reason: Option<String>,
}

/// The outcome of an accept or reject.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Decided {
    /// The handoff after the decision.
    pub handoff: Handoff,
    /// The tasks now the receiver's (accept only).
    pub moved_tasks: Vec<String>,
    /// Named tasks that did not move: finished meanwhile, or no longer the sender's.
    pub kept_tasks: Vec<String>,
}

fn decide(k: &Kernel, cx: &Cx, req: Decision, accept: bool) -> Result<Action<Decided>> {
    let by = agent_of(cx)?.to_string();
    let now = k.now_ms();
    Ok(Action::WriteEach {
        op: Box::new(move |c| {
            Box::pin(async move {
                let d = handoff::decide_in(c, &req.id, &by, accept, req.reason.as_deref(), now).await?;
                let (mut moved, mut kept) = (Vec::new(), Vec::new());
                for t in &d.task_ids {
                    if task::transfer(c, t, &d.handoff.from, &by, now).await? {
                        moved.push(t.clone());
                    } else {
                        kept.push(t.clone());
                    }
                }
                let mut resources = vec![d.handoff.id.clone()];
                resources.extend(moved.iter().cloned());
                Ok(Each {
                    body: Decided {
                        handoff: d.handoff,
                        moved_tasks: moved,
                        kept_tasks: kept,
                    },
                    resources,
                })
            })
        }),
    })
}

/// `handoff.accept`
pub struct AcceptHandoff;

impl Syscall for AcceptHandoff {
    type Request = Decision;
    type Response = Decided;
    const SPEC: Spec = spec!(
        "handoff.accept",
        "Accept a handoff made to the caller: it may read the handed memories from now on, and the handed open tasks become its own (pinned to it; a lease the sender held ends). Audited for the handoff and each task.",
        "handoff",
        Store,
        Post,
        "/v1/handoffs/{id}/accept",
        200
    );
}

impl Handler for AcceptHandoff {
    async fn handle(k: &Kernel, cx: &Cx, req: Decision) -> Result<Action<Decided>> {
        decide(k, cx, req, true)
    }
}

/// `handoff.reject`
pub struct RejectHandoff;

impl Syscall for RejectHandoff {
    type Request = Decision;
    type Response = Decided;
    const SPEC: Spec = spec!(
        "handoff.reject",
        "Reject a handoff made to the caller, with an optional reason; nothing moves.",
        "handoff",
        Store,
        Post,
        "/v1/handoffs/{id}/reject",
        200
    );
}

impl Handler for RejectHandoff {
    async fn handle(k: &Kernel, cx: &Cx, req: Decision) -> Result<Action<Decided>> {
        decide(k, cx, req, false)
    }
}
