//! Connections: the upstreams tools come from.
//!
//! Registering a connection checks its definition (every secret it references
//! must be in the vault), starts the upstream once to list its tools, and stores
//! the definition — which holds secret *references*, never values — with its
//! tools. MCP sessions stay open between calls and restart on the next call when
//! they end; a sync re-lists the tools (on demand, or when an MCP upstream
//! announces `tools/list_changed`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use strata_core::{Error, ErrorCode, Id, Result, time::rfc3339};
use tokio::sync::mpsc;

use crate::catalog::{Catalog, ToolDef, ToolInfo};
use crate::limit::Rate;
use crate::mcp::{Fault, Session, Target};
use crate::oauth::OAuth;
use crate::reference::{Scrubber, Template};
use crate::vault::SecretValue;
use crate::{Inner, Tools, store};

/// Where a connection's tools live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Upstream {
    /// An MCP server started as a child process, spoken to over stdio.
    McpStdio {
        /// The program.
        command: String,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
        /// Its environment (besides `PATH`, `HOME`, `LANG`); values may reference secrets.
        #[serde(default)]
        env: BTreeMap<String, Value>,
        /// Its working directory.
        #[serde(default)]
        cwd: Option<String>,
    },
    /// An MCP server over streamable HTTP.
    McpHttp {
        /// The endpoint (`http://host/mcp`).
        url: String,
        /// Headers sent with every request; values may reference secrets.
        #[serde(default)]
        headers: BTreeMap<String, Value>,
    },
    /// An OpenAPI 3 service: each operation becomes a tool.
    Openapi {
        /// The document inline: an object, or a JSON or YAML string.
        #[serde(default)]
        document: Option<Value>,
        /// Or where to fetch it.
        #[serde(default)]
        document_url: Option<String>,
        /// The base URL calls go to (default: the document's first server).
        #[serde(default)]
        base_url: Option<String>,
        /// Headers sent with every call; values may reference secrets.
        #[serde(default)]
        headers: BTreeMap<String, Value>,
        /// Query parameters added to every call (API keys); values may reference secrets.
        #[serde(default)]
        query: BTreeMap<String, Value>,
    },
}

impl Upstream {
    /// `mcp_stdio`, `mcp_http` or `openapi`.
    pub fn kind(&self) -> &'static str {
        match self {
            Upstream::McpStdio { .. } => "mcp_stdio",
            Upstream::McpHttp { .. } => "mcp_http",
            Upstream::Openapi { .. } => "openapi",
        }
    }
}

/// Retries after an upstream failure, for idempotent tools only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Tries in all, including the first (1–10).
    pub max_attempts: u32,
    /// The first delay; each later one doubles, with jitter (ms).
    pub backoff_ms: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: 3,
            backoff_ms: 50,
        }
    }
}

/// A request to register a connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConnection {
    /// Lowercase letters, digits, `_` and `-` (1–64); the tools' namespace.
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: Option<String>,
    /// Where the tools live.
    pub upstream: Upstream,
    /// OAuth 2 access tokens for the upstream.
    #[serde(default)]
    pub auth: Option<OAuth>,
    /// How long one call may take (ms); the gateway's default otherwise.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The most bytes one answer may have; the gateway's default otherwise.
    #[serde(default)]
    pub max_response_bytes: Option<usize>,
    /// The rate each of its tools accepts; the gateway's default otherwise.
    #[serde(default)]
    pub rate_limit: Option<Rate>,
    /// Retries for idempotent tools (default 3 tries, 50 ms doubling).
    #[serde(default)]
    pub retry: Option<Retry>,
    /// Upstream tool names (globs) to treat as idempotent besides those the
    /// upstream marks so (MCP `idempotentHint`/`readOnlyHint`, HTTP GET/PUT/DELETE).
    #[serde(default)]
    pub idempotent: Vec<String>,
    /// Upstream tool names (globs) to treat as read-only (and so idempotent)
    /// besides those the upstream marks so (MCP `readOnlyHint`, HTTP
    /// GET/HEAD/OPTIONS). A read-only tool's calls record no intent.
    #[serde(default)]
    pub read_only: Vec<String>,
    /// Whether to believe what the upstream says of its tools (MCP
    /// `readOnlyHint`/`idempotentHint`, OpenAPI methods); default true. When
    /// false only `idempotent` and `read_only` above count: nothing is retried
    /// or called without an intent on the upstream's word alone.
    #[serde(default = "trusted", skip_serializing_if = "is_trusted")]
    pub trust_hints: bool,
}

