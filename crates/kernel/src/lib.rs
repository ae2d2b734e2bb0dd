//! The kernel: the one way into Strata's layers.
//!
//! Every entry point — HTTP, MCP, the CLI, managed agents — hands the kernel a
//! [`Request`] naming a syscall, and the kernel runs the same pipeline for all:
//!
//! ```text
//! authenticate → authorize (policy) → idempotency check → budget check
//!   → parse → layer plans the effect → (intent, effect, outcome, idempotency
//!   record, audit entry, event: one transaction) → usage metered → reply
//! ```
//!
//! Syscalls are declared in [`syscalls`], one module per layer, each a type
//! implementing [`strata_core::Syscall`] plus [`Handler`]. The [`Registry`] built
//! from them is what adapters read to derive HTTP routes, OpenAPI and MCP tools.

mod auth;
mod background;
pub mod fleet;
mod hooks;
mod intents;
pub mod metrics;
mod pipeline;
mod registry;
pub mod syscalls;

pub use hooks::{BudgetHook, NoBudget, NoMeter, UsageMeter};
pub use pipeline::{Reply, Request};
pub use registry::{Action, Cx, Each, Entry, ExternalRun, Handler, Registry, WriteOp};

use std::sync::Arc;

use strata_compute::Compute;
use strata_core::{Clock, MasterKey, SystemClock};
use strata_governance::{Policy, ScopePolicy};
use strata_identity::Identity;
use strata_orchestrator::Orchestrator;
use strata_store::{Migration, Store};
use strata_tools::Tools;

/// Every layer's migrations, in dependency order.
pub const MIGRATIONS: &[&[Migration]] = &[
    strata_governance::MIGRATIONS,
    strata_identity::MIGRATIONS,
    strata_orchestrator::MIGRATIONS,
    strata_tools::MIGRATIONS,
    strata_memory::MIGRATIONS,
    strata_compute::MIGRATIONS,
];

/// How to build a kernel.
pub struct Config {
    /// Seals private keys and secrets at rest.
    pub master_key: MasterKey,
    /// The time source.
    pub clock: Arc<dyn Clock>,
    /// The authorization policy.
    pub policy: Arc<dyn Policy>,
    /// Checked before every mutating syscall (no-op until the ledger lands).
    pub budget: Arc<dyn BudgetHook>,
    /// Told about every syscall's usage (no-op until the ledger lands).
    pub meter: Arc<dyn UsageMeter>,
    /// Orchestrator tunables (lease lengths, steal delay).
    pub orchestrator: strata_orchestrator::Config,
    /// Tool-gateway tunables (rates, timeouts, caps). Its master key and clock
    /// are replaced by the kernel's.
    pub tools: strata_tools::Config,
    /// Sandbox tunables (data folder, init program, limits). `None`: no
    /// sandboxes, and every `sandbox.*` call answers `sandbox_unavailable`.
    /// Its clock is replaced by the kernel's.
    pub compute: Option<strata_compute::Config>,
    /// Memory-layer limits, its extractor, and the embedding model it recalls
    /// with (none: lexical, graph and recency signals only).
    pub memory: MemoryConfig,
}

/// How to build the memory layer.
#[derive(Clone)]
pub struct MemoryConfig {
    /// Limits and weights.
    pub limits: strata_memory::Config,
    /// Turns messages into facts (default: the built-in rule extractor).
    pub extractor: Arc<dyn strata_memory::Extractor>,
    /// The embedding model, if any (see [`strata_memory::builtin_embedder`]).
    pub embedder: Option<Arc<dyn strata_memory::Embedder>>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            limits: strata_memory::Config::default(),
            extractor: Arc::new(strata_memory::RuleExtractor),
            embedder: None,
        }
    }
}

impl Config {
    /// Defaults: the wall clock, scope policy, no budgets, no metering.
    pub fn new(master_key: MasterKey) -> Config {
        Config {
            tools: strata_tools::Config::new(master_key.clone()),
            master_key,
            clock: Arc::new(SystemClock),
            policy: Arc::new(ScopePolicy),
            budget: Arc::new(NoBudget),
            meter: Arc::new(NoMeter),
            orchestrator: strata_orchestrator::Config::default(),
            memory: MemoryConfig::default(),
            compute: None,
        }
    }
}

/// The kernel; cheap to clone.
#[derive(Clone)]
pub struct Kernel {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    clock: Arc<dyn Clock>,
    master_key: MasterKey,
    identity: Identity,
    orchestrator: Orchestrator,
    tools: Tools,
    memory: strata_memory::Memory,
    compute: std::result::Result<Compute, String>,
    policy: Arc<dyn Policy>,
    budget: Arc<dyn BudgetHook>,
    meter: Arc<dyn UsageMeter>,
    registry: Registry,
    tokens: auth::TokenCache,
    labels: auth::LabelCache,
    capabilities: auth::CapabilityCache,
    /// Whether a read-only tool call's records are synced before its answer
    /// (`strata_tools::Config::sync_read_only_calls`).
    sync_read_only_calls: bool,
    instance: intents::Instance,
    metrics: metrics::Metrics,
    fleet: fleet::Fleet,
}

