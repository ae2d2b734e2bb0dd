//! `strata sandbox …` and `strata template …`: the compute layer over the HTTP API.
//!
//! `run` and `exec` print the command's stdout and stderr on the CLI's own
//! and exit with the command's exit code (124 for a timeout, 137 when it was
//! killed or ran out of memory), so they compose in shell scripts; `exec`
//! streams the output as the command writes it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use clap::Subcommand;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::Conn;
use crate::client::Client;
use crate::output::{Format, print_list, print_object};

/// How a command is run: shared by `run` and `exec`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct CommandArgs {
    /// Wall-clock limit (e.g. `30s`); past it the command is killed.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// An environment variable, NAME=VALUE (repeatable).
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// The task this is for (`tsk_…`), for metering.
    #[arg(long)]
    task: Option<String>,
    /// Working directory inside the sandbox (default /workspace).
    #[arg(long)]
    cwd: Option<String>,
    /// The program and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

impl CommandArgs {
    fn body(&self) -> anyhow::Result<Map<String, Value>> {
        let mut env = Map::new();
        for e in &self.env {
            let (k, v) = e
                .split_once('=')
                .with_context(|| format!("--env {e}: expected NAME=VALUE"))?;
            env.insert(k.to_string(), json!(v));
        }
        let mut body = Map::new();
        body.insert("command".into(), json!(self.command));
        if !env.is_empty() {
            body.insert("env".into(), Value::Object(env));
        }
        if let Some(t) = self.timeout {
            body.insert("timeout_ms".into(), json!(t.as_millis() as u64));
        }
        if let Some(t) = &self.task {
            body.insert("task".into(), json!(t));
        }
        if let Some(c) = &self.cwd {
            body.insert("cwd".into(), json!(c));
        }
        Ok(body)
    }
}

