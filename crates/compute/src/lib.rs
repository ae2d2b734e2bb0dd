//! Compute (L1): sandboxes where agents run code — isolated, limited, metered.
//!
//! A sandbox is built from Linux namespaces (user, pid, mount, ipc, uts,
//! cgroup and, unless `host-egress` is granted, network), a read-only root
//! assembled from binds of the host's system folders, a private `/tmp`, a
//! size-limited `/workspace`, a seccomp deny list, rlimits and cgroup limits
//! for memory, CPU and processes. The command runs as uid 1000 of the
//! sandbox's own user namespace (an unprivileged host uid), with no
//! capabilities and `no_new_privs`.
//!
//! That is the `process` backend. The [`wasm`] backend (`backend: "wasm"`,
//! behind the crate's `wasm` feature) runs WASI preview 1 modules under
//! wasmtime instead, with the same requests, outcomes, workspace and usage;
//! [`Backend`] says which a run, sandbox or template uses.
//!
//! - [`Compute::run`]: ephemeral — build, run one command, tear down.
//! - [`Compute::create`] and friends ([`sandbox`]): persistent sandboxes with a
//!   workspace that survives execs and stop/start, files in and out,
//!   snapshots and forks, idle stop and TTL via [`Compute::sweep`].
//! - [`Compute::start_service`] ([`service`]): one long-running command in a
//!   sandbox of its own, signalled and streamed, torn down when it ends (the
//!   orchestrator's managed agents).
//! - [`template`]: named base configurations.
//! - the warm pool (`Config::pool_size`): sandboxes built ahead for `run`.
//! - [`exec`]: the request and outcome types, with usage for metering.
//! - [`wasm`]: the wasm backend — its engine, limits, metering and what a
//!   module can reach.
//! - [`usage`]: every run's and exec's usage, stored, listed and summed.
//! - [`workspace`]: host-side file access that never follows a sandbox's links.
//! - [`seccomp`]: the denied system calls.
//! - [`init`]: the small program that builds a sandbox (why it is a separate
//!   program is explained there); `os` holds the crate's only `unsafe`.
//!
//! Layer rules as elsewhere: tables carry the `cmp_` prefix, SQL lives in
//! `repo`, errors are [`strata_core::Error`] with the compute codes.
#![deny(unsafe_code)]

mod cgroup;
pub mod exec;
pub mod init;
mod launch;
mod os;
mod pool;
mod repo;
pub mod sandbox;
pub mod seccomp;
pub mod service;
pub mod template;
pub mod usage;
pub mod wasm;
mod wire;
pub mod workspace;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strata_core::{Clock, Error, ErrorCode, Id, Result};
use strata_store::Store;

pub use exec::{
    Backend, Caller, Chunk, ExecEvent, ExecRequest, FileInput, Limits, Network, ResolvedLimits, RunOutcome,
    RunRequest, Status, Stream, Usage,
};
pub use init::{init_beside, maybe_run_init};
pub use repo::MIGRATIONS;
pub use sandbox::{CreateSandbox, SandboxInfo, SandboxState, Snapshot, SnapshotPage};
pub use service::{Service, ServiceEvent, ServiceRequest};
pub use template::Template;
pub use usage::{UsageFilter, UsagePage, UsageRecord, UsageTotals};
pub use workspace::FileEntry;

use crate::cgroup::{GroupLimits, Hierarchy};
use crate::launch::Sink;
use crate::wire::{Build, Mode, Rlimits, SeedFile, Spec, WorkspaceMount};

/// Tunables of the compute service.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where workspaces, snapshots and the empty root mount point live.
    pub data_dir: PathBuf,
    /// The program that builds sandboxes: the small `strata-sandbox-init` binary,
    /// or any binary that calls [`maybe_run_init`] first in `main`.
    pub init_program: PathBuf,
    /// Where cgroup hierarchies are mounted.
    pub cgroup_root: PathBuf,
    /// This service's group under each controller (one per service instance).
    pub cgroup_name: String,
    /// Host uid (and gid) the sandbox's root maps to.
    pub host_root_uid: u32,
    /// Host uid (and gid) the sandbox's user (uid 1000) maps to.
    pub host_user_uid: u32,
    /// Host paths bound read-only into every sandbox at the same place.
    pub ro_binds: Vec<PathBuf>,
    /// Limits when a caller sets none.
    pub default_limits: ResolvedLimits,
    /// The most a caller may ask for.
    pub max_limits: ResolvedLimits,
    /// Timeout when a caller sets none.
    pub default_timeout_ms: u64,
    /// The longest timeout a caller may ask for.
    pub max_timeout_ms: u64,
    /// Largest single file accepted or returned by the files API and `files`.
    pub max_file_bytes: u64,
    /// Most bytes of `files` (all together) in one run.
    pub max_seed_bytes: u64,
    /// Stop persistent sandboxes idle this long (unless they set their own).
    pub idle_stop_ms: Option<i64>,
    /// Sandboxes kept built for ephemeral runs with default settings (0: none).
    pub pool_size: usize,
}