fn trusted() -> bool {
    true
}

fn is_trusted(t: &bool) -> bool {
    *t
}

/// A connection as listed.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ConnectionInfo {
    /// `con_…`
    pub id: String,
    /// Its name, the tools' namespace.
    pub name: String,
    /// `mcp_stdio`, `mcp_http` or `openapi`.
    pub kind: String,
    /// Its definition as registered (secret references, never values).
    pub definition: NewConnection,
    /// How many tools it has.
    pub tools: usize,
    /// The vault secrets it references.
    pub secrets: Vec<String>,
    /// Registered (RFC 3339).
    pub created_at: String,
    /// Last synced (RFC 3339).
    pub synced_at: String,
}

/// What a sync changed.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SyncReport {
    /// The connection.
    pub connection: String,
    /// Tools that appeared.
    pub added: Vec<String>,
    /// Tools that went.
    pub removed: Vec<String>,
    /// Tools whose description or schema changed.
    pub changed: Vec<String>,
    /// The tools now.
    pub tools: Vec<ToolInfo>,
}

/// A registered connection, parsed.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) spec: NewConnection,
    pub(crate) env: BTreeMap<String, Template>,
    pub(crate) headers: BTreeMap<String, Template>,
    pub(crate) query: BTreeMap<String, Template>,
    pub(crate) secrets: BTreeSet<String>,
    pub(crate) created_at: i64,
    pub(crate) synced_at: i64,
}

fn invalid(why: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidConnection, why)
}

fn templates(field: &str, items: &BTreeMap<String, Value>) -> Result<BTreeMap<String, Template>> {
    items
        .iter()
        .map(|(k, v)| Ok((k.clone(), Template::parse(&format!("{field}.{k}"), v)?)))
        .collect()
}

fn check_url(field: &str, url: &str) -> Result<()> {
    let u = reqwest::Url::parse(url).map_err(|e| invalid(format!("{field}: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "{field}: only http and https URLs are supported"
        )));
    }
    Ok(())
}

impl Conn {
    pub(crate) fn parse(id: String, spec: NewConnection, created_at: i64, synced_at: i64) -> Result<Conn> {
        let n = &spec.name;
        if n.is_empty()
            || n.len() > 64
            || !n
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            return Err(Error::invalid(
                "name",
                "a connection name is 1–64 lowercase letters, digits, '_' or '-'",
            ));
        }
        let (mut env, mut headers, mut query) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        match &spec.upstream {
            Upstream::McpStdio { command, env: e, .. } => {
                if command.trim().is_empty() {
                    return Err(invalid("upstream.command: must not be empty"));
                }
                env = templates("upstream.env", e)?;
            }
            Upstream::McpHttp { url, headers: h } => {
                check_url("upstream.url", url)?;
                headers = templates("upstream.headers", h)?;
            }
            Upstream::Openapi {
                document,
                document_url,
                base_url,
                headers: h,
                query: q,
            } => {
                if document.is_some() == document_url.is_some() {
                    return Err(invalid("upstream: give exactly one of document and document_url"));
                }
                if let Some(u) = document_url {
                    check_url("upstream.document_url", u)?;
                }
                if let Some(u) = base_url {
                    check_url("upstream.base_url", u)?;
                }
                headers = templates("upstream.headers", h)?;
                query = templates("upstream.query", q)?;
            }
        }
        let mut secrets: BTreeSet<String> = env
            .values()
            .chain(headers.values())
            .chain(query.values())
            .flat_map(|t| t.secrets().map(str::to_string).collect::<Vec<_>>())
            .collect();
        if let Some(auth) = &spec.auth {
            for t in auth.templates()? {
                secrets.extend(t.secrets().map(str::to_string));
            }
            match auth {
                OAuth::ClientCredentials { token_url, .. } | OAuth::RefreshToken { token_url, .. } => {
                    check_url("auth.token_url", token_url)?
                }
            }
        }
        if let Some(r) = &spec.retry
            && !(1..=10).contains(&r.max_attempts)
        {
            return Err(Error::invalid("retry.max_attempts", "1 to 10"));
        }
        if spec.timeout_ms == Some(0) {
            return Err(Error::invalid("timeout_ms", "must be positive"));
        }
        Ok(Conn {
            id,
            name: spec.name.clone(),
            spec,
            env,
            headers,
            query,
            secrets,
            created_at,
            synced_at,
        })
    }

    pub(crate) fn info(&self, tools: usize) -> ConnectionInfo {
        ConnectionInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            kind: self.spec.upstream.kind().to_string(),
            definition: self.spec.clone(),
            tools,
            secrets: self.secrets.iter().cloned().collect(),
            created_at: rfc3339(self.created_at),
            synced_at: rfc3339(self.synced_at),
        }
    }

    pub(crate) fn timeout(&self, default: Duration) -> Duration {
        self.spec.timeout_ms.map(Duration::from_millis).unwrap_or(default)
    }

    pub(crate) fn max_bytes(&self, default: usize) -> usize {
        self.spec.max_response_bytes.unwrap_or(default)
    }

    /// Whether upstream tool `name` is on one of the connection's own lists.
    fn marks(list: &[String], name: &str) -> bool {
        list.iter().any(|p| crate::grant::matches(p, name))
    }
}

