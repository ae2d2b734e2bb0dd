//! `strata bench tools`: the latency the tool gateway adds. One rmcp client
//! calls `server-everything`'s `echo` tool directly over stdio, and the same
//! client type calls it through Strata's `/mcp` (streamable HTTP, an agent's
//! token, a grant, the call logged and audited); `POST /v1/tools/{name}/call`
//! is timed beside them. The three run in interleaved rounds so that drift on a
//! shared machine hits each alike; every reply is checked to be the echo.
//!
//! Beside each path's latency it prints the CPU time its calls took, per call:
//! this process (the client and, unless `--url`, the server with its writer)
//! and its child processes (the `node` upstreams), read from `/proc`. On two
//! cores with 8 calls in flight, that is what the latency mostly follows.
//!
//! The in-process server is started with the gateway's per-agent and per-tool
//! rate limits raised out of the way; against `--url` the server's own limits
//! apply (start it with `--tool-agent-rate` and `--tool-rate` high enough).

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::{
    StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
};
use serde_json::{Value, json};

use super::{TargetArgs, quantile_ms};
use crate::client::Client;

/// `strata bench tools`
#[derive(Args, Debug)]
pub(crate) struct ToolsArgs {
    /// Calls per path.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Calls in flight at once, per path.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    concurrency: u64,
    /// `server-everything`'s entry script (default: the one `npm ci` installs under
    /// crates/tools/tests/upstreams, looked up from the current folder).
    #[arg(long, env = "STRATA_BENCH_EVERYTHING")]
    everything: Option<PathBuf>,
    /// Time only these paths (e.g. `--paths mcp` to profile the server on one
    /// path); the added latency is printed when `direct` is among them.
    #[arg(long, value_delimiter = ',', default_values = ["direct", "mcp", "rest"])]
    paths: Vec<Path>,
    #[command(flatten)]
    target: TargetArgs,
}

/// A way of calling the tool that `--paths` names.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// server-everything over stdio, no Strata.
    Direct,
    /// Strata's `/mcp`.
    Mcp,
    /// `POST /v1/tools/{name}/call`.
    Rest,
}

const SCRIPT: &str = "node_modules/@modelcontextprotocol/server-everything/dist/index.js";
const CONNECTION: &str = "benchev";
const ROUNDS: usize = 4;

type Mcp = RunningService<RoleClient, ClientConfig>;

