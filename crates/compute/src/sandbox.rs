//! Persistent sandboxes: a workspace that outlives its commands.
//!
//! A running sandbox is a **holder** — the pid 1 of its namespaces, waiting —
//! plus a size-limited tmpfs mounted on the host at
//! `<data>/sandboxes/<id>/ws` and bound at `/workspace`. Each exec joins the
//! holder's namespaces in a cgroup of its own under the sandbox's (so its
//! usage is measured alone and its leftovers are killed when it ends).
//! Stopping kills the holder and saves the workspace to
//! `<data>/sandboxes/<id>/disk`; starting mounts a fresh tmpfs and restores
//! it. A snapshot is a saved copy under `<data>/snapshots/<id>`, and a sandbox
//! created `from_snapshot` starts with it. The workspace lives in memory
//! while the sandbox runs: what was written since the last stop or snapshot
//! is lost if the machine (not just the server) goes down; a server restart
//! saves it (see `Compute::open`).
//!
//! A sandbox of the `wasm` backend has the same workspace, stop/start,
//! snapshots and files, but no holder and no cgroup: while it runs it is its
//! mounted workspace, and each exec is one module run in the server against
//! it (see [`crate::wasm`]).

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use strata_core::time::rfc3339;
use strata_core::{Error, ErrorCode, Id, Result};
use tokio::sync::{RwLock, mpsc};

use crate::cgroup::{Group, GroupLimits};
use crate::exec::{
    self, Backend, Caller, ExecEvent, ExecRequest, Limits, Network, ResolvedLimits, RunOutcome,
};
use crate::launch::{self, Sink};
use crate::wire::{self, Mode, Spec, WorkspaceMount};
use crate::workspace::{self, FileEntry};
use crate::{Compute, Measured, group_limits, outcome_of, repo};

/// Whether a persistent sandbox is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// Its holder runs; it accepts execs.
    Running,
    /// Its workspace is saved on disk; nothing runs.
    Stopped,
}

impl SandboxState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SandboxState::Running => "running",
            SandboxState::Stopped => "stopped",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<SandboxState> {
        match s {
            "running" => Some(SandboxState::Running),
            "stopped" => Some(SandboxState::Stopped),
            _ => None,
        }
    }
}

/// A request to create a persistent sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// A template to start from.
    #[serde(default)]
    pub template: Option<String>,
    /// Limits (over the template's, or the snapshot's sandbox's).
    #[serde(default)]
    pub limits: Limits,
    /// Environment of every exec (over the template's).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Network access.
    #[serde(default)]
    pub network: Network,
    /// What runs its commands (default: the snapshot's sandbox's, else the
    /// template's, else `process`); kept for the sandbox's whole life.
    #[serde(default)]
    pub backend: Option<Backend>,
    /// Start with the workspace of this snapshot (a fork).
    #[serde(default)]
    pub from_snapshot: Option<String>,
    /// Stop after this long without an exec or file call.
    #[serde(default)]
    pub idle_stop_ms: Option<i64>,
    /// Delete this long after creation.
    #[serde(default)]
    pub ttl_ms: Option<i64>,
}

/// What a sandbox was created with (stored as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub(crate) struct SandboxSpec {
    pub limits: ResolvedLimits,
    pub env: BTreeMap<String, String>,
    pub network: Network,
    pub ro_binds: Vec<String>,
    pub template: Option<String>,
    pub idle_stop_ms: Option<i64>,
    /// Also a column of its own (`cmp_sandboxes.backend`), which wins on read;
    /// kept here too so a snapshot's copy of the spec carries it to forks.
    #[serde(default)]
    pub backend: Backend,
}

/// A sandbox row.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub id: String,
    pub state: SandboxState,
    pub spec: SandboxSpec,
    pub owner_agent: Option<String>,
    pub owner_task: Option<String>,
    pub from_snapshot: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: i64,
    pub expires_at: Option<i64>,
}

