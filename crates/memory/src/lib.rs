//! Memory (L3): curated long-term memory for agents, with history, time and recall.
//!
//! Agent memory is curation, not a chat log. [`Memory::add`] turns messages into
//! atomic facts ([`extract`]), compares each with the nearest memories in the
//! same scope and decides: **ADD** a new memory, **UPDATE** one (the new version
//! supersedes the old), **DELETE** one (retire it), or **NONE** (a duplicate,
//! which only records the new source). Nothing is ever lost: every version stays
//! with its validity interval (`valid_from`, `valid_to`) and `recorded_at`, so
//! [`Memory::history`] shows every change and a search `as_of` a past instant
//! sees what was true then.
//!
//! [`Memory::search`] fuses lexical (BM25), dense-vector, entity-graph and
//! recency signals by a documented formula ([`search`]), and can trim its
//! results to a token budget. [`handoff`] passes context from one agent to
//! another.
//!
//! Modules:
//! - [`memory`]: requests and responses of add, get, update, delete, history, list.
//! - [`search`]: the search request, its fusion formula and results.
//! - [`filter`]: the filter language (equality, operators, AND/OR/NOT) as a typed tree.
//! - [`extract`]: the [`Extractor`] trait and the built-in rule extractor.
//! - [`chat`]: an extractor backed by an OpenAI-compatible chat model.
//! - [`embed`]: the [`Embedder`] trait and an OpenAI-compatible embeddings client;
//!   [`bert`] (feature `bert`) runs all-MiniLM-L6-v2 in-process.
//! - [`handoff`]: handoffs between agents.
//! - [`term`], [`calendar`]: words and dates, shared by extraction and recall.
//!
//! Like every layer, this crate knows nothing of HTTP; SQL lives in one module
//! (`store`), and its tables carry the `mem_` prefix.

#[cfg(feature = "bert")]
pub mod bert;
pub mod calendar;
pub mod chat;
mod curate;
pub mod embed;
pub mod extract;
pub mod filter;
pub mod handoff;
mod index;
pub mod memory;
pub mod search;
mod store;
pub mod term;

use std::sync::{Arc, RwLock};

pub use embed::{Embedder, HttpEmbedder};
pub use extract::{Extractor, RuleExtractor};
pub use filter::Filter;
pub use index::Viewer;
pub use memory::{AddRequest, AddResponse, Change, Event, MemoryItem};
pub use search::{SearchRequest, SearchResponse};
pub use store::MIGRATIONS;

use strata_core::time::Clock;
use strata_core::{Error, Result};
use strata_store::Store;

/// The built-in embedding model from `models_dir`, if this build has it (feature
/// `bert`) and the folder holds it; otherwise `None`, with a warning saying why,
/// and the layer recalls without vectors.
pub fn builtin_embedder(models_dir: &std::path::Path) -> Option<Arc<dyn Embedder>> {
    #[cfg(feature = "bert")]
    {
        let Some(dir) = bert::locate(models_dir) else {
            tracing::warn!(
                dir = %models_dir.display(),
                "memory: no embedding model in the models folder (run crates/memory/scripts/fetch-model)"
            );
            return None;
        };
        match bert::BertEmbedder::load(&dir) {
            Ok(e) => Some(Arc::new(e)),
            Err(e) => {
                tracing::warn!(error = %e, "memory: the embedding model did not load");
                None
            }
        }
    }
    #[cfg(not(feature = "bert"))]
    {
        tracing::warn!(
            dir = %models_dir.display(),
            "memory: built without the `bert` feature; no built-in embedding model"
        );
        None
    }
}

/// Limits and weights of the memory layer.
#[derive(Debug, Clone)]
pub struct Config {
    /// The longest text of one message or memory, in bytes.
    pub max_text_bytes: usize,
    /// The most messages one add may carry.
    pub max_messages: usize,
    /// The most results a search may ask for.
    pub max_top_k: u32,
    /// Recency half-life in days: a memory this old gets half the recency signal.
    pub recency_half_life_days: f32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_text_bytes: 16 * 1024,
            max_messages: 200,
            max_top_k: 100,
            recency_half_life_days: 30.0,
        }
    }
}

/// The memory service; cheap to clone.
#[derive(Clone)]
pub struct Memory {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    clock: Arc<dyn Clock>,
    extractor: Arc<dyn Extractor>,
    embedder: Option<Arc<dyn Embedder>>,
    config: Config,
    index: RwLock<index::Index>,
    sync: tokio::sync::Mutex<()>,
    queries: embed::QueryCache,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("extractor", &self.inner.extractor.name())
            .field(
                "embedder",
                &self.inner.embedder.as_ref().map(|e| e.model().to_string()),
            )
            .finish()
    }
}

