//! Memories: adding (with curation), reading, changing, retiring, and their history.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use strata_core::{Error, ErrorCode, Id, Result, time::rfc3339};

use crate::curate;
use crate::extract::{self, Turn};
use crate::filter::{self, Field, Filter, Op};
use crate::index::{At, Viewer};
use crate::store::{self, SourceRow, VersionRow};
use crate::{Memory, term};

/// One message of a conversation.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Message {
    /// `user`, `assistant`, `system`, or a speaker's role.
    pub role: String,
    /// What was said.
    pub content: String,
    /// The speaker's name, when known (used for attribution instead of the role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A request to remember messages or a text.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    /// The conversation to learn from.
    #[serde(default)]
    pub messages: Option<Vec<Message>>,
    /// Or a plain text (as if said by the user).
    #[serde(default)]
    pub text: Option<String>,
    /// The user the memories are about.
    #[serde(default)]
    pub user_id: Option<String>,
    /// The agent the memories belong to.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The run (session) they came from.
    #[serde(default)]
    pub run_id: Option<String>,
    /// Free-form metadata stored on every memory this add creates or updates.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Extract facts and curate (default); `false` stores each message verbatim
    /// (exact duplicates are still NONE).
    #[serde(default = "yes")]
    pub infer: bool,
    /// Where this came from (any JSON object, e.g. `{"dia_id": "D1:3"}`), stored verbatim.
    #[serde(default)]
    pub source: Option<Value>,
    /// When the messages were said (RFC 3339); default now. New versions are valid from then.
    #[serde(default)]
    pub observed_at: Option<String>,
}

fn yes() -> bool {
    true
}

/// What an add did to one memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
#[schemars(rename = "MemoryEvent")]
pub enum Event {
    /// A new memory.
    Add,
    /// A new version superseded the memory's previous one.
    Update,
    /// The memory was retired (its history stays).
    Delete,
    /// Nothing changed: the fact was already known (the source was recorded).
    None,
}

/// One change made by an add.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Change {
    /// The memory (`mem_…`).
    pub id: String,
    /// Its text after the change (before it, for DELETE).
    pub memory: String,
    /// What happened.
    pub event: Event,
    /// The text it had before an UPDATE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_memory: Option<String>,
}

/// The answer to an add.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AddResponse {
    /// One entry per fact, in order.
    pub results: Vec<Change>,
}

/// The parts a search score is fused from (see [`crate::search`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "MemoryScoreParts")]
pub struct ScoreParts {
    /// BM25, divided by the best BM25 among the hits (0–1).
    pub lexical: f32,
    /// Cosine similarity with the query's vector (0–1; 0 without an embedder).
    pub vector: f32,
    /// Entity-graph match, divided by the best among the hits (0–1).
    pub graph: f32,
    /// `0.5 ^ (age / half-life)` of the version's `valid_from` (0–1).
    pub recency: f32,
}

/// A memory as returned by get, list and search.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MemoryItem {
    /// `mem_…`
    pub id: String,
    /// The text.
    pub memory: String,
    /// SHA-256 of the scope and the normalised text.
    pub hash: String,
    /// Scope: user.
    pub user_id: Option<String>,
    /// Scope: agent.
    pub agent_id: Option<String>,
    /// Scope: run.
    pub run_id: Option<String>,
    /// Metadata.
    pub metadata: Value,
    /// Every source object of every add that produced, updated or confirmed it.
    pub sources: Vec<Value>,
    /// When the memory was first recorded (RFC 3339).
    pub created_at: String,
    /// When this version was recorded (RFC 3339).
    pub updated_at: String,
    /// When this version became true (RFC 3339).
    pub valid_from: String,
    /// When it stopped being true, if it has (RFC 3339).
    pub valid_to: Option<String>,
    /// 1 for the first version.
    pub version: i64,
    /// The fused score (search only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    /// What the score is made of (search only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_parts: Option<ScoreParts>,
}

/// A change to a memory by id.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// The new text (a new version); keep the text when absent.
    #[serde(default)]
    pub text: Option<String>,
    /// The new metadata (replaces the old); keep it when absent.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Where the change came from, stored verbatim.
    #[serde(default)]
    pub source: Option<Value>,
}

