//! `strata bench sandbox`: sandbox start-up latency and density.
//!
//! Measured on the compute layer in this process (the `strata` binary is its
//! own sandbox init), over `--runs` runs each, with one timer:
//!
//! - **cold run**: `run` of `true` — cgroups made, the init started,
//!   namespaces, the read-only root, `/proc`, `/dev`, tmpfs `/tmp` and
//!   `/workspace`, rlimits, seccomp, `true`, its report read (the tear-down
//!   finishes after the reply; **sustained** is the same back to back with
//!   every tear-down waited for);
//! - **warm pool**: `run` of `true` finding a pooled sandbox ready (the pool
//!   is refilled, untimed, before each run);
//! - **persistent exec**: `exec` of `true` in a running persistent sandbox;
//! - **through the API**: `POST /v1/sandboxes/run` and `…/exec` of `true` on
//!   a server in this process (authentication, policy, intent and audit
//!   included);
//! - **density**: `--idle` idle persistent sandboxes are created and the
//!   memory they use is read from their cgroups (every process and tmpfs
//!   page they are charged for) and from the host's `MemAvailable` (which
//!   also sees kernel objects no cgroup is charged for, and other load on the
//!   machine); sandboxes per GiB come from the larger of the two.
//!
//! With `--leak-runs N`, only the leak count runs instead: the host's mounts
//! (`/proc/self/mountinfo` lines), the layer's cgroups and the entries under
//! its data folder are counted before and after N cold runs of `true` (every
//! tear-down waited for), the three differences are printed, and any that is
//! not zero fails the command.
//!
//! With `--compare`, bubblewrap (`bwrap`, same namespaces and binds) and a
//! bare fork/exec of `true` run in the same loop, alternating with the cold
//! runs in blocks of 20 so that other load falls on all alike, and the ratios
//! are printed. `bench/sandbox/bwrap.sh` runs exactly that.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use serde_json::{Value, json};
use strata_compute::{Caller, Compute, Config, CreateSandbox, ExecRequest, RunRequest, Status};

/// Arguments of `strata bench sandbox`.
#[derive(Args, Debug)]
pub(crate) struct SandboxArgs {
    /// Runs of each kind.
    #[arg(long, default_value_t = 500)]
    runs: usize,
    /// Idle persistent sandboxes created for the density figure.
    #[arg(long, default_value_t = 50)]
    idle: usize,
    /// Also time bwrap and a bare fork/exec of `true` in the same loop.
    #[arg(long)]
    compare: bool,
    /// Only count mounts, cgroups and data entries before and after this
    /// many cold runs, and fail on any leak.
    #[arg(long, value_name = "N")]
    leak_runs: Option<usize>,
    /// Print results as JSON.
    #[arg(long)]
    json: bool,
}

struct Row {
    name: &'static str,
    p50: f64,
    p99: f64,
    n: usize,
}

impl Row {
    fn new(name: &'static str, mut samples: Vec<Duration>) -> Row {
        samples.sort();
        let us: Vec<u64> = samples.iter().map(|d| d.as_micros() as u64).collect();
        Row {
            name,
            p50: super::quantile_ms(&us, 0.50),
            p99: super::quantile_ms(&us, 0.99),
            n: us.len(),
        }
    }

    fn json(&self) -> Value {
        json!({"name": self.name, "p50_ms": self.p50, "p99_ms": self.p99, "runs": self.n})
    }
}

fn truth() -> RunRequest {
    RunRequest {
        command: vec!["true".into()],
        ..Default::default()
    }
}

