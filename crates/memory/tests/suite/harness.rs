//! A memory service on a fresh database of either backend.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use strata_core::ManualClock;
use strata_memory::{AddRequest, Config, Extractor, Memory, RuleExtractor, Viewer};
use strata_store::{Backend, Options, Store};

/// 2023-05-08T00:00:00Z.
pub(crate) const T0: i64 = 1_683_504_000_000;

pub(crate) struct Harness {
    pub(crate) memory: Memory,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) store: Store,
    _dir: tempfile::TempDir,
}

/// Declares one test per backend for each scenario `fn name(Backend) -> impl Future`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(strata_store::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(strata_store::Backend::Postgres).await })*
        }
    };
}

impl Harness {
    pub(crate) async fn new(backend: Backend) -> Harness {
        Harness::with_extractor(backend, Arc::new(RuleExtractor)).await
    }

    pub(crate) async fn with_extractor(backend: Backend, extractor: Arc<dyn Extractor>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let url = strata_store::testing::fresh_url(backend, dir.path())
            .await
            .unwrap();
        let store = Store::open(Options::new(&url), &[strata_memory::MIGRATIONS])
            .await
            .unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let memory = Memory::open(store.clone(), clock.clone(), extractor, None, Config::default())
            .await
            .unwrap();
        Harness {
            memory,
            clock,
            store,
            _dir: dir,
        }
    }

    /// A second service over the same database (a restart, or another replica).
    pub(crate) async fn reopen(&self) -> Memory {
        Memory::open(
            self.store.clone(),
            self.clock.clone(),
            Arc::new(RuleExtractor),
            None,
            Config::default(),
        )
        .await
        .unwrap()
    }

    pub(crate) fn advance_days(&self, days: u64) {
        self.clock.advance(Duration::from_secs(days * 86_400));
    }
}

/// An add request from JSON (as an adapter would parse it).
pub(crate) fn add_req(v: Value) -> AddRequest {
    serde_json::from_value(v).expect("a valid add request")
}

/// Adds `text` for user `user` as an operator.
pub(crate) async fn remember(m: &Memory, user: &str, text: &str) -> strata_memory::AddResponse {
    m.add(add_req(json!({"text": text, "user_id": user})), &Viewer::All)
        .await
        .unwrap()
}

pub(crate) fn agent(id: &str) -> Viewer {
    Viewer::Agent {
        agent_id: id.into(),
        granted: Default::default(),
    }
}