impl Memory {
    /// A service over `store` (opened with [`MIGRATIONS`]), extracting with
    /// `extractor` and embedding with `embedder` when there is one. Loads the
    /// recall index from the store.
    pub async fn open(
        store: Store,
        clock: Arc<dyn Clock>,
        extractor: Arc<dyn Extractor>,
        embedder: Option<Arc<dyn Embedder>>,
        config: Config,
    ) -> Result<Memory> {
        if embedder.is_none() {
            tracing::warn!(
                "memory: no embedding model configured; search uses lexical, graph and recency signals only"
            );
        }
        let model = embedder.as_ref().map(|e| e.model().to_string());
        let m = Memory {
            inner: Arc::new(Inner {
                store,
                clock,
                extractor,
                embedder,
                config,
                index: RwLock::new(index::Index::new(model)),
                sync: tokio::sync::Mutex::new(()),
                queries: embed::QueryCache::new(4096),
            }),
        };
        m.sync().await?;
        m.embed_missing().await?;
        Ok(m)
    }

    /// A service with the rule extractor, no embedder and default limits.
    pub async fn open_default(store: Store, clock: Arc<dyn Clock>) -> Result<Memory> {
        Memory::open(store, clock, Arc::new(RuleExtractor), None, Config::default()).await
    }

    /// Its limits.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Whether dense vectors take part in recall.
    pub fn has_embedder(&self) -> bool {
        self.inner.embedder.is_some()
    }

    /// Versions held by the recall index (every version of every memory).
    pub fn indexed(&self) -> usize {
        self.read_index().map(|i| i.len()).unwrap_or(0)
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn now(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    pub(crate) fn read_index(&self) -> Result<std::sync::RwLockReadGuard<'_, index::Index>> {
        self.inner
            .index
            .read()
            .map_err(|_| Error::internal("memory index lock poisoned"))
    }

    /// Brings the recall index up to date with the store.
    pub(crate) async fn sync(&self) -> Result<()> {
        let _one = self.inner.sync.lock().await;
        let since = self.read_index()?.seq();
        let (rows, links) = store::changes_since(&self.inner.store, since).await?;
        if rows.is_empty() {
            return Ok(());
        }
        self.inner
            .index
            .write()
            .map_err(|_| Error::internal("memory index lock poisoned"))?
            .apply(rows, links);
        Ok(())
    }

    /// Embeds, in memory, current versions stored without a vector of this model
    /// (written before a model was configured, or by another model).
    async fn embed_missing(&self) -> Result<()> {
        let Some(embedder) = &self.inner.embedder else {
            return Ok(());
        };
        let missing = self.read_index()?.missing_vectors();
        if missing > 0 {
            tracing::info!(
                missing,
                model = embedder.model(),
                "memory: embedding memories stored without a vector"
            );
        }
        loop {
            let batch = self.read_index()?.unembedded(256);
            if batch.is_empty() {
                return Ok(());
            }
            let texts: Vec<String> = batch.iter().map(|(_, t)| t.clone()).collect();
            let vecs = embedder.embed(&texts).await?;
            let mut idx = self
                .inner
                .index
                .write()
                .map_err(|_| Error::internal("memory index lock poisoned"))?;
            for ((id, _), v) in batch.into_iter().zip(vecs) {
                idx.set_vector(&id, v);
            }
        }
    }

    /// Embeds texts with the configured model, if any.
    pub(crate) async fn embed_texts(&self, texts: &[String]) -> Result<Option<Vec<Vec<f32>>>> {
        match &self.inner.embedder {
            Some(e) if !texts.is_empty() => Ok(Some(e.embed(texts).await?)),
            _ => Ok(None),
        }
    }

    /// Embeds a query, from the cache when it was asked recently.
    pub(crate) async fn embed_query(&self, q: &str) -> Result<Option<Vec<f32>>> {
        let Some(e) = &self.inner.embedder else {
            return Ok(None);
        };
        if let Some(v) = self.inner.queries.get(q) {
            return Ok(Some(v));
        }
        let v = e.embed(&[q.to_string()]).await?.pop();
        if let Some(v) = &v {
            self.inner.queries.put(q, v.clone());
        }
        Ok(v)
    }

    pub(crate) fn embed_model(&self) -> Option<String> {
        self.inner.embedder.as_ref().map(|e| e.model().to_string())
    }

    pub(crate) fn extractor(&self) -> &dyn Extractor {
        self.inner.extractor.as_ref()
    }
}
