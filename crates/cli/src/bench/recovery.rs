//! `strata bench recovery`: what a crash costs.
//!
//! The server runs as a `strata serve` child process on a fresh data folder
//! (SQLite, or a schema of its own in the `--database` PostgreSQL), so it can be
//! SIGKILLed. Submitters offer `--rate` tasks/s; two groups of agents in this
//! process lease them with `--lease-ms` leases, heartbeat every 500 ms and "work"
//! 100–900 ms on each, so hundreds of tasks are held at any time. After
//! `--before`, the **doomed** agents die (they abandon their leases) at the moment
//! the server is killed with SIGKILL; it is restarted at once on the same data and
//! port. Submitters and the **survivor** agents retry through the outage and carry
//! on. Once every acknowledged task has finished, the attempt histories give:
//!
//! - **ready**: restart (process spawn) → first 200 from `/readyz` (target ≤ 1 s);
//! - **re-dispatch**: restart → next lease of each task a doomed agent held (≤ 5 s);
//! - **dead agent**: death → next lease of those tasks, i.e. their leases expired
//!   for want of heartbeats and the work moved on (≤ 3 s);
//! - **lost**: submissions acknowledged with 201 that did not succeed (must be 0);
//! - **completed twice**: tasks with two succeeded attempts or two accepted
//!   completions (must be 0; a 409 to a stale holder is the system working).
//!
//! The exit code is non-zero when a task is lost or completed twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::{Connection, Executor};

use super::quantile_ms;

/// Arguments of `strata bench recovery`.
#[derive(Args, Debug)]
pub(crate) struct RecoveryArgs {
    /// Offered load, tasks/s.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Survivor agents: they retry through the outage and keep working after it.
    #[arg(long, default_value_t = 4)]
    agents: usize,
    /// Doomed agents: they die with the server and never come back.
    #[arg(long, default_value_t = 4)]
    doomed: usize,
    /// Lease length in ms; holders heartbeat every 500 ms.
    #[arg(long, default_value_t = 2000)]
    lease_ms: u64,
    /// Load before the kill.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    before: Duration,
    /// Use PostgreSQL (postgres://…); the run gets a schema of its own, dropped at the end.
    #[arg(long)]
    database: Option<String>,
    /// Print results as JSON.
    #[arg(long)]
    json: bool,
}

/// How often a holder heartbeats.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// Simulated work per task, ms: long enough that hundreds are held and many heartbeat.
const WORK_MS: std::ops::Range<u64> = 100..900;
/// The most tasks one agent holds at once.
const CAPACITY: usize = 250;
/// Pause before retrying a request that found no server.
const RETRY: Duration = Duration::from_millis(50);
/// Submitting goes on this long after the restarted server is ready.
const AFTER: Duration = Duration::from_secs(2);
/// How long acknowledged tasks get to finish after the restart.
const DRAIN: Duration = Duration::from_secs(60);
/// Attempts per task. Expired leases count, and this measures durability, not
/// the retry policy, so a task touched by a few lost leases must not dead-letter.
const MAX_ATTEMPTS: u32 = 10;

/// What submitters and agents share.
struct Shared {
    http: reqwest::Client,
    url: String,
    admin: String,
    capability: String,
    lease_ms: u64,
    /// Set when the doomed agents die, with the server.
    dead: AtomicBool,
    /// Set when survivors stop leasing, at the end.
    stop: AtomicBool,
    /// Tasks held by agents now.
    held: AtomicUsize,
    /// Heartbeats and completions refused with 409 (lease lost, task finished).
    refused: AtomicU64,
    /// Completions accepted, per task.
    completed: Mutex<HashMap<String, u32>>,
    /// Task ids whose submission got a 201.
    acknowledged: Mutex<Vec<String>>,
}

