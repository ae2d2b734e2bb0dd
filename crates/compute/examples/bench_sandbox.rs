//! Sandbox latency: cold `run` of `true`, persistent `exec` of `true`, a
//! warm-pool `run`, and (with `--compare`) bubblewrap and a bare fork/exec of
//! `true` measured by the same loop and timer.
//!
//! ```text
//! cargo run --release -p strata-compute --example bench_sandbox -- --runs 500 [--compare]
//! ```
//!
//! Needs root (cgroups and the id maps), like the sandboxes themselves. This
//! binary is its own sandbox init: it calls `maybe_run_init` first.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_compute::{Caller, Compute, Config, CreateSandbox, ExecRequest, RunRequest, Status};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

struct Row {
    name: &'static str,
    p50: f64,
    p99: f64,
}

fn row(name: &'static str, mut samples: Vec<Duration>) -> Row {
    samples.sort();
    let r = Row {
        name,
        p50: percentile(&samples, 0.50),
        p99: percentile(&samples, 0.99),
    };
    println!(
        "{:<28} p50 {:>8.3} ms   p99 {:>8.3} ms   (n={})",
        r.name,
        r.p50,
        r.p99,
        samples.len()
    );
    r
}

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

fn time_command(program: &str, args: &[String], runs: usize) -> Vec<Duration> {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            let ok = std::process::Command::new(program)
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "{program} failed");
            t.elapsed()
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    // Before any thread exists: the init must be single-threaded.
    strata_compute::maybe_run_init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(500);
    let compare = args.iter().any(|a| a == "--compare");

    let dir = tempfile::tempdir()?;
    let url = strata_store::sqlite_url(dir.path());
    let store =
        strata_store::Store::open(strata_store::Options::new(url), &[strata_compute::MIGRATIONS]).await?;
    // The small init binary when it was built beside this example (target/
    // release/), else this binary itself (it is an init too).
    let me = std::env::current_exe()?;
    let small = me
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("strata-sandbox-init"))
        .filter(|p| p.exists());
    let init = small.unwrap_or(me);
    println!("init: {}", init.display());
    let mut cfg = Config::new(dir.path().join("data"), init);
    cfg.cgroup_name = format!("strata-bench-{}", std::process::id());
    let compute = Compute::open(store, cfg.clone(), Arc::new(strata_core::SystemClock)).await?;
    for w in compute.warnings() {
        eprintln!("warning: {w}");
    }
    let caller = Caller::default();
    let truth = || RunRequest {
        command: vec!["true".into()],
        ..Default::default()
    };
    for _ in 0..10 {
        compute.run(truth(), &caller).await?;
    }
    // With --compare, the three alternate in blocks of 20 runs, so that load
    // from elsewhere on the machine falls on all of them alike, while one
    // tool's asynchronous kernel clean-up (network namespaces) rarely lands
    // inside the other's measurement.
    let (mut cold, mut bw, mut bare) = (Vec::with_capacity(runs), Vec::new(), Vec::new());
    let bwrap_argv = bwrap_args();
    if compare {
        anyhow::ensure!(
            PathBuf::from("/usr/bin/bwrap").exists(),
            "bwrap is not installed (apt-get install bubblewrap)"
        );
    }
    while cold.len() < runs {
        let block = (runs - cold.len()).min(20);
        for _ in 0..block {
            let t = Instant::now();
            let o = compute.run(truth(), &caller).await?;
            cold.push(t.elapsed());
            anyhow::ensure!(o.status == Status::Exited && o.exit_code == Some(0), "{o:?}");
        }
        compute.settle().await;
        if compare {
            bw.extend(time_command("/usr/bin/bwrap", &bwrap_argv, block));
            bare.extend(time_command("true", &[], block));
        }
    }
    compute.settle().await;
    // The same runs back to back, counting the teardown that finishes after
    // each reply (namespaces, cgroups): the sustained cost per run.
    let t_all = Instant::now();
    for _ in 0..runs {
        compute.run(truth(), &caller).await?;
    }
    compute.settle().await;
    let sustained = t_all.elapsed().as_secs_f64() * 1000.0 / runs as f64;
    let sbx = compute.create(CreateSandbox::default(), &caller).await?;
    let exec_true = || ExecRequest {
        command: vec!["true".into()],
        ..Default::default()
    };
    let mut warm = Vec::with_capacity(runs);
    for i in 0..runs + 10 {
        let t = Instant::now();
        let o = compute.exec(&sbx.id, exec_true(), &caller).await?;
        if i >= 10 {
            warm.push(t.elapsed());
        }
        anyhow::ensure!(o.exit_code == Some(0), "{o:?}");
    }
    compute.delete(&sbx.id).await?;

    // Warm pool: a second service keeping 2 sandboxes built; the pool is
    // refilled (untimed) before each run, so this is the latency of a run that
    // finds one ready.
    let mut pool_cfg = cfg.clone();
    pool_cfg.data_dir = dir.path().join("pool-data");
    pool_cfg.cgroup_name = format!("{}-pool", cfg.cgroup_name);
    pool_cfg.pool_size = 2;
    std::fs::create_dir_all(dir.path().join("pool-db"))?;
    let pooled = Compute::open(
        strata_store::Store::open(
            strata_store::Options::new(strata_store::sqlite_url(&dir.path().join("pool-db"))),
            &[strata_compute::MIGRATIONS],
        )
        .await?,
        pool_cfg.clone(),
        Arc::new(strata_core::SystemClock),
    )
    .await?;
    let mut pool_runs = Vec::with_capacity(runs);
    for i in 0..runs + 10 {
        pooled.fill_pool().await?;
        let t = Instant::now();
        let o = pooled.run(truth(), &caller).await?;
        if i >= 10 {
            pool_runs.push(t.elapsed());
        }
        anyhow::ensure!(o.exit_code == Some(0), "{o:?}");
    }
    pooled.drain_pool().await;
    pooled.settle().await;
    compute.settle().await;

    println!("runs: {runs}");
    let strata_cold = row("strata run (cold)", cold);
    println!(
        "{:<28} {sustained:>8.3} ms per run, back to back, teardown included",
        "strata run (sustained)"
    );
    let _ = row("strata exec (persistent)", warm);
    let _ = row("strata run (warm pool)", pool_runs);
    if compare {
        let b = row("bwrap true", bw);
        let bare = row("fork/exec true", bare);
        println!(
            "ratios: strata cold / bwrap  p50 {:.2}x  p99 {:.2}x",
            strata_cold.p50 / b.p50,
            strata_cold.p99 / b.p99
        );
        println!(
            "        strata cold / bare   p50 {:.2}x  p99 {:.2}x",
            strata_cold.p50 / bare.p50,
            strata_cold.p99 / bare.p99
        );
        println!("        bwrap / bare         p50 {:.2}x", b.p50 / bare.p50);
    }
    for ctrl in ["memory", "pids", "cpu", "cpuacct", "unified"] {
        for name in [&cfg.cgroup_name, &pool_cfg.cgroup_name] {
            let _ = std::fs::remove_dir(cfg.cgroup_root.join(ctrl).join(name));
        }
    }
    Ok(())
}
