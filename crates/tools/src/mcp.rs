//! MCP upstreams, through the official SDK (`rmcp`): a child process over stdio
//! or a server over streamable HTTP.
//!
//! A child gets a **cleared environment** (only `PATH`, `HOME`, `LANG` and the
//! connection's own `env`), so the server's variables — the master key among
//! them — never reach an upstream. Its stdout is read by [`LineTransport`], which
//! enforces the response cap while reading (a line over the cap closes the
//! session instead of being buffered) and turns a response that is JSON but not
//! a valid JSON-RPC reply into an error for the call that waits for it, instead
//! of leaving that call hanging. Over HTTP, rmcp's own response limits are set
//! to the same cap. `notifications/tools/list_changed` from the upstream triggers
//! a re-sync.
//!
//! Over stdio, a `tools/call` — the gateway's hot path — does not go through
//! rmcp's service: [`Session::call`] writes the request itself, with an id of its
//! own (`strata-call-N`, a string where rmcp's are numbers), and the transport
//! hands the reply with that id straight back to it, checked against the SDK's
//! `CallToolResult` type. rmcp would route both through its service task and
//! parse the reply into an untagged enum of every result type, variant by
//! variant; on two cores that cost a measurable share of a call. The handshake,
//! listing and notifications stay with rmcp, on the same pipes.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation, JsonObject,
};
use rmcp::service::{NotificationContext, RoleClient, RunningService, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClientTransport, StreamableHttpClientTransportConfig,
};
use rmcp::{ClientHandler, ServiceExt};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::catalog::ToolDef;
use crate::reference::{Rendered, Scrubber};

/// Why an upstream exchange failed, before it is mapped to a problem code.
#[derive(Debug)]
pub(crate) enum Fault {
    /// Could not start or reach the upstream, or it went away.
    Unreachable(String),
    /// No answer in time.
    Timeout,
    /// More bytes than allowed.
    TooLarge(usize),
    /// Not a valid response.
    Malformed(String),
    /// The upstream answered with a JSON-RPC error: it is up, and refused the call.
    Rpc(String),
    /// An HTTP upstream answered 429 or 5xx: it is overloaded or failing.
    Status(u16),
}

/// JSON-RPC error code the transport uses for a reply it could not read.
const MALFORMED_REPLY: i32 = -32_099;

#[derive(Debug, Default)]
struct Faults {
    too_large: AtomicBool,
    malformed: AtomicBool,
}

/// What ids of the calls [`Session::call`] sends itself start with.
const CALL_ID: &str = "strata-call-";

/// The `tools/call` requests a stdio session sent itself, waiting for replies.
#[derive(Default)]
struct Calls {
    next: AtomicU64,
    waiting: std::sync::Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    /// Set once the upstream's stdout has ended: no reply can come any more.
    ended: bool,
    replies: HashMap<String, oneshot::Sender<serde_json::Map<String, Value>>>,
}

impl Calls {
    /// A new call's id and where its reply will come; `None` once the upstream has ended.
    fn expect(&self) -> Option<(String, oneshot::Receiver<serde_json::Map<String, Value>>)> {
        let id = format!("{CALL_ID}{}", self.next.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if w.ended {
            return None;
        }
        w.replies.insert(id.clone(), tx);
        Some((id, rx))
    }

    /// Stops waiting for call `id` (if its reply has not come yet).
    fn forget(&self, id: &str) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replies
            .remove(id);
    }

    /// If `line` is the reply to one of these calls, hands it over (or drops it,
    /// if its caller gave up) and says so; anything else is left to rmcp.
    fn deliver(&self, line: &[u8]) -> bool {
        // Most lines are not: a scan for the id's prefix is cheaper than a parse.
        if !std::str::from_utf8(line).is_ok_and(|t| t.contains(CALL_ID)) {
            return false;
        }
        let Ok(Value::Object(reply)) = serde_json::from_slice::<Value>(line) else {
            return false;
        };
        let ours = reply
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| id.starts_with(CALL_ID));
        // A request from the upstream (it has a method) is never a reply.
        let (Some(id), false) = (ours, reply.contains_key("method")) else {
            return false;
        };
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replies
            .remove(id);
        if let Some(tx) = waiting {
            let _ = tx.send(reply);
        }
        true
    }

    /// The upstream's stdout has ended: every waiting call learns it at once.
    fn end(&self) {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        w.ended = true;
        w.replies.clear();
    }
}

