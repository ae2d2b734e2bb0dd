//! `strata serve`, and the in-process server that `demo` and `bench` start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use strata_core::MasterKey;
use strata_kernel::{Config, Kernel};
use strata_store::{Options, Store};

/// Arguments of `strata serve`.
#[derive(Args, Debug, Clone)]
pub(crate) struct ServeArgs {
    /// Folder for the embedded database, the admin token and the master key.
    #[arg(long, env = "STRATA_DATA_DIR", default_value = "./strata-data")]
    pub(crate) data_dir: PathBuf,
    /// Use this PostgreSQL database instead of the embedded SQLite (postgres://…).
    #[arg(long, env = "STRATA_DATABASE_URL")]
    pub(crate) database: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "STRATA_LISTEN", default_value = "127.0.0.1:7433")]
    pub(crate) listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "STRATA_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub(crate) max_body_bytes: usize,
    /// A browser origin the MCP endpoint accepts besides loopback ones
    /// (`https://app.example.com:443`; repeatable, or comma-separated in the env).
    #[arg(
        long = "mcp-allowed-origin",
        env = "STRATA_MCP_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub(crate) mcp_allowed_origins: Vec<String>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub(crate) log_json: bool,
    /// Never run managed agents here. Without it, of several replicas sharing a
    /// PostgreSQL the one holding the reconciler's leadership runs them.
    #[arg(long, env = "STRATA_NO_RECONCILER")]
    pub(crate) no_reconciler: bool,
    /// Folder holding the memory layer's embedding model (`all-MiniLM-L6-v2/`,
    /// fetched by crates/memory/scripts/fetch-model); default `<data-dir>/models`.
    /// Without it, memory recall is lexical, graph and recency only (a warning says so).
    #[arg(long, env = "STRATA_MODELS_DIR")]
    pub(crate) models_dir: Option<PathBuf>,
    /// An OpenAI-compatible chat endpoint (`http://127.0.0.1:11434/v1`) that turns
    /// messages into memory facts instead of the built-in rule extractor; its API
    /// key, if it needs one, comes from the env `STRATA_LLM_API_KEY`.
    #[arg(long, env = "STRATA_LLM_URL", value_name = "URL")]
    pub(crate) llm_url: Option<String>,
    /// The chat model `--llm-url` serves.
    #[arg(long, env = "STRATA_LLM_MODEL", default_value = "gpt-4o-mini")]
    pub(crate) llm_model: String,
    /// Serve no sandboxes (`sandbox.*` calls answer `sandbox_unavailable`).
    #[arg(long, env = "STRATA_NO_SANDBOXES")]
    pub(crate) no_sandboxes: bool,
    /// Sandboxes kept built ahead for `sandbox run` with default settings.
    #[arg(long, env = "STRATA_SANDBOX_POOL", default_value_t = 0)]
    pub(crate) sandbox_pool: usize,
    /// Stop persistent sandboxes idle this long (e.g. `30m`; default: never).
    #[arg(long, env = "STRATA_SANDBOX_IDLE_STOP", value_parser = humantime::parse_duration)]
    pub(crate) sandbox_idle_stop: Option<std::time::Duration>,
    /// Upstream tool calls each agent may make per second (bursts of twice that).
    #[arg(long, env = "STRATA_TOOL_AGENT_RATE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) tool_agent_rate: u32,
    /// Calls each upstream tool accepts per second across agents, unless its
    /// connection sets its own (bursts of twice that).
    #[arg(long, env = "STRATA_TOOL_RATE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) tool_rate: u32,
    /// Answer a read-only tool call only once its log row and audit entry are
    /// on disk. Without it they are committed before the answer (a crash of
    /// the server cannot lose them) and synced within 10 ms, so only power loss
    /// in that window can.
    #[arg(long, env = "STRATA_SYNC_READ_ONLY_CALLS")]
    pub(crate) sync_read_only_calls: bool,
}