impl Config {
    /// Defaults with workspaces under `data_dir` and `init_program` as the init.
    pub fn new(data_dir: impl Into<PathBuf>, init_program: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            init_program: init_program.into(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_name: "strata".into(),
            host_root_uid: 100_000,
            host_user_uid: 101_000,
            ro_binds: [
                "/usr",
                "/bin",
                "/sbin",
                "/lib",
                "/lib32",
                "/lib64",
                "/libx32",
                "/etc/ld.so.cache",
                "/etc/ld.so.conf",
                "/etc/ld.so.conf.d",
                "/etc/alternatives",
                "/etc/nsswitch.conf",
                "/etc/localtime",
                "/etc/ssl",
                "/etc/ca-certificates",
                "/etc/gitconfig",
                "/etc/mime.types",
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
            default_limits: ResolvedLimits::DEFAULT,
            max_limits: ResolvedLimits::MAX,
            default_timeout_ms: 30_000,
            max_timeout_ms: 3_600_000,
            max_file_bytes: 16 << 20,
            max_seed_bytes: 32 << 20,
            idle_stop_ms: None,
            pool_size: 0,
        }
    }
}

/// The compute service; cheap to clone.
#[derive(Clone)]
pub struct Compute {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    clock: Arc<dyn Clock>,
    config: Config,
    cgroups: Hierarchy,
    root_dir: PathBuf,
    slots: std::sync::Mutex<HashMap<String, sandbox::Slot>>,
    pending: Arc<Pending>,
    pool: pool::Pool,
    usage_queue: usage::Queue,
    #[cfg(feature = "wasm")]
    wasm: wasm::Runtime,
}

/// Clean-ups still running.
#[derive(Default)]
pub(crate) struct Pending {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One clean-up [`Compute::settle`] waits for, until this is dropped.
pub(crate) struct Held(Arc<Pending>);

impl Pending {
    /// Counts a clean-up from now until the returned guard is dropped.
    pub(crate) fn hold(self: &Arc<Self>) -> Held {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Held(self.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Compute {
    /// Opens the service: prepares the data folder and this service's cgroups,
    /// removes groups a previous process left, and brings persistent sandboxes
    /// that were running when it stopped to `stopped` (saving their workspaces).
    pub async fn open(store: Store, config: Config, clock: Arc<dyn Clock>) -> Result<Compute> {
        if !config.init_program.exists() {
            return Err(Error::new(
                ErrorCode::SandboxUnavailable,
                format!(
                    "the sandbox init {} does not exist",
                    config.init_program.display()
                ),
            ));
        }
        let root_dir = config.data_dir.join("root");
        for d in [
            &root_dir,
            &config.data_dir.join("sandboxes"),
            &config.data_dir.join("snapshots"),
            &config.data_dir.join("runs"),
        ] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::new(ErrorCode::SandboxUnavailable, format!("{}: {e}", d.display())))?;
        }
        let runs = config.data_dir.join("runs");
        tokio::task::spawn_blocking(move || wasm::remove_stale_runs(&runs))
            .await
            .map_err(Error::internal)?;
        let cg_root = config.cgroup_root.clone();
        let cg_name = config.cgroup_name.clone();
        let cgroups = tokio::task::spawn_blocking(move || {
            let h = Hierarchy::probe(&cg_root, &cg_name);
            let stale = h.remove_stale();
            if stale > 0 {
                tracing::info!(stale, "removed cgroups left by a previous run");
            }
            h
        })
        .await
        .map_err(Error::internal)?;
        for w in &cgroups.warnings {
            tracing::warn!("{w}");
        }
        let compute = Compute {
            inner: Arc::new(Inner {
                store,
                clock,
                config,
                cgroups,
                root_dir,
                slots: std::sync::Mutex::new(HashMap::new()),
                pending: Arc::default(),
                pool: pool::Pool::default(),
                usage_queue: usage::Queue::default(),
                #[cfg(feature = "wasm")]
                wasm: wasm::Runtime::new()?,
            }),
        };
        compute.recover().await?;
        if compute.config().pool_size > 0 {
            compute.refill_pool();
        }
        Ok(compute)
    }

    /// The service's tunables.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// What this host cannot enforce (missing cgroup controllers), one line each.
    pub fn warnings(&self) -> &[String] {
        &self.inner.cgroups.warnings
    }

    /// How many cgroups this service has right now (for leak checks).
    pub fn cgroup_count(&self) -> usize {
        self.inner.cgroups.count()
    }

    /// Runs one command in a fresh sandbox that is torn down afterwards, and
    /// queues its usage (see [`usage`] for why the reply need not wait for it).
    pub async fn run(&self, req: RunRequest, caller: &Caller) -> Result<RunOutcome> {
        let mut after = AfterRun {
            compute: self.clone(),
            cold: None,
            pooled: None,
        };
        let out = self.run_once(req, caller, &mut after).await?;
        let stored = self.queue_usage("run", &out).await;
        // Tear down once the record has committed: before that, tear-down
        // competes for the CPU with the commit the caller's outcome waits for.
        // `settle` counts it from now.
        let held = self.inner.pending.hold();
        tokio::spawn(async move {
            stored.await;
            drop(after);
            drop(held);
        });
        Ok(out)
    }

    async fn run_once(&self, req: RunRequest, caller: &Caller, after: &mut AfterRun) -> Result<RunOutcome> {
        let cfg = &self.inner.config;
        exec::check_command(&req.command)?;
        if let Some(out) = self.run_pooled(&req, caller, after).await {
            return out;
        }
        let template = match &req.template {
            Some(name) => Some(self.template(name).await?),
            None => None,
        };
        let backend = req
            .backend
            .or(template.as_ref().map(|t| t.backend))
            .unwrap_or_default()
            .check_available()?;
        if backend == Backend::Wasm {
            return self.run_wasm(req, template, caller).await;
        }
        let (limits, network) = self.over_template(template.as_ref(), &req.limits, req.network)?;
        let timeout = exec::check_timeout(cfg, req.timeout_ms)?;
        let host_network = self.network_allowed(network, caller)?;
        let empty = Default::default();
        let env = exec::environment([template.as_ref().map_or(&empty, |t| &t.env), &req.env])?;
        let cwd = exec::check_cwd(req.cwd.as_deref())?;
        let files = self.seed_files(&req.files, limits.workspace_bytes)?;
        let group_name = Id::new("run").to_string();
        let init = launch::start(&cfg.init_program)?;
        let group = self.make_group(group_name, group_limits(&limits)).await?;
        let spec = Spec {
            mode: Mode::Run,
            cgroup_join: group.join_files(),
            build: Some(self.build(
                template.iter().flat_map(|t| t.ro_binds.iter().map(PathBuf::from)),
                WorkspaceMount::Tmpfs {
                    bytes: limits.workspace_bytes,
                },
                limits.tmp_bytes,
                host_network,
                files,
            )),
            exec: Some(wire::Exec {
                argv: req.command.clone(),
                env,
                cwd,
                rlimits: self.rlimits(&limits),
                stdin: req.stdin.map(String::into_bytes).unwrap_or_default(),
                files: Vec::new(),
                filters: filters()?,
            }),
        };
        let finished = launch::run(
            init,
            &spec,
            Sink::Capture(limits.output_bytes as usize),
            Duration::from_millis(timeout),
            &group,
        )
        .await;
        let (outcome, child) = match finished {
            Ok((f, child)) => {
                let measured = Measured {
                    oom: group.oom_kills() > 0,
                    cpu_ns: group.cpu_ns(),
                    peak_memory: group.peak_memory(),
                };
                (outcome_of(f, measured, caller, None), Some(child))
            }
            Err(e) => (Err(e), None),
        };
        after.cold = Some((child, group));
        outcome
    }

    /// Reaps the init and removes the group after the reply: the kernel's
    /// teardown of the namespaces is not on the caller's clock.
    /// [`Compute::settle`] waits for every clean-up started so far.
    pub(crate) fn clean_up(&self, child: Option<tokio::process::Child>, group: cgroup::Group) {
        let held = self.inner.pending.hold();
        tokio::spawn(async move {
            if let Some(mut c) = child {
                let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
            }
            let _ = tokio::task::spawn_blocking(move || group.remove()).await;
            drop(held);
        });
    }

    /// Waits until every clean-up started so far (init processes reaped,
    /// cgroups removed) has finished.
    pub async fn settle(&self) {
        loop {
            let idle = self.inner.pending.idle.notified();
            if self.inner.pending.count.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), idle).await;
        }
    }