/// Forwards `tools/list_changed` to the gateway's re-sync loop, naming the connection.
#[derive(Clone)]
pub(crate) struct Handler {
    info: ClientConfig,
    changed: mpsc::UnboundedSender<String>,
    conn: String,
}

impl ClientHandler for Handler {
    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }

    fn on_tool_list_changed(
        &self,
        _context: NotificationContext<RoleClient>,
    ) -> impl Future<Output = ()> + Send + '_ {
        let _ = self.changed.send(self.conn.clone());
        std::future::ready(())
    }
}

/// A running MCP client session with one upstream.
pub(crate) struct Session {
    service: RunningService<RoleClient, Handler>,
    faults: Arc<Faults>,
    max_bytes: usize,
    /// Over stdio: the child's stdin and the calls sent on it (see the module doc).
    direct: Option<Direct>,
    // Held so the child is killed when the session goes (kill_on_drop).
    _child: Option<Child>,
}

/// What a stdio session needs to send `tools/call` itself.
struct Direct {
    stdin: Arc<Mutex<Option<ChildStdin>>>,
    calls: Arc<Calls>,
    scrub: Scrubber,
}

/// How to start an upstream.
pub(crate) enum Target<'a> {
    /// A child process.
    Stdio {
        command: &'a str,
        args: &'a [String],
        env: Vec<(String, Rendered)>,
        cwd: Option<&'a str>,
    },
    /// A streamable-HTTP endpoint.
    Http {
        url: &'a str,
        headers: Vec<(String, Rendered)>,
        client: reqwest::Client,
    },
}

fn client_info() -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("strata-tools", env!("CARGO_PKG_VERSION")),
    )
}

