//! `strata apply|delete|get|describe|logs` for managed agents, and
//! `strata escalation …` for escalated tasks.
//!
//! A manifest holds YAML documents, each `{kind, metadata: {name}, spec}`:
//! `kind: Agent` is a deployment of managed agents (`PUT /v1/fleet/NAME`);
//! `kind: Supervision` is a capability's supervision policy
//! (`PUT /v1/supervision/NAME`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Conn;
use crate::client::Client;
use crate::output::{Format, print_list, print_object};

/// One document of a manifest.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    #[allow(dead_code)]
    api_version: Option<String>,
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: String,
}

/// What a document becomes: the path to PUT, the body, and the path to DELETE.
struct Resource {
    kind: &'static str,
    name: String,
    path: String,
    body: Value,
    delete_path: String,
}

/// Reads a manifest; relative `workdir`s (and a missing one) resolve against its folder.
fn read_manifest(file: &Path) -> anyhow::Result<Vec<Resource>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let dir = std::fs::canonicalize(file)
        .with_context(|| format!("cannot resolve {}", file.display()))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let value =
            Value::deserialize(doc).with_context(|| format!("{}: document {}", file.display(), i + 1))?;
        if value.is_null() {
            continue;
        }
        let d: Document = serde_json::from_value(value).with_context(|| {
            format!(
                "{}: document {} needs kind, metadata.name and spec",
                file.display(),
                i + 1
            )
        })?;
        let mut body = d.spec;
        let mut delete_path = None;
        let (kind, path) = match d.kind.as_str() {
            "Agent" => {
                let workdir = match body.get("workdir").and_then(Value::as_str) {
                    Some(w) => dir.join(w),
                    None => dir.clone(),
                };
                body.insert("workdir".into(), json!(workdir.display().to_string()));
                ("Agent", format!("/v1/fleet/{}", d.metadata.name))
            }
            "Supervision" => {
                let path = format!("/v1/supervision/{}", d.metadata.name);
                // A group's policy is removed by naming the group.
                if let Some(group) = body.get("group").and_then(Value::as_str) {
                    let mut url = reqwest::Url::parse("http://strata.invalid")?.join(&path)?;
                    url.query_pairs_mut().append_pair("group", group);
                    delete_path = Some(format!("{}?{}", url.path(), url.query().unwrap_or_default()));
                }
                ("Supervision", path)
            }
            other => bail!(
                "{}: document {}: kind '{other}' is not supported (Agent, Supervision)",
                file.display(),
                i + 1
            ),
        };
        out.push(Resource {
            kind,
            name: d.metadata.name,
            delete_path: delete_path.unwrap_or_else(|| path.clone()),
            path,
            body: Value::Object(body),
        });
    }
    if out.is_empty() {
        bail!("{} holds no documents", file.display());
    }
    Ok(out)
}

/// `strata apply -f FILE`
pub(crate) async fn apply(file: PathBuf, conn: Conn) -> anyhow::Result<ExitCode> {
    apply_manifest(&Client::from_conn(&conn)?, &file).await?;
    Ok(ExitCode::SUCCESS)
}

/// PUTs every document of manifest `file`, printing what was applied.
pub(crate) async fn apply_manifest(client: &Client, file: &Path) -> anyhow::Result<()> {
    for r in read_manifest(file)? {
        let reply = client.send(Method::PUT, &r.path, Some(&r.body), None).await?;
        match r.kind {
            "Agent" => println!(
                "agent/{} applied (generation {})",
                r.name,
                reply["generation"].as_i64().unwrap_or(0)
            ),
            _ => println!("supervision/{} applied", r.name),
        }
    }
    Ok(())
}

/// `strata delete …`
pub(crate) async fn delete(
    file: Option<PathBuf>,
    name: Option<String>,
    conn: Conn,
) -> anyhow::Result<ExitCode> {
    let client = Client::from_conn(&conn)?;
    let targets: Vec<(String, String)> = match (file, name) {
        (Some(f), _) => read_manifest(&f)?
            .into_iter()
            .map(|r| (format!("{}/{}", r.kind.to_lowercase(), r.name), r.delete_path))
            .collect(),
        (None, Some(n)) => vec![(format!("agent/{n}"), format!("/v1/fleet/{n}"))],
        (None, None) => bail!("give -f FILE or a deployment name"),
    };
    for (what, path) in targets {
        client.delete(&path).await?;
        println!("{what} deleted");
    }
    Ok(ExitCode::SUCCESS)
}

/// What `strata get` lists.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// Every managed agent replica.
    Agents,
    /// Deployments.
    Deployments,
    /// Escalated tasks.
    Escalations,
}