    /// The limits and network of a request over its template: the template's
    /// limits over the defaults, the request's over those (all within the
    /// maximum), and the template's network unless the request asks for one.
    fn over_template(
        &self,
        template: Option<&Template>,
        limits: &Limits,
        network: Network,
    ) -> Result<(ResolvedLimits, Network)> {
        let cfg = self.config();
        let base = match template {
            Some(t) => ResolvedLimits::resolve(&cfg.default_limits, &t.limits, &cfg.max_limits)?,
            None => cfg.default_limits,
        };
        let limits = ResolvedLimits::resolve(&base, limits, &cfg.max_limits)?;
        let network = match (template, network) {
            (Some(t), Network::None) => t.network,
            (_, n) => n,
        };
        Ok((limits, network))
    }

    /// How to build a sandbox on this service's root folder and ids: the
    /// configured read-only binds, then `extra_binds` (a template's, a
    /// request's), and the workspace, `/tmp` size, network and seed files given.
    fn build(
        &self,
        extra_binds: impl IntoIterator<Item = PathBuf>,
        workspace: WorkspaceMount,
        tmp_bytes: u64,
        host_network: bool,
        files: Vec<SeedFile>,
    ) -> Build {
        let cfg = self.config();
        let mut ro_binds = cfg.ro_binds.clone();
        ro_binds.extend(extra_binds);
        Build {
            host_root_uid: cfg.host_root_uid,
            host_user_uid: cfg.host_user_uid,
            root_dir: self.inner.root_dir.clone(),
            ro_binds,
            workspace,
            tmp_bytes,
            host_network,
            files,
        }
    }

