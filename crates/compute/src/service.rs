//! Services: one long-running command in a sandbox of its own, for as long
//! as it runs (the orchestrator's managed agents).
//!
//! A service is a holder (as for a persistent sandbox, with an in-sandbox
//! tmpfs workspace and no stored row) plus one exec in it that has **no
//! timeout**, streams its output without a cap, and whose main process can be
//! sent `SIGTERM` or `SIGKILL` through the [`Service`] handle. The command is
//! not the sandbox's pid 1 (the holder is), so `SIGTERM` reaches it with its
//! usual meaning. When it ends, whatever it left is killed, the holder ends
//! and the cgroups are removed; only then does [`ServiceEvent::Ended`] arrive, with
//! the usage, which is also stored (`kind` `service`, `sandbox_id` the
//! service's `svc_…` id). Dropping the handle kills the service.
//!
//! If the server dies, the holder's lifeline (its control socket) closes, the
//! holder exits, and the kernel kills every process of its pid namespace: a
//! service never outlives its server. `Compute::open` removes the cgroups
//! such a death leaves.
//!
//! The public API has no way to start one: only the kernel does, for the
//! deployments an operator applied.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use nix::sys::signal::Signal;
use strata_core::{Error, Id, Result};
use tokio::sync::{mpsc, oneshot};

use crate::cgroup::GroupLimits;
use crate::exec::{self, Caller, Chunk, ExecEvent, Limits, Network, RunOutcome};
use crate::launch::{self, Control, Sink};
use crate::sandbox::Live;
use crate::wire::{self, Mode, Spec, WorkspaceMount};
use crate::{Compute, Measured, group_limits, outcome_of};