impl Shared {
    /// POSTs `body` as `token`: the status and body, or `None` when no reply came.
    async fn post(&self, path: &str, token: &str, body: &Value) -> Option<(u16, Value)> {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.json().await.ok()?))
    }

    async fn submit(&self) {
        let body = json!({"capability": self.capability, "input": {}, "max_attempts": MAX_ATTEMPTS});
        if let Some((201, v)) = self.post("/v1/tasks", &self.admin, &body).await
            && let (Some(id), Ok(mut ack)) = (v["id"].as_str(), self.acknowledged.lock())
        {
            ack.push(id.to_string());
        }
    }

    /// Whether no task of the capability is queued or leased.
    async fn idle(&self) -> bool {
        for state in ["queued", "leased"] {
            let r = self
                .http
                .get(format!("{}/v1/tasks", self.url))
                .query(&[
                    ("capability", self.capability.as_str()),
                    ("state", state),
                    ("limit", "1"),
                ])
                .bearer_auth(&self.admin)
                .send()
                .await;
            let Ok(r) = r else { return false };
            let v: Value = r.json().await.unwrap_or(Value::Null);
            if v["items"].as_array().is_none_or(|items| !items.is_empty()) {
                return false;
            }
        }
        true
    }

    /// Task `id` with its history; `state` is `missing` when the server does not
    /// know it, and `None` means no answer.
    async fn task(&self, id: String) -> (String, Option<Value>) {
        let r = self
            .http
            .get(format!("{}/v1/tasks/{id}", self.url))
            .bearer_auth(&self.admin)
            .send()
            .await;
        let v = match r {
            Ok(r) if r.status().as_u16() == 404 => Some(json!({"state": "missing"})),
            Ok(r) if r.status().is_success() => r.json().await.ok(),
            _ => None,
        };
        (id, v)
    }

    fn acknowledged(&self) -> Vec<String> {
        self.acknowledged.lock().map(|a| a.clone()).unwrap_or_default()
    }

    fn completions(&self) -> u64 {
        self.completed
            .lock()
            .map(|c| c.values().map(|n| u64::from(*n)).sum())
            .unwrap_or(0)
    }
}

/// Offers `rate` tasks/s until `stop`; each submission is tried once.
async fn offer(s: Arc<Shared>, rate: u64, stop: Arc<AtomicBool>) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut offered = 0u64;
    let mut inflight = tokio::task::JoinSet::new();
    while !stop.load(Relaxed) {
        tick.tick().await;
        while inflight.try_join_next().is_some() {}
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while offered < due {
            offered += 1;
            let s = s.clone();
            inflight.spawn(async move { s.submit().await });
        }
    }
    inflight.join_all().await;
}