pub(crate) async fn run(args: ToolsArgs) -> anyhow::Result<ExitCode> {
    let script = everything(args.everything.clone())?;
    let target = super::Target::with(&args.target, |serve| {
        serve.tool_agent_rate = 1_000_000;
        serve.tool_rate = 1_000_000;
    })
    .await?;
    let admin = Client::new(&target.url, &target.token);
    let conc = args.concurrency as usize;
    if !args.target.json {
        eprintln!(
            "bench tools: server-everything `echo`, {} calls per path, {conc} concurrent, server {}",
            args.calls, target.url
        );
    }

    // Through Strata: a connection to its own server-everything child, an agent
    // holding a grant for it.
    let conn = json!({"name": CONNECTION, "upstream": {"kind": "mcp_stdio", "command": "node",
        "args": [script, "stdio"]}});
    match admin.post("/v1/connections", &conn).await {
        Ok(_) => {}
        Err(e)
            if e.downcast_ref::<crate::client::Problem>()
                .is_some_and(|p| p.status == 409) => {}
        Err(e) => return Err(e.context("registering the server-everything connection")),
    }
    // Its upstream marks `echo` read-only, so the kernel records no intent
    // before a call: one commit on the call's path, not two, which the answer
    // does not wait to reach the disk (the store syncs it within 10 ms).
    let listed = admin
        .get(&format!("/v1/tools?connection={CONNECTION}&query=echo"))
        .await?;
    let read_only = listed["items"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == format!("{CONNECTION}.echo")))
        .and_then(|t| t["read_only"].as_bool())
        .context("the gateway does not list benchev.echo")?;
    if !args.target.json {
        eprintln!(
            "  {CONNECTION}.echo is {}",
            if read_only {
                "read-only: no intent before a call, one commit after it, answered without waiting for its sync"
            } else {
                "not read-only: an intent commits before a call, the outcome after it"
            }
        );
    }
    let name = format!("bench-tools-{}", &strata_core::Id::new("run").to_string()[4..]);
    let agent = admin.post("/v1/agents", &json!({"name": name})).await?;
    let (agent_id, token) = (
        agent["id"].as_str().context("no agent id in the reply")?,
        agent["token"]
            .as_str()
            .context("no token in the reply")?
            .to_string(),
    );
    admin
        .post(
            "/v1/grants",
            &json!({"subject": {"agent": agent_id}, "tools": format!("{CONNECTION}.*")}),
        )
        .await?;

    let direct = Arc::new(direct_client(&script).await?);
    let via_mcp = Arc::new(mcp_client(&target.url, &token, conc).await?);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(conc)
        .timeout(Duration::from_secs(30))
        .build()?;
    let rest_url = Arc::new(format!("{}/v1/tools/{CONNECTION}.echo/call", target.url));
    let token = Arc::new(token);

    let all = [
        (Path::Direct, "direct", Caller::Mcp(direct.clone(), "echo")),
        (
            Path::Mcp,
            "strata /mcp",
            Caller::Mcp(via_mcp.clone(), "benchev.echo"),
        ),
        (Path::Rest, "strata REST", Caller::Rest(http, rest_url, token)),
    ];
    let paths: Vec<(Path, &str, Caller)> = all
        .into_iter()
        .filter(|(path, _, _)| args.paths.contains(path))
        .collect();
    // Warm up every path (upstream start, connection pools, caches).
    for (_, _, caller) in &paths {
        measure(caller, 100.min(args.calls), conc).await?;
    }
    let mut lat: Vec<Vec<u64>> = vec![Vec::new(); paths.len()];
    let mut cpu = vec![0u64; paths.len()];
    for round in 0..ROUNDS {
        let n = args.calls / ROUNDS + usize::from(round < args.calls % ROUNDS);
        for (i, (_, _, caller)) in paths.iter().enumerate() {
            let before = cpu_us();
            lat[i].extend(measure(caller, n, conc).await?);
            cpu[i] += cpu_us().saturating_sub(before);
        }
    }
    for l in &mut lat {
        l.sort_unstable();
    }
    let cpu_per_call = |i: usize| cpu[i] / lat[i].len().max(1) as u64;
    if paths.iter().any(|(path, _, _)| *path != Path::Direct) {
        let logged = admin
            .get(&format!("/v1/tool-calls?tool={CONNECTION}.echo&limit=1"))
            .await?;
        if logged["items"].as_array().is_none_or(Vec::is_empty) {
            bail!("the gateway logged none of the calls");
        }
    }

    let p = |i: usize, q: f64| quantile_ms(&lat[i], q);
    // What each gateway path adds to the direct one, when both ran.
    let direct_at = paths.iter().position(|(path, _, _)| *path == Path::Direct);
    let added: Vec<(Path, f64, f64)> = paths
        .iter()
        .enumerate()
        .filter_map(|(i, (path, _, _))| {
            let d = direct_at.filter(|&d| d != i)?;
            Some((*path, p(i, 0.5) - p(d, 0.5), p(i, 0.99) - p(d, 0.99)))
        })
        .collect();
    if args.target.json {
        let mut out = serde_json::Map::new();
        for (i, (_, label, _)) in paths.iter().enumerate() {
            out.insert(
                label.to_string(),
                json!({"calls": lat[i].len(), "p50_ms": p(i, 0.5), "p99_ms": p(i, 0.99),
                    "cpu_us_per_call": cpu_per_call(i)}),
            );
        }
        for (path, p50, p99) in &added {
            let key = if *path == Path::Mcp {
                "added_mcp"
            } else {
                "added_rest"
            };
            out.insert(key.into(), json!({"p50_ms": p50, "p99_ms": p99}));
        }
        out.insert("concurrency".into(), json!(conc));
        out.insert("read_only".into(), json!(read_only));
        println!("{}", Value::Object(out));
    } else {
        println!(
            "{:<22} {:>7} {:>10} {:>10} {:>14}",
            "", "calls", "p50 ms", "p99 ms", "CPU µs/call"
        );
        for (i, (_, label, _)) in paths.iter().enumerate() {
            println!(
                "{label:<22} {:>7} {:>10.3} {:>10.3} {:>14}",
                lat[i].len(),
                p(i, 0.5),
                p(i, 0.99),
                cpu_per_call(i)
            );
        }
        for (path, p50, p99) in &added {
            let (what, targets) = if *path == Path::Mcp {
                ("/mcp", "   (targets: p50 <= 1 ms, p99 <= 5 ms)")
            } else {
                ("REST", "")
            };
            println!(
                "{:<22} {:>7} {p50:>10.3} {p99:>10.3}{targets}",
                format!("added by {what}"),
                ""
            );
        }
    }
    direct.cancellation_token().cancel();
    via_mcp.cancellation_token().cancel();
    Ok(ExitCode::SUCCESS)
}