/// One entry of a memory's history, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct HistoryEntry {
    /// The version's id (`mev_…`), or the deletion's.
    pub id: String,
    /// The memory.
    pub memory_id: String,
    /// ADD, UPDATE or DELETE.
    pub event: Event,
    /// The text before (UPDATE, DELETE).
    pub old_memory: Option<String>,
    /// The text after (ADD, UPDATE).
    pub new_memory: Option<String>,
    /// The version number this entry produced or closed.
    pub version: i64,
    /// When the version became true (RFC 3339).
    pub valid_from: String,
    /// When it stopped being true (RFC 3339), if it has.
    pub valid_to: Option<String>,
    /// When the change was recorded (RFC 3339).
    pub recorded_at: String,
    /// The metadata of the version.
    pub metadata: Value,
}

/// The answer to a history request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct HistoryResponse {
    /// Oldest first.
    pub results: Vec<HistoryEntry>,
}

/// A listing request.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListRequest {
    /// A filter (see [`crate::filter`]).
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

/// A page of memories, by id.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ListResponse {
    /// How many memories match in all.
    pub count: usize,
    /// This page.
    pub results: Vec<MemoryItem>,
    /// The cursor of the next page, if there is one.
    pub next_cursor: Option<String>,
}

/// A scope: who and what a memory is about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Scope {
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub run_id: Option<String>,
}

impl Scope {
    /// A canonical string, part of each memory's hash.
    pub(crate) fn key(&self) -> String {
        serde_json::json!([self.user_id, self.agent_id, self.run_id]).to_string()
    }

    pub(crate) fn hash(&self, text: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.key().as_bytes());
        h.update([0]);
        h.update(term::normalise(text).as_bytes());
        hex::encode(h.finalize())
    }
}

fn scope_id(field: &str, v: &Option<String>) -> Result<Option<String>> {
    match v {
        None => Ok(None),
        Some(s) if s.trim().is_empty() || s.len() > 256 => {
            Err(Error::invalid(field, "must be 1 to 256 characters"))
        }
        Some(s) => Ok(Some(s.clone())),
    }
}

pub(crate) fn check_metadata(m: &Option<Value>) -> Result<Value> {
    match m {
        None | Some(Value::Null) => Ok(Value::Object(Default::default())),
        Some(v @ Value::Object(_)) => {
            if v.to_string().len() > 64 * 1024 {
                return Err(Error::new(ErrorCode::MemoryTooLarge, "metadata exceeds 64 KiB"));
            }
            Ok(v.clone())
        }
        Some(_) => Err(Error::invalid("metadata", "must be a JSON object")),
    }
}

pub(crate) fn check_source(s: &Option<Value>) -> Result<Option<Value>> {
    match s {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => {
            if v.to_string().len() > 16 * 1024 {
                return Err(Error::new(ErrorCode::MemoryTooLarge, "source exceeds 16 KiB"));
            }
            Ok(Some(v.clone()))
        }
        Some(_) => Err(Error::invalid("source", "must be a JSON object")),
    }
}

/// Parses an RFC 3339 instant (or a YYYY-MM-DD date) given in `field`.
pub(crate) fn instant(field: &str, s: &str) -> Result<i64> {
    filter::parse_time(s).ok_or_else(|| Error::invalid(field, format!("'{s}' is not an RFC 3339 time")))
}

/// An add, checked and turned into turns.
pub(crate) struct Checked {
    pub scope: Scope,
    pub turns: Vec<Turn>,
    pub infer: bool,
    pub metadata: Value,
    pub source: Option<Value>,
    pub observed_at: i64,
}