/// A persistent sandbox as callers see it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SandboxInfo {
    /// `sbx_…`.
    pub id: String,
    /// Running or stopped.
    pub state: SandboxState,
    /// What runs its commands.
    pub backend: Backend,
    /// Its limits.
    pub limits: ResolvedLimits,
    /// Its network.
    pub network: Network,
    /// The template it was made from.
    pub template: Option<String>,
    /// The snapshot it was forked from.
    pub from_snapshot: Option<String>,
    /// The agent that created it.
    pub owner_agent: Option<String>,
    /// The task it was created for.
    pub owner_task: Option<String>,
    /// Created (RFC 3339).
    pub created_at: String,
    /// Last exec or file call (RFC 3339).
    pub last_used_at: String,
    /// When its TTL deletes it (RFC 3339).
    pub expires_at: Option<String>,
}

/// A saved copy of a workspace.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Snapshot {
    /// `snp_…`.
    pub id: String,
    /// The sandbox it was taken from.
    pub sandbox_id: String,
    /// The agent that took it (none: an operator); only it (and operators)
    /// may see, fork or delete it.
    pub owner_agent: Option<String>,
    /// Bytes of files in it.
    pub bytes: u64,
    /// When it was taken (epoch ms).
    pub created_at: i64,
}

/// A page of snapshots.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotPage {
    /// The snapshots, oldest first.
    pub items: Vec<Snapshot>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// What a sweep did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct SweepReport {
    /// Sandboxes stopped for being idle.
    pub stopped: Vec<String>,
    /// Sandboxes deleted because their TTL passed.
    pub deleted: Vec<String>,
}

/// A running sandbox's host-side handles.
pub(crate) struct Live {
    /// The holder's host pid (none for a wasm sandbox: nothing runs between execs).
    pub(crate) holder: Option<i32>,
    /// Closing it ends the holder, and with it every process of the sandbox.
    pub(crate) lifeline: Option<OwnedFd>,
    /// The sandbox's cgroup (none for a wasm sandbox, limited in the engine).
    pub(crate) group: Option<Arc<Group>>,
    /// The group's name under the service's parent (execs get `NAME/xN`).
    pub(crate) name: String,
    /// Where the host reaches the workspace.
    pub(crate) ws: PathBuf,
    pub(crate) last_used: AtomicI64,
    pub(crate) execs: AtomicU64,
}

/// One sandbox's lock: execs and file calls share it, lifecycle changes take it alone.
pub(crate) type Slot = Arc<RwLock<Option<Live>>>;

impl Compute {
    fn slot(&self, id: &str) -> Slot {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(id.to_string()).or_default().clone()
    }

    fn dir_of(&self, id: &str) -> PathBuf {
        self.inner.config.data_dir.join("sandboxes").join(id)
    }

    async fn stored(&self, id: &str) -> Result<Stored> {
        if Id::parse("sbx", id).is_err() {
            return Err(Error::not_found("sandbox", id));
        }
        repo::sandbox(&self.inner.store, id)
            .await?
            .ok_or_else(|| Error::not_found("sandbox", id))
    }