impl Session {
    /// Starts the upstream and completes the MCP handshake within `timeout`.
    /// `changed` receives `conn` whenever the upstream's tool list changes.
    pub(crate) async fn connect(
        target: Target<'_>,
        max_bytes: usize,
        timeout: Duration,
        changed: mpsc::UnboundedSender<String>,
        conn: &str,
        scrub: Scrubber,
    ) -> Result<Session, Fault> {
        let handler = Handler {
            info: client_info(),
            changed,
            conn: conn.to_string(),
        };
        let faults = Arc::new(Faults::default());
        // The envelope around a result adds a little; the exact cap is checked on the result.
        let line_cap = max_bytes.saturating_add(64 * 1024);
        match target {
            Target::Stdio {
                command,
                args,
                env,
                cwd,
            } => {
                let mut cmd = tokio::process::Command::new(command);
                cmd.args(args)
                    .env_clear()
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .kill_on_drop(true);
                for key in ["PATH", "HOME", "LANG"] {
                    if let Some(v) = std::env::var_os(key) {
                        cmd.env(key, v);
                    }
                }
                for (k, v) in &env {
                    cmd.env(k, v.expose());
                }
                if let Some(dir) = cwd {
                    cmd.current_dir(dir);
                }
                let mut child = cmd
                    .spawn()
                    .map_err(|e| Fault::Unreachable(format!("cannot start '{command}': {e}")))?;
                let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                    return Err(Fault::Unreachable("the child's pipes are missing".into()));
                };
                let direct = Direct {
                    stdin: Arc::new(Mutex::new(Some(stdin))),
                    calls: Arc::new(Calls::default()),
                    scrub: scrub.clone(),
                };
                let transport = Scrubbed {
                    inner: LineTransport {
                        reader: BufReader::new(stdout),
                        writer: direct.stdin.clone(),
                        max_line: line_cap,
                        line: Vec::new(),
                        faults: faults.clone(),
                        calls: direct.calls.clone(),
                    },
                    scrub,
                };
                let service = tokio::time::timeout(timeout, handler.serve(transport))
                    .await
                    .map_err(|_| Fault::Timeout)?
                    .map_err(|e| Fault::Unreachable(format!("MCP handshake failed: {e}")))?;
                Ok(Session {
                    service,
                    faults,
                    max_bytes,
                    direct: Some(direct),
                    _child: Some(child),
                })
            }
            Target::Http { url, headers, client } => {
                let mut map = std::collections::HashMap::new();
                for (k, v) in &headers {
                    let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| Fault::Unreachable(format!("header name '{k}' is invalid")))?;
                    let mut value = reqwest::header::HeaderValue::from_str(v.expose())
                        .map_err(|_| Fault::Unreachable(format!("header '{k}' has an invalid value")))?;
                    value.set_sensitive(matches!(v, Rendered::Secret(_)));
                    map.insert(name, value);
                }
                let config = StreamableHttpClientTransportConfig::with_uri(url.to_string())
                    .custom_headers(map)
                    .max_json_response_size(line_cap)
                    .max_sse_event_size(line_cap);
                let transport = Scrubbed {
                    inner: StreamableHttpClientTransport::with_client(client, config),
                    scrub,
                };
                let service = tokio::time::timeout(timeout, handler.serve(transport))
                    .await
                    .map_err(|_| Fault::Timeout)?
                    .map_err(|e| Fault::Unreachable(format!("MCP handshake failed: {e}")))?;
                Ok(Session {
                    service,
                    faults,
                    max_bytes,
                    direct: None,
                    _child: None,
                })
            }
        }
    }

    /// Whether the session can still carry calls (a session the upstream
    /// flooded or garbled is done, even before rmcp notices).
    pub(crate) fn is_open(&self) -> bool {
        !self.service.is_closed()
            && !self.faults.too_large.load(Ordering::Relaxed)
            && !self.faults.malformed.load(Ordering::Relaxed)
    }

    /// The upstream's tools.
    pub(crate) async fn list_tools(&self, timeout: Duration) -> Result<Vec<ToolDef>, Fault> {
        let tools = tokio::time::timeout(timeout, self.service.peer().list_all_tools())
            .await
            .map_err(|_| Fault::Timeout)?
            .map_err(|e| self.fault(e))?;
        Ok(tools
            .into_iter()
            .map(|t| {
                let hint = |h: fn(&rmcp::model::ToolAnnotations) -> Option<bool>| {
                    t.annotations.as_ref().and_then(h) == Some(true)
                };
                ToolDef {
                    upstream_name: t.name.to_string(),
                    description: t.description.map(|d| d.to_string()).unwrap_or_default(),
                    input_schema: Value::Object((*t.input_schema).clone()),
                    output_schema: t.output_schema.as_ref().map(|s| Value::Object((**s).clone())),
                    // A read-only tool is idempotent too; the sync applies that for every upstream.
                    idempotent: hint(|a| a.idempotent_hint),
                    read_only: hint(|a| a.read_only_hint),
                    binding: Value::Null,
                }
            })
            .collect())
    }

    /// Calls `tool`; the result is the MCP `CallToolResult` as JSON and its size.
    pub(crate) async fn call(
        &self,
        tool: &str,
        arguments: JsonObject,
        timeout: Duration,
    ) -> Result<(Value, usize), Fault> {
        if let Some(direct) = &self.direct {
            return self.call_direct(direct, tool, arguments, timeout).await;
        }
        let params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
        let result = tokio::time::timeout(timeout, self.service.peer().call_tool(params))
            .await
            .map_err(|_| Fault::Timeout)?
            .map_err(|e| self.fault(e))?;
        let value = serde_json::to_value(&result).map_err(|e| Fault::Malformed(e.to_string()))?;
        self.sized(value)
    }

    /// [`Session::call`] over stdio, without rmcp's service (see the module doc).
    async fn call_direct(
        &self,
        direct: &Direct,
        tool: &str,
        arguments: JsonObject,
        timeout: Duration,
    ) -> Result<(Value, usize), Fault> {
        let Some((id, reply)) = direct.calls.expect() else {
            return Err(self.ended());
        };
        // However this call ends (answered, timed out, or dropped by its
        // caller), it stops waiting.
        let _waiting = Forget(&direct.calls, &id);
        let request = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}});
        if let Err(e) = write_line(&direct.stdin, &request).await {
            return Err(Fault::Unreachable(format!("cannot write to the upstream: {e}")));
        }
        let reply = match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Err(self.ended()),
            Err(_) => {
                // As rmcp does for a call it drops: tell the upstream to stop.
                let cancel = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                    "params": {"requestId": id, "reason": "timed out"}});
                let _ = write_line(&direct.stdin, &cancel).await;
                return Err(Fault::Timeout);
            }
        };
        let mut reply = match direct.scrub.json(Value::Object(reply)) {
            Value::Object(m) => m,
            _ => return Err(Fault::Malformed("the reply is not an object".into())),
        };
        if let Some(error) = reply.get("error") {
            let code = error.get("code").and_then(Value::as_i64).unwrap_or_default();
            let message = error.get("message").and_then(Value::as_str).unwrap_or_default();
            return Err(Fault::Rpc(format!("{message} ({code})")));
        }
        let result = reply.remove("result").unwrap_or(Value::Null);
        if let Err(e) = CallToolResult::deserialize(&result) {
            return Err(Fault::Malformed(format!(
                "malformed reply from the upstream: {e}"
            )));
        }
        self.sized(result)
    }

    /// `result` with its size, or `TooLarge` past the cap.
    fn sized(&self, result: Value) -> Result<(Value, usize), Fault> {
        let mut size = ByteCount(0);
        serde_json::to_writer(&mut size, &result).map_err(|e| Fault::Malformed(e.to_string()))?;
        if size.0 > self.max_bytes {
            return Err(Fault::TooLarge(self.max_bytes));
        }
        Ok((result, size.0))
    }

    /// Why no reply can come: the upstream's stdout ended, for the reason the transport saw.
    fn ended(&self) -> Fault {
        if self.faults.too_large.load(Ordering::Relaxed) {
            Fault::TooLarge(self.max_bytes)
        } else if self.faults.malformed.load(Ordering::Relaxed) {
            Fault::Malformed("the upstream wrote something that is not JSON-RPC on stdout".into())
        } else {
            Fault::Unreachable("the upstream closed its output".into())
        }
    }

    fn fault(&self, e: rmcp::ServiceError) -> Fault {
        if self.faults.too_large.load(Ordering::Relaxed) || self.faults.malformed.load(Ordering::Relaxed) {
            return self.ended();
        }
        match e {
            rmcp::ServiceError::McpError(err) if err.code.0 == MALFORMED_REPLY => {
                Fault::Malformed(err.message.to_string())
            }
            rmcp::ServiceError::McpError(err) => Fault::Rpc(format!("{} ({})", err.message, err.code.0)),
            rmcp::ServiceError::Timeout { .. } => Fault::Timeout,
            rmcp::ServiceError::UnexpectedResponse => {
                Fault::Malformed("the upstream answered with an unexpected kind of result".into())
            }
            rmcp::ServiceError::TransportSend(e) => {
                // The HTTP transport's own size limits surface as a transport error.
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text.push_str(": ");
                    text.push_str(&s.to_string());
                    source = s.source();
                }
                if text.contains("exceeded the maximum size") || text.contains("too large") {
                    Fault::TooLarge(self.max_bytes)
                } else {
                    Fault::Unreachable(text)
                }
            }
            other => Fault::Unreachable(other.to_string()),
        }
    }

    /// Ends the session (and its child).
    pub(crate) async fn close(self) {
        let _ = self.service.cancel().await;
    }
}

