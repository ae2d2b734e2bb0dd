//! The warm pool: sandboxes built ahead of time so an ephemeral `run` only
//! has to exec.
//!
//! With `Config::pool_size` > 0 the service keeps that many holders ready,
//! each with the default limits, no network and an empty tmpfs workspace
//! inside its own mount namespace. A `run` that asks for nothing else (no
//! template, default limits, no network) takes one, joins it like an exec
//! (its files are written by the exec'd process, already as the sandbox
//! user, just before the command), and retires the sandbox — it is never
//! reused — while a replacement is built in the background. When the pool
//! is empty, `run` builds a sandbox as usual.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use strata_core::{Id, Result};

use crate::exec::{Backend, Caller, ExecRequest, Limits, Network, RunOutcome, RunRequest};
use crate::launch::{self, Sink};
use crate::sandbox::Live;
use crate::wire::{Build, Mode, Spec, WorkspaceMount};
use crate::{Compute, group_limits};

/// Ready holders.
#[derive(Default)]
pub(crate) struct Pool {
    ready: std::sync::Mutex<Vec<Live>>,
    building: AtomicUsize,
    /// Set by `drain_pool`: nothing more is built.
    closed: std::sync::atomic::AtomicBool,
}

impl Compute {
    /// How many pooled sandboxes are ready.
    pub fn pool_ready(&self) -> usize {
        self.inner
            .pool
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Builds pooled sandboxes until `Config::pool_size` are ready (or one
    /// fails), waiting for those being built elsewhere.
    pub async fn fill_pool(&self) -> Result<()> {
        let want = self.config().pool_size;
        while self.pool_ready() < want && !self.inner.pool.closed.load(Ordering::SeqCst) {
            if self.pool_ready() + self.inner.pool.building.load(Ordering::SeqCst) >= want {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                continue;
            }
            self.inner.pool.building.fetch_add(1, Ordering::SeqCst);
            let built = self.build_pooled().await;
            self.inner.pool.building.fetch_sub(1, Ordering::SeqCst);
            let live = built?;
            if self.inner.pool.closed.load(Ordering::SeqCst) {
                self.end_live(live, false).await;
                break;
            }
            self.inner
                .pool
                .ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(live);
        }
        Ok(())
    }

    pub(crate) fn refill_pool(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.fill_pool().await {
                tracing::warn!(%e, "building a pooled sandbox failed");
            }
        });
    }

    /// Stops building pooled sandboxes and ends the ready ones (for shutdown;
    /// the pool stays empty afterwards).
    pub async fn drain_pool(&self) {
        self.inner.pool.closed.store(true, Ordering::SeqCst);
        while self.inner.pool.building.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let all: Vec<Live> =
            std::mem::take(&mut *self.inner.pool.ready.lock().unwrap_or_else(|p| p.into_inner()));
        for live in all {
            self.end_live(live, false).await;
        }
    }

    async fn build_pooled(&self) -> Result<Live> {
        let cfg = self.config().clone();
        let limits = cfg.default_limits;
        let name = Id::new("pool").to_string();
        let group = Arc::new(self.make_group(name.clone(), group_limits(&limits)).await?);
        let spec = Spec {
            mode: Mode::Hold,
            cgroup_procs: group.procs_files(),
            build: Some(Build {
                host_root_uid: cfg.host_root_uid,
                host_user_uid: cfg.host_user_uid,
                root_dir: self.inner.root_dir.clone(),
                ro_binds: cfg.ro_binds.clone(),
                workspace: WorkspaceMount::Tmpfs {
                    bytes: limits.workspace_bytes,
                },
                tmp_bytes: limits.tmp_bytes,
                host_network: false,
                files: Vec::new(),
            }),
            exec: None,
        };
        match launch::hold(&cfg.init_program, &spec).await {
            Ok((holder, lifeline)) => Ok(Live {
                holder: Some(holder),
                lifeline: Some(lifeline),
                group: Some(group),
                name,
                // Not reached from the host: files go in through the exec.
                ws: PathBuf::from(format!("/proc/{holder}/root/workspace")),
                last_used: AtomicI64::new(self.now()),
                execs: AtomicU64::new(0),
            }),
            Err(e) => {
                let _ = tokio::task::spawn_blocking(move || group.remove()).await;
                Err(e)
            }
        }
    }

    /// Runs `req` in a pooled sandbox when it fits one and one is ready.
    pub(crate) async fn run_pooled(&self, req: &RunRequest, caller: &Caller) -> Option<Result<RunOutcome>> {
        let fits = self.config().pool_size > 0
            && req.template.is_none()
            && req.limits == Limits::default()
            && req.network == Network::None
            && req.backend.unwrap_or_default() == Backend::Process;
        if !fits {
            return None;
        }
        let live = self
            .inner
            .pool
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()?;
        self.refill_pool();
        let out = self.run_in_pooled(&live, req, caller).await;
        self.retire(live);
        Some(out)
    }

    async fn run_in_pooled(&self, live: &Live, req: &RunRequest, caller: &Caller) -> Result<RunOutcome> {
        let limits = self.config().default_limits;
        let files = self.seed_files(&req.files, limits.workspace_bytes)?;
        let exec = ExecRequest {
            command: req.command.clone(),
            stdin: req.stdin.clone(),
            timeout_ms: req.timeout_ms,
            env: req.env.clone(),
            cwd: req.cwd.clone(),
        };
        self.exec_in(
            None,
            &limits,
            &BTreeMap::new(),
            live,
            exec,
            files,
            caller,
            Sink::Capture(limits.output_bytes as usize),
        )
        .await
    }

    /// Ends a used pooled sandbox after the reply.
    fn retire(&self, live: Live) {
        let this = self.clone();
        let pending = self.inner.pending.clone();
        pending.count.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            this.end_live(live, false).await;
            if pending.count.fetch_sub(1, Ordering::SeqCst) == 1 {
                pending.idle.notify_waiters();
            }
        });
    }
}