/// What to run as a service.
#[derive(Debug, Clone, Default)]
pub struct ServiceRequest {
    /// Program and arguments (the program is looked up in `PATH` without a `/`).
    pub command: Vec<String>,
    /// Environment over the defaults (and the template's).
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/workspace`).
    pub cwd: Option<String>,
    /// Resource limits (over the template's).
    pub limits: Limits,
    /// Network access (checked against [`Caller::host_egress_granted`]).
    pub network: Network,
    /// A template whose limits, env, binds and network the service starts from.
    pub template: Option<String>,
    /// Host paths bound read-only at the same place inside, besides the
    /// service's usual ones; each must exist.
    pub ro_binds: Vec<PathBuf>,
}

/// What a service reports.
#[derive(Debug)]
pub enum ServiceEvent {
    /// Output, in the order each stream was written.
    Output(Chunk),
    /// The end, once the sandbox is torn down: how the command ended and what
    /// it used, or why the sandbox failed.
    Ended(Result<RunOutcome>),
}

/// A running service: its ids, its events, and the way to stop it.
pub struct Service {
    id: String,
    pid: Option<u32>,
    events: mpsc::Receiver<ExecEvent>,
    failed: Option<oneshot::Receiver<Error>>,
    signals: mpsc::UnboundedSender<Signal>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("id", &self.id)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// `svc_…`: its usage records' `sandbox_id`, and its cgroups' name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The host pid of the command's main process.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Sends `SIGTERM` to the main process.
    pub fn terminate(&self) {
        let _ = self.signals.send(Signal::SIGTERM);
    }

    /// Sends `SIGKILL` to the main process (the rest follows it).
    pub fn kill(&self) {
        let _ = self.signals.send(Signal::SIGKILL);
    }

    /// The next event: output as it comes, then [`ServiceEvent::Ended`];
    /// `None` after that.
    pub async fn next(&mut self) -> Option<ServiceEvent> {
        match self.events.recv().await {
            Some(ExecEvent::Output(c)) => Some(ServiceEvent::Output(c)),
            Some(ExecEvent::Done(o)) => {
                self.failed = None;
                Some(ServiceEvent::Ended(Ok(o)))
            }
            None => {
                let failed = self.failed.take()?;
                let e = failed
                    .await
                    .unwrap_or_else(|_| Error::internal("the service's supervisor ended"));
                Some(ServiceEvent::Ended(Err(e)))
            }
        }
    }
}

/// Checks extra read-only binds: absolute, without `..`, not `/`.
pub fn check_binds(binds: &[PathBuf]) -> Result<()> {
    for b in binds {
        let text = b.to_string_lossy();
        let plain = b.is_absolute()
            && b.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
            && b != Path::new("/")
            && !text.contains('\0')
            && text.len() <= 4096;
        if !plain {
            return Err(Error::invalid(
                "binds",
                format!("'{text}' must be an absolute path other than / without '..'"),
            ));
        }
    }
    Ok(())
}

impl Compute {
    /// Starts `req` as a service attributed to `caller`; returns once its
    /// command has been started (or has failed to start: then the events say
    /// how). Fails with `sandbox_unavailable` when the sandbox cannot be built.
    pub async fn start_service(&self, req: ServiceRequest, caller: &Caller) -> Result<Service> {
        let cfg = self.config().clone();
        exec::check_command(&req.command)?;
        check_binds(&req.ro_binds)?;
        for b in &req.ro_binds {
            if !b.exists() {
                return Err(Error::invalid(
                    "binds",
                    format!("{} does not exist on this host", b.display()),
                ));
            }
        }
        let template = match &req.template {
            Some(name) => Some(self.template(name).await?),
            None => None,
        };
        let (limits, network) = self.over_template(template.as_ref(), &req.limits, req.network)?;
        let host_network = self.network_allowed(network, caller)?;
        let empty = BTreeMap::new();
        let env = exec::environment([template.as_ref().map_or(&empty, |t| &t.env), &req.env])?;
        let cwd = exec::check_cwd(req.cwd.as_deref())?;
        let extra_binds: Vec<PathBuf> = template
            .iter()
            .flat_map(|t| t.ro_binds.iter().map(PathBuf::from))
            .chain(req.ro_binds.iter().cloned())
            .collect();

        let id = Id::new("svc").to_string();
        let group = Arc::new(self.make_group(id.clone(), group_limits(&limits)).await?);
        let hold = Spec {
            mode: Mode::Hold,
            cgroup_join: group.join_files(),
            build: Some(self.build(
                extra_binds,
                WorkspaceMount::Tmpfs {
                    bytes: limits.workspace_bytes,
                },
                limits.tmp_bytes,
                host_network,
                Vec::new(),
            )),
            exec: None,
        };
        let (holder, lifeline) = match launch::hold(&cfg.init_program, &hold).await {
            Ok(h) => h,
            Err(e) => {
                let _ = tokio::task::spawn_blocking(move || group.remove()).await;
                return Err(e);
            }
        };
        let live = Live {
            holder: Some(holder),
            lifeline: Some(lifeline),
            group: Some(group),
            name: id.clone(),
            // Not reached from the host: nothing is copied in or out.
            ws: PathBuf::from(format!("/proc/{holder}/root/workspace")),
            last_used: AtomicI64::new(self.now()),
            execs: AtomicU64::new(0),
        };
        let main = match self
            .make_group(format!("{id}/main"), GroupLimits::default())
            .await
        {
            Ok(g) => g,
            Err(e) => {
                self.end_live(live, false).await;
                return Err(e);
            }
        };
        let filters = match crate::filters() {
            Ok(f) => f,
            Err(e) => {
                self.end_live(live, false).await;
                return Err(e);
            }
        };
        let spec = Spec {
            mode: Mode::Enter { holder },
            cgroup_join: main.join_files(),
            build: None,
            exec: Some(wire::Exec {
                argv: req.command.clone(),
                env,
                cwd,
                rlimits: self.rlimits(&limits),
                stdin: Vec::new(),
                files: Vec::new(),
                filters,
            }),
        };

        let (tx, events) = mpsc::channel(64);
        let (signals, signals_rx) = mpsc::unbounded_channel();
        let (started_tx, started_rx) = oneshot::channel();
        let (failed_tx, failed) = oneshot::channel();
        let this = self.clone();
        let caller = caller.clone();
        let service_id = id.clone();
        tokio::spawn(async move {
            let control = Control {
                started: Some(started_tx),
                signals: signals_rx,
            };
            let finished = match launch::start(&this.config().init_program) {
                Ok(init) => {
                    launch::run_controlled(
                        init,
                        &spec,
                        Sink::Stream(usize::MAX, tx.clone()),
                        Duration::MAX,
                        &main,
                        Some(control),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            let measured = Measured {
                oom: main.oom_kills() > 0 || live.group.as_ref().is_some_and(|g| g.oom_kills() > 0),
                cpu_ns: main.cpu_ns(),
                peak_memory: main.peak_memory(),
            };
            // Torn down before `Done`: whoever waits for it finds nothing left.
            let held = this.inner.pending.hold();
            let child = match finished {
                Ok((f, c)) => {
                    let out = outcome_of(f, measured, &caller, Some(service_id.clone()));
                    (Some(c), out)
                }
                Err(e) => (None, Err(e)),
            };
            let (child, out) = child;
            if let Some(mut c) = child {
                let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
            }
            let _ = tokio::task::spawn_blocking(move || main.remove()).await;
            this.end_live(live, false).await;
            drop(held);
            match out {
                Ok(o) => {
                    this.store_usage("service", &o).await;
                    let _ = tx.send(ExecEvent::Done(o)).await;
                }
                Err(e) => {
                    tracing::warn!(service = service_id, %e, "a service's sandbox failed");
                    let _ = failed_tx.send(e);
                }
            }
        });
        // Tells the main process's pid, or is dropped when it never started.
        let pid = started_rx.await.ok().and_then(|p| u32::try_from(p).ok());
        Ok(Service {
            id,
            pid,
            events,
            failed: Some(failed),
            signals,
        })
    }
}
