//! `strata memory …` and `strata handoff …`: the memory layer over the HTTP API.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::Conn;
use crate::client::Client;
use crate::output::{Format, print_list, print_object};

/// `strata memory …`
#[derive(Subcommand, Debug)]
pub(crate) enum MemoryCommand {
    /// Remember a text: facts are extracted and curated (ADD, UPDATE, DELETE or NONE).
    Add {
        /// What to remember (as if said by the user).
        text: String,
        /// The user it is about.
        #[arg(long)]
        user: Option<String>,
        /// The agent it belongs to (an agent's token always adds to its own).
        #[arg(long)]
        agent: Option<String>,
        /// The run (session) it came from.
        #[arg(long)]
        run: Option<String>,
        /// Metadata, a JSON object.
        #[arg(long)]
        metadata: Option<String>,
        /// Where it came from, a JSON object (e.g. '{"msg":"m1"}').
        #[arg(long)]
        source: Option<String>,
        /// When it was said (RFC 3339); default now.
        #[arg(long)]
        observed_at: Option<String>,
        /// Store the text verbatim instead of extracting facts.
        #[arg(long)]
        no_infer: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Recall memories, best first.
    Search {
        /// What to recall.
        query: String,
        /// Only this user's memories.
        #[arg(long)]
        user: Option<String>,
        /// Only this agent's memories.
        #[arg(long)]
        agent: Option<String>,
        /// Only this run's memories.
        #[arg(long)]
        run: Option<String>,
        /// A filter, a JSON object (e.g. '{"metadata.topic": {"in": ["pets"]}}').
        #[arg(long)]
        filters: Option<String>,
        /// How many results at most.
        #[arg(long, default_value_t = 10)]
        top_k: u32,
        /// See the memories as they were at this instant (RFC 3339).
        #[arg(long)]
        as_of: Option<String>,
        /// Keep only as many results as fit this many tokens.
        #[arg(long)]
        max_tokens: Option<u32>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one memory, or list memories (with --user/--agent/--run) when no id is given.
    #[command(alias = "ls")]
    Get {
        /// The memory (`mem_…`).
        id: Option<String>,
        /// List this user's memories.
        #[arg(long, conflicts_with = "id")]
        user: Option<String>,
        /// List this agent's memories.
        #[arg(long, conflicts_with = "id")]
        agent: Option<String>,
        /// List this run's memories.
        #[arg(long, conflicts_with = "id")]
        run: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Every change to a memory, oldest first.
    History {
        /// The memory (`mem_…`).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Retire a memory (its history stays).
    #[command(alias = "rm")]
    Forget {
        /// The memory (`mem_…`).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `strata handoff …`
#[derive(Subcommand, Debug)]
pub(crate) enum HandoffCommand {
    /// Hand context to another agent (with an agent's token).
    Send {
        /// The receiving agent (`agt_…`).
        to: String,
        /// What the receiver needs to know.
        #[arg(long)]
        summary: String,
        /// A memory to hand over (repeatable).
        #[arg(long = "memory", value_name = "MEM_ID")]
        memories: Vec<String>,
        /// Also hand over the hits of this memory search.
        #[arg(long, value_name = "QUERY")]
        memory_query: Option<String>,
        /// An open task of the sender's to move on accept (repeatable).
        #[arg(long = "task", value_name = "TASK_ID")]
        tasks: Vec<String>,
        /// Opaque state for the receiver, a JSON value.
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List handoffs: an agent's default is those made to it; an operator sees all.
    #[command(alias = "list")]
    Ls {
        /// Handed to this agent (`me`: the caller; the default for an agent).
        #[arg(long)]
        to: Option<String>,
        /// Handed by this agent (`me`: the caller).
        #[arg(long)]
        from: Option<String>,
        /// pending, accepted or rejected.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Accept a handoff made to the caller: its memories become readable, its tasks move.
    Accept {
        /// The handoff (`hof_…`).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Reject a handoff made to the caller.
    Reject {
        /// The handoff (`hof_…`).
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

fn json_arg(flag: &str, v: Option<String>) -> anyhow::Result<Option<Value>> {
    v.map(|s| serde_json::from_str(&s).with_context(|| format!("--{flag} is not JSON")))
        .transpose()
}

/// Inserts the present values.
fn with(mut obj: Map<String, Value>, pairs: &[(&str, Option<Value>)]) -> Value {
    for (k, v) in pairs {
        if let Some(v) = v {
            obj.insert((*k).to_string(), v.clone());
        }
    }
    Value::Object(obj)
}

fn s(v: &Option<String>) -> Option<Value> {
    v.clone().map(Value::String)
}

/// A path with its query string, encoded.
fn with_query(path: &str, pairs: &[(&str, &Option<String>)]) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse(&format!("http://localhost{path}")).context("a constant URL")?;
    for (k, v) in pairs {
        if let Some(v) = v {
            url.query_pairs_mut().append_pair(k, v);
        }
    }
    Ok(match url.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    })
}

/// Prints `results` as a table of `columns`, or the whole answer as JSON.
fn print_results(format: Format, v: &Value, columns: &[&str]) {
    match format {
        Format::Json => print_object(format, v),
        Format::Table => print_list(format, &json!({"items": v["results"]}), columns),
    }
}

pub(crate) async fn memory(cmd: MemoryCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        MemoryCommand::Add {
            text,
            user,
            agent,
            run,
            metadata,
            source,
            observed_at,
            no_infer,
            conn,
        } => {
            let mut body = Map::new();
            body.insert("text".into(), Value::String(text));
            body.insert("infer".into(), Value::Bool(!no_infer));
            let body = with(
                body,
                &[
                    ("user_id", s(&user)),
                    ("agent_id", s(&agent)),
                    ("run_id", s(&run)),
                    ("metadata", json_arg("metadata", metadata)?),
                    ("source", json_arg("source", source)?),
                    ("observed_at", s(&observed_at)),
                ],
            );
            let v = Client::from_conn(&conn)?.post("/v1/memories", &body).await?;
            print_results(conn.output, &v, &["event", "id", "memory"]);
        }
        MemoryCommand::Search {
            query,
            user,
            agent,
            run,
            filters,
            top_k,
            as_of,
            max_tokens,
            conn,
        } => {
            let mut body = Map::new();
            body.insert("query".into(), Value::String(query));
            body.insert("top_k".into(), json!(top_k));
            let body = with(
                body,
                &[
                    ("user_id", s(&user)),
                    ("agent_id", s(&agent)),
                    ("run_id", s(&run)),
                    ("filters", json_arg("filters", filters)?),
                    ("as_of", s(&as_of)),
                    ("max_tokens", max_tokens.map(|t| json!(t))),
                ],
            );
            let v = Client::from_conn(&conn)?
                .post("/v1/memories/search", &body)
                .await?;
            print_results(conn.output, &v, &["score", "id", "memory", "valid_from"]);
        }
        MemoryCommand::Get {
            id: Some(id), conn, ..
        } => {
            let v = Client::from_conn(&conn)?
                .get(&format!("/v1/memories/{id}"))
                .await?;
            print_object(conn.output, &v);
        }
        MemoryCommand::Get {
            id: None,
            user,
            agent,
            run,
            conn,
        } => {
            let path = with_query(
                "/v1/memories",
                &[("user_id", &user), ("agent_id", &agent), ("run_id", &run)],
            )?;
            let v = Client::from_conn(&conn)?.get(&path).await?;
            print_results(
                conn.output,
                &v,
                &["id", "memory", "user_id", "agent_id", "updated_at"],
            );
        }
        MemoryCommand::History { id, conn } => {
            let v = Client::from_conn(&conn)?
                .get(&format!("/v1/memories/{id}/history"))
                .await?;
            print_results(
                conn.output,
                &v,
                &["event", "version", "old_memory", "new_memory", "recorded_at"],
            );
        }
        MemoryCommand::Forget { id, conn } => {
            let v = Client::from_conn(&conn)?
                .delete(&format!("/v1/memories/{id}"))
                .await?;
            print_object(conn.output, &v);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn handoff(cmd: HandoffCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        HandoffCommand::Send {
            to,
            summary,
            memories,
            memory_query,
            tasks,
            state,
            conn,
        } => {
            let mut body = Map::new();
            body.insert("to".into(), Value::String(to));
            body.insert("summary".into(), Value::String(summary));
            body.insert("memory_ids".into(), json!(memories));
            body.insert("task_ids".into(), json!(tasks));
            let body = with(
                body,
                &[
                    ("memory_query", memory_query.map(|q| json!({"query": q}))),
                    ("state", json_arg("state", state)?),
                ],
            );
            let v = Client::from_conn(&conn)?.post("/v1/handoffs", &body).await?;
            print_object(conn.output, &v);
        }
        HandoffCommand::Ls {
            to,
            from,
            status,
            conn,
        } => {
            let path = with_query(
                "/v1/handoffs",
                &[("to", &to), ("from", &from), ("status", &status)],
            )?;
            let v = Client::from_conn(&conn)?.get(&path).await?;
            print_results(
                conn.output,
                &v,
                &["id", "status", "from", "to", "summary", "created_at"],
            );
        }
        HandoffCommand::Accept { id, conn } => {
            let v = Client::from_conn(&conn)?
                .post(&format!("/v1/handoffs/{id}/accept"), &json!({}))
                .await?;
            print_object(conn.output, &v);
        }
        HandoffCommand::Reject { id, reason, conn } => {
            if reason.as_deref().is_some_and(str::is_empty) {
                bail!("--reason must not be empty");
            }
            let v = Client::from_conn(&conn)?
                .post(&format!("/v1/handoffs/{id}/reject"), &json!({"reason": reason}))
                .await?;
            print_object(conn.output, &v);
        }
    }
    Ok(ExitCode::SUCCESS)
}
