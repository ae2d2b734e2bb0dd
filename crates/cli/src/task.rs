//! `strata task …`: submitting, inspecting, cancelling and watching tasks.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::Conn;
use crate::client::Client;
use crate::output::{Format, print_list, print_object};

/// `strata task …`
#[derive(Subcommand, Debug)]
pub(crate) enum TaskCommand {
    /// Submit a task for any agent declaring CAPABILITY; prints its id.
    Submit {
        /// The capability an agent must declare.
        capability: String,
        /// The input as JSON (default `{}`); `@FILE` reads it from a file.
        #[arg(long, short = 'i')]
        input: Option<String>,
        /// 0–9; higher is leased first.
        #[arg(long, default_value_t = 0)]
        priority: u8,
        /// Attempts before the task is dead-lettered.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// RFC 3339 time after which the task fails.
        #[arg(long)]
        deadline: Option<String>,
        /// Pin the task to this agent (agt_…).
        #[arg(long)]
        agent: Option<String>,
        /// A label KEY=VALUE (repeatable).
        #[arg(long = "label", short = 'l')]
        labels: Vec<String>,
        /// Queue it even if no live agent declares the capability yet.
        #[arg(long)]
        allow_unroutable: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a task with its result or error and its attempts.
    Get {
        /// The task id (tsk_…).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List tasks.
    #[command(alias = "ls")]
    List {
        /// Only tasks in this state (queued, leased, succeeded, failed, cancelled, dead, escalated).
        #[arg(long)]
        state: Option<String>,
        /// Only tasks needing this capability.
        #[arg(long)]
        capability: Option<String>,
        /// Only tasks pinned to or leased by this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this task id.
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Cancel a task that has not finished.
    Cancel {
        /// The task id (tsk_…).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Follow task events as they commit (needs an operator token). Ctrl-C stops.
    Watch {
        /// Start after this event sequence number (0: from the beginning).
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Also show events that are not about tasks.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

fn read_input(input: Option<String>) -> anyhow::Result<Value> {
    let Some(text) = input else { return Ok(json!({})) };
    let text = match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?,
        None => text,
    };
    serde_json::from_str(&text).context("--input is not valid JSON")
}

pub(crate) async fn run(cmd: TaskCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TaskCommand::Submit {
            capability,
            input,
            priority,
            max_attempts,
            deadline,
            agent,
            labels,
            allow_unroutable,
            conn,
        } => {
            let mut body = json!({
                "capability": capability, "input": read_input(input)?, "priority": priority,
                "allow_unroutable": allow_unroutable,
            });
            for (k, v) in [
                ("max_attempts", json!(max_attempts)),
                ("deadline", json!(deadline)),
                ("agent", json!(agent)),
            ] {
                if !v.is_null() {
                    body[k] = v;
                }
            }
            body["labels"] = crate::client::parse_labels(&labels)?;
            let v = Client::from_conn(&conn)?.post("/v1/tasks", &body).await?;
            print_object(conn.output, &v);
        }
        TaskCommand::Get { id, conn } => {
            let v = Client::from_conn(&conn)?.get(&format!("/v1/tasks/{id}")).await?;
            print_object(conn.output, &v);
        }
        TaskCommand::List {
            state,
            capability,
            agent,
            limit,
            after,
            conn,
        } => {
            let mut path = format!("/v1/tasks?limit={limit}");
            for (k, v) in [
                ("state", state),
                ("capability", capability),
                ("agent", agent),
                ("after", after),
            ] {
                if let Some(v) = v {
                    path.push_str(&format!("&{k}={v}"));
                }
            }
            let v = Client::from_conn(&conn)?.get(&path).await?;
            print_list(
                conn.output,
                &v,
                &[
                    "id",
                    "capability",
                    "state",
                    "priority",
                    "attempts",
                    "leased_by",
                    "created_at",
                ],
            );
        }
        TaskCommand::Cancel { id, conn } => {
            let v = Client::from_conn(&conn)?
                .post(&format!("/v1/tasks/{id}/cancel"), &json!({}))
                .await?;
            print_object(conn.output, &v);
        }
        TaskCommand::Watch { after, all, conn } => return watch(&conn, after, all).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads `/v1/events` as Server-Sent Events and prints each task event.
async fn watch(conn: &Conn, after: i64, all: bool) -> anyhow::Result<ExitCode> {
    let client = Client::from_conn(conn)?;
    let resp = client.stream(&format!("/v1/events?after={after}")).await?;
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(
            &chunk.context("the event stream broke")?,
        ));
        // Events are separated by a blank line; keep the incomplete tail for later.
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let data: String = frame
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim)
                .collect();
            let event = frame
                .lines()
                .find_map(|l| l.strip_prefix("event:"))
                .map(str::trim)
                .unwrap_or("");
            if event == "error" {
                anyhow::bail!("the server ended the stream: {data}");
            }
            let Ok(ev) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            let kind = ev["kind"].as_str().unwrap_or("");
            if !all && !kind.starts_with("task.") {
                continue;
            }
            match conn.output {
                Format::Json => println!("{ev}"),
                Format::Table => println!(
                    "{:>6}  {}  {:<22} {:<30} {}",
                    ev["seq"],
                    strata_core::time::rfc3339(ev["at"].as_i64().unwrap_or(0)),
                    kind,
                    ev["subject"].as_str().unwrap_or(""),
                    ev["data"]["principal"].as_str().unwrap_or("")
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
