//! A kernel on a fresh database of either backend, and a terse way to call it.

use std::sync::Arc;

use serde_json::{Value, json};
use strata_core::{ManualClock, MasterKey};
use strata_kernel::{Config, Kernel, Reply, Request};
use strata_store::{Backend, Options, Store};

pub(crate) struct Harness {
    pub(crate) kernel: Kernel,
    pub(crate) admin: String,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) url: String,
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
        let dir = tempfile::tempdir().unwrap();
        let url = strata_store::testing::fresh_url(backend, dir.path())
            .await
            .unwrap();
        let store = Store::open(Options::new(&url), strata_kernel::MIGRATIONS)
            .await
            .unwrap();
        let clock = Arc::new(ManualClock::new(1_800_000_000_000));
        let master_key = MasterKey::generate();
        let mut config = Config::new(master_key);
        config.clock = clock.clone();
        let kernel = Kernel::new(store, config).await.unwrap();
        let mut admin = String::new();
        let made = kernel
            .bootstrap_admin_token(|t| {
                admin = t.to_string();
                Ok(())
            })
            .await
            .unwrap();
        assert!(made);
        Harness {
            kernel,
            admin,
            clock,
            url,
            _dir: dir,
        }
    }

    pub(crate) async fn call(
        &self,
        token: &str,
        syscall: &str,
        input: Value,
    ) -> Result<Reply, strata_core::Error> {
        self.call_with_key(token, syscall, input, None).await
    }

    pub(crate) async fn call_with_key(
        &self,
        token: &str,
        syscall: &str,
        input: Value,
        key: Option<&str>,
    ) -> Result<Reply, strata_core::Error> {
        self.kernel
            .call(Request {
                syscall: syscall.into(),
                token: Some(token.into()),
                input,
                idempotency_key: key.map(str::to_string),
            })
            .await
    }

    /// Creates an agent as admin and returns the reply body.
    pub(crate) async fn agent(&self, name: &str) -> Value {
        self.call(
            &self.admin,
            "agent.create",
            json!({"name": name, "capabilities": [{"name": "summarize"}]}),
        )
        .await
        .unwrap()
        .body
    }

    pub(crate) async fn verify(&self) -> Value {
        self.call(&self.admin, "audit.verify", json!({}))
            .await
            .unwrap()
            .body
    }

    pub(crate) fn store(&self) -> &Store {
        self.kernel.store()
    }
}