impl ServeArgs {
    /// `strata serve`'s defaults on `data_dir`, listening on a free loopback
    /// port: the in-process server of `demo` and `bench`.
    pub(crate) fn local(data_dir: PathBuf) -> ServeArgs {
        ServeArgs {
            data_dir,
            database: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_body_bytes: 1024 * 1024,
            mcp_allowed_origins: Vec::new(),
            log_json: false,
            no_reconciler: false,
            models_dir: None,
            llm_url: None,
            llm_model: "gpt-4o-mini".into(),
            no_sandboxes: false,
            sandbox_pool: 0,
            sandbox_idle_stop: None,
            tool_agent_rate: 100,
            tool_rate: 500,
            sync_read_only_calls: false,
        }
    }
}

/// A running server.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) kernel: Kernel,
    pub(crate) admin_token: String,
    /// Cancelled when the server stops: ends the open MCP streams.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
    _lock: std::fs::File,
}

impl Running {
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let (running, server) = start(&args).await?;
    tracing::info!(url = %running.url(), data_dir = %args.data_dir.display(), "strata is serving");
    eprintln!(
        "strata listening on {} (admin token in {})",
        running.url(),
        args.data_dir.join("admin.token").display()
    );
    server
        .with_graceful_shutdown({
            let streams = running.shutdown.clone();
            async move {
                shutdown_signal().await;
                streams.cancel();
            }
        })
        .await
        .context("server failed")?;
    running.kernel.stop_fleet().await;
    // Stops the tool upstreams' processes and waits for the last call-log rows.
    running.kernel.tools().shutdown().await;
    // Stops the running sandboxes, saving their workspaces.
    if let Ok(compute) = running.kernel.compute()
        && let Err(e) = compute.shutdown().await
    {
        tracing::error!(error = %e, "stopping the sandboxes failed");
    }
    running.kernel.store().close().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

type Server = axum::serve::Serve<tokio::net::TcpListener, axum::Router, axum::Router>;

fn burst_of_two_seconds(per_second: u32) -> strata_tools::Rate {
    strata_tools::Rate {
        burst: per_second.saturating_mul(2),
        per_second,
    }
}

/// Prepares the data folder, opens the store, builds the kernel and binds.
pub(crate) async fn start(args: &ServeArgs) -> anyhow::Result<(Running, Server)> {
    let dir = &args.data_dir;
    create_private_dir(dir)?;
    let lock = lock_data_dir(dir)?;
    let master_key = master_key(dir)?;
    let url = match &args.database {
        Some(url) => url.clone(),
        None => strata_store::sqlite_url(dir),
    };
    let store = Store::open(Options::new(&url), strata_kernel::MIGRATIONS)
        .await
        .with_context(|| format!("cannot open the store at {}", redact(&url)))?;
    let mut config = Config::new(master_key);
    config.tools.agent_rate = burst_of_two_seconds(args.tool_agent_rate);
    config.tools.tool_rate = burst_of_two_seconds(args.tool_rate);
    config.tools.sync_read_only_calls = args.sync_read_only_calls;
    let models = args.models_dir.clone().unwrap_or_else(|| dir.join("models"));
    config.memory.embedder = strata_memory::builtin_embedder(&models);
    if let Some(e) = &config.memory.embedder {
        tracing::info!(model = e.model(), dir = %models.display(), "memory: embedding model loaded");
    }
    if let Some(url) = &args.llm_url {
        let parsed = reqwest::Url::parse(url).with_context(|| format!("--llm-url {url} is not a URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("--llm-url {url} is not an http(s) URL");
        }
        let key = std::env::var("STRATA_LLM_API_KEY").ok().filter(|k| !k.is_empty());
        config.memory.extractor = std::sync::Arc::new(strata_memory::chat::ChatExtractor::new(
            url.as_str(),
            key,
            args.llm_model.as_str(),
        ));
        tracing::info!(url = %redact(url), model = %args.llm_model, "memory: facts extracted by a chat model");
    }
    if !args.no_sandboxes {
        open_for_sandboxes(dir)?;
    }
    config.compute = compute_config(args)?;
    let kernel = Kernel::new(store, config).await?;
    kernel.spawn_background();
    let token_path = dir.join("admin.token");
    let made = kernel
        .bootstrap_admin_token(|t| {
            write_private(&token_path, t).map_err(|e| strata_core::Error::internal(format!("{e:#}")))
        })
        .await?;
    if made {
        tracing::info!(path = %token_path.display(), "wrote a new admin token");
    }
    let admin_token = match std::fs::read_to_string(&token_path) {
        Ok(s) => s.trim().to_string(),
        Err(_) => {
            tracing::warn!(
                path = %token_path.display(),
                "the database already has an admin token but this data folder holds none: use the \
                 existing token (STRATA_TOKEN) or mint one with `strata token create --admin`"
            );
            String::new()
        }
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if !args.no_reconciler {
        let mut local = addr;
        if local.ip().is_unspecified() {
            local.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        kernel.spawn_reconciler(format!("http://{local}"));
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let app = strata_api::router(
        kernel.clone(),
        strata_api::Options {
            max_body_bytes: args.max_body_bytes,
            shutdown: shutdown.clone(),
            mcp_origins: args.mcp_allowed_origins.clone(),
        },
    );
    let server = axum::serve(listener, app);
    Ok((
        Running {
            addr,
            kernel,
            admin_token,
            shutdown,
            _lock: lock,
        },
        server,
    ))
}

/// Sandboxes live under `<data>/compute`, built by the small init beside
/// this binary or else by this very binary (its `main` starts with
/// `maybe_run_init`), in cgroups named after the data folder so that two
/// servers on one host never remove each other's.
fn compute_config(args: &ServeArgs) -> anyhow::Result<Option<strata_compute::Config>> {
    use std::hash::{Hash, Hasher};
    if args.no_sandboxes {
        return Ok(None);
    }
    let exe = std::env::current_exe().context("cannot find the strata binary (the sandbox init)")?;
    let init = strata_compute::init_beside(&exe);
    tracing::info!(init = %init.display(), "sandbox init");
    let dir = std::fs::canonicalize(&args.data_dir).unwrap_or_else(|_| args.data_dir.clone());
    let mut config = strata_compute::Config::new(dir.join("compute"), init);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    config.cgroup_name = format!("strata-{:08x}", h.finish() as u32);
    config.pool_size = args.sandbox_pool;
    config.idle_stop_ms = args.sandbox_idle_stop.map(|d| d.as_millis() as i64);
    Ok(Some(config))
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…{}", &url[..s], &url[at..]),
        _ => url.to_string(),
    }
}

/// A sandbox's builder runs as an unprivileged host uid and must reach its
/// mount point and workspace under `<data>/compute` by path, so the data
/// folder becomes traversable (0711: not listable) and what is private in it
/// is made owner-only: the database (SQLite gives its WAL and journal the
/// database file's mode) next to the key and token files, which are 0600 already.
fn open_for_sandboxes(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for name in ["strata.db", "strata.db-wal", "strata.db-shm"] {
        let p = dir.join(name);
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot make {} private", p.display()))?;
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("cannot make {} traversable for sandboxes", dir.display()))
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the data folder {}", dir.display()))?;
    }
    Ok(())
}

/// Holds an exclusive lock on the data folder so two servers never share it.
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("strata.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!(
                "another strata server is using {} (its lock is held)",
                dir.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).context("cannot lock the data folder"),
    }
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The master key from `STRATA_MASTER_KEY`, else `<data-dir>/master.key`,
/// created on first start.
fn master_key(dir: &Path) -> anyhow::Result<MasterKey> {
    if let Ok(hex) = std::env::var("STRATA_MASTER_KEY") {
        return MasterKey::from_hex(&hex).map_err(|e| anyhow::anyhow!("STRATA_MASTER_KEY: {e}"));
    }
    let path = dir.join("master.key");
    match std::fs::read_to_string(&path) {
        Ok(s) => MasterKey::from_hex(&s).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = MasterKey::generate();
            write_private(&path, &key.to_hex())?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}