/// `strata get KIND`
pub(crate) async fn get(kind: Kind, conn: Conn) -> anyhow::Result<ExitCode> {
    let client = Client::from_conn(&conn)?;
    match kind {
        Kind::Deployments => {
            let list = client.get("/v1/fleet").await?;
            let rows: Vec<Value> = items(&list)
                .iter()
                .map(|d| {
                    let st = &d["status"];
                    json!({
                        "name": d["name"],
                        "desired": st["desired"],
                        "ready": st["ready"],
                        "restarts": st["replicas"].as_array().map(|r| r.iter().filter_map(|x| x["restarts"].as_u64()).sum::<u64>()),
                        "generation": d["generation"],
                        "command": d["spec"]["command"],
                    })
                })
                .collect();
            print_list(
                conn.output,
                &json!({"items": rows}),
                &["name", "desired", "ready", "restarts", "generation", "command"],
            );
        }
        Kind::Agents => {
            let list = client.get("/v1/fleet").await?;
            let mut rows = Vec::new();
            for d in items(&list) {
                for r in d["status"]["replicas"].as_array().into_iter().flatten() {
                    rows.push(json!({
                        "name": format!("{}-{}", d["name"].as_str().unwrap_or(""), r["replica"]),
                        "deployment": d["name"],
                        "phase": r["phase"],
                        "pid": r["pid"],
                        "restarts": r["restarts"],
                        "silent": r["silent_ms"].as_i64().map(|ms| format!("{:.1}s", ms as f64 / 1000.0)),
                        "agent": r["agent_id"],
                        "last_exit": r["last_exit"],
                    }));
                }
            }
            print_list(
                conn.output,
                &json!({"items": rows}),
                &["name", "phase", "pid", "restarts", "silent", "agent", "last_exit"],
            );
        }
        Kind::Escalations => {
            let list = client.get("/v1/escalations?state=open").await?;
            print_list(
                conn.output,
                &list,
                &[
                    "id",
                    "task_id",
                    "capability",
                    "assignee",
                    "review_task",
                    "created_at",
                ],
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

/// `strata describe agent NAME`: a deployment (or the deployment of replica `NAME-i`).
pub(crate) async fn describe(name: String, conn: Conn) -> anyhow::Result<ExitCode> {
    let client = Client::from_conn(&conn)?;
    let d = match client.get(&format!("/v1/fleet/{name}")).await {
        Ok(d) => d,
        Err(e) => match name.rsplit_once('-') {
            Some((base, i)) if i.parse::<u32>().is_ok() => {
                client.get(&format!("/v1/fleet/{base}")).await.map_err(|_| e)?
            }
            _ => return Err(e),
        },
    };
    match conn.output {
        Format::Json => print_object(Format::Json, &d),
        Format::Table => print!(
            "{}",
            serde_yaml_ng::to_string(&d).context("cannot print as YAML")?
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `strata logs NAME`
pub(crate) async fn logs(
    name: String,
    replica: Option<u32>,
    tail: u32,
    follow: bool,
    conn: Conn,
) -> anyhow::Result<ExitCode> {
    let client = Client::from_conn(&conn)?;
    let (base, replica) = match (replica, name.rsplit_once('-')) {
        (None, Some((b, i))) if client.get(&format!("/v1/fleet/{name}")).await.is_err() => {
            (b.to_string(), i.parse::<u32>().ok())
        }
        _ => (name, replica),
    };
    let mut seen: HashSet<String> = HashSet::new();
    loop {
        let mut path = format!("/v1/fleet/{base}/logs?tail={tail}");
        if let Some(r) = replica {
            path.push_str(&format!("&replica={r}"));
        }
        let got = client.get(&path).await?;
        let mut now_seen = HashSet::new();
        for l in got["lines"].as_array().into_iter().flatten() {
            let key = l.to_string();
            if !seen.contains(&key) {
                println!(
                    "[{base}-{} {}] {}",
                    l["replica"],
                    l["stream"].as_str().unwrap_or(""),
                    l["line"].as_str().unwrap_or("")
                );
            }
            now_seen.insert(key);
        }
        seen = now_seen;
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `strata escalation …`
#[derive(Subcommand, Debug)]
pub(crate) enum EscalationCommand {
    /// List escalations (open ones unless --all).
    #[command(alias = "ls")]
    List {
        /// Include resolved escalations.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Settle an escalation: retry, cancel, or complete its task with a result.
    Resolve {
        /// The escalation id (esc_…).
        id: String,
        /// What to do with the task.
        #[arg(long, value_parser = ["retry", "cancel", "complete_with"])]
        action: String,
        /// The task's result as JSON, for complete_with.
        #[arg(long)]
        result: Option<String>,
        /// More attempts, for retry.
        #[arg(long)]
        attempts: Option<u32>,
        /// Why.
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `strata escalation …`
pub(crate) async fn escalation(cmd: EscalationCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EscalationCommand::List { all, conn } => {
            let client = Client::from_conn(&conn)?;
            let path = if all {
                "/v1/escalations"
            } else {
                "/v1/escalations?state=open"
            };
            print_list(
                conn.output,
                &client.get(path).await?,
                &["id", "task_id", "capability", "assignee", "state", "created_at"],
            );
        }
        EscalationCommand::Resolve {
            id,
            action,
            result,
            attempts,
            note,
            conn,
        } => {
            let client = Client::from_conn(&conn)?;
            let mut body = json!({"action": action});
            if let Some(r) = result {
                body["result"] = serde_json::from_str(&r).context("--result is not JSON")?;
            }
            if let Some(a) = attempts {
                body["attempts"] = json!(a);
            }
            if let Some(n) = note {
                body["note"] = json!(n);
            }
            let reply = client
                .post(&format!("/v1/escalations/{id}/resolve"), &body)
                .await?;
            print_object(conn.output, &reply);
        }
    }
    Ok(ExitCode::SUCCESS)
}