pub(crate) async fn run(args: SandboxArgs) -> anyhow::Result<ExitCode> {
    ensure!(args.runs > 0, "--runs must be at least 1");
    let dir = tempfile::tempdir()?;
    let store = strata_store::Store::open(
        strata_store::Options::new(strata_store::sqlite_url(dir.path())),
        &[strata_compute::MIGRATIONS],
    )
    .await?;
    // The init the server would use.
    let init = strata_compute::init_beside(&std::env::current_exe()?);
    let mut cfg = Config::new(dir.path().join("data"), &init);
    cfg.cgroup_name = format!("strata-bench-{}", std::process::id());
    let compute = Compute::open(store, cfg.clone(), Arc::new(strata_core::SystemClock))
        .await
        .context("sandboxes are unavailable here")?;
    for w in compute.warnings() {
        eprintln!("warning: {w}");
    }
    let caller = Caller::default();
    for _ in 0..10 {
        compute.run(truth(), &caller).await?;
    }
    compute.settle().await;
    if let Some(n) = args.leak_runs {
        let code = leak_count(&compute, &cfg, n, args.json).await;
        remove_groups(&cfg);
        return code;
    }

    let bwrap = if args.compare {
        let p = which("bwrap").context("--compare needs bwrap (apt-get install bubblewrap)")?;
        Some((p, bwrap_args()))
    } else {
        None
    };
    let (mut cold, mut bw, mut bare) = (Vec::with_capacity(args.runs), Vec::new(), Vec::new());
    while cold.len() < args.runs {
        let block = (args.runs - cold.len()).min(20);
        for _ in 0..block {
            let t = Instant::now();
            let o = compute.run(truth(), &caller).await?;
            cold.push(t.elapsed());
            ensure!(o.status == Status::Exited && o.exit_code == Some(0), "{o:?}");
        }
        compute.settle().await;
        if let Some((program, argv)) = &bwrap {
            bw.extend(time_command(program, argv, block)?);
            bare.extend(time_command(std::path::Path::new("true"), &[], block)?);
        }
    }
    let t_all = Instant::now();
    for _ in 0..args.runs {
        compute.run(truth(), &caller).await?;
    }
    compute.settle().await;
    let sustained = t_all.elapsed().as_secs_f64() * 1000.0 / args.runs as f64;

    let sbx = compute.create(CreateSandbox::default(), &caller).await?;
    let exec_true = || ExecRequest {
        command: vec!["true".into()],
        ..Default::default()
    };
    let mut execs = Vec::with_capacity(args.runs);
    for i in 0..args.runs + 10 {
        let t = Instant::now();
        let o = compute.exec(&sbx.id, exec_true(), &caller).await?;
        if i >= 10 {
            execs.push(t.elapsed());
        }
        ensure!(o.exit_code == Some(0), "{o:?}");
    }
    compute.delete(&sbx.id).await?;

    let pool_runs = warm_pool(&cfg, dir.path(), args.runs).await?;
    let (api_run, api_exec) = through_api(args.runs).await?;
    let density = density(&compute, &cfg, args.idle).await?;
    compute.settle().await;
    remove_groups(&cfg);

    let mut rows = vec![
        Row::new("strata run (cold)", cold),
        Row::new("strata run (warm pool)", pool_runs),
        Row::new("strata exec (persistent)", execs),
        Row::new("POST /v1/sandboxes/run", api_run),
        Row::new("POST /v1/sandboxes/{id}/exec", api_exec),
    ];
    if bwrap.is_some() {
        rows.push(Row::new("bwrap true", bw));
        rows.push(Row::new("fork/exec true", bare));
    }
    let ratio = |a: &str, b: &str, f: fn(&Row) -> f64| {
        let x = rows.iter().find(|r| r.name == a).map(f)?;
        let y = rows.iter().find(|r| r.name == b).map(f)?;
        Some(x / y)
    };
    let ratios: Vec<(String, f64, f64)> = [
        ("strata run (cold)", "bwrap true"),
        ("strata run (cold)", "fork/exec true"),
        ("strata run (warm pool)", "bwrap true"),
        ("bwrap true", "fork/exec true"),
    ]
    .iter()
    .filter_map(|(a, b)| {
        Some((
            format!("{a} / {b}"),
            ratio(a, b, |r| r.p50)?,
            ratio(a, b, |r| r.p99)?,
        ))
    })
    .collect();
    if args.json {
        let out = json!({
            "runs": args.runs,
            "init": init.display().to_string(),
            "latency": rows.iter().map(Row::json).collect::<Vec<_>>(),
            "sustained_ms_per_run": sustained,
            "ratios": ratios.iter().map(|(n, p50, p99)| json!({"name": n, "p50": p50, "p99": p99})).collect::<Vec<_>>(),
            "density": density,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("init: {}   runs: {}", init.display(), args.runs);
    for r in &rows {
        println!(
            "{:<30} p50 {:>8.3} ms   p99 {:>8.3} ms   (n={})",
            r.name, r.p50, r.p99, r.n
        );
    }
    println!(
        "{:<30} {sustained:>8.3} ms per run, back to back, tear-down included",
        "strata run (sustained)"
    );
    for (name, p50, p99) in &ratios {
        println!("ratio {name:<40} p50 {p50:>6.2}x   p99 {p99:>6.2}x");
    }
    println!(
        "density: {} idle persistent sandboxes: {:.0} KiB each by their cgroups, {:.0} KiB each by MemAvailable → {} per GiB",
        density["sandboxes"],
        density["cgroup_bytes_each"].as_f64().unwrap_or(0.0) / 1024.0,
        density["host_bytes_each"].as_f64().unwrap_or(0.0) / 1024.0,
        density["per_gib"]
    );
    Ok(ExitCode::SUCCESS)
}

/// Removes the (empty) parent groups the bench's services made.
fn remove_groups(cfg: &Config) {
    for ctrl in ["memory", "pids", "cpu", "cpuacct", "unified"] {
        for name in [cfg.cgroup_name.clone(), format!("{}-pool", cfg.cgroup_name)] {
            let _ = std::fs::remove_dir(cfg.cgroup_root.join(ctrl).join(name));
        }
    }
}

/// What could leak: host mounts, the layer's cgroups, entries under its data folder.
fn leak_counts(compute: &Compute, cfg: &Config) -> anyhow::Result<[usize; 3]> {
    fn entries(d: &std::path::Path) -> usize {
        std::fs::read_dir(d)
            .map(|es| {
                es.flatten()
                    .map(|e| {
                        let deeper = e.file_type().is_ok_and(|t| t.is_dir());
                        1 + if deeper { entries(&e.path()) } else { 0 }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?.lines().count();
    Ok([mounts, compute.cgroup_count(), entries(&cfg.data_dir)])
}

/// `--leak-runs`: counts before and after `n` cold runs of `true`.
async fn leak_count(compute: &Compute, cfg: &Config, n: usize, as_json: bool) -> anyhow::Result<ExitCode> {
    let caller = Caller::default();
    let before = leak_counts(compute, cfg)?;
    let t = Instant::now();
    for i in 0..n {
        let o = compute.run(truth(), &caller).await?;
        ensure!(o.status == Status::Exited && o.exit_code == Some(0), "{o:?}");
        if (i + 1) % 1000 == 0 && !as_json {
            eprintln!("{} runs, {:.1} s", i + 1, t.elapsed().as_secs_f64());
        }
    }
    compute.settle().await;
    let after = leak_counts(compute, cfg)?;
    let names = ["mounts", "cgroups", "data_entries"];
    let delta: Vec<i64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| *a as i64 - *b as i64)
        .collect();
    if as_json {
        let fields: serde_json::Map<String, Value> = names
            .iter()
            .zip(before.iter().zip(&after).zip(&delta))
            .map(|(n, ((b, a), d))| (n.to_string(), json!({"before": b, "after": a, "delta": d})))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"runs": n, "seconds": t.elapsed().as_secs_f64(), "counts": fields})
            )?
        );
    } else {
        println!("{n} cold runs of true in {:.1} s", t.elapsed().as_secs_f64());
        for (name, ((b, a), d)) in names.iter().zip(before.iter().zip(&after).zip(&delta)) {
            println!("{name:<14} before {b:>6}   after {a:>6}   delta {d:+}");
        }
    }
    if delta.iter().any(|d| *d != 0) {
        eprintln!("leak: the counts changed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `run` of `true` in a service keeping 2 sandboxes built, refilled (untimed) before each run.
async fn warm_pool(cfg: &Config, dir: &std::path::Path, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let mut pool_cfg = cfg.clone();
    pool_cfg.data_dir = dir.join("pool-data");
    pool_cfg.cgroup_name = format!("{}-pool", cfg.cgroup_name);
    pool_cfg.pool_size = 2;
    let db = dir.join("pool-db");
    std::fs::create_dir_all(&db)?;
    let store = strata_store::Store::open(
        strata_store::Options::new(strata_store::sqlite_url(&db)),
        &[strata_compute::MIGRATIONS],
    )
    .await?;
    let pooled = Compute::open(store, pool_cfg, Arc::new(strata_core::SystemClock)).await?;
    let caller = Caller::default();
    let mut out = Vec::with_capacity(runs);
    for i in 0..runs + 10 {
        pooled.fill_pool().await?;
        let t = Instant::now();
        let o = pooled.run(truth(), &caller).await?;
        if i >= 10 {
            out.push(t.elapsed());
        }
        ensure!(o.exit_code == Some(0), "{o:?}");
    }
    pooled.drain_pool().await;
    pooled.settle().await;
    Ok(out)
}

/// `POST /v1/sandboxes/run` and `…/exec` of `true` against a server in this process.
async fn through_api(runs: usize) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let target = super::Target::new(&super::TargetArgs {
        url: None,
        token: None,
        database: None,
        json: false,
    })
    .await?;
    let client = crate::client::Client::new(&target.url, &target.token);
    let body = json!({"command": ["true"]});
    let mut run = Vec::with_capacity(runs);
    for i in 0..runs + 10 {
        let t = Instant::now();
        let o = client.post("/v1/sandboxes/run", &body).await?;
        if i >= 10 {
            run.push(t.elapsed());
        }
        ensure!(o["exit_code"] == 0, "{o}");
    }
    let sbx = client.post("/v1/sandboxes", &json!({})).await?;
    let id = sbx["id"].as_str().context("no sandbox id")?.to_string();
    let mut exec = Vec::with_capacity(runs);
    for i in 0..runs + 10 {
        let t = Instant::now();
        let o = client.post(&format!("/v1/sandboxes/{id}/exec"), &body).await?;
        if i >= 10 {
            exec.push(t.elapsed());
        }
        ensure!(o["exit_code"] == 0, "{o}");
    }
    client.delete(&format!("/v1/sandboxes/{id}")).await?;
    Ok((run, exec))
}

/// Memory used by `n` idle persistent sandboxes, and how many fit in a GiB.
async fn density(compute: &Compute, cfg: &Config, n: usize) -> anyhow::Result<Value> {
    ensure!(n > 0, "--idle must be at least 1");
    compute.settle().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = mem_available()?;
    let caller = Caller::default();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(compute.create(CreateSandbox::default(), &caller).await?.id);
    }
    compute.settle().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = mem_available()?;
    let memory = cfg.cgroup_root.join("memory").join(&cfg.cgroup_name);
    let mut charged = 0u64;
    for id in &ids {
        let usage = std::fs::read_to_string(memory.join(id).join("memory.usage_in_bytes"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        charged += usage;
    }
    for id in &ids {
        compute.delete(id).await?;
    }
    let cgroup_each = charged as f64 / n as f64;
    let host_each = before.saturating_sub(after) as f64 / n as f64;
    let each = cgroup_each.max(host_each).max(1.0);
    Ok(json!({
        "sandboxes": n,
        "cgroup_bytes_each": cgroup_each.round(),
        "host_bytes_each": host_each.round(),
        "per_gib": ((1u64 << 30) as f64 / each) as u64,
    }))
}

/// The host's `MemAvailable`, bytes.
fn mem_available() -> anyhow::Result<u64> {
    let info = std::fs::read_to_string("/proc/meminfo")?;
    info.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .context("no MemAvailable in /proc/meminfo")
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.exists())
}

/// bwrap with the namespaces and binds of a Strata sandbox (no cgroups and no
/// seccomp: bwrap applies neither by default).
fn bwrap_args() -> Vec<String> {
    let mut a: Vec<String> = [
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup",
        "--die-with-parent",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for l in ["/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"] {
        match std::fs::read_link(l) {
            Ok(t) => a.extend(["--symlink".into(), t.to_string_lossy().into_owned(), l.into()]),
            Err(_) if std::path::Path::new(l).is_dir() => a.extend(["--ro-bind".into(), l.into(), l.into()]),
            Err(_) => {}
        }
    }
    for f in ["/etc/ld.so.cache", "/etc/alternatives", "/etc/nsswitch.conf"] {
        if std::path::Path::new(f).exists() {
            a.extend(["--ro-bind".into(), f.into(), f.into()]);
        }
    }
    a.extend(
        [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--tmpfs",
            "/workspace",
            "--chdir",
            "/workspace",
            "true",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a
}

fn time_command(program: &std::path::Path, args: &[String], runs: usize) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let ok = std::process::Command::new(program)
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        ensure!(ok, "{} failed", program.display());
        out.push(t.elapsed());
    }
    Ok(out)
}
