//! `strata bench …`: measurements of a server under load.
//!
//! `api` and `tasks` start a server in this process on a fresh data folder (or
//! target `--url`); `recovery` runs it as a child process so it can kill it;
//! `memory` drives the memory layer in-process over a LoCoMo file; `sandbox`
//! measures the compute layer in this process (and through a server started here).
//! Client and server share the machine, so figures include the
//! client's cost and are a floor for what a dedicated server does.

mod api;
mod memory;
mod recovery;
mod sandbox;
mod tasks;
mod tools;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::server::{Running, ServeArgs, start};

/// `strata bench …`
#[derive(Subcommand, Debug)]
pub(crate) enum BenchCommand {
    /// Requests/s and p50/p99 latency of agent creation and authenticated reads.
    Api(api::ApiArgs),
    /// Tasks/s submit→lease→complete of no-op tasks, and submit-to-lease latency.
    Tasks(tasks::TasksArgs),
    /// Recovery from a SIGKILL under load: restart to ready, re-dispatch of orphaned
    /// tasks, dead-agent detection, and no acknowledged task lost or completed twice.
    Recovery(recovery::RecoveryArgs),
    /// LoCoMo evidence recall@5/10/25, context tokens per query, search p50/p95 and
    /// ingest time of the memory layer, beside BM25 over raw turns and full context.
    Memory(memory::MemoryArgs),
    /// Sandbox start-up p50/p99 (cold run, warm pool, persistent exec, through the
    /// API) and density; with --compare, bwrap and bare fork/exec in the same run.
    Sandbox(sandbox::SandboxArgs),
    /// Added latency of the tool gateway: server-everything's `echo` called
    /// directly with an MCP client and through Strata's /mcp (and REST), side by side.
    Tools(tools::ToolsArgs),
}

pub(crate) async fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Api(args) => api::run(args).await,
        BenchCommand::Tasks(args) => tasks::run(args).await,
        BenchCommand::Recovery(args) => recovery::run(args).await,
        BenchCommand::Memory(args) => memory::run(args).await,
        BenchCommand::Sandbox(args) => sandbox::run(args).await,
        BenchCommand::Tools(args) => tools::run(args).await,
    }
}

/// Which server a benchmark measures, and how it reports.
#[derive(Args, Debug)]
pub(crate) struct TargetArgs {
    /// Benchmark a running server instead of starting one (needs --token, an admin token).
    #[arg(long)]
    url: Option<String>,
    /// Admin token for --url.
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Use PostgreSQL for the in-process server (postgres://…).
    #[arg(long)]
    database: Option<String>,
    /// Print results as JSON.
    #[arg(long)]
    json: bool,
}

/// The server under test: started here, or reached at a URL.
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) token: String,
    _running: Option<Running>,
    _dir: tempfile::TempDir,
}

impl Target {
    pub(crate) async fn new(args: &TargetArgs) -> anyhow::Result<Target> {
        Target::with(args, |_| {}).await
    }

    /// As [`Target::new`], with `adjust` changing the in-process server's settings.
    pub(crate) async fn with(
        args: &TargetArgs,
        adjust: impl FnOnce(&mut ServeArgs),
    ) -> anyhow::Result<Target> {
        let (url, token, database) = (
            args.url.as_deref(),
            args.token.as_deref(),
            args.database.as_deref(),
        );
        let dir = tempfile::tempdir()?;
        if let Some(u) = url {
            let token = token.context("--url needs --token (an admin token)")?;
            return Ok(Target {
                url: u.to_string(),
                token: token.to_string(),
                _running: None,
                _dir: dir,
            });
        }
        let mut serve = ServeArgs {
            database: database.map(str::to_string),
            ..ServeArgs::local(dir.path().join("strata-data"))
        };
        adjust(&mut serve);
        let (running, server) = start(&serve).await?;
        tokio::spawn(async move { server.await });
        Ok(Target {
            url: running.url(),
            token: running.admin_token.clone(),
            _running: Some(running),
            _dir: dir,
        })
    }
}

/// The value at quantile `q` of sorted `xs`, in ms (xs in µs).
pub(crate) fn quantile_ms(xs: &[u64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let i = ((xs.len() as f64 - 1.0) * q).round() as usize;
    xs[i] as f64 / 1000.0
}
