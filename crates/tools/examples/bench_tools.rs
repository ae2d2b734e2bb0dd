//! Added latency of the gateway: the same `server-everything` tool (`echo`)
//! called directly with an rmcp client and through `Tools::call`, side by side.
//!
//! ```text
//! cargo run --release -p strata-tools --example bench_tools -- [CALLS] [CONCURRENCY]
//! ```
//!
//! Defaults: 2,000 calls each way, 8 at a time, in four interleaved rounds so
//! that drift on a shared machine hits both sides alike. The gateway runs on an
//! embedded SQLite store and logs every call. Needs `npm ci` in
//! `crates/tools/tests/upstreams` (or `STRATA_TOOLS_UPSTREAMS`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientConfig};
use serde_json::json;
use strata_store::{Options, Store};
use strata_tools::{Caller, Config, NewConnection, NewGrant, Rate, Subject, Tools};

fn everything() -> anyhow::Result<String> {
    let dir = std::env::var_os("STRATA_TOOLS_UPSTREAMS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/upstreams"));
    let script = dir.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    anyhow::ensure!(
        script.exists(),
        "{} is missing: run `npm ci` in crates/tools/tests/upstreams",
        script.display()
    );
    Ok(script.display().to_string())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `calls` calls of `f`, `conc` at a time; returns each call's latency.
async fn run<F, Fut>(calls: usize, conc: usize, f: Arc<F>) -> anyhow::Result<Vec<Duration>>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let mut tasks = Vec::new();
    for w in 0..conc {
        let f = f.clone();
        let n = calls / conc + usize::from(w < calls % conc);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for i in 0..n {
                let t = Instant::now();
                f(w * 1_000_000 + i).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let calls: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let conc: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(8).max(1);
    let script = everything()?;

    // Direct: one rmcp client over a child's pipes.
    let mut child = tokio::process::Command::new("node")
        .arg(&script)
        .arg("stdio")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting node")?;
    let (stdout, stdin) = (
        child.stdout.take().context("stdout")?,
        child.stdin.take().context("stdin")?,
    );
    let direct = Arc::new(ClientConfig::default().serve((stdout, stdin)).await?);

    // Through the gateway: its own server-everything, an agent with a grant.
    let dir = tempfile::tempdir()?;
    let store = Store::open(
        Options::new(strata_store::sqlite_url(dir.path())),
        &[strata_tools::MIGRATIONS],
    )
    .await?;
    let mut config = Config::new(strata_core::MasterKey::generate());
    config.agent_rate = Rate {
        burst: 1_000_000,
        per_second: 1_000_000,
    };
    config.tool_rate = Rate {
        burst: 1_000_000,
        per_second: 1_000_000,
    };
    let tools = Tools::open(store, config).await?;
    let spec: NewConnection = serde_json::from_value(json!({
        "name": "everything",
        "upstream": {"kind": "mcp_stdio", "command": "node", "args": [script, "stdio"]}
    }))?;
    tools.add_connection(spec).await?;
    let agent = strata_core::Id::new("agt").to_string();
    tools
        .grant(NewGrant {
            subject: Subject::Agent(agent.clone()),
            tools: "everything.*".into(),
        })
        .await?;
    let caller = Arc::new(Caller::agent(agent));

    let direct_call = {
        let direct = direct.clone();
        Arc::new(move |i: usize| {
            let direct = direct.clone();
            async move {
                let args = json!({"message": format!("m{i}")});
                let params = CallToolRequestParams::new("echo")
                    .with_arguments(args.as_object().cloned().unwrap_or_default());
                direct.peer().call_tool(params).await?;
                anyhow::Ok(())
            }
        })
    };
    let gateway_call = {
        let tools = tools.clone();
        let caller = caller.clone();
        Arc::new(move |i: usize| {
            let tools = tools.clone();
            let caller = caller.clone();
            async move {
                let req = serde_json::from_value(
                    json!({"tool": "everything.echo", "arguments": {"message": format!("m{i}")}}),
                )?;
                tools
                    .call(&caller, req)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                anyhow::Ok(())
            }
        })
    };

    // Warm up both sides.
    run(200, conc, direct_call.clone()).await?;
    run(200, conc, gateway_call.clone()).await?;

    let rounds = 4;
    let (mut d, mut g) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        d.extend(run(calls / rounds, conc, direct_call.clone()).await?);
        g.extend(run(calls / rounds, conc, gateway_call.clone()).await?);
    }
    d.sort();
    g.sort();
    tools.flush_log().await;
    let logged = tools
        .list_calls(&strata_tools::ListCalls {
            limit: Some(1),
            ..Default::default()
        })
        .await?;
    anyhow::ensure!(!logged.items.is_empty(), "the gateway logged no call");

    println!(
        "tool gateway: server-everything `echo` over stdio, {} calls each, {conc} concurrent",
        d.len()
    );
    println!("{:<10} {:>10} {:>10}", "", "p50 ms", "p99 ms");
    println!(
        "{:<10} {:>10.3} {:>10.3}",
        "direct",
        ms(percentile(&d, 0.50)),
        ms(percentile(&d, 0.99))
    );
    println!(
        "{:<10} {:>10.3} {:>10.3}",
        "gateway",
        ms(percentile(&g, 0.50)),
        ms(percentile(&g, 0.99))
    );
    println!(
        "{:<10} {:>10.3} {:>10.3}   (targets: p50 <= 1 ms, p99 <= 5 ms)",
        "added",
        ms(percentile(&g, 0.50)) - ms(percentile(&d, 0.50)),
        ms(percentile(&g, 0.99)) - ms(percentile(&d, 0.99)),
    );
    tools.shutdown().await;
    let _ = child.kill().await;
    Ok(())
}
