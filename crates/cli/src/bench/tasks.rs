//! `strata bench tasks`: no-op tasks through submit → lease → complete.
//!
//! Phases, each on the same server:
//! 1. **burn-down** — N tasks are submitted first (the submit rate is reported),
//!    then the agents drain the queue: completed tasks/s.
//! 2. **sustained** — submitters and agents run together for `--duration`:
//!    completed tasks/s.
//! 3. **latency** — tasks are offered at `--rate`/s for `--duration` while agents
//!    long-poll; p50/p90/p99/p99.9/max of submit (request sent) → lease (reply
//!    received).
//!
//! Every transition is a durable syscall over HTTP with its own audit entry.
//! With `--batch N` (default 32) submitters send N tasks per `task.submit_many`,
//! leases take up to N tasks and agents finish them with one `task.complete_many`;
//! `--batch 1` uses `task.submit`, `task.lease` and `task.complete` one task at a
//! time. The latency phase always submits one task per call.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

use super::{Target, quantile_ms};
use crate::client::Client;

/// Arguments of `strata bench tasks`.
#[derive(Args, Debug)]
pub(crate) struct TasksArgs {
    /// Agents leasing and completing tasks.
    #[arg(long, default_value_t = 8)]
    agents: usize,
    /// Tasks in the burn-down phase.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Tasks per submit, lease and complete call (1: the one-task calls).
    #[arg(long, default_value_t = 32)]
    batch: u32,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 8)]
    submitters: usize,
    /// Offered load of the latency phase, tasks/s.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Length of the sustained and latency phases.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[command(flatten)]
    target: super::TargetArgs,
}

#[derive(Clone)]
struct Bench {
    http: reqwest::Client,
    url: String,
    admin: String,
    capability: String,
}

impl Bench {
    async fn submit(&self) -> Option<String> {
        let r = self
            .http
            .post(format!("{}/v1/tasks", self.url))
            .bearer_auth(&self.admin)
            .json(&json!({"capability": self.capability, "input": {}}))
            .send()
            .await
            .ok()?;
        if r.status().as_u16() != 201 {
            return None;
        }
        let v: Value = r.json().await.ok()?;
        v["id"].as_str().map(str::to_string)
    }

    /// Submits `n` tasks in one `task.submit_many`; returns how many were queued.
    async fn submit_many(&self, n: usize) -> usize {
        let tasks: Vec<Value> = (0..n)
            .map(|_| json!({"capability": self.capability, "input": {}}))
            .collect();
        let Ok(r) = self
            .http
            .post(format!("{}/v1/tasks/batch", self.url))
            .bearer_auth(&self.admin)
            .json(&json!({ "tasks": tasks }))
            .send()
            .await
        else {
            return 0;
        };
        if r.status().as_u16() != 201 {
            return 0;
        }
        r.json::<Value>()
            .await
            .ok()
            .and_then(|v| v["tasks"].as_array().map(Vec::len))
            .unwrap_or(0)
    }

    /// Submits up to `batch` tasks (one call); returns how many were queued.
    async fn submit_some(&self, batch: usize) -> usize {
        if batch <= 1 {
            usize::from(self.submit().await.is_some())
        } else {
            self.submit_many(batch).await
        }
    }

