//! Tools (L4): the gateway between agents and the tools they call.
//!
//! Operators register **connections** — an MCP server over stdio or streamable
//! HTTP, or an OpenAPI 3 service — and each upstream tool becomes a catalog entry
//! named `connection.tool` with an input JSON Schema. Agents list and call the
//! tools their **grants** allow; the gateway checks the arguments against the
//! schema before anything reaches the upstream, applies per-agent and per-tool
//! rate limits, a timeout, retries for idempotent tools and a circuit breaker per
//! connection, injects credentials from the **vault** at call time, caps what the
//! upstream may send back, and logs every call.
//!
//! - [`vault`]: secrets sealed at rest (XChaCha20-Poly1305 under the master key);
//!   no method returns a value, and [`vault::SecretValue`] can be neither
//!   serialized nor printed.
//! - [`reference`]: `{"secret": "NAME"}` and `${secret:NAME}` in a connection's
//!   environment, headers and query, resolved only when a call needs them.
//! - [`connection`]: registering, syncing and removing connections.
//! - [`catalog`]: the tools, their schemas, and text search over them.
//! - [`grant`]: which agent (by id or label) may list and call which tools.
//! - [`call`]: the call pipeline and the call log.
//! - [`limit`], [`breaker`]: token buckets and circuit breakers.
//! - [`mcp`], [`openapi`]: the two kinds of upstream.
//! - [`oauth`]: access tokens kept fresh by client-credentials or refresh-token flows.
//!
//! SQL lives in `store.rs`; tables carry the `tl_` prefix. Like every layer, the
//! crate knows nothing of HTTP routes: the kernel calls [`Tools`]'s async methods,
//! which take typed requests and return `strata_core::Result`.

pub mod breaker;
pub mod call;
pub mod catalog;
pub mod connection;
pub mod grant;
pub mod limit;
pub mod mcp;
pub mod oauth;
pub mod openapi;
pub mod reference;
mod store;
pub mod vault;

pub use call::{CallError, CallOutput, CallRecord, CallRequest, ListCalls};
pub use catalog::{ListTools, ToolInfo};
pub use connection::{ConnectionInfo, NewConnection, SyncReport, Upstream};
pub use grant::{Grant, NewGrant, Subject};
pub use limit::Rate;
pub use vault::{NewSecret, SecretInfo, SecretValue};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strata_core::{Clock, MasterKey};
use strata_store::{Migration, Store};

/// Who is asking: the kernel maps an authenticated principal to one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An operator: sees every tool and may call any of them.
    Operator,
    /// An agent: sees and calls only what its grants allow.
    Agent {
        /// `agt_…`
        id: String,
        /// The agent's labels, which label grants match.
        labels: BTreeMap<String, String>,
    },
}

impl Caller {
    /// An agent caller without labels.
    pub fn agent(id: impl Into<String>) -> Caller {
        Caller::Agent {
            id: id.into(),
            labels: BTreeMap::new(),
        }
    }

    /// How the caller is written in the call log.
    pub fn log_name(&self) -> &str {
        match self {
            Caller::Operator => "admin",
            Caller::Agent { id, .. } => id,
        }
    }
}

/// Tunables of the gateway.
#[derive(Clone)]
pub struct Config {
    /// Seals the vault.
    pub master_key: MasterKey,
    /// Time for rate limits, breakers, token expiry and the log.
    pub clock: Arc<dyn Clock>,
    /// Calls each agent may make (across tools).
    pub agent_rate: Rate,
    /// Calls each tool accepts (across agents), unless its connection says otherwise.
    pub tool_rate: Rate,
    /// How long a call may take, unless its connection says otherwise.
    pub timeout: Duration,
    /// The most bytes an upstream may answer one call with, unless its connection says otherwise.
    pub max_response_bytes: usize,
    /// Consecutive upstream failures that open a connection's breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before letting one probe through.
    pub breaker_cooldown: Duration,
    /// How long starting an upstream (spawn + initialize, or fetching a document) may take.
    pub connect_timeout: Duration,
    /// Whether a call to a read-only tool waits for its log row and audit entry
    /// to reach the disk before it is answered. Off by default: they are
    /// committed before the answer (a crash of the server cannot lose them)
    /// and synced within the store's sync window (10 ms), so only power loss
    /// in that window can.
    pub sync_read_only_calls: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("agent_rate", &self.agent_rate)
            .field("tool_rate", &self.tool_rate)
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Defaults around `master_key`, on the wall clock.
    pub fn new(master_key: MasterKey) -> Config {
        Config {
            master_key,
            clock: Arc::new(strata_core::SystemClock),
            agent_rate: Rate {
                burst: 200,
                per_second: 100,
            },
            tool_rate: Rate {
                burst: 1000,
                per_second: 500,
            },
            timeout: Duration::from_secs(30),
            max_response_bytes: 4 * 1024 * 1024,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            sync_read_only_calls: false,
        }
    }
}

