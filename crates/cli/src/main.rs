//! `strata`: the server and its command-line client. Glue code: it parses
//! arguments and calls the libraries.

mod audit;
mod bench;
mod client;
mod demo;
mod fleet;
mod mcp;
mod memory;
mod output;
mod sandbox;
mod server;
mod task;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// mimalloc rather than the system allocator: a request's buffers are freed on
/// other threads than the ones that made them (the writer thread frees what the
/// HTTP workers built), and glibc's allocator spends much of a call's CPU there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Strata: system calls for AI agents — identity, audit and governance for every action.
#[derive(Parser, Debug)]
#[command(name = "strata", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the Strata server.
    Serve(server::ServeArgs),
    /// Start a throwaway server, exercise the syscall pipeline and print what happened.
    Demo(demo::DemoArgs),
    /// Measure the server.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Inspect and verify the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Register, list, inspect and delete agents.
    #[command(subcommand)]
    Agent(client::AgentCommand),
    /// Mint and revoke bearer tokens.
    #[command(subcommand)]
    Token(client::TokenCommand),
    /// Submit, inspect, cancel and watch tasks.
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Create or update what a manifest declares (kind: Agent | Supervision).
    Apply {
        /// The manifest (YAML, one or more documents).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete what a manifest declares (-f FILE), or one deployment (`agent NAME`).
    Delete {
        /// The manifest.
        #[arg(short = 'f', long = "filename")]
        file: Option<PathBuf>,
        /// `agent`, with NAME.
        #[arg(value_parser = ["agent"], requires = "name")]
        kind: Option<String>,
        /// The deployment's name.
        name: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List managed agents, deployments or open escalations.
    Get {
        /// What to list.
        #[arg(value_enum)]
        kind: fleet::Kind,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a deployment of managed agents: spec, replicas, restarts, health.
    Describe {
        /// `agent`.
        #[arg(value_parser = ["agent"])]
        kind: String,
        /// The deployment (or replica, NAME-0) name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print the recent output of a deployment's replicas (or of replica NAME-i).
    Logs {
        /// The deployment or replica name.
        name: String,
        /// Only this replica.
        #[arg(long)]
        replica: Option<u32>,
        /// How many recent lines.
        #[arg(long, default_value_t = 100)]
        tail: u32,
        /// Keep printing new lines.
        #[arg(short = 'f', long)]
        follow: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List and settle escalated tasks.
    #[command(subcommand)]
    Escalation(fleet::EscalationCommand),
    /// Store, list and remove the tool gateway's secrets.
    #[command(subcommand)]
    Secret(tools::SecretCommand),
    /// Register, list, sync and remove tool connections (MCP servers, OpenAPI services).
    #[command(subcommand)]
    Connection(tools::ConnectionCommand),
    /// List and call upstream tools.
    #[command(subcommand)]
    Tool(tools::ToolCommand),
    /// Serve Strata's MCP tools over stdio, relayed to the server's /mcp with --token.
    Mcp {
        #[command(flatten)]
        conn: Conn,
    },
    /// Remember, recall, inspect and forget memories.
    #[command(subcommand)]
    Memory(memory::MemoryCommand),
    /// Hand context and open tasks from one agent to another.
    #[command(subcommand)]
    Handoff(memory::HandoffCommand),
    /// Run commands in sandboxes; create, exec in, copy files to and from, stop,
    /// start, snapshot and delete persistent ones.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// Set, list and delete sandbox templates.
    #[command(subcommand)]
    Template(sandbox::TemplateCommand),
}

/// How the client reaches a server.
#[derive(Args, Debug, Clone)]
pub(crate) struct Conn {
    /// Server URL.
    #[arg(long, env = "STRATA_URL", default_value = "http://127.0.0.1:7433")]
    url: String,
    /// Bearer token. When unset and the server is local, `<data-dir>/admin.token` is read.
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data folder whose admin.token to use when no token is given.
    #[arg(long, env = "STRATA_DATA_DIR", default_value = "./strata-data")]
    data_dir: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = output::Format::Table)]
    output: output::Format,
}

fn init_logs(json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    // This binary is also the sandbox init: started as one, it builds the
    // sandbox and exits here, before any thread exists.
    strata_compute::maybe_run_init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                // rmcp logs every stateless MCP request (and every upstream
                // session) at info, with the peer's whole capabilities.
                init_logs(args.log_json, "info,sqlx=warn,rmcp=warn");
                server::serve(args).await
            }
            Command::Demo(args) => {
                init_logs(false, "warn");
                demo::run(args).await
            }
            Command::Bench(cmd) => {
                init_logs(false, "warn");
                bench::run(cmd).await
            }
            Command::Audit(cmd) => audit::run(cmd).await,
            Command::Agent(cmd) => client::agent(cmd).await,
            Command::Token(cmd) => client::token(cmd).await,
            Command::Task(cmd) => task::run(cmd).await,
            Command::Apply { file, conn } => fleet::apply(file, conn).await,
            Command::Delete { file, name, conn, .. } => fleet::delete(file, name, conn).await,
            Command::Get { kind, conn } => fleet::get(kind, conn).await,
            Command::Describe { name, conn, .. } => fleet::describe(name, conn).await,
            Command::Logs {
                name,
                replica,
                tail,
                follow,
                conn,
            } => fleet::logs(name, replica, tail, follow, conn).await,
            Command::Escalation(cmd) => fleet::escalation(cmd).await,
            Command::Secret(cmd) => tools::secret(cmd).await,
            Command::Connection(cmd) => tools::connection(cmd).await,
            Command::Tool(cmd) => tools::tool(cmd).await,
            Command::Mcp { conn } => {
                init_logs(false, "warn");
                mcp::run(conn).await
            }
            Command::Memory(cmd) => memory::memory(cmd).await,
            Command::Handoff(cmd) => memory::handoff(cmd).await,
            Command::Sandbox(cmd) => sandbox::sandbox(cmd).await,
            Command::Template(cmd) => sandbox::template(cmd).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