/// Newline-delimited JSON-RPC over a child's pipes, with a cap on each message.
struct LineTransport {
    reader: BufReader<ChildStdout>,
    writer: Arc<Mutex<Option<ChildStdin>>>,
    max_line: usize,
    /// The line being read; kept across cancelled reads.
    line: Vec<u8>,
    faults: Arc<Faults>,
    /// Replies to the session's own calls are handed to them, not to rmcp.
    calls: Arc<Calls>,
}

impl Drop for LineTransport {
    fn drop(&mut self) {
        self.calls.end();
    }
}

/// Forgets a call when dropped.
struct Forget<'a>(&'a Calls, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

/// Counts the bytes written to it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes `message` and a newline to the child's stdin, in one piece.
async fn write_line(
    stdin: &Mutex<Option<ChildStdin>>,
    message: &impl serde::Serialize,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    let mut w = stdin.lock().await;
    match w.as_mut() {
        Some(stdin) => {
            stdin.write_all(&bytes).await?;
            stdin.flush().await
        }
        None => Err(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            "the upstream's stdin is closed",
        )),
    }
}

impl LineTransport {
    /// Reads up to and including the next newline into `self.line`; false at EOF,
    /// on an I/O error, or when the line passes the cap.
    async fn read_line(&mut self) -> bool {
        loop {
            let chunk = match self.reader.fill_buf().await {
                Ok(c) if !c.is_empty() => c,
                _ => return false,
            };
            let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if self.line.len() + take > self.max_line {
                self.faults.too_large.store(true, Ordering::Relaxed);
                return false;
            }
            self.line.extend_from_slice(&chunk[..take]);
            self.reader.consume(take);
            if done {
                return true;
            }
        }
    }
}