/// The tool gateway's service; cheap to clone.
#[derive(Clone)]
pub struct Tools {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: Config,
    http: reqwest::Client,
    catalog: catalog::Catalog,
    grants: grant::Grants,
    limits: limit::Limiter,
    breakers: breaker::Breakers,
    live: connection::Live,
    tokens: oauth::TokenCache,
    resync: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Tools {
    /// The gateway over `store` (migrated with [`MIGRATIONS`]): loads the catalog
    /// and the grants. Upstreams start on first use.
    pub async fn open(store: Store, config: Config) -> strata_core::Result<Tools> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(strata_core::Error::internal)?;
        let catalog = catalog::Catalog::default();
        let grants = grant::Grants::default();
        let (resync, resync_rx) = tokio::sync::mpsc::unbounded_channel();
        let tools = Tools {
            inner: Arc::new(Inner {
                store,
                config,
                http,
                catalog,
                grants,
                limits: limit::Limiter::default(),
                breakers: breaker::Breakers::default(),
                live: connection::Live::default(),
                tokens: oauth::TokenCache::default(),
                resync,
            }),
        };
        tokio::spawn(connection::resync_on_change(
            Arc::downgrade(&tools.inner),
            resync_rx,
        ));
        tools.reload().await?;
        Ok(tools)
    }

    /// Re-reads the catalog and the grants from the store (another replica may
    /// have changed them).
    pub async fn reload(&self) -> strata_core::Result<()> {
        let conns = store::connections(self.store()).await?;
        let tools = store::all_tools(self.store()).await?;
        self.inner.catalog.replace_all(&conns, tools)?;
        let grants = store::grants(self.store()).await?;
        if self.inner.grants.replace(grants) {
            self.inner.catalog.announce();
        }
        Ok(())
    }

    /// Changes whenever the tools or the grants change, so the list some
    /// agent sees may have: what MCP servers announce as `tools/list_changed`.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.catalog.subscribe()
    }

    /// Stops every upstream process and waits until the call log is written.
    pub async fn shutdown(&self) {
        self.inner.live.stop_all().await;
        self.flush_log().await;
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }

    fn config(&self) -> &Config {
        &self.inner.config
    }

    fn now(&self) -> i64 {
        self.inner.config.clock.now_ms()
    }
}

/// An HTTP client error with its causes (`error sending request: … : invalid
/// peer certificate: UnknownIssuer`), without the URL, which may carry a secret
/// query value.
pub(crate) fn http_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A page of results and the cursor for the next one.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The tools layer's tables.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        layer: "tools",
        version: 1,
        name: "vault, connections, tools, grants, call log",
        sqlite: store::SCHEMA,
        postgres: store::SCHEMA,
    },
    Migration {
        layer: "tools",
        version: 2,
        name: "tools keep the upstream's output schema",
        sqlite: store::OUTPUT_SCHEMA,
        postgres: store::OUTPUT_SCHEMA,
    },
    Migration {
        layer: "tools",
        version: 3,
        name: "fewer index pages per logged call",
        sqlite: store::LEANER_CALLS_SQLITE,
        postgres: store::LEANER_CALLS_POSTGRES,
    },
    Migration {
        layer: "tools",
        version: 4,
        name: "tools say whether they are read-only",
        sqlite: store::READ_ONLY,
        postgres: store::READ_ONLY,
    },
];

fn db(e: sqlx::Error) -> strata_core::Error {
    strata_store::Error::from(e).into()
}
