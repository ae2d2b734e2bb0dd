//! The warm pool: sandboxes built ahead of time so an ephemeral `run` only
//! has to exec.
//!
//! With `Config::pool_size` > 0 the service keeps that many sandboxes ready,
//! each with the default limits, no network and an empty tmpfs workspace
//! inside its own mount namespace, its pid 1 waiting on the control socket
//! ([`crate::wire::Mode::Serve`]). A `run` that asks for nothing else (no
//! template, default limits, no network) takes one and sends it the command,
//! which that pid 1 forks: nothing is joined and no init is started, so only
//! a fork and an exec remain (the files are written by the forked process,
//! already as the sandbox user, just before the command). The sandbox is
//! then retired — it is never reused — and a replacement is built in the
//! background once the run has its answer. Its CPU time is what the group
//! used after the command was sent, its peak memory what it used since.
//! When the pool is empty, `run` builds a sandbox as usual.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use strata_core::{Error, Id, Result};

use crate::exec::{self, Backend, Caller, Limits, Network, RunOutcome, RunRequest};
use crate::launch::{self, Served, Sink};
use crate::sandbox::Live;
use crate::wire::{Mode, Spec, WorkspaceMount};
use crate::{Compute, Measured, group_limits, outcome_of};

/// A ready sandbox and the way to hand it its command.
pub(crate) struct Pooled {
    live: Live,
    served: Served,
}

/// Ready sandboxes.
#[derive(Default)]
pub(crate) struct Pool {
    ready: std::sync::Mutex<Vec<Pooled>>,
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
            let pooled = built?;
            if self.inner.pool.closed.load(Ordering::SeqCst) {
                self.end_live(pooled.live, false).await;
                break;
            }
            self.inner
                .pool
                .ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(pooled);
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
        let all: Vec<Pooled> =
            std::mem::take(&mut *self.inner.pool.ready.lock().unwrap_or_else(|p| p.into_inner()));
        for p in all {
            self.end_live(p.live, false).await;
        }
    }

    async fn build_pooled(&self) -> Result<Pooled> {
        let cfg = self.config().clone();
        let limits = cfg.default_limits;
        let name = Id::new("pool").to_string();
        let group = Arc::new(self.make_group(name.clone(), group_limits(&limits)).await?);
        let spec = Spec {
            mode: Mode::Serve {
                filters: crate::filters()?,
            },
            cgroup_join: group.join_files(),
            build: Some(self.build(
                [],
                WorkspaceMount::Tmpfs {
                    bytes: limits.workspace_bytes,
                },
                limits.tmp_bytes,
                false,
                Vec::new(),
            )),
            exec: None,
        };
        match launch::build_served(&cfg.init_program, &spec).await {
            Ok((holder, served)) => Ok(Pooled {
                live: Live {
                    holder: Some(holder),
                    // The control socket, in `served`, is the lifeline.
                    lifeline: None,
                    group: Some(group),
                    name,
                    // Not reached from the host: files go in with the command.
                    ws: PathBuf::from(format!("/proc/{holder}/root/workspace")),
                    last_used: AtomicI64::new(self.now()),
                    execs: AtomicU64::new(0),
                },
                served,
            }),
            Err(e) => {
                let _ = tokio::task::spawn_blocking(move || group.remove()).await;
                Err(e)
            }
        }
    }

    /// Runs `req` in a pooled sandbox if it fits one and one is ready; the
    /// used sandbox is left in `after` (ended, and the pool refilled, once the
    /// run's usage is stored).
    pub(crate) async fn run_pooled(
        &self,
        req: &RunRequest,
        caller: &Caller,
        after: &mut crate::AfterRun,
    ) -> Option<Result<RunOutcome>> {
        let fits = self.config().pool_size > 0
            && req.template.is_none()
            && req.limits == Limits::default()
            && req.network == Network::None
            && req.backend.unwrap_or_default() == Backend::Process;
        if !fits {
            return None;
        }
        let pooled = self
            .inner
            .pool
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()?;
        let Pooled { live, served } = pooled;
        let out = self.run_in_pooled(&live, served, req, caller).await;
        after.pooled = Some(live);
        Some(out)
    }

    async fn run_in_pooled(
        &self,
        live: &Live,
        served: Served,
        req: &RunRequest,
        caller: &Caller,
    ) -> Result<RunOutcome> {
        let limits = self.config().default_limits;
        exec::check_command(&req.command)?;
        let timeout = exec::check_timeout(self.config(), req.timeout_ms)?;
        let command = crate::wire::Exec {
            argv: req.command.clone(),
            env: exec::environment([&BTreeMap::new(), &req.env])?,
            cwd: exec::check_cwd(req.cwd.as_deref())?,
            rlimits: self.rlimits(&limits),
            stdin: req.stdin.clone().map(String::into_bytes).unwrap_or_default(),
            files: self.seed_files(&req.files, limits.workspace_bytes)?,
            // Pid 1 installed them before it reported ready.
            filters: Vec::new(),
        };
        let group = live
            .group
            .as_deref()
            .ok_or_else(|| Error::internal("a pooled sandbox without its cgroup"))?;
        // What building the sandbox used is not the run's.
        let cpu_before = group.cpu_ns();
        group.reset_peak_memory();
        let finished = launch::serve(
            served,
            &command,
            Sink::Capture(limits.output_bytes as usize),
            std::time::Duration::from_millis(timeout),
            group,
        )
        .await?;
        let measured = Measured {
            oom: group.oom_kills() > 0,
            cpu_ns: group.cpu_ns().map(|n| n.saturating_sub(cpu_before.unwrap_or(0))),
            peak_memory: group.peak_memory(),
        };
        outcome_of(finished, measured, caller, None)
    }

    /// Ends a used pooled sandbox after the reply.
    pub(crate) fn retire(&self, live: Live) {
        let this = self.clone();
        let held = self.inner.pending.hold();
        tokio::spawn(async move {
            this.end_live(live, false).await;
            drop(held);
        });
    }
}