fn malformed_reply(id: &Value, why: String) -> Option<RxJsonRpcMessage<RoleClient>> {
    serde_json::from_value(serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": MALFORMED_REPLY, "message": format!("malformed reply from the upstream: {why}")},
    }))
    .ok()
}

impl Transport<RoleClient> for LineTransport {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let writer = self.writer.clone();
        async move { write_line(&writer, &item).await }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        loop {
            if !self.read_line().await {
                self.calls.end();
                return None;
            }
            let line = std::mem::take(&mut self.line);
            let text = line.trim_ascii();
            if text.is_empty() || self.calls.deliver(text) {
                continue;
            }
            match serde_json::from_slice::<RxJsonRpcMessage<RoleClient>>(text) {
                Ok(m) => return Some(m),
                Err(e) => match serde_json::from_slice::<Value>(text) {
                    Ok(v) => {
                        let is_reply = v.get("result").is_some() || v.get("error").is_some();
                        if let (true, Some(id)) = (is_reply, v.get("id"))
                            && let Some(m) = malformed_reply(id, e.to_string())
                        {
                            return Some(m);
                        }
                        // A notification or request this client does not know: ignore it.
                        tracing::debug!("ignoring an upstream message this client does not understand");
                    }
                    Err(_) => {
                        // Stdout carries only JSON-RPC; anything else is a broken upstream.
                        self.faults.malformed.store(true, Ordering::Relaxed);
                        self.calls.end();
                        return None;
                    }
                },
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.writer.lock().await.take();
        Ok(())
    }
}

/// Scrubs the secret values a session was started with from every message the
/// upstream sends, before rmcp parses it — so neither results nor rmcp's own
/// trace logging of received messages can carry them.
struct Scrubbed<T> {
    inner: T,
    scrub: Scrubber,
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for Scrubbed<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        loop {
            let msg = self.inner.receive().await?;
            if self.scrub.is_empty() {
                return Some(msg);
            }
            let Ok(text) = serde_json::to_string(&msg) else {
                continue;
            };
            if !self.scrub.finds(&text) {
                return Some(msg);
            }
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            // A message that no longer parses once scrubbed is dropped, never passed on.
            if let Ok(m) = serde_json::from_value(self.scrub.json(v)) {
                return Some(m);
            }
        }
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

/// Renders `(key, template)` pairs for an upstream.
pub(crate) fn render_all(
    items: &BTreeMap<String, crate::reference::Template>,
    values: &BTreeMap<String, crate::vault::SecretValue>,
) -> strata_core::Result<Vec<(String, Rendered)>> {
    items
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.render(values)?)))
        .collect()
}