    /// Creates a persistent sandbox and starts it.
    pub async fn create(&self, req: CreateSandbox, caller: &Caller) -> Result<SandboxInfo> {
        let cfg = self.config().clone();
        let template = match &req.template {
            Some(name) => Some(self.template(name).await?),
            None => None,
        };
        // Held until the copy is made, so a deletion waits for it (or happens first).
        let _snapshot_lock = match &req.from_snapshot {
            Some(s) => {
                self.get_snapshot(s).await?;
                Some(self.slot(s).read_owned().await)
            }
            None => None,
        };
        let snapshot = match &req.from_snapshot {
            Some(s) => {
                // Deleted meanwhile: its lock's entry goes with it.
                let Some((snap, spec)) = repo::snapshot(&self.inner.store, s).await? else {
                    self.inner
                        .slots
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(s);
                    return Err(Error::not_found("snapshot", s));
                };
                let spec: SandboxSpec = serde_json::from_str(&spec).map_err(Error::internal)?;
                Some((snap, spec))
            }
            None => None,
        };
        let base = match (&snapshot, &template) {
            (Some((_, spec)), _) => spec.limits,
            (None, Some(t)) => ResolvedLimits::resolve(&cfg.default_limits, &t.limits, &cfg.max_limits)?,
            (None, None) => cfg.default_limits,
        };
        let limits = ResolvedLimits::resolve(&base, &req.limits, &cfg.max_limits)?;
        let network = match (&template, req.network) {
            (Some(t), Network::None) => t.network,
            (_, n) => n,
        };
        let backend = req
            .backend
            .or(snapshot.as_ref().map(|(_, s)| s.backend))
            .or(template.as_ref().map(|t| t.backend))
            .unwrap_or_default()
            .check_available()?;
        if backend == Backend::Wasm && network != Network::None {
            return Err(exec::no_wasm_network());
        }
        self.network_allowed(network, caller)?;
        let mut env = snapshot.as_ref().map(|(_, s)| s.env.clone()).unwrap_or_default();
        if let Some(t) = &template {
            env.extend(t.env.clone());
        }
        env.extend(req.env.clone());
        exec::environment([&env])?;
        for (name, v) in [("idle_stop_ms", req.idle_stop_ms), ("ttl_ms", req.ttl_ms)] {
            if v.is_some_and(|v| v <= 0) {
                return Err(Error::new(
                    ErrorCode::InvalidLimits,
                    format!("{name}: must be positive"),
                ));
            }
        }
        let mut ro_binds = snapshot
            .as_ref()
            .map(|(_, s)| s.ro_binds.clone())
            .unwrap_or_default();
        if let Some(t) = &template {
            ro_binds.extend(t.ro_binds.clone());
        }
        let now = self.now();
        let id = Id::new("sbx").to_string();
        let stored = Stored {
            id: id.clone(),
            state: SandboxState::Stopped,
            spec: SandboxSpec {
                limits,
                env,
                network,
                ro_binds,
                template: req.template.clone(),
                idle_stop_ms: req.idle_stop_ms,
                backend,
            },
            owner_agent: caller.agent_id.clone(),
            owner_task: caller.task_id.clone(),
            from_snapshot: req.from_snapshot.clone(),
            created_at: now,
            updated_at: now,
            last_used_at: now,
            expires_at: req.ttl_ms.map(|t| now.saturating_add(t)),
        };
        let dir = self.dir_of(&id);
        let snap_dir = snapshot.as_ref().map(|(s, _)| self.snapshot_dir(&s.id));
        let made = {
            let dir = dir.clone();
            blocking(move || {
                std::fs::create_dir_all(dir.join("disk"))?;
                std::fs::create_dir_all(dir.join("ws"))?;
                if let Some(s) = snap_dir {
                    workspace::copy_tree(&s, &dir.join("disk"), None)?;
                }
                Ok(())
            })
            .await
        };
        if let Err(e) = made {
            let _ = blocking(move || std::fs::remove_dir_all(dir)).await;
            return Err(Error::internal(format!("preparing the workspace: {e}")));
        }
        drop(_snapshot_lock);
        repo::insert_sandbox(&self.inner.store, &stored).await?;
        if let Err(e) = self.start(&id).await {
            let _ = self.delete(&id).await;
            return Err(e);
        }
        if let Some(t) = &template {
            for command in &t.setup {
                let out = self
                    .exec(
                        &id,
                        ExecRequest {
                            command: command.clone(),
                            ..Default::default()
                        },
                        caller,
                    )
                    .await;
                let failed = match &out {
                    Ok(o) if o.status == exec::Status::Exited && o.exit_code == Some(0) => None,
                    Ok(o) => Some(format!(
                        "{:?} (exit {:?}): {}",
                        o.status,
                        o.exit_code,
                        tail(&o.stderr)
                    )),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(why) = failed {
                    let _ = self.delete(&id).await;
                    return Err(Error::invalid(
                        "template.setup",
                        format!("{command:?} failed: {why}"),
                    ));
                }
            }
        }
        self.get(&id).await
    }

    /// One sandbox.
    pub async fn get(&self, id: &str) -> Result<SandboxInfo> {
        let s = self.stored(id).await?;
        Ok(self.info(s).await)
    }

    /// Every sandbox, oldest first.
    pub async fn list(&self) -> Result<Vec<SandboxInfo>> {
        let mut out = Vec::new();
        for s in repo::sandboxes(&self.inner.store, None).await? {
            out.push(self.info(s).await);
        }
        Ok(out)
    }

    async fn info(&self, s: Stored) -> SandboxInfo {
        let last_used = match self.slot(&s.id).try_read() {
            Ok(g) => g.as_ref().map(|l| l.last_used.load(Ordering::Relaxed)),
            Err(_) => None,
        }
        .unwrap_or(s.last_used_at);
        SandboxInfo {
            id: s.id,
            state: s.state,
            backend: s.spec.backend,
            limits: s.spec.limits,
            network: s.spec.network,
            template: s.spec.template,
            from_snapshot: s.from_snapshot,
            owner_agent: s.owner_agent,
            owner_task: s.owner_task,
            created_at: rfc3339(s.created_at),
            last_used_at: rfc3339(last_used),
            expires_at: s.expires_at.map(rfc3339),
        }
    }

    /// Starts a stopped sandbox (its workspace restored); a running one is left as it is.
    pub async fn start(&self, id: &str) -> Result<SandboxInfo> {
        let stored = self.stored(id).await?;
        let slot = self.slot(id);
        let mut guard = slot.write().await;
        if guard.is_none() {
            let live = self.start_live(&stored).await?;
            let now = self.now();
            if let Err(e) = repo::set_state(&self.inner.store, id, SandboxState::Running, now, now).await {
                self.end_live(live, false).await;
                return Err(e);
            }
            *guard = Some(live);
        }
        drop(guard);
        self.get(id).await
    }

    async fn start_live(&self, s: &Stored) -> Result<Live> {
        s.spec.backend.check_available()?;
        let cfg = self.config().clone();
        let dir = self.dir_of(&s.id);
        let ws = dir.join("ws");
        let limits = s.spec.limits;
        let owner = (cfg.host_user_uid, cfg.host_user_uid);
        {
            let (ws, disk) = (ws.clone(), dir.join("disk"));
            blocking(move || {
                std::fs::create_dir_all(&ws)?;
                mount_workspace(&ws, limits.workspace_bytes, owner.0)?;
                if let Err(e) = workspace::copy_tree(&disk, &ws, Some(owner)) {
                    let _ = umount2(&ws, MntFlags::MNT_DETACH);
                    return Err(e);
                }
                Ok(())
            })
            .await
            .map_err(|e| {
                Error::new(
                    ErrorCode::SandboxUnavailable,
                    format!("mounting the workspace: {e}"),
                )
            })?;
        }
        if s.spec.backend == Backend::Wasm {
            // Only the workspace: each exec is a module run in the server.
            return Ok(Live {
                holder: None,
                lifeline: None,
                group: None,
                name: s.id.clone(),
                ws,
                last_used: AtomicI64::new(self.now()),
                execs: AtomicU64::new(0),
            });
        }
        let unmount =
            |ws: PathBuf| blocking(move || umount2(&ws, MntFlags::MNT_DETACH).map_err(std::io::Error::from));
        let group = match self.make_group(s.id.clone(), group_limits(&limits)).await {
            Ok(g) => Arc::new(g),
            Err(e) => {
                let _ = unmount(ws).await;
                return Err(e);
            }
        };
        let fail = |group: Arc<Group>, ws: PathBuf, e: Error| async move {
            let _ = blocking(move || {
                group.remove();
                Ok(())
            })
            .await;
            let _ = unmount(ws).await;
            e
        };
        let spec = Spec {
            mode: Mode::Hold,
            cgroup_join: group.join_files(),
            build: Some(self.build(
                s.spec.ro_binds.iter().map(PathBuf::from),
                WorkspaceMount::Bind { host: ws.clone() },
                limits.tmp_bytes,
                s.spec.network == Network::HostEgress,
                Vec::new(),
            )),
            exec: None,
        };
        match launch::hold(&cfg.init_program, &spec).await {
            Ok((holder, life_w)) => Ok(Live {
                holder: Some(holder),
                lifeline: Some(life_w),
                group: Some(group),
                name: s.id.clone(),
                ws,
                last_used: AtomicI64::new(self.now()),
                execs: AtomicU64::new(0),
            }),
            Err(e) => Err(fail(group, ws, e).await),
        }
    }

    /// Kills a sandbox's processes, optionally saves its workspace to disk,
    /// and unmounts it.
    pub(crate) async fn end_live(&self, mut live: Live, save: bool) -> Option<std::io::Error> {
        drop(live.lifeline.take());
        let group = live.group.clone();
        let ws = live.ws.clone();
        let disk = ws.with_file_name("disk");
        blocking(move || {
            if let Some(group) = group {
                group.kill();
                group.remove();
            }
            let mut saved = Ok(());
            if save {
                saved = save_workspace(&ws, &disk);
            }
            let _ = umount2(&ws, MntFlags::MNT_DETACH);
            saved
        })
        .await
        .err()
    }

    /// Stops a sandbox: its processes end and its workspace is saved to disk.
    pub async fn stop(&self, id: &str) -> Result<SandboxInfo> {
        self.stored(id).await?;
        let slot = self.slot(id);
        let mut guard = slot.write().await;
        if let Some(live) = guard.take() {
            let last = live.last_used.load(Ordering::Relaxed);
            if let Some(e) = self.end_live(live, true).await {
                tracing::error!(sandbox = id, %e, "saving the workspace failed");
                return Err(Error::internal(format!("saving the workspace: {e}")));
            }
            repo::set_state(&self.inner.store, id, SandboxState::Stopped, self.now(), last).await?;
        }
        drop(guard);
        self.get(id).await
    }

    /// Deletes a sandbox and its workspace (its snapshots stay).
    pub async fn delete(&self, id: &str) -> Result<()> {
        self.stored(id).await?;
        let slot = self.slot(id);
        let mut guard = slot.write().await;
        if let Some(live) = guard.take() {
            self.end_live(live, false).await;
        }
        let dir = self.dir_of(id);
        blocking(move || {
            let _ = umount2(&dir.join("ws"), MntFlags::MNT_DETACH);
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
        .await
        .map_err(|e| Error::internal(format!("removing the workspace: {e}")))?;
        repo::delete_sandbox(&self.inner.store, id).await?;
        drop(guard);
        self.inner
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(())
    }

    /// Runs one command in a running sandbox and waits for it.
    pub async fn exec(&self, id: &str, req: ExecRequest, caller: &Caller) -> Result<RunOutcome> {
        let stored = self.stored(id).await?;
        let slot = self.slot(id);
        let guard = slot.read().await;
        let live = guard.as_ref().ok_or_else(|| stopped(id))?;
        let cap = stored.spec.limits.output_bytes as usize;
        let out = self
            .exec_on(&stored, live, req, caller, Sink::Capture(cap))
            .await?;
        tokio::spawn(self.queue_usage("exec", &out).await);
        Ok(out)
    }

    /// Runs one command in a running sandbox, streaming its output as
    /// ordered chunks and ending with [`ExecEvent::Done`].
    pub async fn exec_stream(
        &self,
        id: &str,
        req: ExecRequest,
        caller: &Caller,
    ) -> Result<mpsc::Receiver<ExecEvent>> {
        let stored = self.stored(id).await?;
        stored.spec.backend.check_available()?;
        exec::check_command(&req.command)?;
        exec::check_timeout(self.config(), req.timeout_ms)?;
        let slot = self.slot(id);
        let guard = slot.clone().read_owned().await;
        if guard.is_none() {
            return Err(stopped(id));
        }
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        let caller = caller.clone();
        tokio::spawn(async move {
            let Some(live) = guard.as_ref() else { return };
            let cap = stored.spec.limits.output_bytes as usize;
            let out = this
                .exec_on(&stored, live, req, &caller, Sink::Stream(cap, tx.clone()))
                .await;
            match out {
                Ok(o) => {
                    tokio::spawn(this.queue_usage("exec", &o).await);
                    let _ = tx.send(ExecEvent::Done(o)).await;
                }
                Err(e) => tracing::warn!(%e, "streamed exec failed"),
            }
        });
        Ok(rx)
    }

    /// Runs one command in the running sandbox `stored` with its backend.
    async fn exec_on(
        &self,
        stored: &Stored,
        live: &Live,
        req: ExecRequest,
        caller: &Caller,
        sink: Sink,
    ) -> Result<RunOutcome> {
        let (id, limits, env) = (Some(stored.id.as_str()), &stored.spec.limits, &stored.spec.env);
        match stored.spec.backend {
            Backend::Process => {
                self.exec_in(id, limits, env, live, req, Vec::new(), caller, sink)
                    .await
            }
            Backend::Wasm => {
                live.last_used.store(self.now(), Ordering::Relaxed);
                let out = self
                    .exec_wasm(id, limits, env, live.ws.clone(), req, caller, sink)
                    .await;
                live.last_used.store(self.now(), Ordering::Relaxed);
                out
            }
        }
    }

    /// Runs one command in `live`'s namespaces, in a cgroup of its own.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn exec_in(
        &self,
        sandbox_id: Option<&str>,
        limits: &ResolvedLimits,
        base_env: &BTreeMap<String, String>,
        live: &Live,
        req: ExecRequest,
        files: Vec<wire::SeedFile>,
        caller: &Caller,
        sink: Sink,
    ) -> Result<RunOutcome> {
        exec::check_command(&req.command)?;
        let timeout = exec::check_timeout(self.config(), req.timeout_ms)?;
        let env = exec::environment([base_env, &req.env])?;
        let cwd = exec::check_cwd(req.cwd.as_deref())?;
        let holder = live
            .holder
            .ok_or_else(|| Error::internal("a process exec in a sandbox without a holder"))?;
        live.last_used.store(self.now(), Ordering::Relaxed);
        let n = live.execs.fetch_add(1, Ordering::Relaxed);
        let init = launch::start(&self.config().init_program)?;
        let group = self
            .make_group(format!("{}/x{n}", live.name), GroupLimits::default())
            .await?;
        let spec = Spec {
            mode: Mode::Enter { holder },
            cgroup_join: group.join_files(),
            build: None,
            exec: Some(wire::Exec {
                argv: req.command.clone(),
                env,
                cwd,
                rlimits: self.rlimits(limits),
                stdin: req.stdin.map(String::into_bytes).unwrap_or_default(),
                files,
                filters: crate::filters()?,
            }),
        };
        let sandbox_ooms = || live.group.as_ref().map_or(0, |g| g.oom_kills());
        let oom_before = sandbox_ooms();
        let finished = launch::run(init, &spec, sink, Duration::from_millis(timeout), &group).await;
        let measured = Measured {
            // v1 counts a kill in the victim's own group, not its ancestors.
            oom: group.oom_kills() > 0 || sandbox_ooms() > oom_before,
            cpu_ns: group.cpu_ns(),
            peak_memory: group.peak_memory(),
        };
        live.last_used.store(self.now(), Ordering::Relaxed);
        let (finished, child) = match finished {
            Ok((f, c)) => (Ok(f), Some(c)),
            Err(e) => (Err(e), None),
        };
        self.clean_up(child, group);
        outcome_of(finished?, measured, caller, sandbox_id.map(str::to_string))
    }

    /// The folder files are read from and written to: the live tmpfs of a
    /// running sandbox, the saved copy of a stopped one.
    fn files_root(&self, id: &str, live: Option<&Live>) -> PathBuf {
        match live {
            Some(l) => l.ws.clone(),
            None => self.dir_of(id).join("disk"),
        }
    }

    /// Writes a file into the workspace (parent folders are created).
    pub async fn put_file(&self, id: &str, path: &str, data: Vec<u8>) -> Result<()> {
        let rel = workspace::check_path(path)?;
        let cfg = self.config().clone();
        if data.len() as u64 > cfg.max_file_bytes {
            return Err(Error::new(
                ErrorCode::FileTooLarge,
                format!(
                    "'{path}' is {} bytes; the limit is {}",
                    data.len(),
                    cfg.max_file_bytes
                ),
            ));
        }
        let s = self.stored(id).await?;
        let slot = self.slot(id);
        let guard = slot.read().await;
        let root = self.files_root(id, guard.as_ref());
        if let Some(l) = guard.as_ref() {
            l.last_used.store(self.now(), Ordering::Relaxed);
        }
        let running = guard.is_some();
        let quota = s.spec.limits.workspace_bytes;
        blocking_result(move || {
            // A running workspace is a tmpfs that enforces its size; a saved one is checked here.
            if !running && workspace::usage(&root) + data.len() as u64 > quota {
                return Err(Error::new(
                    ErrorCode::WorkspaceFull,
                    "the workspace quota is reached",
                ));
            }
            workspace::write(&root, &rel, &data, 0o644, (cfg.host_user_uid, cfg.host_user_uid))
        })
        .await
    }

    /// Reads a file from the workspace.
    pub async fn get_file(&self, id: &str, path: &str) -> Result<Vec<u8>> {
        let rel = workspace::check_path(path)?;
        self.stored(id).await?;
        let max = self.config().max_file_bytes;
        let slot = self.slot(id);
        let guard = slot.read().await;
        let root = self.files_root(id, guard.as_ref());
        blocking_result(move || workspace::read(&root, &rel, max)).await
    }

    /// Lists a workspace folder (`None`: the top).
    pub async fn list_files(&self, id: &str, dir: Option<&str>) -> Result<Vec<FileEntry>> {
        let rel = match dir {
            Some(d) if !d.is_empty() && d != "." && d != "/" => Some(workspace::check_path(d)?),
            _ => None,
        };
        self.stored(id).await?;
        let slot = self.slot(id);
        let guard = slot.read().await;
        let root = self.files_root(id, guard.as_ref());
        blocking_result(move || workspace::list(&root, rel.as_deref())).await
    }

    fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.inner.config.data_dir.join("snapshots").join(id)
    }

    /// Saves a copy of the workspace as a snapshot owned by the caller's
    /// agent (running execs finish first).
    pub async fn snapshot(&self, id: &str, caller: &Caller) -> Result<Snapshot> {
        let s = self.stored(id).await?;
        let slot = self.slot(id);
        let guard = slot.write().await;
        let root = self.files_root(id, guard.as_ref());
        let snap = Id::new("snp").to_string();
        let dir = self.snapshot_dir(&snap);
        let copied = {
            let dir = dir.clone();
            blocking(move || {
                std::fs::create_dir_all(&dir)?;
                workspace::copy_tree(&root, &dir, None)
            })
            .await
        };
        drop(guard);
        let bytes = match copied {
            Ok(b) => b,
            Err(e) => {
                let _ = blocking(move || std::fs::remove_dir_all(dir)).await;
                return Err(Error::internal(format!("copying the workspace: {e}")));
            }
        };
        let snapshot = Snapshot {
            id: snap,
            sandbox_id: id.to_string(),
            owner_agent: caller.agent_id.clone(),
            bytes,
            created_at: self.now(),
        };
        let spec = serde_json::to_string(&s.spec).map_err(Error::internal)?;
        if let Err(e) = repo::insert_snapshot(&self.inner.store, &snapshot, &spec).await {
            let _ = blocking(move || std::fs::remove_dir_all(dir)).await;
            return Err(e);
        }
        Ok(snapshot)
    }

    /// One snapshot.
    pub async fn get_snapshot(&self, id: &str) -> Result<Snapshot> {
        if Id::parse("snp", id).is_err() {
            return Err(Error::not_found("snapshot", id));
        }
        repo::snapshot(&self.inner.store, id)
            .await?
            .map(|(s, _)| s)
            .ok_or_else(|| Error::not_found("snapshot", id))
    }

    /// Snapshots oldest first, `limit` (1–500) at a time after the cursor
    /// `after`: only `owner`'s when given, only those of `sandbox` when given.
    pub async fn list_snapshots(
        &self,
        owner: Option<&str>,
        sandbox: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<SnapshotPage> {
        if let Some(a) = after
            && Id::parse("snp", a).is_err()
        {
            return Err(Error::invalid("after", format!("'{a}' is not a snp_… id")));
        }
        if let Some(s) = sandbox
            && Id::parse("sbx", s).is_err()
        {
            return Err(Error::invalid("sandbox", format!("'{s}' is not a sbx_… id")));
        }
        let limit = i64::from(limit.clamp(1, 500));
        let items = repo::snapshots(&self.inner.store, owner, sandbox, after, limit).await?;
        let (items, next) = strata_core::page::split(items, limit, |s| s.id.clone());
        Ok(SnapshotPage { items, next })
    }

    /// Deletes a snapshot and its files (sandboxes forked from it keep theirs).
    pub async fn delete_snapshot(&self, id: &str) -> Result<()> {
        if Id::parse("snp", id).is_err() {
            return Err(Error::not_found("snapshot", id));
        }
        // Forks being copied from it finish first (see `create`).
        let slot = self.slot(id);
        let guard = slot.write().await;
        let removed = repo::delete_snapshot(&self.inner.store, id).await;
        let out = match removed {
            Ok(true) => {
                let dir = self.snapshot_dir(id);
                blocking(move || match std::fs::remove_dir_all(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                })
                .await
                .map_err(|e| Error::internal(format!("removing the snapshot's files: {e}")))
            }
            Ok(false) => Err(Error::not_found("snapshot", id)),
            Err(e) => Err(e),
        };
        drop(guard);
        self.inner
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        out
    }

    /// Stops sandboxes idle past their `idle_stop_ms` (or the service's) and
    /// deletes those whose TTL passed. The kernel calls it periodically.
    pub async fn sweep(&self, now: i64) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        for s in repo::sandboxes(&self.inner.store, None).await? {
            if s.expires_at.is_some_and(|t| t <= now) {
                self.delete(&s.id).await?;
                report.deleted.push(s.id);
                continue;
            }
            let Some(idle) = s.spec.idle_stop_ms.or(self.config().idle_stop_ms) else {
                continue;
            };
            let last = {
                let slot = self.slot(&s.id);
                let g = slot.read().await;
                g.as_ref().map(|l| l.last_used.load(Ordering::Relaxed))
            };
            if let Some(last) = last
                && now - last >= idle
            {
                self.stop(&s.id).await?;
                report.stopped.push(s.id);
            }
        }
        Ok(report)
    }

    /// Stops every running sandbox (saving its workspace), ends the warm
    /// pool, and waits for every clean-up: what a server does before exiting.
    /// (Without it, the next `Compute::open` on the same data folder saves
    /// what was left and removes the cgroups.)
    pub async fn shutdown(&self) -> Result<()> {
        let ids: Vec<String> = {
            let slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
            // Snapshots' locks share the map; only sandboxes are stopped.
            slots.keys().filter(|k| k.starts_with("sbx_")).cloned().collect()
        };
        for id in ids {
            self.stop(&id).await?;
        }
        self.drain_pool().await;
        self.settle().await;
        Ok(())
    }

    /// Brings sandboxes left `running` by a previous process to `stopped`,
    /// saving a workspace that is still mounted.
    pub(crate) async fn recover(&self) -> Result<()> {
        for s in repo::sandboxes(&self.inner.store, Some(SandboxState::Running)).await? {
            let dir = self.dir_of(&s.id);
            let saved = blocking(move || {
                let ws = dir.join("ws");
                if is_mount_point(&ws) {
                    save_workspace(&ws, &dir.join("disk"))?;
                    umount2(&ws, MntFlags::MNT_DETACH)?;
                }
                Ok(())
            })
            .await;
            if let Err(e) = saved {
                tracing::error!(sandbox = s.id, %e, "saving a workspace left mounted failed");
            }
            repo::set_state(
                &self.inner.store,
                &s.id,
                SandboxState::Stopped,
                self.now(),
                s.last_used_at,
            )
            .await?;
        }
        Ok(())
    }
}

fn stopped(id: &str) -> Error {
    Error::new(
        ErrorCode::SandboxStopped,
        format!("sandbox '{id}' is stopped; start it first"),
    )
}

fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(500);
    let mut i = start;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

pub(crate) fn mount_workspace(ws: &Path, bytes: u64, uid: u32) -> std::io::Result<()> {
    let opts = format!("size={bytes},mode=0755,uid={uid},gid={uid}");
    mount(
        Some("tmpfs"),
        ws,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(std::io::Error::from)
}

/// Replaces `disk` with a copy of `ws`, so a failed copy leaves the old one.
fn save_workspace(ws: &Path, disk: &Path) -> std::io::Result<()> {
    let new = disk.with_file_name("disk.new");
    let old = disk.with_file_name("disk.old");
    for d in [&new, &old] {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
    }
    std::fs::create_dir_all(&new)?;
    workspace::copy_tree(ws, &new, None)?;
    if disk.exists() {
        std::fs::rename(disk, &old)?;
    }
    std::fs::rename(&new, disk)?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

fn is_mount_point(p: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&*want))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

async fn blocking_result<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(Error::internal)?
}