/// A live MCP session and, for OAuth connections, when its token expires.
struct LiveSession {
    session: Arc<Session>,
    token_expires_at: Option<i64>,
    /// The secret values it was started with.
    scrub: Scrubber,
}

/// Open MCP sessions by connection id.
#[derive(Default)]
pub(crate) struct Live {
    sessions: RwLock<HashMap<String, Arc<LiveSession>>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Live {
    fn get(&self, id: &str) -> Option<Arc<LiveSession>> {
        self.sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn take(&self, id: &str) -> Option<Arc<LiveSession>> {
        self.sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
    }

    /// Closes the session of connection `id`, if any.
    pub(crate) async fn stop(&self, id: &str) {
        if let Some(live) = self.take(id)
            && let Ok(live) = Arc::try_unwrap(live)
            && let Ok(s) = Arc::try_unwrap(live.session)
        {
            s.close().await;
        }
        // A session still in use by a call is dropped (and its child killed) when that call ends.
    }

    /// Closes every session.
    pub(crate) async fn stop_all(&self) {
        let ids: Vec<String> = self
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for id in ids {
            self.stop(&id).await;
        }
    }

    /// Drops the sessions of connections that inject secret `name` (it changed).
    pub(crate) async fn invalidate_using_secret(&self, name: &str, catalog: &Catalog) {
        for c in catalog.conns() {
            if c.secrets.contains(name) {
                self.stop(&c.id).await;
            }
        }
    }
}

impl Tools {
    /// Registers a connection: checks it, lists its tools from the upstream, and
    /// stores both. Fails (and stores nothing) if the upstream cannot be listed.
    pub async fn add_connection(&self, req: NewConnection) -> Result<ConnectionInfo> {
        let now = self.now();
        let conn = Conn::parse(Id::new("con").to_string(), req, now, now)?;
        if self.inner.catalog.conn(&conn.name).is_some() {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!("a connection named '{}' already exists", conn.name),
            ));
        }
        for s in &conn.secrets {
            if !self.has_secret(s).await? {
                return Err(Error::new(
                    ErrorCode::UnknownSecret,
                    format!("secret '{s}' is not in the vault; set it first"),
                ));
            }
        }
        let conn = Arc::new(conn);
        let defs = match self.discover(&conn).await {
            Ok(d) => d,
            Err(e) => {
                self.inner.live.stop(&conn.id).await;
                return Err(e);
            }
        };
        let count = defs.len();
        store::insert_connection(self.store(), &conn, defs.clone()).await?;
        self.inner.catalog.put(conn.clone(), defs);
        Ok(conn.info(count))
    }

    /// Every connection, by name.
    pub fn list_connections(&self) -> Vec<ConnectionInfo> {
        self.inner
            .catalog
            .conns()
            .iter()
            .map(|c| c.info(self.inner.catalog.tools_of(&c.name).len()))
            .collect()
    }

    /// One connection.
    pub fn get_connection(&self, name: &str) -> Result<ConnectionInfo> {
        let c = self
            .inner
            .catalog
            .conn(name)
            .ok_or_else(|| Error::not_found("connection", name))?;
        Ok(c.info(self.inner.catalog.tools_of(name).len()))
    }