impl Memory {
    pub(crate) fn check_add(&self, req: &AddRequest, viewer: &Viewer) -> Result<Checked> {
        let limits = self.config();
        let mut scope = Scope {
            user_id: scope_id("user_id", &req.user_id)?,
            agent_id: scope_id("agent_id", &req.agent_id)?,
            run_id: scope_id("run_id", &req.run_id)?,
        };
        if let Viewer::Agent { agent_id, .. } = viewer {
            match &scope.agent_id {
                None => scope.agent_id = Some(agent_id.clone()),
                Some(a) if a == agent_id => {}
                Some(a) => {
                    return Err(Error::forbidden(format!(
                        "an agent may not add memories for agent '{a}'"
                    )));
                }
            }
        }
        if scope == Scope::default() {
            return Err(Error::invalid(
                "user_id",
                "one of user_id, agent_id or run_id is required",
            ));
        }
        let turns: Vec<Turn> = match (&req.messages, &req.text) {
            (Some(_), Some(_)) => return Err(Error::invalid("text", "give messages or text, not both")),
            (None, None) => return Err(Error::invalid("messages", "give messages or text")),
            (None, Some(t)) => vec![Turn {
                speaker: "user".into(),
                text: t.clone(),
            }],
            (Some(ms), None) => {
                if ms.len() > limits.max_messages {
                    return Err(Error::new(
                        ErrorCode::MemoryTooLarge,
                        format!("messages: at most {} per add", limits.max_messages),
                    ));
                }
                ms.iter()
                    .filter(|m| m.role != "system")
                    .map(|m| Turn {
                        speaker: m
                            .name
                            .clone()
                            .filter(|n| !n.trim().is_empty())
                            .unwrap_or_else(|| m.role.clone()),
                        text: m.content.clone(),
                    })
                    .collect()
            }
        };
        for (i, t) in turns.iter().enumerate() {
            if t.text.len() > limits.max_text_bytes {
                return Err(Error::new(
                    ErrorCode::MemoryTooLarge,
                    format!(
                        "messages[{i}]: {} bytes, the limit is {}",
                        t.text.len(),
                        limits.max_text_bytes
                    ),
                ));
            }
            if t.speaker.len() > 256 {
                return Err(Error::invalid(
                    &format!("messages[{i}].name"),
                    "at most 256 characters",
                ));
            }
        }
        if turns.iter().all(|t| t.text.trim().is_empty()) {
            return Err(Error::invalid(
                "text",
                "there is nothing to remember (the text is empty)",
            ));
        }
        let observed_at = match &req.observed_at {
            Some(s) => instant("observed_at", s)?,
            None => self.now(),
        };
        Ok(Checked {
            scope,
            turns,
            infer: req.infer,
            metadata: check_metadata(&req.metadata)?,
            source: check_source(&req.source)?,
            observed_at,
        })
    }

    /// Remembers messages or a text as `viewer`: extracts facts, reconciles each
    /// with the nearest memories in the same scope, and applies the decisions in
    /// one write. Adding the same content again changes nothing (NONE).
    pub async fn add(&self, req: AddRequest, viewer: &Viewer) -> Result<AddResponse> {
        let mut out = self.add_many(vec![req], viewer).await?;
        Ok(out.pop().unwrap_or(AddResponse { results: Vec::new() }))
    }

    /// Several adds, planned in order (each sees the ones before it) and applied
    /// in one write, with one batch of embeddings for all their facts.
    pub async fn add_many(&self, reqs: Vec<AddRequest>, viewer: &Viewer) -> Result<Vec<AddResponse>> {
        let checked = reqs
            .iter()
            .map(|r| self.check_add(r, viewer))
            .collect::<Result<Vec<_>>>()?;
        let mut facts = Vec::with_capacity(checked.len());
        for c in &checked {
            let f = if c.infer {
                self.extractor().extract(&c.turns, c.observed_at).await?
            } else {
                c.turns
                    .iter()
                    .filter(|t| !t.text.trim().is_empty())
                    .map(|t| extract::Fact {
                        text: t.text.trim().to_string(),
                        key: None,
                        retract: false,
                        relations: extract::rule_facts(std::slice::from_ref(t), c.observed_at)
                            .into_iter()
                            .flat_map(|f| f.relations)
                            .collect(),
                    })
                    .collect()
            };
            facts.push(f);
        }
        let texts: Vec<String> = facts.iter().flatten().map(|f| f.text.clone()).collect();
        let mut vectors = self.embed_texts(&texts).await?.map(Vec::into_iter);
        self.sync().await?;
        let plans = {
            let idx = self.read_index()?;
            let mut planned = curate::Planned::new();
            checked
                .into_iter()
                .zip(facts)
                .map(|(c, fs)| {
                    let vecs: Vec<Option<Vec<f32>>> = fs
                        .iter()
                        .map(|_| vectors.as_mut().and_then(Iterator::next))
                        .collect();
                    let steps = curate::plan(&idx, &mut planned, &c, fs, vecs);
                    (c, steps)
                })
                .collect::<Vec<_>>()
        };
        let results = curate::apply(self, plans).await?;
        self.sync().await?;
        Ok(results
            .into_iter()
            .map(|results| AddResponse { results })
            .collect())
    }

