//! Client commands: `strata agent …` and `strata token …` over the HTTP API.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use crate::Conn;
use crate::output::{print_list, print_object};

/// A problem returned by the server.
#[derive(Debug)]
pub(crate) struct Problem {
    pub(crate) status: u16,
    pub(crate) code: String,
    pub(crate) detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.detail)
    }
}

impl std::error::Error for Problem {}

impl Problem {
    /// The problem in a response body (fields missing when the body is not one).
    fn from_body(status: u16, body: &Value) -> Problem {
        let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Problem {
            status,
            code: text("code"),
            detail: text("detail"),
        }
    }
}

/// An authenticated connection to a Strata server.
#[derive(Clone)]
pub(crate) struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    pub(crate) fn new(base: &str, token: &str) -> Client {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("a client with only a timeout set always builds");
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
        }
    }

    /// A client from `--url`, `--token` or the local admin token file.
    pub(crate) fn from_conn(conn: &Conn) -> anyhow::Result<Client> {
        let token = match &conn.token {
            Some(t) => t.clone(),
            None => {
                let local = conn.url.contains("://127.0.0.1") || conn.url.contains("://localhost");
                let path = conn.data_dir.join("admin.token");
                if !local {
                    bail!("no token: set STRATA_TOKEN or pass --token");
                }
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no token: set STRATA_TOKEN, pass --token, or start the server so that {} exists",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        Ok(Client::new(&conn.url, &token))
    }

    /// The server's URL, without a trailing slash.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// The bearer token this client sends.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    pub(crate) fn with_token(&self, token: &str) -> Client {
        Client {
            token: token.to_string(),
            ..self.clone()
        }
    }

    /// Sends one request; a problem response becomes a [`Problem`] error.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.context("the server's reply was cut off")?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status >= 400 {
            return Err(Problem::from_body(status, &value).into());
        }
        Ok(value)
    }

    /// Opens a Server-Sent Events stream at `path`.
    pub(crate) async fn stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        // A client without the request timeout: the stream lasts as long as it is read.
        let resp = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("accept", "text/event-stream")
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let value: Value = resp.json().await.unwrap_or(Value::Null);
            return Err(Problem::from_body(status, &value).into());
        }
        Ok(resp)
    }

    /// POSTs `body` asking for Server-Sent Events; a problem (refused before
    /// the stream starts) becomes a [`Problem`] error. The response may also be
    /// plain JSON from a server that does not stream this call.
    pub(crate) async fn post_stream(&self, path: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
        let resp = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("accept", "text/event-stream")
            .json(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let value: Value = resp.json().await.unwrap_or(Value::Null);
            return Err(Problem::from_body(status, &value).into());
        }
        Ok(resp)
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::GET, path, None, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(Method::POST, path, Some(body), None).await
    }

    pub(crate) async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::DELETE, path, None, None).await
    }
}

/// `strata agent …`
#[derive(Subcommand, Debug)]
pub(crate) enum AgentCommand {
    /// Register an agent and print its id, did:key and first token (shown once).
    Create {
        /// Unique name among live agents.
        name: String,
        /// A capability it offers: NAME or NAME@VERSION (repeatable).
        #[arg(long = "capability", short = 'c')]
        capabilities: Vec<String>,
        /// A JSON file holding the full capability manifest (an array of capabilities with schemas).
        #[arg(long)]
        manifest: Option<std::path::PathBuf>,
        /// A label KEY=VALUE (repeatable).
        #[arg(long = "label", short = 'l')]
        labels: Vec<String>,
        /// Return the private key once instead of keeping it on the server.
        #[arg(long)]
        hold_private_key: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List agents.
    #[command(alias = "ls")]
    List {
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this agent id.
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one agent.
    Get {
        /// The agent id (agt_…).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete an agent and revoke its tokens.
    #[command(alias = "rm")]
    Delete {
        /// The agent id (agt_…).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `strata token …`
#[derive(Subcommand, Debug)]
pub(crate) enum TokenCommand {
    /// Mint a token for an agent (or, with --admin, an operator token). Shown once.
    Create {
        /// The agent id (agt_…); omit with --admin.
        agent: Option<String>,
        /// Mint an operator token instead.
        #[arg(long, conflicts_with = "agent")]
        admin: bool,
        /// A scope: `*`, `agent.*`, `agent.get` (repeatable; default `*`).
        #[arg(long = "scope", short = 's')]
        scopes: Vec<String>,
        /// Lifetime, e.g. `1h`, `30d` (default 90 days).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
        /// A label for the token.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke a token at once.
    Revoke {
        /// The token id (tok_…).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `KEY=VALUE` arguments as a JSON object.
pub(crate) fn parse_labels(labels: &[String]) -> anyhow::Result<Value> {
    let mut map = serde_json::Map::new();
    for l in labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("label '{l}' is not KEY=VALUE"))?;
        map.insert(k.into(), v.into());
    }
    Ok(Value::Object(map))
}

fn capability(spec: &str) -> Value {
    match spec.split_once('@') {
        Some((name, version)) => json!({"name": name, "version": version}),
        None => json!({"name": spec}),
    }
}

pub(crate) async fn agent(cmd: AgentCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AgentCommand::Create {
            name,
            capabilities,
            manifest,
            labels,
            hold_private_key,
            conn,
        } => {
            let mut caps: Vec<Value> = capabilities.iter().map(|c| capability(c)).collect();
            if let Some(path) = manifest {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let more: Vec<Value> = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a JSON array of capabilities", path.display()))?;
                caps.extend(more);
            }
            let body = json!({"name": name, "capabilities": caps, "labels": parse_labels(&labels)?, "hold_private_key": hold_private_key});
            let v = Client::from_conn(&conn)?.post("/v1/agents", &body).await?;
            print_object(conn.output, &v);
        }
        AgentCommand::List { limit, after, conn } => {
            let mut path = format!("/v1/agents?limit={limit}");
            if let Some(a) = after {
                path.push_str(&format!("&after={a}"));
            }
            let v = Client::from_conn(&conn)?.get(&path).await?;
            print_list(
                conn.output,
                &v,
                &["id", "name", "did", "capabilities", "labels", "created_at"],
            );
        }
        AgentCommand::Get { id, conn } => {
            let v = Client::from_conn(&conn)?.get(&format!("/v1/agents/{id}")).await?;
            print_object(conn.output, &v);
        }
        AgentCommand::Delete { id, conn } => {
            let v = Client::from_conn(&conn)?
                .delete(&format!("/v1/agents/{id}"))
                .await?;
            print_object(conn.output, &v);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn token(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create {
            agent,
            admin,
            scopes,
            expires_in,
            name,
            conn,
        } => {
            let client = Client::from_conn(&conn)?;
            let v = if admin {
                client.post("/v1/tokens", &json!({"name": name})).await?
            } else {
                let agent = agent.context("give the agent id, or --admin for an operator token")?;
                let mut body = json!({"name": name});
                if !scopes.is_empty() {
                    body["scopes"] = json!(scopes);
                }
                if let Some(d) = expires_in {
                    body["expires_in"] = json!(d.as_secs().max(1));
                }
                client.post(&format!("/v1/agents/{agent}/tokens"), &body).await?
            };
            print_object(conn.output, &v);
        }
        TokenCommand::Revoke { id, conn } => {
            let v = Client::from_conn(&conn)?
                .delete(&format!("/v1/tokens/{id}"))
                .await?;
            print_object(conn.output, &v);
        }
    }
    Ok(ExitCode::SUCCESS)
}
