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

/// Agents' labels by agent id.
#[derive(Default)]
pub(crate) struct LabelCache(RwLock<HashMap<String, BTreeMap<String, String>>>);

/// The capabilities agents declare, by agent id.
#[derive(Default)]
pub(crate) struct CapabilityCache(RwLock<HashMap<String, Arc<Vec<Capability>>>>);

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
        let cache = &self.inner.labels.0;
        if let Some(l) = cache.read().ok().and_then(|m| m.get(agent_id).cloned()) {
            return Ok(l);
        }
        let labels = self.inner.identity.get(agent_id).await?.labels;
        if let Ok(mut m) = cache.write() {
            if m.len() >= CACHE_MAX {
                m.clear();
            }
            m.insert(agent_id.to_string(), labels.clone());
        }
        Ok(labels)
    }

    /// The capabilities agent `agent_id` declares (read once, then cached).
    pub(crate) async fn agent_capabilities(&self, agent_id: &str) -> Result<Arc<Vec<Capability>>> {
        let cache = &self.inner.capabilities.0;
        if let Some(c) = cache.read().ok().and_then(|m| m.get(agent_id).cloned()) {
            return Ok(c);
        }
        let caps = Arc::new(self.inner.identity.capabilities_of(agent_id).await?);
        if let Ok(mut m) = cache.write() {
            if m.len() >= CACHE_MAX {
                m.clear();
            }
            m.insert(agent_id.to_string(), caps.clone());
        }
        Ok(caps)
    }

    /// Drops every cached token (and agents' labels and capabilities, so a
    /// deleted agent's go too).
    pub(crate) fn forget_tokens(&self) {
        self.inner.tokens.clear();
        if let Ok(mut m) = self.inner.labels.0.write() {
            m.clear();
        }
        if let Ok(mut m) = self.inner.capabilities.0.write() {
            m.clear();
        }
    }
}