/// CPU time used so far by this process and its live children, in µs (0 where
/// `/proc` cannot be read).
fn cpu_us() -> u64 {
    // utime and stime, the 14th and 15th fields, in USER_HZ ticks (100 per second).
    let ticks = |pid: &str| -> u64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return 0;
        };
        // The command name (field 2) may hold spaces; fields resume after its ')'.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        rest.split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|f| f.parse::<u64>().ok())
            .sum()
    };
    let mut total = ticks("self");
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            total += children.split_whitespace().map(ticks).sum::<u64>();
        }
    }
    total * 10_000
}

fn everything(given: Option<PathBuf>) -> anyhow::Result<String> {
    let script = match given {
        Some(p) => p,
        None => std::env::current_dir()?
            .join("crates/tools/tests/upstreams")
            .join(SCRIPT),
    };
    if !script.is_file() {
        bail!(
            "{} is missing: run `npm ci` in crates/tools/tests/upstreams, or pass --everything PATH",
            script.display()
        );
    }
    Ok(script.display().to_string())
}

async fn direct_client(script: &str) -> anyhow::Result<Mcp> {
    let mut child = tokio::process::Command::new("node")
        .args([script, "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting node")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let stdin = child.stdin.take().context("no stdin")?;
    // The child lives as long as the client's task holds its pipes; kill_on_drop
    // ends it with this process.
    tokio::spawn(async move { child.wait().await });
    Ok(ClientConfig::default().serve((stdout, stdin)).await?)
}

/// A client of Strata's `/mcp` in the 2026-07-28 (stateless) lifecycle: each
/// call is a request of its own, as it is over stdio.
///
/// Its HTTP client keeps connections open between calls, as the Python SDK's
/// (httpx) does. The Rust SDK's default transport opens a new connection per
/// call, which would measure TCP set-up (both ends) rather than the gateway.
async fn mcp_client(url: &str, token: &str, conc: usize) -> anyhow::Result<Mcp> {
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
    let config =
        StreamableHttpClientTransportConfig::with_uri(format!("{url}/mcp")).auth_header(token.to_string());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(conc)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let transport = StreamableHttpClientTransport::with_client(http, config);
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![rmcp::model::ProtocolVersion::LATEST],
    };
    ClientConfig::default()
        .serve_with_lifecycle(transport, lifecycle)
        .await
        .context("connecting to Strata's /mcp")
}

/// One way of calling `echo`.
#[derive(Clone)]
enum Caller {
    Mcp(Arc<Mcp>, &'static str),
    Rest(reqwest::Client, Arc<String>, Arc<String>),
}

impl Caller {
    async fn echo(&self, message: String) -> anyhow::Result<()> {
        let text = match self {
            Caller::Mcp(client, tool) => {
                let params = CallToolRequestParams::new(*tool).with_arguments(
                    json!({"message": message})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                );
                let result: CallToolResult = client.peer().call_tool(params).await?;
                if result.is_error == Some(true) {
                    bail!("{tool} answered an error: {:?}", result.content);
                }
                serde_json::to_string(&result.content)?
            }
            Caller::Rest(http, url, token) => {
                let resp = http
                    .post(url.as_str())
                    .bearer_auth(token.as_str())
                    .json(&json!({"arguments": {"message": message}}))
                    .send()
                    .await?;
                let status = resp.status();
                let body = resp.text().await?;
                if !status.is_success() {
                    bail!("POST {url}: {status}: {body}");
                }
                body
            }
        };
        if !text.contains(&message) {
            bail!("the reply does not echo {message}: {text}");
        }
        Ok(())
    }
}

/// `calls` calls of `caller`, `conc` at a time: each one's latency in µs.
async fn measure(caller: &Caller, calls: usize, conc: usize) -> anyhow::Result<Vec<u64>> {
    let mut workers = Vec::new();
    for w in 0..conc {
        let caller = caller.clone();
        let n = calls / conc + usize::from(w < calls % conc);
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for i in 0..n {
                let t = Instant::now();
                caller.echo(format!("m{w}-{i}")).await?;
                lat.push(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::with_capacity(calls);
    for w in workers {
        all.extend(w.await??);
    }
    Ok(all)
}
