//! Search: hybrid recall with a documented fusion formula.
//!
//! For every version the read may see (current ones, or those valid at `as_of`,
//! within the filter and the viewer's rights), four signals in 0–1:
//! - `lexical` = BM25(query, memory) / Σ idf·(k1 + 1) over the query's distinct
//!   known terms — the score a memory would reach by matching every term at
//!   saturation — so a memory matching one rare word of a long question is not
//!   lifted to 1 just because nothing matched better (k1 = 1.2, b = 0.75, terms
//!   stemmed, stop words dropped);
//! - `vector` = max(0, cosine(query vector, memory vector)) (0 without an embedder);
//! - `graph` = Σ over entities named in the query (and, at half weight, their
//!   neighbours in the relation graph) of 1 / ln(2 + memories linked to the entity),
//!   divided by the best such sum among the hits;
//! - `recency` = 0.5 ^ ((reference − valid_from) / half-life), the reference being
//!   `as_of` or now, the half-life 30 days by default.
//!
//! **score = 0.45·lexical + 0.40·vector + 0.10·graph + 0.05·recency** with an
//! embedder, and **0.75·lexical + 0.20·graph + 0.05·recency** without one. A
//! version is a hit only if lexical, vector (≥ 0.2) or graph is non-zero;
//! recency alone never makes a hit. Ties break by newer `valid_from`, then id.
//!
//! `max_tokens` keeps the best hits, in rank order, whose texts together cost at
//! most that many tokens (whitespace words × 1.3); a hit that would overflow the
//! budget is skipped and smaller later ones may still fit.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use strata_core::{Error, Result};

use crate::index::{At, Viewer};
use crate::memory::{MemoryItem, ScoreParts, instant, parse_filters};
use crate::store::VersionRow;
use crate::{Memory, term};

/// Fusion weights with an embedder: lexical, vector, graph, recency.
pub const WEIGHTS_HYBRID: [f32; 4] = [0.45, 0.40, 0.10, 0.05];
/// Fusion weights without an embedder: lexical, vector, graph, recency.
pub const WEIGHTS_LEXICAL: [f32; 4] = [0.75, 0.0, 0.20, 0.05];
/// The cosine below which the vector signal alone does not make a hit.
pub const MIN_COSINE: f32 = 0.2;

/// A search request.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// What to recall.
    pub query: String,
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
    /// How many results at most (1–100, default 10).
    #[serde(default)]
    pub top_k: Option<u32>,
    /// See the memories as they were at this instant (RFC 3339).
    #[serde(default)]
    pub as_of: Option<String>,
    /// Keep only as many results as fit this many tokens.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Drop results scoring below this (0–1).
    #[serde(default)]
    pub threshold: Option<f32>,
}

/// Search results, best first.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SearchResponse {
    /// The hits.
    pub results: Vec<MemoryItem>,
}

/// The longest query accepted, in bytes.
const MAX_QUERY_BYTES: usize = 4096;

impl Memory {
    /// Recalls the memories that best match `req.query`, as `viewer`.
    pub async fn search(&self, req: SearchRequest, viewer: &Viewer) -> Result<SearchResponse> {
        let query = req.query.trim();
        if query.is_empty() {
            return Err(Error::invalid("query", "must not be empty"));
        }
        if query.len() > MAX_QUERY_BYTES {
            return Err(Error::invalid(
                "query",
                format!("at most {MAX_QUERY_BYTES} bytes"),
            ));
        }
        let top_k = req.top_k.unwrap_or(10);
        if top_k == 0 || top_k > self.config().max_top_k {
            return Err(Error::invalid(
                "top_k",
                format!("must be 1 to {}", self.config().max_top_k),
            ));
        }
        if req.max_tokens == Some(0) {
            return Err(Error::invalid("max_tokens", "must be at least 1"));
        }
        if let Some(t) = req.threshold
            && !(0.0..=1.0).contains(&t)
        {
            return Err(Error::invalid("threshold", "must be 0 to 1"));
        }
        let filter = parse_filters(&req.filters, &req.user_id, &req.agent_id, &req.run_id)?;
        let at = match &req.as_of {
            Some(s) => At::Past(instant("as_of", s)?),
            None => At::Now,
        };
        let reference = match at {
            At::Past(t) => t,
            At::Now => self.now(),
        };
        let qv = self.embed_query(query).await?;
        self.sync().await?;
        let viewer = self.with_grants(viewer).await?;
        let half_life_ms = (self.config().recency_half_life_days.max(0.01) * 86_400_000.0) as f64;
        let hits: Vec<(VersionRow, ScoreParts, f32)> = {
            let idx = self.read_index()?;
            let eligible = idx.eligible(at, &viewer, &filter);
            let (signals, lex_bound) = idx.signals(&eligible, query, qv.as_deref());
            let max_graph = signals.values().map(|s| s.graph).fold(0.0_f32, f32::max);
            let w = if qv.is_some() {
                WEIGHTS_HYBRID
            } else {
                WEIGHTS_LEXICAL
            };
            let mut scored: Vec<(u32, ScoreParts, f32)> = signals
                .into_iter()
                .filter(|(_, s)| s.lexical > 0.0 || s.graph > 0.0 || s.vector >= MIN_COSINE)
                .map(|(doc, s)| {
                    let row = idx.entry(doc);
                    let age = (reference - row.valid_from).max(0) as f64;
                    let parts = ScoreParts {
                        lexical: if lex_bound > 0.0 {
                            s.lexical / lex_bound
                        } else {
                            0.0
                        },
                        vector: s.vector.max(0.0),
                        graph: if max_graph > 0.0 { s.graph / max_graph } else { 0.0 },
                        recency: 0.5_f64.powf(age / half_life_ms) as f32,
                    };
                    let score = w[0] * parts.lexical
                        + w[1] * parts.vector
                        + w[2] * parts.graph
                        + w[3] * parts.recency;
                    (doc, parts, score)
                })
                .filter(|(_, _, score)| req.threshold.is_none_or(|t| *score >= t))
                .collect();
            scored.sort_by(|a, b| {
                b.2.total_cmp(&a.2)
                    .then_with(|| idx.entry(b.0).valid_from.cmp(&idx.entry(a.0).valid_from))
                    .then_with(|| idx.entry(a.0).memory_id.cmp(&idx.entry(b.0).memory_id))
            });
            let mut out = Vec::new();
            let mut budget = req.max_tokens.map(|t| t as usize);
            for (doc, parts, score) in scored {
                if out.len() >= top_k as usize {
                    break;
                }
                let row = idx.entry(doc);
                if let Some(left) = budget.as_mut() {
                    let cost = term::token_cost(&row.memory);
                    if cost > *left {
                        continue;
                    }
                    *left -= cost;
                }
                out.push((row.clone(), parts, score));
            }
            out
        };
        let rows: Vec<VersionRow> = hits.iter().map(|h| h.0.clone()).collect();
        let mut items = self.items(&rows).await?;
        for (item, (_, parts, score)) in items.iter_mut().zip(hits) {
            item.score = Some(score);
            item.score_parts = Some(parts);
        }
        Ok(SearchResponse { results: items })
    }

    /// The viewer with the grants it holds now (agents only).
    pub(crate) async fn with_grants(&self, viewer: &Viewer) -> Result<Viewer> {
        match viewer {
            Viewer::All => Ok(Viewer::All),
            Viewer::Agent { agent_id, granted } => {
                let mut granted = granted.clone();
                granted.extend(crate::store::grants_of(self.store(), agent_id).await?);
                Ok(Viewer::Agent {
                    agent_id: agent_id.clone(),
                    granted,
                })
            }
        }
    }
}