    fn item(&self, row: &VersionRow, sources: &[&SourceRow]) -> MemoryItem {
        MemoryItem {
            id: row.memory_id.clone(),
            memory: row.memory.clone(),
            hash: row.hash.clone(),
            user_id: row.user_id.clone(),
            agent_id: row.agent_id.clone(),
            run_id: row.run_id.clone(),
            metadata: row.metadata.clone(),
            sources: sources.iter().map(|s| s.source.clone()).collect(),
            created_at: rfc3339(row.created_at),
            updated_at: rfc3339(row.recorded_at),
            valid_from: rfc3339(row.valid_from),
            valid_to: row.valid_to.map(rfc3339),
            version: row.version,
            score: None,
            score_parts: None,
        }
    }

    /// Turns version rows into items with their sources.
    pub(crate) async fn items(&self, rows: &[VersionRow]) -> Result<Vec<MemoryItem>> {
        let ids: Vec<&str> = rows.iter().map(|r| r.memory_id.as_str()).collect();
        let sources = store::sources_of(self.store(), &ids).await?;
        let mut by_memory: BTreeMap<&str, Vec<&SourceRow>> = BTreeMap::new();
        for s in &sources {
            by_memory.entry(s.memory_id.as_str()).or_default().push(s);
        }
        Ok(rows
            .iter()
            .map(|r| {
                self.item(
                    r,
                    by_memory.get(r.memory_id.as_str()).map_or(&[][..], Vec::as_slice),
                )
            })
            .collect())
    }

    fn check_id(id: &str) -> Result<()> {
        Id::parse("mem", id)
            .map(|_| ())
            .map_err(|e| Error::invalid("id", e))
    }

    /// The current version of a memory, if `viewer` may read it and it is not retired.
    pub async fn get(&self, id: &str, viewer: &Viewer) -> Result<MemoryItem> {
        Self::check_id(id)?;
        let viewer = &self.with_grants(viewer).await?;
        let versions = store::versions_of(self.store(), id).await?;
        let cur = versions
            .iter()
            .find(|v| v.valid_to.is_none())
            .filter(|v| viewer.sees(&v.memory_id, v.agent_id.as_deref()))
            .ok_or_else(|| Error::not_found("memory", id))?;
        Ok(self.items(std::slice::from_ref(cur)).await?.remove(0))
    }

    /// Every change to a memory, oldest first, including retirement.
    pub async fn history(&self, id: &str, viewer: &Viewer) -> Result<HistoryResponse> {
        Self::check_id(id)?;
        let viewer = &self.with_grants(viewer).await?;
        let versions = store::versions_of(self.store(), id).await?;
        if versions.is_empty()
            || !versions
                .iter()
                .any(|v| viewer.sees(&v.memory_id, v.agent_id.as_deref()))
        {
            return Err(Error::not_found("memory", id));
        }
        let mut out = Vec::new();
        let mut prev: Option<&VersionRow> = None;
        for v in &versions {
            let event = if v.event == "ADD" {
                Event::Add
            } else {
                Event::Update
            };
            out.push(HistoryEntry {
                id: v.version_id.clone(),
                memory_id: v.memory_id.clone(),
                event,
                old_memory: prev.map(|p| p.memory.clone()),
                new_memory: Some(v.memory.clone()),
                version: v.version,
                valid_from: rfc3339(v.valid_from),
                valid_to: v.valid_to.map(rfc3339),
                recorded_at: rfc3339(v.recorded_at),
                metadata: v.metadata.clone(),
            });
            prev = Some(v);
        }
        if let Some(last) = versions
            .last()
            .filter(|l| l.closed_by.as_deref() == Some("DELETE"))
        {
            out.push(HistoryEntry {
                id: format!("{}:delete", last.version_id),
                memory_id: last.memory_id.clone(),
                event: Event::Delete,
                old_memory: Some(last.memory.clone()),
                new_memory: None,
                version: last.version,
                valid_from: rfc3339(last.valid_from),
                valid_to: last.valid_to.map(rfc3339),
                recorded_at: rfc3339(last.closed_at.unwrap_or(last.recorded_at)),
                metadata: last.metadata.clone(),
            });
        }
        Ok(HistoryResponse { results: out })
    }