    /// Re-lists a connection's tools from its upstream and stores the new list.
    pub async fn sync_connection(&self, name: &str) -> Result<SyncReport> {
        let old = self
            .inner
            .catalog
            .conn(name)
            .ok_or_else(|| Error::not_found("connection", name))?;
        let before: BTreeMap<String, ToolInfo> = self
            .inner
            .catalog
            .tools_of(name)
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        let defs = self.discover(&old).await?;
        let now = self.now();
        let conn = Arc::new(Conn::parse(
            old.id.clone(),
            old.spec.clone(),
            old.created_at,
            now,
        )?);
        store::replace_tools(self.store(), conn.id.clone(), defs.clone(), now).await?;
        self.inner.catalog.put(conn, defs);
        let after = self.inner.catalog.tools_of(name);
        let mut report = SyncReport {
            connection: name.to_string(),
            added: vec![],
            removed: vec![],
            changed: vec![],
            tools: after.clone(),
        };
        for t in &after {
            match before.get(&t.name) {
                None => report.added.push(t.name.clone()),
                Some(b) if b != t => report.changed.push(t.name.clone()),
                Some(_) => {}
            }
        }
        let now_names: BTreeSet<&String> = after.iter().map(|t| &t.name).collect();
        report.removed = before
            .keys()
            .filter(|n| !now_names.contains(n))
            .cloned()
            .collect();
        Ok(report)
    }

    /// Removes a connection and its tools, stopping its upstream.
    pub async fn remove_connection(&self, name: &str) -> Result<()> {
        let c = self
            .inner
            .catalog
            .conn(name)
            .ok_or_else(|| Error::not_found("connection", name))?;
        store::delete_connection(self.store(), c.id.clone()).await?;
        self.inner.catalog.remove(name);
        self.inner.live.stop(&c.id).await;
        self.inner.breakers.reset(&c.id);
        self.inner.tokens.forget(&c.id);
        Ok(())
    }

    /// The tools the upstream offers now.
    async fn discover(&self, conn: &Arc<Conn>) -> Result<Vec<ToolDef>> {
        let timeout = self.config().connect_timeout;
        let mut defs = match &conn.spec.upstream {
            Upstream::McpStdio { .. } | Upstream::McpHttp { .. } => {
                let mut scrub = Scrubber::default();
                let session = self.session(conn, &mut scrub).await?;
                session
                    .list_tools(timeout)
                    .await
                    .map_err(|f| fault_error(&conn.name, f, &scrub))?
            }
            Upstream::Openapi {
                document,
                document_url,
                ..
            } => {
                let doc = match (document, document_url) {
                    (Some(d), _) => crate::openapi::parse_document(d)?,
                    (None, Some(u)) => crate::openapi::fetch_document(&self.inner.http, u, timeout).await?,
                    (None, None) => return Err(invalid("upstream: no document")),
                };
                let base = self.base_url(conn, Some(&doc))?;
                crate::openapi::operations(&doc, &base)?
            }
        };
        for d in &mut defs {
            if !conn.spec.trust_hints {
                (d.read_only, d.idempotent) = (false, false);
            }
            d.read_only = d.read_only || Conn::marks(&conn.spec.read_only, &d.upstream_name);
            d.idempotent =
                d.idempotent || d.read_only || Conn::marks(&conn.spec.idempotent, &d.upstream_name);
        }
        Ok(defs)
    }

    /// Where an OpenAPI connection's calls go.
    pub(crate) fn base_url(&self, conn: &Conn, doc: Option<&Value>) -> Result<String> {
        if let Upstream::Openapi { base_url, .. } = &conn.spec.upstream {
            if let Some(u) = base_url {
                return Ok(u.clone());
            }
            if let Some(u) = doc.and_then(crate::openapi::server_url) {
                check_url("servers[0].url", &u)?;
                return Ok(u);
            }
        }
        Err(invalid(
            "upstream.base_url: the document names no absolute server URL; give base_url",
        ))
    }

    /// The secret values `conn`'s templates reference, each added to `scrub`.
    pub(crate) async fn secret_values(
        &self,
        conn: &Conn,
        scrub: &mut Scrubber,
    ) -> Result<BTreeMap<String, SecretValue>> {
        let mut values = BTreeMap::new();
        let names: BTreeSet<&str> = conn
            .env
            .values()
            .chain(conn.headers.values())
            .chain(conn.query.values())
            .flat_map(|t| t.secrets())
            .collect();
        for name in names {
            let v = self.reveal(name).await?;
            scrub.add(&v);
            values.insert(name.to_string(), v);
        }
        Ok(values)
    }

