//! The reconciler: runs managed agents as child processes matching the applied
//! deployments (`orchestrator::fleet`).
//!
//! Every half second (and at once after an apply or delete) it compares each
//! deployment with what runs:
//!
//! - each replica `i` is an agent `NAME-i` with the deployment's capabilities,
//!   created on first start (through `agent.create`, audited as
//!   `admin:reconciler`) and given a fresh token on every start (the previous one
//!   is revoked);
//! - a missing replica is started; one that exited is started again as its
//!   restart policy says, after a backoff that doubles from 1 s to 30 s while it
//!   keeps crashing (`CrashLoopBackOff`), reset once it has run 10 s;
//! - a replica silent for longer than `health.heartbeat_timeout` is restarted;
//! - with `autoscale`, the replica count follows the queue depth of the
//!   deployment's capabilities (scale-up at once, scale-down after 10 s);
//! - replicas beyond the count, of a changed spec, or of a deleted deployment
//!   get SIGTERM, then SIGKILL after the grace period.
//!
//! Each replica runs in a sandbox of its own (`strata_compute::service`)
//! unless its spec says `sandbox: false`: networked with `host-egress` by
//! default (it must reach `STRATA_URL` on the host's loopback), with its
//! `workdir` bound read-only at the same path as its working folder, and its
//! usage stored and metered as its agent's. A sandbox dies with the server
//! (its holder's lifeline closes). Where the compute layer is unavailable, a
//! sandboxed replica fails with the reason rather than running unsandboxed.
//! Plain replicas run in their own process group and, where `setpriv` exists,
//! die with the server. Each replica's last 500 output lines are kept for
//! `strata logs`. State is per server. Of several servers sharing one
//! PostgreSQL, only the one holding the `reconciler` leadership
//! (`orchestrator::leader`, renewed every tick, 5 s claims) runs processes; a
//! server that cannot renew its claim in time stops its replicas, and another
//! takes over once the claim expires.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Value, json};
use strata_core::{Error, Principal, Result, time::rfc3339};
use strata_orchestrator::fleet::{AgentNetwork, AgentSandbox, Applied, Deployment, Restart};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use crate::Kernel;

const TICK: Duration = Duration::from_millis(500);
/// How long a claim to run the reconciler lasts; the leader renews it every tick.
const LEAD_FOR_MS: i64 = 5_000;
const LEAD_ROLE: &str = "reconciler";
const LOG_LINES: usize = 500;
const BACKOFF_MAX_MS: i64 = 30_000;
const STABLE_AFTER_MS: i64 = 10_000;
const SCALE_DOWN_AFTER_MS: i64 = 10_000;
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The reconciler's view of the fleet, shared with the `fleet.*` syscalls.
#[derive(Clone, Default)]
pub struct Fleet {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<HashMap<String, Deploy>>,
    wake: Notify,
    running: std::sync::atomic::AtomicBool,
    leading: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Deploy {
    generation: i64,
    desired: u32,
    low_since: Option<i64>,
    replicas: BTreeMap<u32, Replica>,
    message: Option<String>,
}

struct Replica {
    agent_id: Option<String>,
    token_id: Option<String>,
    generation: i64,
    phase: Phase,
    pid: Option<u32>,
    restarts: u32,
    crashes: u32,
    started_at: Option<i64>,
    next_start_at: i64,
    last_exit: Option<String>,
    stop: Arc<Notify>,
    stopping: bool,
    unhealthy: Option<String>,
    sandbox: Option<String>,
    logs: Arc<Mutex<VecDeque<LogLine>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
enum Phase {
    Pending,
    Running,
    Restarting,
    CrashLoopBackOff,
    Succeeded,
    Failed,
    Stopping,
}

/// One line a replica printed.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct LogLine {
    /// The replica index.
    pub replica: u32,
    /// When it was read (RFC 3339).
    pub at: String,
    /// `stdout`, `stderr`, or `strata` for the reconciler's own notes.
    pub stream: String,
    /// The text.
    pub line: String,
}

/// A replica as reported.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReplicaStatus {
    /// Its index.
    pub replica: u32,
    /// The agent it runs as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// `Pending`, `Running`, `Restarting`, `CrashLoopBackOff`, `Succeeded`, `Failed` or `Stopping`.
    pub phase: String,
    /// Its process id, while running (a host pid, also when sandboxed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The sandbox it runs in (`svc_…`, its usage records' `sandbox_id`), while running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// How many times it was started again.
    pub restarts: u32,
    /// When the current process started (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// How the last process ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// Milliseconds since its last call to Strata (0 while one is in progress).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub silent_ms: Option<i64>,
}

