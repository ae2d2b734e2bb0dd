//! Authentication with a short-lived cache of verified tokens.
//!
//! Verifying a token is a hash and one indexed read; caching it for
//! [`CACHE_TTL_MS`] saves that read on hot paths. Revocations and deletions made
//! through this kernel clear the cache at once; on other replicas of a PostgreSQL
//! deployment a revoked token stops working within the TTL.
//!
//! An agent's labels and capabilities never change after it is created (and
//! its id is never reused; deleting it revokes its tokens in the same write),
//! so the labels the tool gateway matches grants against and the capabilities
//! every lease and completion checks are cached without a TTL.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use strata_core::{Error, ErrorCode, Principal, Result};
use strata_identity::Capability;
use strata_identity::token::Verified;

use crate::Kernel;

/// How long a verified token is trusted without re-reading it.
pub(crate) const CACHE_TTL_MS: i64 = 1000;
const CACHE_MAX: usize = 50_000;

/// Verified tokens with the time they were read. `generation` counts clears: a
/// verification that began before a clear (so may have read a token just
/// revoked) must not put its result back.
#[derive(Default)]
pub(crate) struct TokenCache {
    entries: RwLock<HashMap<String, (Verified, i64)>>,
    generation: AtomicU64,
}

impl TokenCache {
    pub(crate) fn clear(&self) {
        if let Ok(mut m) = self.entries.write() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            m.clear();
        }
    }
}

/// Something fixed when an agent is created, by agent id: read once, then kept
/// until the tokens are forgotten.
pub(crate) struct ByAgent<V>(RwLock<HashMap<String, V>>);

impl<V> Default for ByAgent<V> {
    fn default() -> Self {
        ByAgent(RwLock::default())
    }
}

impl<V: Clone> ByAgent<V> {
    async fn get_or_load(&self, agent_id: &str, load: impl Future<Output = Result<V>>) -> Result<V> {
        if let Some(v) = self.0.read().ok().and_then(|m| m.get(agent_id).cloned()) {
            return Ok(v);
        }
        let v = load.await?;
        if let Ok(mut m) = self.0.write() {
            if m.len() >= CACHE_MAX {
                m.clear();
            }
            m.insert(agent_id.to_string(), v.clone());
        }
        Ok(v)
    }

    fn clear(&self) {
        if let Ok(mut m) = self.0.write() {
            m.clear();
        }
    }
}

/// Agents' labels by agent id.
pub(crate) type LabelCache = ByAgent<BTreeMap<String, String>>;

/// The capabilities agents declare, by agent id.
pub(crate) type CapabilityCache = ByAgent<Arc<Vec<Capability>>>;

impl Kernel {
    /// Resolves a bearer token (without the `Bearer ` prefix) to a principal.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Principal> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(Error::new(
                ErrorCode::Unauthenticated,
                "send a bearer token in the Authorization header",
            ));
        };
        let now = self.now();
        let cache = &self.inner.tokens;
        if let Some((v, at)) = cache.entries.read().ok().and_then(|m| m.get(token).cloned())
            && now - at < CACHE_TTL_MS
            && v.expires_at.is_none_or(|t| t > now)
        {
            return Ok(v.principal);
        }
        let generation = cache.generation.load(Ordering::SeqCst);
        let v = self.inner.identity.authenticate(token).await?;
        if let Ok(mut m) = cache.entries.write()
            && cache.generation.load(Ordering::SeqCst) == generation
        {
            if m.len() >= CACHE_MAX {
                m.clear();
            }
            m.insert(token.to_string(), (v.clone(), now));
        }
        Ok(v.principal)
    }

    /// The labels of agent `agent_id` (read once, then cached).
    pub(crate) async fn agent_labels(&self, agent_id: &str) -> Result<BTreeMap<String, String>> {
        let load = async { Ok(self.inner.identity.get(agent_id).await?.labels) };
        self.inner.labels.get_or_load(agent_id, load).await
    }

    /// The capabilities agent `agent_id` declares (read once, then cached).
    pub(crate) async fn agent_capabilities(&self, agent_id: &str) -> Result<Arc<Vec<Capability>>> {
        let load = async { Ok(Arc::new(self.inner.identity.capabilities_of(agent_id).await?)) };
        self.inner.capabilities.get_or_load(agent_id, load).await
    }

    /// Drops every cached token (and agents' labels and capabilities, so a
    /// deleted agent's go too).
    pub(crate) fn forget_tokens(&self) {
        self.inner.tokens.clear();
        self.inner.labels.clear();
        self.inner.capabilities.clear();
    }
}
