//! `strata bench api`: throughput and latency of the HTTP API under concurrency.
//!
//! Starts a server in this process on a fresh SQLite data folder (or targets
//! `--url`), then runs two phases with N concurrent keep-alive connections:
//! `POST /v1/agents` (admin token, unique names) and an authenticated
//! `GET /v1/agents/{id}` (an agent's token, ids drawn from the created set).
//! Client and server share the machine, so the figures are a floor.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::json;

use crate::client::Client;

/// Arguments of `strata bench api`.
#[derive(Args, Debug)]
pub(crate) struct ApiArgs {
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Length of each phase, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[command(flatten)]
    target: super::TargetArgs,
}

struct Phase {
    name: &'static str,
    ok: u64,
    errors: u64,
    secs: f64,
    latencies_us: Vec<u64>,
}

impl Phase {
    fn pct(&self, p: f64) -> f64 {
        super::quantile_ms(&self.latencies_us, p)
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "phase": self.name, "ok": self.ok, "errors": self.errors,
            "requests_per_sec": (self.ok as f64 / self.secs).round(),
            "p50_ms": self.pct(0.50), "p99_ms": self.pct(0.99), "max_ms": self.pct(1.0),
        })
    }
}

pub(crate) async fn run(args: ApiArgs) -> anyhow::Result<ExitCode> {
    let target = super::Target::new(&args.target).await?;
    let (url, token) = (target.url.clone(), target.token.clone());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .timeout(Duration::from_secs(30))
        .build()?;
    let admin = Client::new(&url, &token);
    if !args.target.json {
        eprintln!(
            "bench api: {} connections, {:?} per phase, server {url}",
            args.connections, args.duration
        );
    }

    let run_id = strata_core::Id::new("run").to_string();
    let counter = Arc::new(AtomicU64::new(0));
    let created = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let create = {
        let (counter, created, run_id, url, token) = (
            counter.clone(),
            created.clone(),
            run_id.clone(),
            url.clone(),
            token.clone(),
        );
        phase("POST /v1/agents", &args, http.clone(), move |http| {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let (created, url, token) = (created.clone(), url.clone(), token.clone());
            let name = format!("bench-{}-{n}", &run_id[4..]);
            async move {
                let resp = http
                    .post(format!("{url}/v1/agents"))
                    .bearer_auth(&token)
                    .json(&json!({"name": name, "capabilities": [{"name": "summarize"}]}))
                    .send()
                    .await
                    .ok()?;
                if resp.status().as_u16() != 201 {
                    return None;
                }
                let v: serde_json::Value = resp.json().await.ok()?;
                if let (Some(id), Ok(mut c)) = (v["id"].as_str(), created.lock()) {
                    c.push(id.to_string());
                }
                Some(())
            }
        })
        .await
    };

    let ids: Arc<Vec<String>> = Arc::new(created.lock().map(|c| c.clone()).unwrap_or_default());
    anyhow::ensure!(!ids.is_empty(), "no agent was created; cannot run the read phase");
    let reader = admin
        .post(
            "/v1/agents",
            &json!({"name": format!("bench-reader-{}", &run_id[4..])}),
        )
        .await?;
    let reader_token = reader["token"]
        .as_str()
        .context("no token in the reply")?
        .to_string();
    let next = Arc::new(AtomicU64::new(0));
    let read = {
        let (ids, url) = (ids.clone(), url.clone());
        phase("GET /v1/agents/{id}", &args, http.clone(), move |http| {
            let i = next.fetch_add(7919, Ordering::Relaxed) as usize % ids.len();
            let req = http
                .get(format!("{url}/v1/agents/{}", ids[i]))
                .bearer_auth(&reader_token);
            async move {
                let resp = req.send().await.ok()?;
                let ok = resp.status().as_u16() == 200;
                resp.bytes().await.ok()?;
                ok.then_some(())
            }
        })
        .await
    };

    let results = [create, read];
    if args.target.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results.iter().map(Phase::json).collect::<Vec<_>>())?
        );
    } else {
        println!(
            "{:<22} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9}",
            "phase", "ok", "errors", "req/s", "p50 ms", "p99 ms", "max ms"
        );
        for p in &results {
            println!(
                "{:<22} {:>9} {:>7} {:>10.0} {:>9.2} {:>9.2} {:>9.2}",
                p.name,
                p.ok,
                p.errors,
                p.ok as f64 / p.secs,
                p.pct(0.5),
                p.pct(0.99),
                p.pct(1.0)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `one` from `args.connections` workers for `args.duration`.
async fn phase<F, Fut>(name: &'static str, args: &ApiArgs, http: reqwest::Client, one: F) -> Phase
where
    F: Fn(reqwest::Client) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<()>> + Send,
{
    let one = Arc::new(one);
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut workers = Vec::new();
    for _ in 0..args.connections {
        let (one, http) = (one.clone(), http.clone());
        workers.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < deadline {
                let t = Instant::now();
                match one(http.clone()).await {
                    Some(()) => lat.push(t.elapsed().as_micros() as u64),
                    None => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for w in workers {
        if let Ok((l, e)) = w.await {
            latencies_us.extend(l);
            errors += e;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    Phase {
        name,
        ok: latencies_us.len() as u64,
        errors,
        secs,
        latencies_us,
    }
}
