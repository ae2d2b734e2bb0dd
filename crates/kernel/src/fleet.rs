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
//! Processes run in their own process group and, where `setpriv` exists, die
//! with the server. Each replica's last 500 output lines are kept for
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
use strata_orchestrator::fleet::{Applied, Deployment, Restart};
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
    /// Its process id, while running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
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
                    d.message = Some(e.to_string());
                    if let Some(r) = d.replicas.get_mut(&i) {
                        r.note(i, now, format!("cannot start: {e}"));
                        r.last_exit = Some(format!("start failed: {}", e.detail));
                        after_exit(r, spec.restart, false, now);
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
        let mut cmd = match setpriv() {
            Some(sp) => {
                let mut c = Command::new(sp);
                c.args(["--pdeathsig", "KILL", "--"]).arg(&spec.command);
                c
            }
            None => Command::new(&spec.command),
        };
        cmd.args(&spec.args)
            .envs(&spec.env)
            .env("STRATA_URL", url)
            .env("STRATA_TOKEN", &token)
            .env("STRATA_AGENT_ID", &agent_id)
            .env("STRATA_AGENT_NAME", format!("{}-{i}", spec.name))
            .env("STRATA_REPLICA", i.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(w) = &spec.workdir {
            cmd.current_dir(w);
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::invalid("command", format!("cannot run '{}': {e}", spec.command)))?;
        let now = self.now_ms();
        self.orchestrator().presence().forget(&agent_id);
        let (stop, logs) = {
            let mut state = self.fleet().lock();
            let d = state.entry(spec.name.clone()).or_default();
            d.message = None;
            let r = d.replicas.entry(i).or_insert_with(|| Replica::new(generation));
            r.agent_id = Some(agent_id);
            r.token_id = Some(token_id);
            r.generation = generation;
            r.pid = child.id();
            r.phase = Phase::Running;
            r.started_at = Some(now);
            r.stopping = false;
            r.stop = Arc::new(Notify::new());
            r.note(i, now, format!("started pid {}", child.id().unwrap_or(0)));
            (r.stop.clone(), r.logs.clone())
        };
        let k = self.clone();
        let (name, restart) = (spec.name.clone(), spec.restart);
        tokio::spawn(async move {
            let (exit, stopped) = supervise(&k, child, stop, logs, i).await;
            let now = k.now_ms();
            let mut state = k.fleet().lock();
            let Some(r) = state.get_mut(&name).and_then(|d| d.replicas.get_mut(&i)) else {
                return;
            };
            r.pid = None;
            r.stopping = false;
            let ok = exit.as_ref().is_ok_and(|s| s.success());
            let how = match &exit {
                Ok(s) => s.to_string(),
                Err(e) => format!("wait failed: {e}"),
            };
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
) -> (std::io::Result<std::process::ExitStatus>, bool) {
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
    ended
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