    fn network_allowed(&self, network: Network, caller: &Caller) -> Result<bool> {
        match network {
            Network::None => Ok(false),
            Network::HostEgress if caller.host_egress_granted => Ok(true),
            Network::HostEgress => Err(Error::new(
                ErrorCode::NetworkNotGranted,
                "network: host-egress needs a grant the caller does not hold",
            )),
        }
    }

    fn seed_files(&self, files: &[FileInput], workspace_bytes: u64) -> Result<Vec<SeedFile>> {
        let cfg = &self.inner.config;
        let mut total = 0u64;
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            let path = workspace::check_path(&f.path)?;
            let data = f.bytes()?;
            let len = data.len() as u64;
            if len > cfg.max_file_bytes {
                return Err(Error::new(
                    ErrorCode::FileTooLarge,
                    format!(
                        "files: '{}' is {len} bytes; the limit is {}",
                        f.path, cfg.max_file_bytes
                    ),
                ));
            }
            total += len;
            if total > cfg.max_seed_bytes.min(workspace_bytes) {
                return Err(Error::new(
                    ErrorCode::FileTooLarge,
                    format!(
                        "files: {total} bytes in all; the limit is {}",
                        cfg.max_seed_bytes.min(workspace_bytes)
                    ),
                ));
            }
            let mode = f.mode.unwrap_or(0o644);
            if mode > 0o777 {
                return Err(Error::invalid(
                    "files.mode",
                    "must be permission bits (at most 0o777)",
                ));
            }
            if let Some(clash) = out.iter().find(|o: &&SeedFile| {
                let (a, b) = (std::path::Path::new(&o.path), path.as_path());
                a == b || a.starts_with(b) || b.starts_with(a)
            }) {
                return Err(Error::invalid(
                    "files",
                    format!("'{}' and '{}' cannot both be files", clash.path, f.path),
                ));
            }
            out.push(SeedFile {
                path: path.to_string_lossy().into_owned(),
                data,
                mode,
            });
        }
        Ok(out)
    }