    /// The open MCP session of `conn`, started (or restarted) if needed. The
    /// secrets it was started with are added to `scrub`.
    pub(crate) async fn session(&self, conn: &Arc<Conn>, scrub: &mut Scrubber) -> Result<Arc<Session>> {
        let usable = |l: &LiveSession| {
            l.session.is_open() && l.token_expires_at.is_none_or(|t| self.now() < t - 30_000)
        };
        if let Some(l) = self.inner.live.get(&conn.id)
            && usable(&l)
        {
            scrub.extend(&l.scrub);
            return Ok(l.session.clone());
        }
        let _one = self.inner.live.connecting.lock().await;
        if let Some(l) = self.inner.live.get(&conn.id)
            && usable(&l)
        {
            scrub.extend(&l.scrub);
            return Ok(l.session.clone());
        }
        self.inner.live.stop(&conn.id).await;
        let mut own = Scrubber::default();
        let values = self.secret_values(conn, &mut own).await?;
        let token = self.access_token(conn, &mut own).await?;
        scrub.extend(&own);
        let max = conn.max_bytes(self.config().max_response_bytes);
        let timeout = self.config().connect_timeout;
        let target = match &conn.spec.upstream {
            Upstream::McpStdio {
                command, args, cwd, ..
            } => Target::Stdio {
                command,
                args,
                env: crate::mcp::render_all(&conn.env, &values)?,
                cwd: cwd.as_deref(),
            },
            Upstream::McpHttp { url, .. } => {
                let mut headers = crate::mcp::render_all(&conn.headers, &values)?;
                if let Some((t, _)) = &token {
                    headers.push((
                        "authorization".into(),
                        crate::reference::Rendered::Secret(SecretValue::new(format!(
                            "Bearer {}",
                            t.expose()
                        ))),
                    ));
                }
                Target::Http {
                    url,
                    headers,
                    client: self.inner.http.clone(),
                }
            }
            Upstream::Openapi { .. } => {
                return Err(Error::internal("an OpenAPI connection has no MCP session"));
            }
        };
        let session = Session::connect(
            target,
            max,
            timeout,
            self.inner.resync.clone(),
            &conn.name,
            own.clone(),
        )
        .await
        .map_err(|f| fault_error(&conn.name, f, scrub))?;
        let session = Arc::new(session);
        self.inner
            .live
            .sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                conn.id.clone(),
                Arc::new(LiveSession {
                    session: session.clone(),
                    token_expires_at: token.map(|(_, e)| e),
                    scrub: own,
                }),
            );
        Ok(session)
    }
}

/// Re-syncs the connections named on `rx` (their upstream said its tools
/// changed), for as long as the gateway lives. An upstream may announce a
/// change while its connection is still being registered (listed, not yet
/// stored): that sync is tried again a second later, so the change is not lost.
pub(crate) async fn resync_on_change(inner: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<String>) {
    while let Some(name) = rx.recv().await {
        let Some(strong) = inner.upgrade() else { return };
        let tools = Tools { inner: strong };
        match tools.sync_connection(&name).await {
            Ok(_) => {}
            Err(e) if e.code == ErrorCode::NotFound => {
                let later = inner.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    let Some(inner) = later.upgrade() else { return };
                    let tools = Tools { inner };
                    if tools.inner.catalog.conn(&name).is_some()
                        && let Err(e) = tools.sync_connection(&name).await
                    {
                        tracing::warn!(connection = %name, code = %e.code, "re-sync after tools/list_changed failed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(connection = %name, code = %e.code, "re-sync after tools/list_changed failed")
            }
        }
    }
}

/// The problem an upstream fault becomes, its detail scrubbed of `scrub`'s values.
pub(crate) fn fault_error(conn: &str, f: Fault, scrub: &Scrubber) -> Error {
    let (code, detail) = match f {
        Fault::Unreachable(why) => (ErrorCode::UpstreamFailed, format!("connection '{conn}': {why}")),
        Fault::Timeout => (
            ErrorCode::UpstreamTimeout,
            format!("connection '{conn}': the upstream did not answer in time"),
        ),
        Fault::TooLarge(max) => (
            ErrorCode::UpstreamTooLarge,
            format!(
                "connection '{conn}': the upstream's answer exceeds the {max}-byte limit and was cut off"
            ),
        ),
        Fault::Malformed(why) => (
            ErrorCode::UpstreamMalformed,
            format!("connection '{conn}': {why}"),
        ),
        Fault::Rpc(why) => (ErrorCode::UpstreamRejected, format!("connection '{conn}': {why}")),
        Fault::Status(s) => (
            ErrorCode::UpstreamFailed,
            format!("connection '{conn}': the upstream answered HTTP {s}"),
        ),
    };
    Error::new(code, scrub.text(&detail))
}