    /// Completes `tasks` (as leased) in one `task.complete_many`, or one call each
    /// with `batch` 1; returns how many succeeded.
    async fn complete(&self, token: &str, tasks: &[Value], batch: u32) -> usize {
        if tasks.is_empty() {
            return 0;
        }
        if batch > 1 {
            let items: Vec<Value> = tasks
                .iter()
                .map(|t| json!({"id": t["id"], "lease_id": t["lease_id"], "result": {}}))
                .collect();
            let Ok(r) = self
                .http
                .post(format!("{}/v1/tasks/complete", self.url))
                .bearer_auth(token)
                .json(&json!({ "completions": items }))
                .send()
                .await
            else {
                return 0;
            };
            return r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["completed"].as_u64())
                .unwrap_or(0) as usize;
        }
        let completes = tasks.iter().map(|t| {
            let req = self
                .http
                .post(format!(
                    "{}/v1/tasks/{}/complete",
                    self.url,
                    t["id"].as_str().unwrap_or_default()
                ))
                .bearer_auth(token)
                .json(&json!({"lease_id": t["lease_id"], "result": {}}));
            async move {
                req.send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .is_some()
            }
        });
        futures::future::join_all(completes)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count()
    }

    /// One agent: lease, complete each task, until `stop`.
    async fn work(
        self,
        token: String,
        batch: u32,
        wait_ms: u64,
        stop: Arc<AtomicBool>,
        done: Arc<AtomicU64>,
        leased: Arc<Mutex<Vec<(String, Instant)>>>,
    ) {
        while !stop.load(Ordering::Relaxed) {
            let Ok(r) = self
                .http
                .post(format!("{}/v1/tasks/lease", self.url))
                .bearer_auth(&token)
                .json(&json!({"max": batch, "wait_ms": wait_ms}))
                .send()
                .await
            else {
                // The server is gone or overloaded: do not spin on it.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let at = Instant::now();
            let Ok(v) = r.json::<Value>().await else { continue };
            let tasks = v["tasks"].as_array().cloned().unwrap_or_default();
            if let Ok(mut l) = leased.lock() {
                l.extend(
                    tasks
                        .iter()
                        .filter_map(|t| t["id"].as_str())
                        .map(|id| (id.to_string(), at)),
                );
            }
            let ok = self.complete(&token, &tasks, batch).await;
            done.fetch_add(ok as u64, Ordering::Relaxed);
        }
    }
}

struct Workers {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    leased: Arc<Mutex<Vec<(String, Instant)>>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Workers {
    fn start(b: &Bench, tokens: &[String], batch: u32, wait_ms: u64) -> Workers {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let leased = Arc::new(Mutex::new(Vec::new()));
        let handles = tokens
            .iter()
            .map(|t| {
                tokio::spawn(b.clone().work(
                    t.clone(),
                    batch,
                    wait_ms,
                    stop.clone(),
                    done.clone(),
                    leased.clone(),
                ))
            })
            .collect();
        Workers {
            stop,
            done,
            leased,
            handles,
        }
    }

    async fn stop(self) -> (u64, Vec<(String, Instant)>) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.await;
        }
        let leased = self.leased.lock().map(|l| l.clone()).unwrap_or_default();
        (self.done.load(Ordering::Relaxed), leased)
    }
}