impl Kernel {
    /// A kernel over an opened store (opened with [`MIGRATIONS`]); loads the
    /// tool gateway's catalog and grants.
    pub async fn new(store: Store, config: Config) -> strata_core::Result<Kernel> {
        let registry = syscalls::registry();
        store.set_tail(Arc::new(pipeline::Logs));
        let metrics = metrics::Metrics::new(&registry);
        let sync_read_only_calls = config.tools.sync_read_only_calls;
        let mut tools_config = config.tools;
        tools_config.master_key = config.master_key.clone();
        tools_config.clock = config.clock.clone();
        let tools = Tools::open(store.clone(), tools_config).await?;
        let memory = strata_memory::Memory::open(
            store.clone(),
            config.clock.clone(),
            config.memory.extractor,
            config.memory.embedder,
            config.memory.limits,
        )
        .await?;
        let compute = open_compute(&store, config.compute, config.clock.clone()).await;
        Ok(Kernel {
            inner: Arc::new(Inner {
                orchestrator: Orchestrator::new(
                    store.clone(),
                    Identity::new(store.clone(), config.clock.clone(), config.master_key.clone()),
                    config.orchestrator,
                    config.clock.clone(),
                ),
                identity: Identity::new(store.clone(), config.clock.clone(), config.master_key.clone()),
                tools,
                memory,
                compute,
                master_key: config.master_key,
                store,
                clock: config.clock,
                fleet: fleet::Fleet::default(),
                policy: config.policy,
                budget: config.budget,
                meter: config.meter,
                registry,
                tokens: auth::TokenCache::default(),
                labels: auth::LabelCache::default(),
                capabilities: auth::CapabilityCache::default(),
                sync_read_only_calls,
                instance: intents::Instance::default(),
                metrics,
            }),
        })
    }

    /// The declared syscalls.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The identity layer.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The orchestration layer.
    pub fn orchestrator(&self) -> &Orchestrator {
        &self.inner.orchestrator
    }

    /// The tool gateway.
    pub fn tools(&self) -> &Tools {
        &self.inner.tools
    }

    /// Changes whenever the upstream tools or the grants change: the tool
    /// list some caller sees may have changed.
    pub fn tool_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.tools.changes()
    }

    /// The memory layer.
    pub fn memory(&self) -> &strata_memory::Memory {
        &self.inner.memory
    }

    /// The compute layer, or `sandbox_unavailable` saying why this server has none.
    pub fn compute(&self) -> strata_core::Result<&Compute> {
        self.inner
            .compute
            .as_ref()
            .map_err(|why| strata_core::Error::new(strata_core::ErrorCode::SandboxUnavailable, why.clone()))
    }

    /// The managed agents this server runs.
    pub fn fleet(&self) -> &fleet::Fleet {
        &self.inner.fleet
    }

    /// Whether the policy lets `principal` call the syscall declared by `spec`
    /// (what an adapter asks to show a caller only what it may call).
    pub fn permits(&self, principal: &strata_core::Principal, spec: &strata_core::Spec) -> bool {
        self.inner.policy.authorize(principal, spec).is_ok()
    }

    /// Tells the usage meter what a sandbox run or exec used.
    pub(crate) fn meter_sandbox(&self, principal: &strata_core::Principal, usage: &strata_compute::Usage) {
        self.inner.meter.sandbox_usage(principal, usage);
    }

    /// The kernel's clock, read now (epoch ms).
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// Per-syscall request counts and latencies.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }

    fn now(&self) -> i64 {
        self.inner.clock.now_ms()
    }
}

/// Opens the compute layer; a host that cannot run sandboxes still gets a
/// kernel, whose `sandbox.*` calls then answer `sandbox_unavailable` with the reason.
async fn open_compute(
    store: &Store,
    config: Option<strata_compute::Config>,
    clock: Arc<dyn Clock>,
) -> std::result::Result<Compute, String> {
    let Some(config) = config else {
        return Err("this server was started without sandboxes".into());
    };
    if std::fs::read_to_string("/proc/sys/user/max_user_namespaces").is_ok_and(|n| n.trim() == "0") {
        let why = "sandboxes are unavailable on this host: user namespaces are disabled (/proc/sys/user/max_user_namespaces is 0)";
        tracing::warn!("{why}");
        return Err(why.into());
    }
    match Compute::open(store.clone(), config, clock).await {
        Ok(c) => {
            for w in c.warnings() {
                tracing::warn!("sandboxes: {w}");
            }
            Ok(c)
        }
        Err(e) => {
            tracing::warn!(error = %e, "sandboxes are unavailable on this host");
            Err(format!("sandboxes are unavailable on this host: {}", e.detail))
        }
    }
}