    /// A new version of a memory with new text and/or metadata.
    pub async fn update(&self, id: &str, req: UpdateRequest, viewer: &Viewer) -> Result<Change> {
        Self::check_id(id)?;
        if req.text.is_none() && req.metadata.is_none() {
            return Err(Error::invalid("text", "give text or metadata to change"));
        }
        if let Some(t) = &req.text {
            if t.trim().is_empty() {
                return Err(Error::invalid("text", "must not be empty"));
            }
            if t.len() > self.config().max_text_bytes {
                return Err(Error::new(
                    ErrorCode::MemoryTooLarge,
                    format!(
                        "text: {} bytes, the limit is {}",
                        t.len(),
                        self.config().max_text_bytes
                    ),
                ));
            }
        }
        let metadata = req
            .metadata
            .as_ref()
            .map(|m| check_metadata(&Some(m.clone())))
            .transpose()?;
        let source = check_source(&req.source)?;
        let cur = self.get(id, viewer).await?;
        let text = req
            .text
            .clone()
            .map(|t| t.trim().to_string())
            .unwrap_or(cur.memory.clone());
        let vector = self
            .embed_texts(std::slice::from_ref(&text))
            .await?
            .and_then(|mut v| v.pop());
        let change = curate::replace(self, id, text, metadata, vector, source).await?;
        self.sync().await?;
        Ok(change)
    }

    /// Retires a memory: it leaves search and get, and its history stays.
    pub async fn delete(&self, id: &str, viewer: &Viewer) -> Result<Change> {
        let cur = self.get(id, viewer).await?;
        let change = curate::retire(self, id, cur.memory).await?;
        self.sync().await?;
        Ok(change)
    }

    /// Current memories matching a filter, by id, a page at a time.
    pub async fn list(&self, req: ListRequest, viewer: &Viewer) -> Result<ListResponse> {
        let size = req.page_size.unwrap_or(100);
        if !(1..=1000).contains(&size) {
            return Err(Error::invalid("page_size", "must be 1 to 1000"));
        }
        let filter = parse_filters(&req.filters, &req.user_id, &req.agent_id, &req.run_id)?;
        self.sync().await?;
        let viewer = &self.with_grants(viewer).await?;
        let (count, rows) = {
            let idx = self.read_index()?;
            let mut rows: Vec<&VersionRow> = idx
                .eligible(At::Now, viewer, &filter)
                .into_iter()
                .map(|i| idx.entry(i))
                .collect();
            rows.sort_by(|a, b| a.memory_id.cmp(&b.memory_id));
            let count = rows.len();
            let page: Vec<VersionRow> = rows
                .into_iter()
                .filter(|r| req.cursor.as_deref().is_none_or(|c| r.memory_id.as_str() > c))
                .take(size as usize + 1)
                .cloned()
                .collect();
            (count, page)
        };
        let (page, next) = strata_core::page::split(rows, i64::from(size), |r| r.memory_id.clone());
        Ok(ListResponse {
            count,
            results: self.items(&page).await?,
            next_cursor: next,
        })
    }
}

/// The filter of a request: its `filters` and its scope shorthands, all holding.
pub(crate) fn parse_filters(
    filters: &Option<Value>,
    user_id: &Option<String>,
    agent_id: &Option<String>,
    run_id: &Option<String>,
) -> Result<Filter> {
    let mut f = match filters {
        Some(v) => Filter::parse(v)?,
        None => Filter::All,
    };
    for (field, v) in [
        (Field::UserId, user_id),
        (Field::AgentId, agent_id),
        (Field::RunId, run_id),
    ] {
        if let Some(v) = v {
            f = f.and(Filter::Cmp {
                field,
                op: Op::Eq,
                value: Value::from(v.clone()),
            });
        }
    }
    Ok(f)
}