/// A deployment's observed state.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DeploymentStatus {
    /// The generation the reconciler has acted on.
    pub observed_generation: i64,
    /// Replicas wanted now (after autoscaling).
    pub desired: u32,
    /// Replicas running.
    pub ready: u32,
    /// The replicas.
    pub replicas: Vec<ReplicaStatus>,
    /// Why the reconciler cannot make progress, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A deployment: what was applied and what runs.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Described {
    /// Its name.
    pub name: String,
    /// The desired state and its generation.
    #[serde(flatten)]
    pub applied: Applied,
    /// The observed state; absent when this server runs no reconciler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<DeploymentStatus>,
}

impl Replica {
    fn new(generation: i64) -> Replica {
        Replica {
            agent_id: None,
            token_id: None,
            generation,
            phase: Phase::Pending,
            pid: None,
            restarts: 0,
            crashes: 0,
            started_at: None,
            next_start_at: 0,
            last_exit: None,
            stop: Arc::new(Notify::new()),
            stopping: false,
            unhealthy: None,
            sandbox: None,
            logs: Arc::new(Mutex::new(VecDeque::new())),
        }
    }

    fn note(&self, replica: u32, now: i64, line: String) {
        push_line(&self.logs, replica, now, "strata", line);
    }

    fn request_stop(&mut self) {
        if self.pid.is_some() && !self.stopping {
            self.stopping = true;
            self.phase = Phase::Stopping;
            self.stop.notify_one();
        }
    }
}

fn push_line(logs: &Mutex<VecDeque<LogLine>>, replica: u32, now: i64, stream: &str, line: String) {
    let mut l = logs.lock().unwrap_or_else(|p| p.into_inner());
    if l.len() == LOG_LINES {
        l.pop_front();
    }
    l.push_back(LogLine {
        replica,
        at: rfc3339(now),
        stream: stream.to_string(),
        line,
    });
}