    fn rlimits(&self, limits: &ResolvedLimits) -> Rlimits {
        Rlimits {
            file_bytes: limits.workspace_bytes.max(limits.tmp_bytes),
            open_files: limits.open_files,
            processes: limits.pids,
            // Without a memory cgroup, bound each process's address space instead.
            address_space: (!self.inner.cgroups.has_memory()).then_some(limits.memory_bytes),
        }
    }

    async fn make_group(&self, rel: String, limits: GroupLimits) -> Result<cgroup::Group> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.cgroups.create(&rel, limits))
            .await
            .map_err(Error::internal)?
            .map_err(|e| {
                Error::new(
                    ErrorCode::SandboxUnavailable,
                    format!("creating the sandbox's cgroup: {e}"),
                )
            })
    }

    fn now(&self) -> i64 {
        self.inner.clock.now_ms()
    }
}

/// The seccomp filters, compiled once.
fn filters() -> Result<Vec<wire::Filter>> {
    seccomp::compiled()
        .map(<[_]>::to_vec)
        .map_err(|e| Error::internal(format!("compiling the seccomp filter: {e}")))
}

fn group_limits(l: &ResolvedLimits) -> GroupLimits {
    GroupLimits {
        memory_bytes: Some(l.memory_bytes),
        pids: Some(l.pids),
        cpu_millis: Some(l.cpu_millis),
    }
}

/// What a run leaves to do once its usage is stored: tearing its sandbox down
/// (and refilling the pool) would otherwise compete for the CPU with the write
/// the reply waits for. It starts when this is dropped, so a run whose caller
/// goes away cleans up too.
pub(crate) struct AfterRun {
    compute: Compute,
    /// A cold run's init and cgroup.
    pub(crate) cold: Option<(Option<tokio::process::Child>, cgroup::Group)>,
    /// A used pooled sandbox.
    pub(crate) pooled: Option<sandbox::Live>,
}

impl Drop for AfterRun {
    fn drop(&mut self) {
        let in_runtime = tokio::runtime::Handle::try_current().is_ok();
        if let Some((child, group)) = self.cold.take() {
            if in_runtime {
                self.compute.clean_up(child, group);
            } else {
                drop(child);
                group.remove();
            }
        }
        if let Some(live) = self.pooled.take()
            && in_runtime
        {
            self.compute.retire(live);
            self.compute.refill_pool();
        }
    }
}

/// What the cgroups measured for one command.
struct Measured {
    oom: bool,
    cpu_ns: Option<u64>,
    peak_memory: Option<u64>,
}

/// Turns what the init reported into an outcome.
fn outcome_of(
    f: launch::Finished,
    m: Measured,
    caller: &Caller,
    sandbox_id: Option<String>,
) -> Result<RunOutcome> {
    if let Some((stage, reason)) = f.setup_failed {
        if stage == "files" {
            // The caller's files could not be written (a name too long, …).
            return Err(Error::invalid("files", reason));
        }
        return Err(Error::new(
            ErrorCode::SandboxUnavailable,
            format!("sandbox setup failed at {stage}: {reason}"),
        ));
    }
    let (code, signal, cpu_us, maxrss_kib) = match f.exited {
        Some(wire::Report::Exited {
            code,
            signal,
            cpu_us,
            maxrss_kib,
        }) => (code, signal, cpu_us, maxrss_kib),
        _ => (None, None, 0, 0),
    };
    let status = if f.timed_out {
        Status::Timeout
    } else if m.oom {
        Status::Oom
    } else if f.exec_failed.is_some() {
        Status::ExecFailed
    } else if signal.is_some() || code.is_none() {
        Status::Killed
    } else {
        Status::Exited
    };
    let cpu_ms = match m.cpu_ns {
        Some(ns) => ns / 1_000_000,
        None => cpu_us / 1000,
    };
    let peak = m.peak_memory.unwrap_or(maxrss_kib * 1024);
    Ok(RunOutcome {
        status,
        exit_code: code,
        signal,
        stdout: String::from_utf8_lossy(&f.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&f.stderr).into_owned(),
        stdout_truncated: f.stdout_truncated,
        stderr_truncated: f.stderr_truncated,
        error: f.exec_failed,
        usage: Usage {
            wall_ms: f.wall.as_millis() as u64,
            cpu_ms,
            peak_memory_bytes: peak,
            sandbox_id,
            agent_id: caller.agent_id.clone(),
            task_id: caller.task_id.clone(),
        },
    })
}