/// `strata sandbox …`
#[derive(Subcommand, Debug)]
pub(crate) enum SandboxCommand {
    /// Run one command in a fresh sandbox and exit with its exit code.
    Run {
        /// Start from this template.
        #[arg(long)]
        template: Option<String>,
        /// Memory limit, bytes.
        #[arg(long)]
        memory: Option<u64>,
        /// What runs it: `process` (the default) or `wasm` (the program is a
        /// WASI module in the workspace, e.g. one given with `--file`).
        #[arg(long)]
        backend: Option<String>,
        /// A local file placed in /workspace first: `LOCAL` or `LOCAL:PATH` (repeatable).
        #[arg(long = "file")]
        files: Vec<String>,
        #[command(flatten)]
        cmd: CommandArgs,
        #[command(flatten)]
        conn: Conn,
    },
    /// Create a persistent sandbox and print its id.
    Create {
        /// Start from this template.
        #[arg(long)]
        template: Option<String>,
        /// What runs its commands, for its whole life: `process` or `wasm`.
        #[arg(long)]
        backend: Option<String>,
        /// Fork this snapshot (`snp_…`).
        #[arg(long)]
        from_snapshot: Option<String>,
        /// Stop it after this long without use (e.g. `30m`).
        #[arg(long, value_parser = humantime::parse_duration)]
        idle_stop: Option<Duration>,
        /// Delete it this long after creation (e.g. `1d`).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Run a command in a persistent sandbox, streaming its output.
    Exec {
        /// The sandbox (`sbx_…`).
        id: String,
        #[command(flatten)]
        cmd: CommandArgs,
        #[command(flatten)]
        conn: Conn,
    },
    /// Copy a file in or out: `cp LOCAL ID:PATH` or `cp ID:PATH LOCAL` (`-`: stdin/stdout).
    Cp {
        /// Source.
        src: String,
        /// Destination.
        dst: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List sandboxes, or the files of one (`ls ID [DIR]`).
    Ls {
        /// A sandbox whose files to list.
        id: Option<String>,
        /// A folder under /workspace.
        dir: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop a sandbox (its workspace is saved).
    Stop {
        /// The sandbox.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Start a stopped sandbox.
    Start {
        /// The sandbox.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Snapshot a sandbox's workspace and print the snapshot's id.
    Snapshot {
        /// The sandbox.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List snapshots (an agent: those it took), optionally of one sandbox.
    Snapshots {
        /// Only those of this sandbox.
        #[arg(long)]
        sandbox: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a snapshot and its files.
    SnapshotRm {
        /// The snapshot (`snp_…`).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show stored usage of runs and execs, with totals (an agent: its own).
    Usage {
        /// Only this agent's.
        #[arg(long)]
        agent: Option<String>,
        /// Only this task's.
        #[arg(long)]
        task: Option<String>,
        /// Only this sandbox's.
        #[arg(long)]
        sandbox: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a sandbox.
    #[command(alias = "delete")]
    Rm {
        /// The sandbox.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `strata template …`
#[derive(Subcommand, Debug)]
pub(crate) enum TemplateCommand {
    /// Create or replace a template from a JSON file (limits, env, ro_binds, network, setup).
    Set {
        /// Its name.
        name: String,
        /// The definition (JSON; `-` for stdin; default `{}`).
        #[arg(short = 'f', long = "filename")]
        file: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List templates.
    #[command(alias = "list")]
    Ls {
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a template.
    #[command(alias = "delete")]
    Rm {
        /// Its name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub(crate) async fn sandbox(cmd: SandboxCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SandboxCommand::Run {
            template,
            memory,
            backend,
            files,
            cmd,
            conn,
        } => {
            let mut body = cmd.body()?;
            if let Some(t) = template {
                body.insert("template".into(), json!(t));
            }
            if let Some(b) = backend {
                body.insert("backend".into(), json!(b));
            }
            let mut seeded = Vec::new();
            for f in files {
                let (local, path) = match f.split_once(':') {
                    Some((l, p)) => (l.to_string(), p.to_string()),
                    None => {
                        let name = std::path::Path::new(&f)
                            .file_name()
                            .with_context(|| format!("--file {f}: names no file"))?;
                        (f.clone(), name.to_string_lossy().into_owned())
                    }
                };
                let data = std::fs::read(&local).with_context(|| format!("--file: reading {local}"))?;
                seeded.push(json!({
                    "path": path,
                    "content_base64": base64::engine::general_purpose::STANDARD.encode(data),
                }));
            }
            if !seeded.is_empty() {
                body.insert("files".into(), Value::Array(seeded));
            }
            if let Some(m) = memory {
                body.insert("limits".into(), json!({"memory_bytes": m}));
            }
            let out = Client::from_conn(&conn)?
                .post("/v1/sandboxes/run", &Value::Object(body))
                .await?;
            return finish(conn.output, &out, true);
        }
        SandboxCommand::Create {
            template,
            backend,
            from_snapshot,
            idle_stop,
            ttl,
            conn,
        } => {
            let mut body = Map::new();
            if let Some(t) = template {
                body.insert("template".into(), json!(t));
            }
            if let Some(b) = backend {
                body.insert("backend".into(), json!(b));
            }
            if let Some(s) = from_snapshot {
                body.insert("from_snapshot".into(), json!(s));
            }
            if let Some(d) = idle_stop {
                body.insert("idle_stop_ms".into(), json!(d.as_millis() as u64));
            }
            if let Some(d) = ttl {
                body.insert("ttl_ms".into(), json!(d.as_millis() as u64));
            }
            let v = Client::from_conn(&conn)?
                .post("/v1/sandboxes", &Value::Object(body))
                .await?;
            print_id(conn.output, &v);
        }
        SandboxCommand::Exec { id, cmd, conn } => return exec(&conn, &id, &cmd).await,
        SandboxCommand::Cp { src, dst, conn } => copy(&conn, &src, &dst).await?,
        SandboxCommand::Ls { id, dir, conn } => {
            let client = Client::from_conn(&conn)?;
            match id {
                None => {
                    let v = client.get("/v1/sandboxes").await?;
                    print_list(
                        conn.output,
                        &v,
                        &[
                            "id",
                            "state",
                            "backend",
                            "template",
                            "owner_agent",
                            "last_used_at",
                        ],
                    );
                }
                Some(id) => {
                    let query = dir.map(|d| format!("?dir={}", encode(&d))).unwrap_or_default();
                    let v = client.get(&format!("/v1/sandboxes/{id}/files{query}")).await?;
                    print_list(conn.output, &v, &["name", "kind", "size"]);
                }
            }
        }
        SandboxCommand::Stop { id, conn } => lifecycle(&conn, &id, "stop").await?,
        SandboxCommand::Start { id, conn } => lifecycle(&conn, &id, "start").await?,
        SandboxCommand::Snapshot { id, conn } => {
            let v = Client::from_conn(&conn)?
                .post(&format!("/v1/sandboxes/{id}/snapshot"), &json!({}))
                .await?;
            print_id(conn.output, &v);
        }
        SandboxCommand::Snapshots { sandbox, conn } => {
            let query = sandbox
                .map(|s| format!("&sandbox={}", encode(&s)))
                .unwrap_or_default();
            let v = all_pages(
                &Client::from_conn(&conn)?,
                &format!("/v1/snapshots?limit=500{query}"),
            )
            .await?;
            print_list(
                conn.output,
                &v,
                &["id", "sandbox_id", "owner_agent", "bytes", "created_at"],
            );
        }
        SandboxCommand::SnapshotRm { id, conn } => {
            let v = Client::from_conn(&conn)?
                .delete(&format!("/v1/snapshots/{}", encode(&id)))
                .await?;
            print_id(conn.output, &v);
        }
        SandboxCommand::Usage {
            agent,
            task,
            sandbox,
            conn,
        } => {
            let mut query = String::from("/v1/sandbox-usage?limit=500");
            for (k, v) in [("agent", agent), ("task", task), ("sandbox", sandbox)] {
                if let Some(v) = v {
                    query.push_str(&format!("&{k}={}", encode(&v)));
                }
            }
            let v = all_pages(&Client::from_conn(&conn)?, &query).await?;
            print_list(
                conn.output,
                &v,
                &[
                    "at",
                    "kind",
                    "status",
                    "agent_id",
                    "task_id",
                    "sandbox_id",
                    "wall_ms",
                    "cpu_ms",
                    "peak_memory_bytes",
                ],
            );
            if conn.output == Format::Table {
                let t = &v["totals"];
                println!(
                    "total: {} records, {} ms wall, {} ms CPU, peak {} bytes",
                    t["records"], t["wall_ms"], t["cpu_ms"], t["peak_memory_bytes"]
                );
            }
        }
        SandboxCommand::Rm { id, conn } => {
            let v = Client::from_conn(&conn)?
                .delete(&format!("/v1/sandboxes/{id}"))
                .await?;
            print_id(conn.output, &v);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn template(cmd: TemplateCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TemplateCommand::Set { name, file, conn } => {
            let text = match file.as_deref() {
                None => "{}".to_string(),
                Some(p) if p.as_os_str() == "-" => {
                    std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
                }
                Some(p) => {
                    std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?
                }
            };
            let body: Value = serde_json::from_str(&text).context("the template is not valid JSON")?;
            let v = Client::from_conn(&conn)?
                .send(
                    Method::PUT,
                    &format!("/v1/templates/{}", encode(&name)),
                    Some(&body),
                    None,
                )
                .await?;
            print_object(conn.output, &v);
        }
        TemplateCommand::Ls { conn } => {
            let v = Client::from_conn(&conn)?.get("/v1/templates").await?;
            print_list(conn.output, &v, &["name", "network", "limits", "setup"]);
        }
        TemplateCommand::Rm { name, conn } => {
            let v = Client::from_conn(&conn)?
                .delete(&format!("/v1/templates/{}", encode(&name)))
                .await?;
            print_object(conn.output, &v);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every page of a listing at `path` (which has a query already), as one
/// value: the first page's fields with all the items.
async fn all_pages(client: &Client, path: &str) -> anyhow::Result<Value> {
    let mut first = client.get(path).await?;
    let mut next = first.get("next").and_then(Value::as_str).map(str::to_string);
    while let Some(after) = next.take() {
        let page = client.get(&format!("{path}&after={}", encode(&after))).await?;
        if let (Some(all), Some(more)) = (
            first.get_mut("items").and_then(Value::as_array_mut),
            page["items"].as_array(),
        ) {
            all.extend(more.iter().cloned());
        }
        next = page.get("next").and_then(Value::as_str).map(str::to_string);
    }
    if let Some(o) = first.as_object_mut() {
        o.remove("next");
    }
    Ok(first)
}

fn print_id(format: Format, v: &Value) {
    match (format, v["id"].as_str()) {
        (Format::Table, Some(id)) => println!("{id}"),
        _ => print_object(format, v),
    }
}

async fn lifecycle(conn: &Conn, id: &str, verb: &str) -> anyhow::Result<()> {
    let v = Client::from_conn(conn)?
        .post(&format!("/v1/sandboxes/{id}/{verb}"), &json!({}))
        .await?;
    match conn.output {
        Format::Table => println!(
            "{} {}",
            v["id"].as_str().unwrap_or(id),
            v["state"].as_str().unwrap_or("")
        ),
        Format::Json => print_object(conn.output, &v),
    }
    Ok(())
}

/// Prints an outcome (its output too when `with_output`) and turns it into the exit code.
fn finish(format: Format, out: &Value, with_output: bool) -> anyhow::Result<ExitCode> {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(out).unwrap_or_default());
    } else if with_output {
        let mut so = std::io::stdout().lock();
        so.write_all(out["stdout"].as_str().unwrap_or("").as_bytes())?;
        so.flush()?;
        let mut se = std::io::stderr().lock();
        se.write_all(out["stderr"].as_str().unwrap_or("").as_bytes())?;
        se.flush()?;
    }
    let code = match out["status"].as_str() {
        Some("exited") => out["exit_code"].as_i64().unwrap_or(1),
        Some("timeout") => {
            eprintln!("strata: the command timed out");
            124
        }
        Some("oom") => {
            eprintln!("strata: the command ran out of memory");
            137
        }
        other => {
            eprintln!(
                "strata: the command ended: {} {}",
                other.unwrap_or("unknown"),
                out["signal"]
            );
            137
        }
    };
    if out["stdout_truncated"] == true || out["stderr_truncated"] == true {
        eprintln!("strata: output was truncated at the sandbox's output limit");
    }
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// `exec`, streamed: chunks are printed as they arrive, then the exit code is returned.
async fn exec(conn: &Conn, id: &str, cmd: &CommandArgs) -> anyhow::Result<ExitCode> {
    let client = Client::from_conn(conn)?;
    let body = Value::Object(cmd.body()?);
    let path = format!("/v1/sandboxes/{id}/exec");
    if conn.output == Format::Json {
        let out = client.post(&path, &body).await?;
        return finish(conn.output, &out, false);
    }
    let resp = client.post_stream(&path, &body).await?;
    let streamed = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !streamed {
        let out: Value = resp.json().await.context("the server's reply is not JSON")?;
        return finish(conn.output, &out, true);
    }
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(
            &chunk.context("the output stream broke")?,
        ));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let event = frame
                .lines()
                .find_map(|l| l.strip_prefix("event:"))
                .map(str::trim)
                .unwrap_or("");
            let data: String = frame
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n");
            let Ok(v) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            match event {
                "stdout" => {
                    let mut so = std::io::stdout().lock();
                    so.write_all(v["data"].as_str().unwrap_or("").as_bytes())?;
                    so.flush()?;
                }
                "stderr" => {
                    let mut se = std::io::stderr().lock();
                    se.write_all(v["data"].as_str().unwrap_or("").as_bytes())?;
                    se.flush()?;
                }
                "exit" => return finish(conn.output, &v, false),
                "error" => bail!(
                    "{} : {}",
                    v["code"].as_str().unwrap_or("error"),
                    v["detail"].as_str().unwrap_or("")
                ),
                _ => {}
            }
        }
    }
    bail!("the server closed the stream before the command's exit")
}

/// `cp`: exactly one side is `ID:PATH`.
async fn copy(conn: &Conn, src: &str, dst: &str) -> anyhow::Result<()> {
    let remote = |s: &str| -> Option<(String, String)> {
        let (id, path) = s.split_once(':')?;
        id.starts_with("sbx_").then(|| (id.to_string(), path.to_string()))
    };
    let client = Client::from_conn(conn)?;
    match (remote(src), remote(dst)) {
        (None, Some((id, path))) => {
            let data = if src == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).context("cannot read stdin")?;
                b
            } else {
                std::fs::read(src).with_context(|| format!("cannot read {src}"))?
            };
            let body = json!({"content_base64": base64::engine::general_purpose::STANDARD.encode(&data)});
            let v = client
                .send(
                    Method::PUT,
                    &format!("/v1/sandboxes/{id}/files/{}", encode_path(&path)),
                    Some(&body),
                    None,
                )
                .await?;
            if conn.output == Format::Json {
                print_object(conn.output, &v);
            }
        }
        (Some((id, path)), None) => {
            let v = client
                .get(&format!("/v1/sandboxes/{id}/files/{}", encode_path(&path)))
                .await?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(v["content_base64"].as_str().unwrap_or(""))
                .context("the server sent a file that is not base64")?;
            if dst == "-" {
                std::io::stdout().write_all(&data)?;
            } else {
                std::fs::write(dst, &data).with_context(|| format!("cannot write {dst}"))?;
            }
        }
        _ => bail!("give exactly one of SRC and DST as sbx_…:PATH"),
    }
    Ok(())
}

/// Percent-encodes one query value or path segment.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Percent-encodes a workspace path, keeping its `/` separators.
fn encode_path(p: &str) -> String {
    p.split('/').map(encode).collect::<Vec<_>>().join("/")
}