impl Fleet {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Deploy>> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the reconciler to look again now.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Whether a reconciler runs in this server.
    pub fn is_running(&self) -> bool {
        self.inner.running.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether this server's reconciler leads (runs the managed agents).
    pub fn is_leading(&self) -> bool {
        self.inner.leading.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The observed state of deployment `name`, if this server's reconciler leads.
    pub fn status(&self, k: &Kernel, name: &str) -> Option<DeploymentStatus> {
        if !self.is_leading() {
            return None;
        }
        let presence = k.orchestrator().presence();
        let state = self.lock();
        let Some(d) = state.get(name) else {
            return Some(DeploymentStatus {
                observed_generation: 0,
                desired: 0,
                ready: 0,
                replicas: Vec::new(),
                message: None,
            });
        };
        let replicas: Vec<ReplicaStatus> = d
            .replicas
            .iter()
            .map(|(i, r)| ReplicaStatus {
                replica: *i,
                agent_id: r.agent_id.clone(),
                phase: format!("{:?}", r.phase),
                pid: r.pid,
                sandbox: r.sandbox.clone(),
                restarts: r.restarts,
                started_at: r.started_at.map(rfc3339),
                last_exit: r.last_exit.clone(),
                silent_ms: r.agent_id.as_deref().and_then(|a| presence.silent_for(a)),
            })
            .collect();
        Some(DeploymentStatus {
            observed_generation: d.generation,
            desired: d.desired,
            ready: d.replicas.values().filter(|r| r.phase == Phase::Running).count() as u32,
            replicas,
            message: d.message.clone(),
        })
    }

    /// The last `tail` output lines of deployment `name` (of one replica, if given), oldest first.
    pub fn logs(&self, name: &str, replica: Option<u32>, tail: usize) -> Vec<LogLine> {
        let state = self.lock();
        let Some(d) = state.get(name) else {
            return Vec::new();
        };
        let mut lines: Vec<LogLine> = d
            .replicas
            .iter()
            .filter(|(i, _)| replica.is_none_or(|r| r == **i))
            .flat_map(|(_, r)| {
                r.logs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        lines.sort_by(|a, b| a.at.cmp(&b.at));
        let skip = lines.len().saturating_sub(tail);
        lines.split_off(skip)
    }
}

/// Where `setpriv` is, to make children die with the server.
fn setpriv() -> Option<&'static str> {
    ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

fn reconciler() -> Principal {
    Principal::Admin {
        token_id: "reconciler".into(),
    }
}

impl Kernel {
    /// Starts the reconciler; managed agents reach this server at `url`.
    pub fn spawn_reconciler(&self, url: String) -> tokio::task::JoinHandle<()> {
        let k = self.clone();
        k.fleet()
            .inner
            .running
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            let holder = strata_core::Id::new("srv").to_string();
            // Until when this server may act on its last successful claim: a
            // margin short of the claim's expiry, by this server's own clock.
            let mut lead_until: Option<std::time::Instant> = None;
            while k.fleet().is_running() {
                let asked = std::time::Instant::now();
                match k.claim_lead(&holder).await {
                    Ok(true) => {
                        let margin =
                            Duration::from_millis(LEAD_FOR_MS.unsigned_abs()).saturating_sub(TICK * 4);
                        lead_until = Some(asked + margin);
                    }
                    Ok(false) => lead_until = None,
                    Err(e) if e.code == strata_core::ErrorCode::Unavailable => break,
                    // Keep acting on the last claim while it lasts.
                    Err(e) => tracing::warn!(error = %e, "renewing the reconciler's leadership failed"),
                }
                let leading = lead_until.is_some_and(|t| std::time::Instant::now() < t);
                let was = k
                    .fleet()
                    .inner
                    .leading
                    .swap(leading, std::sync::atomic::Ordering::Relaxed);
                if leading {
                    if !was {
                        tracing::info!(server = %holder, "this server now runs the managed agents");
                    }
                    if let Err(e) = k.reconcile(&url).await {
                        if e.code == strata_core::ErrorCode::Unavailable {
                            break;
                        }
                        tracing::warn!(error = %e, "reconcile failed");
                    }
                } else if was {
                    tracing::warn!(server = %holder, "lost the reconciler's leadership; stopping managed agents");
                    k.stop_all().await;
                }
                let _ = tokio::time::timeout(TICK, k.fleet().inner.wake.notified()).await;
            }
            k.fleet()
                .inner
                .leading
                .store(false, std::sync::atomic::Ordering::Relaxed);
            k.stop_all().await;
            if let Err(e) = k.release_lead(&holder).await {
                tracing::warn!(error = %e, "could not give up the reconciler's leadership");
            }
        })
    }

    /// Claims or renews the reconciler's leadership for `holder`; publishes a
    /// change of hands as the event `fleet.lead`.
    async fn claim_lead(&self, holder: &str) -> Result<bool> {
        let now = self.now_ms();
        let holder = holder.to_string();
        self.store()
            .write(move |c| {
                Box::pin(async move {
                    let claim =
                        strata_orchestrator::leader::claim(c, LEAD_ROLE, &holder, now, LEAD_FOR_MS).await?;
                    let leads = claim.holder == holder;
                    if leads && claim.since == now {
                        strata_store::event::append(
                            c,
                            now,
                            "fleet.lead",
                            &holder,
                            &json!({"role": LEAD_ROLE}),
                        )
                        .await?;
                    }
                    Ok(leads)
                })
            })
            .await
    }

    async fn release_lead(&self, holder: &str) -> Result<()> {
        let holder = holder.to_string();
        self.store()
            .write(move |c| {
                Box::pin(async move { strata_orchestrator::leader::release(c, LEAD_ROLE, &holder).await })
            })
            .await
    }

    async fn reconcile(&self, url: &str) -> Result<()> {
        let now = self.now_ms();
        let applied = self.orchestrator().deployments().await?;
        for a in &applied {
            let desired = self.desired(&a.spec, now).await?;
            self.reconcile_one(a, desired, url, now).await;
        }
        // Deployments that were deleted: stop their replicas, then delete their agents.
        let gone: Vec<String> = self
            .fleet()
            .lock()
            .keys()
            .filter(|n| !applied.iter().any(|a| &a.spec.name == *n))
            .cloned()
            .collect();
        for name in gone {
            let agents = {
                let mut state = self.fleet().lock();
                let Some(d) = state.get_mut(&name) else { continue };
                d.replicas.values_mut().for_each(Replica::request_stop);
                if d.replicas.values().any(|r| r.pid.is_some()) {
                    continue;
                }
                let agents: Vec<String> = d.replicas.values().filter_map(|r| r.agent_id.clone()).collect();
                state.remove(&name);
                agents
            };
            for a in agents {
                let _ = self.call_as(reconciler(), "agent.delete", json!({"id": a})).await;
            }
        }
        Ok(())
    }

    /// The replica count `spec` wants now.
    async fn desired(&self, spec: &Deployment, now: i64) -> Result<u32> {
        let Some(a) = &spec.autoscale else {
            return Ok(spec.replicas);
        };
        let caps: Vec<String> = spec.capabilities.iter().map(|c| c.name.clone()).collect();
        let queued = self.orchestrator().queue_depth(&caps).await?;
        let per = i64::from(a.target_queue_per_replica);
        let want = u32::try_from((queued.max(0) + per - 1) / per)
            .unwrap_or(u32::MAX)
            .clamp(a.min, a.max);
        let mut state = self.fleet().lock();
        let d = state.entry(spec.name.clone()).or_default();
        if want >= d.desired || d.generation == 0 {
            d.low_since = None;
            return Ok(want);
        }
        // Scale down only once the queue has stayed low for a while.
        let since = *d.low_since.get_or_insert(now);
        Ok(if now - since >= SCALE_DOWN_AFTER_MS {
            d.low_since = None;
            want
        } else {
            d.desired
        })
    }

    async fn reconcile_one(&self, a: &Applied, desired: u32, url: &str, now: i64) {
        let spec = &a.spec;
        let timeout = spec.heartbeat_timeout_ms().ok().flatten();
        let mut to_start = Vec::new();
        {
            let presence = self.orchestrator().presence();
            let mut state = self.fleet().lock();
            let d = state.entry(spec.name.clone()).or_default();
            d.generation = a.generation;
            d.desired = desired;
            for i in 0..desired {
                d.replicas.entry(i).or_insert_with(|| Replica::new(a.generation));
            }
            let mut drop_ids = Vec::new();
            for (i, r) in d.replicas.iter_mut() {
                let outdated = r.generation != a.generation;
                if *i >= desired || outdated {
                    r.request_stop();
                    if r.pid.is_none() && !r.stopping {
                        if *i >= desired {
                            drop_ids.push(*i);
                        } else {
                            r.generation = a.generation;
                            r.phase = Phase::Pending;
                            r.next_start_at = 0;
                        }
                    }
                    continue;
                }
                if r.pid.is_some() {
                    let silent = r.agent_id.as_deref().and_then(|id| presence.silent_for(id));
                    let started = r.started_at.unwrap_or(now);
                    if let Some(t) = timeout
                        && now - started > t
                        && silent.is_none_or(|s| s > t)
                    {
                        r.note(*i, now, format!("no call to Strata for over {t} ms: restarting"));
                        r.unhealthy = Some(format!("unhealthy: no call to Strata for over {t} ms"));
                        r.request_stop();
                    }
                    continue;
                }
                if matches!(
                    r.phase,
                    Phase::Pending | Phase::Restarting | Phase::CrashLoopBackOff
                ) && now >= r.next_start_at
                    && !r.stopping
                {
                    r.phase = Phase::Pending;
                    to_start.push(*i);
                }
            }
            for i in drop_ids {
                d.replicas.remove(&i);
            }
        }
        for i in to_start {
            if let Err(e) = self.start_replica(spec, a.generation, i, url).await {
                let mut state = self.fleet().lock();
                if let Some(d) = state.get_mut(&spec.name) {
                    // No sandbox on this host: no point in trying again, and
                    // no running it unsandboxed either.
                    let no_sandbox = e.code == strata_core::ErrorCode::SandboxUnavailable;
                    let e = if no_sandbox {
                        Error::new(
                            e.code,
                            format!(
                                "{}; replicas of '{}' run in sandboxes unless its spec says `sandbox: false`",
                                e.detail, spec.name
                            ),
                        )
                    } else {
                        e
                    };
                    d.message = Some(e.to_string());
                    if let Some(r) = d.replicas.get_mut(&i) {
                        r.note(i, now, format!("cannot start: {e}"));
                        r.last_exit = Some(format!("start failed: {}", e.detail));
                        if no_sandbox {
                            r.phase = Phase::Failed;
                        } else {
                            after_exit(r, spec.restart, false, now);
                        }
                    }
                }
            }
        }
    }

    /// Makes sure replica `i`'s agent exists with the spec's capabilities and
    /// returns (agent id, token, token id).
    async fn replica_agent(&self, spec: &Deployment, i: u32) -> Result<(String, String, String)> {
        let name = format!("{}-{i}", spec.name);
        let mut labels = spec.labels.clone();
        labels.insert("strata.fleet".into(), spec.name.clone());
        labels.insert("strata.replica".into(), i.to_string());
        // A deployment is an agent group unless its labels name another.
        labels
            .entry(strata_identity::agent::GROUP_LABEL.into())
            .or_insert_with(|| spec.name.clone());
        if let Some(existing) = self.identity().by_name(&name).await? {
            let same = serde_json::to_value(&existing.capabilities).ok()
                == serde_json::to_value(&spec.capabilities).ok()
                && existing.labels == labels;
            if same {
                let t = self
                    .call_as(
                        reconciler(),
                        "token.create",
                        json!({"id": existing.id, "name": "fleet"}),
                    )
                    .await?;
                return Ok((existing.id, str_of(&t, "token")?, str_of(&t, "id")?));
            }
            if existing.labels.get("strata.fleet") != Some(&spec.name) {
                return Err(Error::new(
                    strata_core::ErrorCode::AgentNameTaken,
                    format!(
                        "agent name '{name}' is taken by an agent outside deployment '{}'",
                        spec.name
                    ),
                ));
            }
            self.call_as(reconciler(), "agent.delete", json!({"id": existing.id}))
                .await?;
        }
        let created = self
            .call_as(
                reconciler(),
                "agent.create",
                json!({"name": name, "capabilities": spec.capabilities, "labels": labels}),
            )
            .await?;
        Ok((
            str_of(&created, "id")?,
            str_of(&created, "token")?,
            str_of(&created, "token_id")?,
        ))
    }

    async fn start_replica(&self, spec: &Deployment, generation: i64, i: u32, url: &str) -> Result<()> {
        let (agent_id, token, token_id) = self.replica_agent(spec, i).await?;
        let previous = {
            let state = self.fleet().lock();
            state
                .get(&spec.name)
                .and_then(|d| d.replicas.get(&i))
                .and_then(|r| r.token_id.clone())
        };
        if let Some(old) = previous {
            let _ = self
                .call_as(reconciler(), "token.revoke", json!({"id": old}))
                .await;
        }
        let env = self.replica_env(spec, i, url, &agent_id, &token);
        let (running, pid, sandbox) = match spec.sandbox() {
            Some(sb) => {
                let svc = self.start_sandboxed(spec, &sb, env, &agent_id).await?;
                let (pid, id) = (svc.pid(), svc.id().to_string());
                (Running::Sandbox(svc), pid, Some(id))
            }
            None => {
                let child = spawn_plain(spec, env)?;
                let pid = child.id();
                (Running::Process(child), pid, None)
            }
        };
        let now = self.now_ms();
        self.orchestrator().presence().forget(&agent_id);
        let (stop, logs) = {
            let mut state = self.fleet().lock();
            let d = state.entry(spec.name.clone()).or_default();
            d.message = None;
            let r = d.replicas.entry(i).or_insert_with(|| Replica::new(generation));
            r.agent_id = Some(agent_id.clone());
            r.token_id = Some(token_id.clone());
            r.generation = generation;
            r.pid = pid;
            r.phase = Phase::Running;
            r.started_at = Some(now);
            r.stopping = false;
            r.stop = Arc::new(Notify::new());
            r.note(
                i,
                now,
                match &sandbox {
                    Some(id) => format!("started pid {} in sandbox {id}", pid.unwrap_or(0)),
                    None => format!("started pid {}", pid.unwrap_or(0)),
                },
            );
            r.sandbox = sandbox;
            (r.stop.clone(), r.logs.clone())
        };
        let k = self.clone();
        let (name, restart) = (spec.name.clone(), spec.restart);
        tokio::spawn(async move {
            let (ended, stopped) = match running {
                Running::Process(child) => supervise(&k, child, stop, logs, i).await,
                Running::Sandbox(svc) => {
                    let agent = Principal::Agent {
                        agent_id,
                        token_id,
                        scopes: Vec::new(),
                    };
                    supervise_sandboxed(&k, svc, stop, logs, i, &agent).await
                }
            };
            let now = k.now_ms();
            let mut state = k.fleet().lock();
            let Some(r) = state.get_mut(&name).and_then(|d| d.replicas.get_mut(&i)) else {
                return;
            };
            r.pid = None;
            r.sandbox = None;
            r.stopping = false;
            let Ended { ok, how } = ended;
            r.note(i, now, format!("exited: {how}"));
            match (stopped, r.unhealthy.take()) {
                // Stopped on purpose (scaled down, spec changed, deleted).
                (true, None) => {
                    r.phase = Phase::Pending;
                    r.next_start_at = now;
                    r.last_exit = Some(how);
                }
                // Stopped for missing its heartbeats: a failure.
                (true, Some(why)) => {
                    r.last_exit = Some(why);
                    after_exit(r, restart, false, now);
                }
                (false, _) => {
                    r.last_exit = Some(how);
                    after_exit(r, restart, ok, now);
                }
            }
            drop(state);
            k.fleet().wake();
        });
        Ok(())
    }

    /// The environment of replica `i`: the spec's, then Strata's own variables.
    fn replica_env(
        &self,
        spec: &Deployment,
        i: u32,
        url: &str,
        agent_id: &str,
        token: &str,
    ) -> BTreeMap<String, String> {
        let mut env = spec.env.clone();
        for (k, v) in [
            ("STRATA_URL", url.to_string()),
            ("STRATA_TOKEN", token.to_string()),
            ("STRATA_AGENT_ID", agent_id.to_string()),
            ("STRATA_AGENT_NAME", format!("{}-{i}", spec.name)),
            ("STRATA_REPLICA", i.to_string()),
        ] {
            env.insert(k.to_string(), v);
        }
        env
    }

    /// Starts a replica in a sandbox of its own, its usage charged to `agent_id`.
    async fn start_sandboxed(
        &self,
        spec: &Deployment,
        sb: &AgentSandbox,
        env: BTreeMap<String, String>,
        agent_id: &str,
    ) -> Result<strata_compute::Service> {
        let compute = self.compute()?;
        let req = service_request(spec, sb, env)?;
        // The operator who applied the deployment granted its network.
        let caller = strata_compute::Caller {
            agent_id: Some(agent_id.to_string()),
            task_id: None,
            host_egress_granted: true,
        };
        compute.start_service(req, &caller).await
    }
}

/// What a replica runs as, while it runs.
enum Running {
    Process(Child),
    Sandbox(strata_compute::Service),
}

/// How a replica's process ended.
struct Ended {
    ok: bool,
    how: String,
}

/// The sandbox request of a replica: its command, `workdir` (bound read-only
/// at the same path and its working folder) and the command's own folder
/// when the command is a path outside `workdir`.
fn service_request(
    spec: &Deployment,
    sb: &AgentSandbox,
    env: BTreeMap<String, String>,
) -> Result<strata_compute::ServiceRequest> {
    let limits = sandbox_limits(sb)?;
    let mut binds: Vec<std::path::PathBuf> = Vec::new();
    if let Some(w) = &spec.workdir {
        binds.push(w.into());
    }
    let program = Path::new(&spec.command);
    if spec.command.contains('/') {
        let full = match (&spec.workdir, program.is_absolute()) {
            (Some(w), false) => Path::new(w).join(program),
            _ => program.to_path_buf(),
        };
        if let Some(folder) = full.parent()
            && !binds.iter().any(|b| folder.starts_with(b))
            && folder.is_absolute()
        {
            binds.push(folder.to_path_buf());
        }
    }
    binds.extend(sb.binds.iter().map(std::path::PathBuf::from));
    let mut command = vec![spec.command.clone()];
    command.extend(spec.args.iter().cloned());
    Ok(strata_compute::ServiceRequest {
        command,
        env,
        cwd: spec.workdir.clone(),
        limits,
        network: match sb.network {
            AgentNetwork::HostEgress => strata_compute::Network::HostEgress,
            AgentNetwork::None => strata_compute::Network::None,
        },
        template: sb.template.clone(),
        ro_binds: binds,
    })
}

/// The sandbox limits a deployment asks for, as the compute layer reads them.
pub(crate) fn sandbox_limits(sb: &AgentSandbox) -> Result<strata_compute::Limits> {
    serde_json::from_value(Value::Object(sb.limits.clone()))
        .map_err(|e| Error::invalid("sandbox.limits", e.to_string()))
}

/// Starts a plain child process in its own process group, dying with the
/// server where `setpriv` exists.
fn spawn_plain(spec: &Deployment, env: BTreeMap<String, String>) -> Result<Child> {
    let mut cmd = match setpriv() {
        Some(sp) => {
            let mut c = Command::new(sp);
            c.args(["--pdeathsig", "KILL", "--"]).arg(&spec.command);
            c
        }
        None => Command::new(&spec.command),
    };
    cmd.args(&spec.args)
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(w) = &spec.workdir {
        cmd.current_dir(w);
    }
    cmd.spawn()
        .map_err(|e| Error::invalid("command", format!("cannot run '{}': {e}", spec.command)))
}

impl Kernel {
    /// Stops the reconciler and every managed process (server shutdown).
    pub async fn stop_fleet(&self) {
        self.fleet()
            .inner
            .running
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.fleet().wake();
        self.stop_all().await;
    }

    async fn stop_all(&self) {
        {
            let mut state = self.fleet().lock();
            for d in state.values_mut() {
                d.replicas.values_mut().for_each(Replica::request_stop);
            }
        }
        for _ in 0..100 {
            if !self
                .fleet()
                .lock()
                .values()
                .any(|d| d.replicas.values().any(|r| r.pid.is_some()))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Decides what follows an exit: a restart after a backoff, or a final phase.
fn after_exit(r: &mut Replica, restart: Restart, ok: bool, now: i64) {
    let ran = now - r.started_at.unwrap_or(now);
    let again = match restart {
        Restart::Always => true,
        Restart::OnFailure => !ok,
        Restart::Never => false,
    };
    if !again {
        r.phase = if ok { Phase::Succeeded } else { Phase::Failed };
        return;
    }
    if ran >= STABLE_AFTER_MS {
        r.crashes = 0;
    }
    r.crashes += 1;
    r.restarts += 1;
    let backoff = (1_000_i64 << (r.crashes - 1).min(5)).min(BACKOFF_MAX_MS);
    r.next_start_at = now + backoff;
    r.phase = if r.crashes >= 3 {
        Phase::CrashLoopBackOff
    } else {
        Phase::Restarting
    };
}

/// Runs one process to its end: copies its output to the log, and on a stop
/// request sends SIGTERM, then SIGKILL after the grace period. Returns the exit
/// and whether it was asked to stop.
async fn supervise(
    k: &Kernel,
    mut child: Child,
    stop: Arc<Notify>,
    logs: Arc<Mutex<VecDeque<LogLine>>>,
    i: u32,
) -> (Ended, bool) {
    for (stream, reader) in [
        (
            "stdout",
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ),
        (
            "stderr",
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ),
    ] {
        let Some(reader) = reader else { continue };
        let (logs, k) = (logs.clone(), k.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                push_line(&logs, i, k.now_ms(), stream, line);
            }
        });
    }
    let group = child.id().and_then(|p| i32::try_from(p).ok());
    let ended = tokio::select! {
        exit = child.wait() => (exit, false),
        () = stop.notified() => {
            signal(group, nix::sys::signal::Signal::SIGTERM);
            match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                Ok(exit) => (exit, true),
                Err(_) => {
                    signal(group, nix::sys::signal::Signal::SIGKILL);
                    (child.wait().await, true)
                }
            }
        }
    };
    // Whatever the process left behind in its group goes with it.
    signal(group, nix::sys::signal::Signal::SIGKILL);
    let (exit, stopped) = ended;
    let ended = match exit {
        Ok(s) => Ended {
            ok: s.success(),
            how: s.to_string(),
        },
        Err(e) => Ended {
            ok: false,
            how: format!("wait failed: {e}"),
        },
    };
    (ended, stopped)
}

/// Runs one sandboxed replica to its end, as [`supervise`] does a process:
/// its output goes to the log line by line, a stop request sends SIGTERM to
/// its process, then SIGKILL after the grace period. Returns once its sandbox
/// is torn down, its usage metered as `agent`'s.
async fn supervise_sandboxed(
    k: &Kernel,
    mut svc: strata_compute::Service,
    stop: Arc<Notify>,
    logs: Arc<Mutex<VecDeque<LogLine>>>,
    i: u32,
    agent: &Principal,
) -> (Ended, bool) {
    let mut lines = Lines::default();
    let mut stopped = false;
    let mut kill_at: Option<tokio::time::Instant> = None;
    loop {
        let grace = async {
            match kill_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = svc.next() => {
                let emit = |stream: &str, line: String| push_line(&logs, i, k.now_ms(), stream, line);
                match ev {
                    Some(strata_compute::ServiceEvent::Output(c)) => lines.push(&c, emit),
                    Some(strata_compute::ServiceEvent::Ended(out)) => {
                        lines.flush(emit);
                        let ended = match out {
                            Ok(o) => {
                                k.meter_sandbox(agent, &o.usage);
                                ended_of(&o)
                            }
                            Err(e) => Ended { ok: false, how: format!("sandbox failed: {}", e.detail) },
                        };
                        return (ended, stopped);
                    }
                    None => {
                        let how = "the sandbox's supervisor ended".to_string();
                        return (Ended { ok: false, how }, stopped);
                    }
                }
            }
            () = stop.notified(), if !stopped => {
                stopped = true;
                svc.terminate();
                kill_at = Some(tokio::time::Instant::now() + STOP_GRACE);
            }
            () = grace => {
                svc.kill();
                kill_at = None;
            }
        }
    }
}

/// How a sandboxed command's outcome reads in `last_exit` (as a process's
/// exit status would).
fn ended_of(o: &strata_compute::RunOutcome) -> Ended {
    use strata_compute::Status;
    let signal = |n: i32| match nix::sys::signal::Signal::try_from(n) {
        Ok(s) => format!("signal: {n} ({})", s.as_str()),
        Err(_) => format!("signal: {n}"),
    };
    let how = match (o.status, o.exit_code, o.signal) {
        (Status::ExecFailed, ..) => {
            format!("could not start: {}", o.error.as_deref().unwrap_or("exec failed"))
        }
        (Status::Oom, ..) => "killed: out of the sandbox's memory".to_string(),
        (_, _, Some(n)) => signal(n),
        (_, Some(c), None) => format!("exit status: {c}"),
        (s, None, None) => format!("{s:?}").to_lowercase(),
    };
    Ended {
        ok: o.status == strata_compute::Status::Exited && o.exit_code == Some(0),
        how,
    }
}

/// The longest line kept whole; a longer one is cut into pieces.
const MAX_LINE: usize = 64 * 1024;

/// Splits a sandbox's output chunks into lines, per stream.
#[derive(Default)]
struct Lines {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Lines {
    fn push(&mut self, c: &strata_compute::Chunk, mut emit: impl FnMut(&str, String)) {
        let (buf, name) = match c.stream {
            strata_compute::Stream::Stdout => (&mut self.stdout, "stdout"),
            strata_compute::Stream::Stderr => (&mut self.stderr, "stderr"),
        };
        buf.extend_from_slice(&c.data);
        while let Some(n) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=n).collect();
            emit(name, text_of(&line[..n]));
        }
        if buf.len() > MAX_LINE {
            emit(name, text_of(buf));
            buf.clear();
        }
    }

    /// Emits what is left of unfinished lines.
    fn flush(&mut self, mut emit: impl FnMut(&str, String)) {
        for (buf, name) in [(&mut self.stdout, "stdout"), (&mut self.stderr, "stderr")] {
            if !buf.is_empty() {
                emit(name, text_of(buf));
                buf.clear();
            }
        }
    }
}

fn text_of(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

fn signal(group: Option<i32>, sig: nix::sys::signal::Signal) {
    if let Some(pid) = group {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), sig);
    }
}