/// One agent: leases while it has room and spawns a holder per task.
async fn agent(s: Arc<Shared>, token: String, doomed: bool) {
    let mine = Arc::new(AtomicUsize::new(0));
    let gone = |s: &Shared| s.stop.load(Relaxed) || (doomed && s.dead.load(Relaxed));
    while !gone(&s) {
        let room = CAPACITY.saturating_sub(mine.load(Relaxed)).min(100);
        if room == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let body = json!({"wait_ms": 500, "max": room, "lease_ms": s.lease_ms});
        let v = match s.post("/v1/tasks/lease", &token, &body).await {
            Some((200, v)) if !gone(&s) => v,
            _ => {
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        for t in v["tasks"].as_array().into_iter().flatten() {
            let (Some(id), Some(lease)) = (t["id"].as_str(), t["lease_id"].as_str()) else {
                continue;
            };
            mine.fetch_add(1, Relaxed);
            s.held.fetch_add(1, Relaxed);
            let (s, token, mine) = (s.clone(), token.clone(), mine.clone());
            let (id, lease) = (id.to_string(), lease.to_string());
            tokio::spawn(async move {
                hold(&s, &token, &id, &lease, doomed).await;
                mine.fetch_sub(1, Relaxed);
                s.held.fetch_sub(1, Relaxed);
            });
        }
    }
}

/// Works on one leased task: heartbeats while the work lasts, then completes,
/// retrying through the outage. A doomed holder stops dead when its agent dies.
async fn hold(s: &Shared, token: &str, id: &str, lease: &str, doomed: bool) {
    let work = Duration::from_millis(work_ms(id));
    let start = Instant::now();
    loop {
        tokio::time::sleep(work.saturating_sub(start.elapsed()).min(HEARTBEAT)).await;
        let done = start.elapsed() >= work;
        let (path, body) = if done {
            (
                format!("/v1/tasks/{id}/complete"),
                json!({"lease_id": lease, "result": {}}),
            )
        } else {
            (
                format!("/v1/tasks/{id}/heartbeat"),
                json!({"lease_id": lease, "lease_ms": s.lease_ms}),
            )
        };
        let status = loop {
            if doomed && s.dead.load(Relaxed) {
                return;
            }
            match s.post(&path, token, &body).await {
                Some((status, _)) if status < 500 => break status,
                _ => tokio::time::sleep(RETRY).await,
            }
        };
        match status {
            200..=299 if done => {
                if let Ok(mut c) = s.completed.lock() {
                    *c.entry(id.to_string()).or_default() += 1;
                }
                return;
            }
            200..=299 => {}
            409 => {
                s.refused.fetch_add(1, Relaxed);
                return;
            }
            _ => return,
        }
    }
}

/// How long task `id` takes, spread over [`WORK_MS`].
fn work_ms(id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    WORK_MS.start + h.finish() % (WORK_MS.end - WORK_MS.start)
}

/// The `strata serve` child process, killed and restarted on the same data and port.
struct Server {
    exe: PathBuf,
    data_dir: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    url: String,
    child: Option<tokio::process::Child>,
}

impl Server {
    fn new(dir: &Path, database: Option<&str>) -> anyhow::Result<Server> {
        // A free port, kept across the restart so clients find the server again.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let data_dir = dir.join("strata-data");
        let mut args = vec![
            "serve".to_string(),
            "--data-dir".to_string(),
            data_dir.display().to_string(),
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
        ];
        if let Some(db) = database {
            args.extend(["--database".to_string(), db.to_string()]);
        }
        Ok(Server {
            exe: std::env::current_exe().context("cannot find the strata binary")?,
            data_dir,
            args,
            log: dir.join("server.log"),
            url: format!("http://127.0.0.1:{port}"),
            child: None,
        })
    }

    fn admin_token(&self) -> anyhow::Result<String> {
        let path = self.data_dir.join("admin.token");
        let token =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(token.trim().to_string())
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = tokio::process::Command::new(&self.exe)
            .args(&self.args)
            .env_remove("STRATA_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the server")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, and reap.
    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// Waits for the first 200 from `/readyz`.
    async fn ready(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = &mut self.child
                && let Some(status) = c.try_wait()?
            {
                bail!("the server exited ({status}):\n{}", self.log_tail());
            }
            let r = http
                .get(format!("{}/readyz", self.url))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if r.is_ok_and(|r| r.status().as_u16() == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the server was not ready after 30 s:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// A schema of its own in the PostgreSQL database `base`: the run starts empty
/// (the admin token file is only written for a new database) and leaves nothing.
async fn create_schema(base: &str) -> anyhow::Result<(String, String)> {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(base)
        .await
        .context("cannot connect to --database")?;
    let id = strata_core::Id::new("run").to_string();
    let schema = format!("strata_bench_{}", &id[4..]);
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .await?;
    let sep = if base.contains('?') { '&' } else { '?' };
    Ok((format!("{base}{sep}options=-c%20search_path%3D{schema}"), schema))
}

async fn drop_schema(base: &str, schema: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::AnyConnection::connect(base).await?;
    conn.execute(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .await?;
    Ok(())
}

pub(crate) async fn run(args: RecoveryArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let schema = match &args.database {
        Some(base) => Some(create_schema(base).await?),
        None => None,
    };
    let mut server = Server::new(dir.path(), schema.as_ref().map(|(url, _)| url.as_str()))?;
    let result = measure(&args, &mut server).await;
    server.kill().await;
    if let (Some(base), Some((_, name))) = (&args.database, &schema)
        && let Err(e) = drop_schema(base, name).await
    {
        eprintln!("warning: cannot drop schema {name}: {e:#}");
    }
    result
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A server timestamp (RFC 3339) in Unix ms.
fn server_ms(v: &Value) -> Option<i64> {
    v.as_str()
        .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
        .map(unix_ms)
}

async fn measure(args: &RecoveryArgs, server: &mut Server) -> anyhow::Result<ExitCode> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(10))
        .build()?;
    server.spawn()?;
    server.ready(&http).await?;
    let run_id = strata_core::Id::new("run").to_string();
    let s = Arc::new(Shared {
        http: http.clone(),
        url: server.url.clone(),
        admin: server.admin_token()?,
        capability: format!("recovery-{}", &run_id[4..16]),
        lease_ms: args.lease_ms,
        dead: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        held: AtomicUsize::new(0),
        refused: AtomicU64::new(0),
        completed: Mutex::default(),
        acknowledged: Mutex::default(),
    });
    let mut doomed_ids = HashSet::new();
    let mut agents = Vec::new();
    for i in 0..args.agents + args.doomed {
        let doomed = i >= args.agents;
        let (status, v) = s
            .post(
                "/v1/agents",
                &s.admin,
                &json!({"name": format!("{}-agent-{i}", s.capability), "capabilities": [{"name": s.capability}]}),
            )
            .await
            .context("cannot create an agent")?;
        let (Some(id), Some(token), 201) = (v["id"].as_str(), v["token"].as_str(), status) else {
            bail!("cannot create an agent ({status}): {v}");
        };
        if doomed {
            doomed_ids.insert(id.to_string());
        }
        agents.push(tokio::spawn(agent(s.clone(), token.to_string(), doomed)));
    }
    let t0 = Instant::now();
    let progress = |what: &str| {
        eprintln!(
            "  {:>5.1} s  {what:<10}  acknowledged {:>6}  held {:>4}  completed {:>6}",
            t0.elapsed().as_secs_f64(),
            s.acknowledged().len(),
            s.held.load(Relaxed),
            s.completions()
        );
    };
    eprintln!(
        "bench recovery: {} tasks/s offered, {} survivor and {} doomed agents, {} ms leases, server {}",
        args.rate, args.agents, args.doomed, args.lease_ms, server.url
    );

    let stop_offering = Arc::new(AtomicBool::new(false));
    let submitter = tokio::spawn(offer(s.clone(), args.rate, stop_offering.clone()));
    while t0.elapsed() < args.before {
        tokio::time::sleep(Duration::from_secs(1).min(args.before.saturating_sub(t0.elapsed()))).await;
        progress("load");
    }

    // The crash: doomed agents and the server die together.
    let in_flight = s.held.load(Relaxed);
    let acknowledged_before = s.acknowledged().len();
    s.dead.store(true, Relaxed);
    let death = SystemTime::now();
    server.kill().await;
    progress("killed");
    let restart = SystemTime::now();
    let spawned = Instant::now();
    server.spawn()?;
    server.ready(&http).await?;
    let ready_ms = spawned.elapsed().as_secs_f64() * 1000.0;
    progress("ready");
    let resumed = Instant::now();
    while resumed.elapsed() < AFTER {
        tokio::time::sleep(Duration::from_millis(500)).await;
        progress("recovering");
    }
    stop_offering.store(true, Relaxed);
    let _ = submitter.await;

    // Wait for every acknowledged task to finish: cheap checks until none of the
    // capability is queued or leased, so reads do not slow recovery down, then
    // each acknowledged task, read once (again if it was still moving).
    let acknowledged = s.acknowledged();
    let mut pending = acknowledged.clone();
    let mut tasks: HashMap<String, Value> = HashMap::new();
    let drain = Instant::now();
    while !pending.is_empty() {
        let timed_out = drain.elapsed() > DRAIN;
        if !timed_out && !s.idle().await {
            progress("draining");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let fetched: Vec<(String, Option<Value>)> = futures::stream::iter(pending)
            .map(|id| s.task(id))
            .buffer_unordered(32)
            .collect()
            .await;
        pending = Vec::new();
        for (id, v) in fetched {
            match v {
                Some(v) if timed_out || !matches!(v["state"].as_str(), Some("queued" | "leased")) => {
                    tasks.insert(id, v);
                }
                _ => pending.push(id),
            }
        }
        if timed_out {
            break;
        }
    }
    progress("drained");
    s.stop.store(true, Relaxed);
    for a in agents {
        let _ = a.await;
    }

    let completed = s.completed.lock().map(|c| c.clone()).unwrap_or_default();
    let (death_ms, restart_ms) = (unix_ms(death), unix_ms(restart));
    let f = Figures::new(
        &acknowledged,
        &tasks,
        &completed,
        &doomed_ids,
        death_ms,
        restart_ms,
    );
    let lost: u64 = f.lost.values().sum();
    let result = json!({
        "database": if args.database.is_some() { "postgres" } else { "sqlite" },
        "offered_rate": args.rate,
        "survivor_agents": args.agents,
        "doomed_agents": args.doomed,
        "lease_ms": args.lease_ms,
        "acknowledged_before_kill": acknowledged_before,
        "acknowledged_per_sec_before_kill": (acknowledged_before as f64 / args.before.as_secs_f64()).round(),
        "in_flight_at_kill": in_flight,
        "ready_after_restart_ms": ready_ms.round() as u64,
        "orphaned": f.orphaned,
        "orphaned_not_redispatched": f.stranded,
        "p50_restart_to_redispatch_ms": quantile_ms(&f.from_restart, 0.5),
        "max_restart_to_redispatch_ms": quantile_ms(&f.from_restart, 1.0),
        "p50_death_to_redispatch_ms": quantile_ms(&f.from_death, 0.5),
        "max_death_to_redispatch_ms": quantile_ms(&f.from_death, 1.0),
        "p50_death_to_lease_expiry_ms": quantile_ms(&f.to_expiry, 0.5),
        "max_death_to_lease_expiry_ms": quantile_ms(&f.to_expiry, 1.0),
        "live_leases_expired": f.live_expired,
        "refused_409": s.refused.load(Relaxed),
        "acknowledged": acknowledged.len(),
        "lost": lost,
        "lost_by_state": f.lost,
        "completed_twice": f.twice,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_table(&result);
    }
    Ok(if lost == 0 && f.twice == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What the attempt histories say about the crash.
#[derive(Default)]
struct Figures {
    /// Leases the doomed agents held when they died.
    orphaned: u64,
    /// Orphaned leases whose task was never leased again.
    stranded: u64,
    /// Leases of live agents that expired anyway (a slow heartbeat or completion).
    live_expired: u64,
    /// Tasks completed more than once.
    twice: u64,
    /// Acknowledged tasks that did not succeed, by state.
    lost: BTreeMap<String, u64>,
    /// Restart → next lease of each orphaned task, µs, sorted.
    from_restart: Vec<u64>,
    /// Death → next lease of each orphaned task, µs, sorted.
    from_death: Vec<u64>,
    /// Death → expiry of each orphaned lease, µs, sorted.
    to_expiry: Vec<u64>,
}

impl Figures {
    fn new(
        acknowledged: &[String],
        tasks: &HashMap<String, Value>,
        completed: &HashMap<String, u32>,
        doomed: &HashSet<String>,
        death_ms: i64,
        restart_ms: i64,
    ) -> Figures {
        let us = |ms: i64| (ms.max(0) * 1000) as u64;
        let mut f = Figures::default();
        for id in acknowledged {
            let Some(t) = tasks.get(id) else {
                *f.lost.entry("unfinished".into()).or_default() += 1;
                continue;
            };
            let state = t["state"].as_str().unwrap_or("unknown");
            if state != "succeeded" {
                *f.lost.entry(state.into()).or_default() += 1;
            }
            let history = t["history"].as_array().map(Vec::as_slice).unwrap_or_default();
            let succeeded = history.iter().filter(|a| a["outcome"] == "succeeded").count();
            if succeeded > 1 || completed.get(id).is_some_and(|n| *n > 1) {
                f.twice += 1;
            }
            for (i, a) in history.iter().enumerate() {
                let by_doomed = a["agent_id"].as_str().is_some_and(|a| doomed.contains(a));
                let ended = server_ms(&a["ended_at"]);
                // Orphaned: a doomed agent's lease still open when it died.
                if by_doomed && a["outcome"] != "succeeded" && ended.is_none_or(|at| at >= death_ms) {
                    f.orphaned += 1;
                    f.to_expiry.extend(ended.map(|at| us(at - death_ms)));
                    match history.get(i + 1).and_then(|n| server_ms(&n["started_at"])) {
                        Some(at) => {
                            f.from_restart.push(us(at - restart_ms));
                            f.from_death.push(us(at - death_ms));
                        }
                        None => f.stranded += 1,
                    }
                } else if !by_doomed && a["outcome"] == "expired" {
                    f.live_expired += 1;
                }
            }
        }
        for xs in [&mut f.from_restart, &mut f.from_death, &mut f.to_expiry] {
            xs.sort_unstable();
        }
        f
    }
}

/// The results table: a label, the keys shown, and the most the last one may be.
const TABLE: &[(&str, &[&str], Option<f64>)] = &[
    ("offered load, tasks/s", &["offered_rate"], None),
    (
        "acknowledged before the kill",
        &["acknowledged_before_kill"],
        None,
    ),
    ("  per second", &["acknowledged_per_sec_before_kill"], None),
    (
        "in flight at the kill (held by agents)",
        &["in_flight_at_kill"],
        None,
    ),
    (
        "ready after restart (spawn → /readyz 200), ms",
        &["ready_after_restart_ms"],
        Some(1000.0),
    ),
    ("orphaned (held by doomed agents)", &["orphaned"], None),
    ("  not re-dispatched", &["orphaned_not_redispatched"], Some(0.0)),
    (
        "  restart → re-lease, p50 / max, ms",
        &["p50_restart_to_redispatch_ms", "max_restart_to_redispatch_ms"],
        Some(5000.0),
    ),
    (
        "dead agent: death → lease expiry, p50 / max, ms",
        &["p50_death_to_lease_expiry_ms", "max_death_to_lease_expiry_ms"],
        None,
    ),
    (
        "dead agent: death → re-lease, p50 / max, ms",
        &["p50_death_to_redispatch_ms", "max_death_to_redispatch_ms"],
        Some(3000.0),
    ),
    (
        "leases of live agents that expired",
        &["live_leases_expired"],
        None,
    ),
    ("heartbeats/completions refused (409)", &["refused_409"], None),
    ("acknowledged tasks", &["acknowledged"], None),
    ("  lost (acknowledged, not succeeded)", &["lost"], Some(0.0)),
    ("  completed twice", &["completed_twice"], Some(0.0)),
];

/// Prints the results as a table, each target met or missed.
fn print_table(r: &Value) {
    println!("{:<48} {:>15} {:>8}", "measure", "value", "target");
    for (label, keys, most) in TABLE {
        let value: Vec<String> = keys.iter().map(|k| r[*k].to_string()).collect();
        let last = keys.last().map_or(&Value::Null, |k| &r[*k]);
        let (target, verdict) = match most {
            Some(m) if last.as_f64().is_some_and(|v| v <= *m) => (format!("≤ {m}"), "ok"),
            Some(m) => (format!("≤ {m}"), "MISSED"),
            None => (String::new(), ""),
        };
        println!("{label:<48} {:>15} {target:>8}  {verdict}", value.join(" / "));
    }
    if r["lost"] != 0 {
        println!("lost by state: {}", r["lost_by_state"]);
    }
}