pub(crate) async fn run(args: TasksArgs) -> anyhow::Result<ExitCode> {
    let target = Target::new(&args.target).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(60))
        .build()?;
    let run_id = strata_core::Id::new("run").to_string();
    let capability = format!("noop-{}", &run_id[4..16]);
    let admin = Client::new(&target.url, &target.token);
    let mut tokens = Vec::new();
    for i in 0..args.agents {
        let a = admin
            .post(
                "/v1/agents",
                &json!({"name": format!("{capability}-agent-{i}"), "capabilities": [{"name": capability}]}),
            )
            .await?;
        tokens.push(a["token"].as_str().context("no token in the reply")?.to_string());
    }
    let b = Bench {
        http,
        url: target.url.clone(),
        admin: target.token.clone(),
        capability,
    };
    let say = |s: String| {
        if !args.target.json {
            eprintln!("{s}");
        }
    };
    say(format!(
        "bench tasks: {} agents, batch {}, server {}",
        args.agents, args.batch, target.url
    ));

    // 1. Burn-down.
    let t0 = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let submitters: Vec<_> = (0..args.submitters)
        .map(|_| {
            let (b, next, n, batch) = (b.clone(), next.clone(), args.tasks as u64, args.batch as u64);
            tokio::spawn(async move {
                loop {
                    let from = next.fetch_add(batch, Ordering::Relaxed);
                    if from >= n {
                        break;
                    }
                    b.submit_some((n - from).min(batch) as usize).await;
                }
            })
        })
        .collect();
    for s in submitters {
        let _ = s.await;
    }
    let submit_secs = t0.elapsed().as_secs_f64();
    say(format!("  submitted {} tasks in {submit_secs:.1} s", args.tasks));
    let t1 = Instant::now();
    let workers = Workers::start(&b, &tokens, args.batch, 0);
    while workers.done.load(Ordering::Relaxed) < args.tasks as u64 && t1.elapsed() < Duration::from_secs(600)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let burn_secs = t1.elapsed().as_secs_f64();
    let (burned, _) = workers.stop().await;

    // 2. Sustained: submitters and agents together.
    // Submitters hold back while the backlog is over a few leases' worth, so the
    // phase measures a flow the agents keep up with, not a queue left to grow.
    let workers = Workers::start(&b, &tokens, args.batch, 200);
    let backlog = (args.agents * args.batch as usize * 4) as u64;
    let queued = Arc::new(AtomicU64::new(0));
    let t2 = Instant::now();
    let until = t2 + args.duration;
    let submitters: Vec<_> = (0..args.submitters)
        .map(|_| {
            let (b, batch, queued, done) = (
                b.clone(),
                args.batch as usize,
                queued.clone(),
                workers.done.clone(),
            );
            tokio::spawn(async move {
                while Instant::now() < until {
                    if queued.load(Ordering::Relaxed) > done.load(Ordering::Relaxed) + backlog {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    let n = b.submit_some(batch).await;
                    queued.fetch_add(n as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for s in submitters {
        let _ = s.await;
    }
    let sustained_secs = t2.elapsed().as_secs_f64();
    let sustained = workers.done.load(Ordering::Relaxed);
    // Let the agents finish the backlog before measuring latency.
    let drain = Instant::now();
    while workers.done.load(Ordering::Relaxed) < queued.load(Ordering::Relaxed)
        && drain.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    workers.stop().await;

    // 3. Latency at an offered load.
    let workers = Workers::start(&b, &tokens, args.batch, 1000);
    let submitted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let t3 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut offered = 0u64;
    let mut inflight = Vec::new();
    while t3.elapsed() < args.duration {
        tick.tick().await;
        let due = (t3.elapsed().as_secs_f64() * args.rate as f64) as u64;
        while offered < due {
            offered += 1;
            let (b, submitted) = (b.clone(), submitted.clone());
            inflight.push(tokio::spawn(async move {
                let sent = Instant::now();
                if let (Some(id), Ok(mut s)) = (b.submit().await, submitted.lock()) {
                    s.insert(id, sent);
                }
            }));
        }
    }
    for f in inflight {
        let _ = f.await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, leased) = workers.stop().await;
    let submitted = submitted.lock().map(|s| s.clone()).unwrap_or_default();
    let mut lat: Vec<u64> = leased
        .iter()
        .filter_map(|(id, at)| {
            submitted
                .get(id)
                .map(|s| at.saturating_duration_since(*s).as_micros() as u64)
        })
        .collect();
    lat.sort_unstable();

    let result = json!({
        "agents": args.agents,
        "batch": args.batch,
        "tasks": args.tasks,
        "submit_tasks_per_sec": (args.tasks as f64 / submit_secs).round(),
        "burn_down_tasks_per_sec": (burned as f64 / burn_secs).round(),
        "sustained_tasks_per_sec": (sustained as f64 / sustained_secs).round(),
        "offered_rate": args.rate,
        "latency_samples": lat.len(),
        "p50_submit_to_lease_ms": quantile_ms(&lat, 0.5),
        "p90_submit_to_lease_ms": quantile_ms(&lat, 0.9),
        "p99_submit_to_lease_ms": quantile_ms(&lat, 0.99),
        "p999_submit_to_lease_ms": quantile_ms(&lat, 0.999),
        "max_submit_to_lease_ms": quantile_ms(&lat, 1.0),
    });
    if args.target.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!("{:<44} {:>12}", "measure", "value");
        for (k, label) in [
            ("submit_tasks_per_sec", "submit (pre-fill), tasks/s"),
            ("burn_down_tasks_per_sec", "burn-down lease→complete, tasks/s"),
            (
                "sustained_tasks_per_sec",
                "sustained submit→lease→complete, tasks/s",
            ),
            ("p50_submit_to_lease_ms", "p50 submit→lease at offered rate, ms"),
            ("p90_submit_to_lease_ms", "p90 submit→lease at offered rate, ms"),
            ("p99_submit_to_lease_ms", "p99 submit→lease at offered rate, ms"),
            (
                "p999_submit_to_lease_ms",
                "p99.9 submit→lease at offered rate, ms",
            ),
            ("max_submit_to_lease_ms", "max submit→lease at offered rate, ms"),
        ] {
            println!("{label:<44} {:>12}", result[k]);
        }
    }
    Ok(ExitCode::SUCCESS)
}
