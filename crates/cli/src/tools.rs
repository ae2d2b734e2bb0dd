//! `strata secret …`, `strata connection …` and `strata tool …`: the tool
//! gateway over the HTTP API.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{ArgGroup, Subcommand};
use serde_json::{Value, json};

use crate::Conn;
use crate::client::Client;
use crate::output::{print_list, print_object};

/// `strata secret …`
#[derive(Subcommand, Debug)]
pub(crate) enum SecretCommand {
    /// Store or replace a secret (its value is read from stdin or an environment
    /// variable, never from the command line).
    #[command(group(ArgGroup::new("source").required(true).args(["value_stdin", "from_env"])))]
    Set {
        /// Its name; connections refer to it as {"secret": "NAME"}.
        name: String,
        /// Read the value from standard input (a trailing newline is dropped).
        #[arg(long)]
        value_stdin: bool,
        /// Read the value from this environment variable.
        #[arg(long, value_name = "VAR")]
        from_env: Option<String>,
        /// What the secret is for.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List secrets (names and versions, never values).
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a secret (refused while a connection references it).
    #[command(alias = "rm")]
    Remove {
        /// Its name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `strata connection …`
#[derive(Subcommand, Debug)]
pub(crate) enum ConnectionCommand {
    /// Register a connection from a JSON definition and import its tools.
    Add {
        /// The definition (JSON: name, upstream, …).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// List connections.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Re-read a connection's tools from its upstream.
    Sync {
        /// Its name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a connection and its tools.
    #[command(alias = "rm")]
    Remove {
        /// Its name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `strata tool …`
#[derive(Subcommand, Debug)]
pub(crate) enum ToolCommand {
    /// List the tools the caller may call, optionally searched by words.
    #[command(alias = "ls")]
    List {
        /// Words that must all appear in the name or description.
        query: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Call a tool.
    Call {
        /// `connection.tool`
        name: String,
        /// The arguments, a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub(crate) async fn secret(cmd: SecretCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretCommand::Set {
            name,
            value_stdin,
            from_env,
            description,
            conn,
        } => {
            let value = if value_stdin {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("cannot read the value from stdin")?;
                s.strip_suffix('\n')
                    .map(|v| v.strip_suffix('\r').unwrap_or(v))
                    .unwrap_or(&s)
                    .to_string()
            } else {
                let var = from_env.context("give --value-stdin or --from-env VAR")?;
                std::env::var(&var).with_context(|| format!("the environment variable {var} is not set"))?
            };
            if value.is_empty() {
                bail!("the secret's value is empty");
            }
            let body = json!({"name": name, "value": value, "description": description});
            let v = Client::from_conn(&conn)?.post("/v1/secrets", &body).await?;
            print_object(conn.output, &v);
        }
        SecretCommand::List { conn } => {
            let v = Client::from_conn(&conn)?.get("/v1/secrets").await?;
            print_list(conn.output, &v, &["name", "version", "description", "updated_at"]);
        }
        SecretCommand::Remove { name, conn } => {
            let v = Client::from_conn(&conn)?
                .delete(&format!("/v1/secrets/{name}"))
                .await?;
            print_object(conn.output, &v);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn connection(cmd: ConnectionCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConnectionCommand::Add { file, conn } => {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let body: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a JSON connection definition", file.display()))?;
            let v = Client::from_conn(&conn)?.post("/v1/connections", &body).await?;
            print_object(conn.output, &v);
        }
        ConnectionCommand::List { conn } => {
            let v = Client::from_conn(&conn)?.get("/v1/connections").await?;
            print_list(
                conn.output,
                &v,
                &["name", "kind", "tools", "secrets", "synced_at"],
            );
        }
        ConnectionCommand::Sync { name, conn } => {
            let v = Client::from_conn(&conn)?
                .post(&format!("/v1/connections/{name}/sync"), &json!({}))
                .await?;
            print_object(conn.output, &v);
        }
        ConnectionCommand::Remove { name, conn } => {
            let v = Client::from_conn(&conn)?
                .delete(&format!("/v1/connections/{name}"))
                .await?;
            print_object(conn.output, &v);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn tool(cmd: ToolCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ToolCommand::List { query, conn } => {
            let mut url = reqwest::Url::parse("http://localhost/v1/tools").context("a constant URL")?;
            if let Some(q) = query {
                url.query_pairs_mut().append_pair("query", &q);
            }
            let path = match url.query() {
                Some(q) => format!("/v1/tools?{q}"),
                None => "/v1/tools".to_string(),
            };
            let v = Client::from_conn(&conn)?.get(&path).await?;
            print_list(
                conn.output,
                &v,
                &["name", "connection", "read_only", "description"],
            );
        }
        ToolCommand::Call { name, args, conn } => {
            let arguments: Value = serde_json::from_str(&args).context("--args is not JSON")?;
            if !arguments.is_object() {
                bail!("--args must be a JSON object");
            }
            let v = Client::from_conn(&conn)?
                .post(
                    &format!("/v1/tools/{name}/call"),
                    &json!({"arguments": arguments}),
                )
                .await?;
            print_object(conn.output, &v);
            if v["is_error"] == true {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