fn str_of(v: &Value, field: &str) -> Result<String> {
    v[field]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::internal(format!("reply lacks '{field}'")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(stream: strata_compute::Stream, data: &str) -> strata_compute::Chunk {
        strata_compute::Chunk {
            stream,
            data: data.as_bytes().to_vec(),
        }
    }

    #[test]
    fn output_chunks_become_lines_per_stream() {
        use strata_compute::Stream::{Stderr, Stdout};
        let mut lines = Lines::default();
        let mut got = Vec::new();
        let mut emit = |s: &str, l: String| got.push(format!("{s}:{l}"));
        lines.push(&chunk(Stdout, "hel"), &mut emit);
        lines.push(&chunk(Stderr, "oops\r\nhalf"), &mut emit);
        lines.push(&chunk(Stdout, "lo\n\nwor"), &mut emit);
        lines.flush(&mut emit);
        assert_eq!(
            got,
            [
                "stderr:oops",
                "stdout:hello",
                "stdout:",
                "stdout:wor",
                "stderr:half"
            ]
        );
    }

    #[test]
    fn an_endless_line_is_cut_instead_of_growing() {
        let mut lines = Lines::default();
        let mut got = Vec::new();
        let long = "x".repeat(MAX_LINE + 1);
        lines.push(&chunk(strata_compute::Stream::Stdout, &long), |_, l| {
            got.push(l.len())
        });
        assert_eq!(got, [MAX_LINE + 1]);
        assert!(lines.stdout.is_empty());
    }

    fn deployment(json: Value) -> Deployment {
        serde_json::from_value(json).expect("a deployment")
    }

    #[test]
    fn a_replica_sandbox_binds_its_workdir_and_an_outside_command_folder() {
        let d = deployment(json!({
            "name": "a", "command": "/opt/agents/run.sh", "args": ["x"],
            "workdir": "/srv/a", "sandbox": {"binds": ["/data/ro"], "network": "none"},
        }));
        let sb = d.sandbox().expect("sandboxed");
        let req = service_request(&d, &sb, BTreeMap::new()).expect("a request");
        assert_eq!(req.command, ["/opt/agents/run.sh", "x"]);
        assert_eq!(req.cwd.as_deref(), Some("/srv/a"));
        let binds: Vec<&str> = req.ro_binds.iter().filter_map(|p| p.to_str()).collect();
        assert_eq!(binds, ["/srv/a", "/opt/agents", "/data/ro"]);
        assert_eq!(req.network, strata_compute::Network::None);

        // A command inside the workdir (or looked up in PATH) adds nothing.
        let d = deployment(json!({"name": "b", "command": "./bin/run", "workdir": "/srv/b"}));
        let req = service_request(&d, &d.sandbox().expect("sandboxed"), BTreeMap::new()).expect("a request");
        assert_eq!(req.ro_binds, [std::path::PathBuf::from("/srv/b")]);
        assert_eq!(req.network, strata_compute::Network::HostEgress);
        let d = deployment(json!({"name": "c", "command": "python3", "workdir": "/srv/c"}));
        let req = service_request(&d, &d.sandbox().expect("sandboxed"), BTreeMap::new()).expect("a request");
        assert_eq!(req.ro_binds, [std::path::PathBuf::from("/srv/c")]);
    }

    #[test]
    fn sandbox_limits_with_an_unknown_field_are_refused() {
        let d = deployment(json!({"name": "a", "command": "sh", "sandbox": {"limits": {"memory": 1}}}));
        let e = sandbox_limits(&d.sandbox().expect("sandboxed")).expect_err("refused");
        assert_eq!(e.code, strata_core::ErrorCode::InvalidRequest);
        let d = deployment(json!({"name": "a", "command": "sh", "sandbox": {"limits": {"pids": 9}}}));
        let l = sandbox_limits(&d.sandbox().expect("sandboxed")).expect("read");
        assert_eq!(l.pids, Some(9));
    }

    #[test]
    fn a_sandboxed_exit_reads_like_a_process_exit() {
        let outcome = |status, exit_code, signal| strata_compute::RunOutcome {
            status,
            exit_code,
            signal,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            error: Some("nope: not found".into()),
            usage: Default::default(),
        };
        use strata_compute::Status;
        let e = ended_of(&outcome(Status::Exited, Some(0), None));
        assert!(e.ok);
        assert_eq!(e.how, "exit status: 0");
        let e = ended_of(&outcome(Status::Exited, Some(3), None));
        assert!(!e.ok);
        assert_eq!(e.how, "exit status: 3");
        let e = ended_of(&outcome(Status::Killed, None, Some(9)));
        assert_eq!(e.how, "signal: 9 (SIGKILL)");
        let e = ended_of(&outcome(Status::ExecFailed, Some(127), None));
        assert_eq!(e.how, "could not start: nope: not found");
        assert!(!e.ok);
    }
}
