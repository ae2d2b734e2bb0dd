//! Calling a tool, and the log of every call.
//!
//! The pipeline, in order: the caller's **grant** (no grant: `forbidden`, whether
//! or not the tool exists) → the tool exists → the caller's and the tool's
//! **rate limits** (`rate_limited` with a retry-after) → the arguments against
//! the tool's **schema** (`invalid_arguments`; the upstream never sees them) →
//! the connection's **circuit breaker** → the upstream call with **secrets
//! injected**, a **timeout** and a **response cap**, **retried** with backoff
//! only if the tool is idempotent → every secret value used **scrubbed** from
//! the result and from any error → one **log row**.
//!
//! A call's log row is queued to the store's writer as the call ends, and not
//! waited for: the kernel's outcome write for the same call is queued after it,
//! and the store commits writes in queue order, so the row is durable before
//! the call is answered without a commit of its own on the call's path.
//! The arguments are logged only as a SHA-256 digest of their canonical JSON,
//! taken after secret values are redacted.

use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use strata_core::{Error, ErrorCode, Id, time::rfc3339};

use crate::catalog::Entry;
use crate::connection::{Conn, Retry, Upstream, fault_error};
use crate::reference::{Rendered, Scrubber};
use crate::{Caller, Page, Tools, store};

/// The largest arguments object accepted, in bytes of JSON.
pub const MAX_ARGUMENT_BYTES: usize = 1024 * 1024;

/// A request to call a tool.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallRequest {
    /// `connection.tool`
    pub tool: String,
    /// The arguments, matching the tool's input schema (default `{}`).
    #[serde(default)]
    pub arguments: Value,
    /// The task the call is made for (`tsk_…`), recorded in the log.
    #[serde(default)]
    pub task: Option<String>,
}

/// What a call returns.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct CallOutput {
    /// `tcl_…`, the call's log row.
    pub call_id: String,
    /// The tool called.
    pub tool: String,
    /// The result in MCP `CallToolResult` shape: `content`, optional
    /// `structuredContent`, `isError`. OpenAPI answers carry the HTTP status and
    /// the JSON body in `structuredContent`.
    pub result: Value,
    /// Whether the tool reported an error (the call itself went through).
    pub is_error: bool,
    /// Tries made (more than one only for idempotent tools).
    pub attempts: u32,
    /// Time spent in the gateway and upstream (µs).
    pub latency_us: u64,
}

/// A refused or failed call: the problem, and when to retry if that is known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct CallError {
    /// The problem (its code says what happened).
    pub error: Error,
    /// For `rate_limited` and `circuit_open`: how long to wait.
    pub retry_after: Option<Duration>,
}

impl From<Error> for CallError {
    fn from(error: Error) -> Self {
        CallError {
            error,
            retry_after: None,
        }
    }
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        e.error
    }
}

/// One row of the call log.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct CallRecord {
    /// `tcl_…`
    pub id: String,
    /// When the call was made (RFC 3339).
    pub at: String,
    /// `agt_…`, or `admin`.
    pub agent: String,
    /// The task it was made for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The tool named.
    pub tool: String,
    /// `sha256:…` of the canonical JSON of the arguments, secrets redacted.
    pub arguments_digest: String,
    /// `ok`, `tool_error`, or the problem code.
    pub status: String,
    /// The problem's detail, secrets redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Tries made.
    pub attempts: u32,
    /// Time spent (µs).
    pub latency_us: u64,
    /// Bytes of arguments sent.
    pub request_bytes: u64,
    /// Bytes of the answer.
    pub response_bytes: u64,
    /// The price-book key the call is metered under: `tool:connection.tool`.
    pub cost_key: String,
}

/// A filter for [`Tools::list_calls`].
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListCalls {
    /// Only this agent's calls.
    #[serde(default)]
    pub agent: Option<String>,
    /// Only calls of this tool.
    #[serde(default)]
    pub tool: Option<String>,
    /// Only calls made for this task.
    #[serde(default)]
    pub task: Option<String>,
    /// The cursor from the previous page.
    #[serde(default)]
    pub after: Option<String>,
    /// Page size (1–500, default 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// The canonical JSON of `v`: object keys sorted, no whitespace.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                canonical(&o[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn digest(v: &Value) -> String {
    let mut s = String::new();
    canonical(v, &mut s);
    format!("sha256:{}", hex::encode(Sha256::digest(s.as_bytes())))
}

/// What a finished attempt loop produced.
struct Done {
    result: Value,
    bytes: usize,
}

fn is_upstream_failure(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::UpstreamFailed
            | ErrorCode::UpstreamTimeout
            | ErrorCode::UpstreamMalformed
            | ErrorCode::UpstreamTooLarge
    )
}

fn jitter(ms: u64) -> u64 {
    let r: [u8; 2] = strata_core::secret::random_bytes();
    ms / 2 + (u64::from(u16::from_le_bytes(r)) * (ms / 2 + 1)) / 65_536
}

impl Tools {
    /// Calls a tool for `caller` (see the module doc for the pipeline). The call
    /// is logged whatever happens.
    pub async fn call(&self, caller: &Caller, req: CallRequest) -> Result<CallOutput, CallError> {
        let started = Instant::now();
        let at = self.now();
        let call_id = Id::new("tcl").to_string();
        let mut scrub = Scrubber::default();
        let mut attempts = 0u32;
        let args = match &req.arguments {
            Value::Null => Value::Object(Map::new()),
            v => v.clone(),
        };
        let request_bytes = serde_json::to_vec(&args).map(|b| b.len()).unwrap_or(0);
        let outcome = self
            .run(caller, &req, &args, request_bytes, &mut scrub, &mut attempts)
            .await;
        let latency_us = started.elapsed().as_micros() as u64;
        let (status, error, response_bytes) = match &outcome {
            Ok(done) => {
                let is_error = done.result.get("isError").and_then(Value::as_bool) == Some(true);
                (
                    if is_error { "tool_error" } else { "ok" }.to_string(),
                    None,
                    done.bytes,
                )
            }
            Err(e) => (
                e.error.code.as_str().to_string(),
                Some(scrub.text(&e.error.detail)),
                0,
            ),
        };
        tracing::debug!(call = %call_id, tool = %req.tool, status = %status, latency_us, "tool call");
        let record = CallRecord {
            id: call_id.clone(),
            at: rfc3339(at),
            agent: caller.log_name().to_string(),
            task: req.task.clone(),
            tool: req.tool.clone(),
            arguments_digest: digest(&scrub.json(args)),
            status,
            error,
            attempts,
            latency_us,
            request_bytes: request_bytes as u64,
            response_bytes: response_bytes as u64,
            cost_key: format!("tool:{}", req.tool),
        };
        store::queue_call(self.store(), record, at).await;
        match outcome {
            Ok(done) => {
                let is_error = done.result.get("isError").and_then(Value::as_bool) == Some(true);
                Ok(CallOutput {
                    call_id,
                    tool: req.tool,
                    result: done.result,
                    is_error,
                    attempts,
                    latency_us,
                })
            }
            Err(mut e) => {
                e.error.detail = scrub.text(&e.error.detail);
                Err(e)
            }
        }
    }

    async fn run(
        &self,
        caller: &Caller,
        req: &CallRequest,
        args: &Value,
        request_bytes: usize,
        scrub: &mut Scrubber,
        attempts: &mut u32,
    ) -> Result<Done, CallError> {
        let name = &req.tool;
        if !self.inner.grants.allows(caller, name) {
            return Err(
                Error::forbidden(format!("no grant lets {} call tool '{name}'", caller.log_name())).into(),
            );
        }
        let (entry, conn) = self
            .inner
            .catalog
            .tool(name)
            .ok_or_else(|| Error::not_found("tool", name))?;
        if let Some(t) = &req.task {
            Id::parse("tsk", t).map_err(|e| Error::invalid("task", e))?;
        }
        self.take_tokens(caller, name, &conn)?;
        let Value::Object(map) = args else {
            return Err(Error::new(ErrorCode::InvalidArguments, "arguments: must be an object").into());
        };
        if request_bytes > MAX_ARGUMENT_BYTES {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!("arguments: at most {MAX_ARGUMENT_BYTES} bytes"),
            )
            .into());
        }
        let Some(validator) = &entry.validator else {
            return Err(Error::new(
                ErrorCode::UpstreamMalformed,
                format!(
                    "tool '{name}' has an input schema that does not compile ({}); re-sync or fix the upstream",
                    entry.schema_error.as_deref().unwrap_or("unknown error")
                ),
            )
            .into());
        };
        // `is_valid` stops at the first failure without building errors: the common case is fast.
        if !validator.is_valid(args)
            && let Some(e) = validator.iter_errors(args).next()
        {
            let path = e.instance_path().to_string();
            return Err(Error::new(ErrorCode::InvalidArguments, format!("arguments{path}: {e}")).into());
        }
        let retry = conn.spec.retry.unwrap_or_default();
        let tries = if entry.info.idempotent {
            retry.max_attempts.max(1)
        } else {
            1
        };
        let failures = self.config().breaker_failures;
        let cooldown = self.config().breaker_cooldown.as_millis() as i64;
        loop {
            if let Err(ms) = self.inner.breakers.admit(&conn.id, self.now()) {
                return Err(CallError {
                    error: Error::new(
                        ErrorCode::CircuitOpen,
                        format!(
                            "connection '{}' is failing; its breaker is open for {ms} ms",
                            conn.name
                        ),
                    ),
                    retry_after: Some(Duration::from_millis(ms)),
                });
            }
            *attempts += 1;
            let out = self.invoke(&entry, &conn, map, scrub).await;
            match out {
                Ok(done) => {
                    self.inner
                        .breakers
                        .record(&conn.id, true, self.now(), failures, cooldown);
                    return Ok(Done {
                        result: scrub.json(done.result),
                        bytes: done.bytes,
                    });
                }
                Err(e) if is_upstream_failure(e.code) => {
                    self.inner
                        .breakers
                        .record(&conn.id, false, self.now(), failures, cooldown);
                    let retryable = matches!(e.code, ErrorCode::UpstreamFailed | ErrorCode::UpstreamTimeout);
                    if !retryable || *attempts >= tries {
                        return Err(e.into());
                    }
                    tokio::time::sleep(Duration::from_millis(backoff(&retry, *attempts))).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn take_tokens(&self, caller: &Caller, tool: &str, conn: &Conn) -> Result<(), CallError> {
        let now = self.now();
        let agent_key = format!("agent:{}", caller.log_name());
        let agent_rate = self.config().agent_rate;
        if let Err(ms) = self.inner.limits.take(&agent_key, agent_rate, now) {
            return Err(CallError {
                error: Error::new(
                    ErrorCode::RateLimited,
                    format!("{} is over its call rate; retry in {ms} ms", caller.log_name()),
                ),
                retry_after: Some(Duration::from_millis(ms)),
            });
        }
        let tool_rate = conn.spec.rate_limit.unwrap_or(self.config().tool_rate);
        if let Err(ms) = self.inner.limits.take(&format!("tool:{tool}"), tool_rate, now) {
            self.inner.limits.give_back(&agent_key, agent_rate);
            return Err(CallError {
                error: Error::new(
                    ErrorCode::RateLimited,
                    format!("tool '{tool}' is over its call rate; retry in {ms} ms"),
                ),
                retry_after: Some(Duration::from_millis(ms)),
            });
        }
        Ok(())
    }

    /// One try at the upstream.
    async fn invoke(
        &self,
        entry: &Entry,
        conn: &std::sync::Arc<Conn>,
        args: &Map<String, Value>,
        scrub: &mut Scrubber,
    ) -> strata_core::Result<Done> {
        let timeout = conn.timeout(self.config().timeout);
        let max = conn.max_bytes(self.config().max_response_bytes);
        match &conn.spec.upstream {
            Upstream::McpStdio { .. } | Upstream::McpHttp { .. } => {
                let session = self.session(conn, scrub).await?;
                match session.call(&entry.upstream_name, args.clone(), timeout).await {
                    Ok((result, bytes)) => Ok(Done { result, bytes }),
                    Err(f) => {
                        if !session.is_open() {
                            self.inner.live.stop(&conn.id).await;
                        }
                        Err(fault_error(&conn.name, f, scrub))
                    }
                }
            }
            Upstream::Openapi { .. } => {
                let op = crate::openapi::binding(&entry.binding)?;
                crate::openapi::check_arguments(&op, args)?;
                let values = self.secret_values(conn, scrub).await?;
                let render =
                    |items: &crate::openapi::Templates| -> strata_core::Result<Vec<(String, Rendered)>> {
                        items
                            .iter()
                            .map(|(k, t)| Ok((k.clone(), t.render(&values)?)))
                            .collect()
                    };
                let headers = render(&conn.headers)?;
                let query = render(&conn.query)?;
                let bearer = self.access_token(conn, scrub).await?.map(|(t, _)| t);
                let req = crate::openapi::Request {
                    base_url: &op.base_url,
                    headers,
                    query,
                    bearer,
                    max_bytes: max,
                    timeout,
                };
                crate::openapi::call(&self.inner.http, &op, args, req)
                    .await
                    .map(|(result, bytes)| Done { result, bytes })
                    .map_err(|f| fault_error(&conn.name, f, scrub))
            }
        }
    }

    /// Calls logged, newest first, filtered by `req`.
    pub async fn list_calls(&self, req: &ListCalls) -> strata_core::Result<Page<CallRecord>> {
        let limit = i64::from(req.limit.unwrap_or(100).clamp(1, 500));
        let rows = store::calls(self.store(), req, limit + 1).await?;
        let (items, next) = strata_core::page::split(rows, limit, |r| r.id.clone());
        Ok(Page { items, next })
    }

    /// Waits until every call made so far is in the log. A call answered
    /// through the kernel already is (its outcome write commits after its row);
    /// this is for callers of [`Tools::call`] itself.
    pub async fn flush_log(&self) {
        let done = self
            .store()
            .write(|_| Box::pin(async { Ok::<(), strata_store::Error>(()) }))
            .await;
        if let Err(e) = done {
            tracing::error!(error = %e, "waiting for the call log failed");
        }
    }
}

fn backoff(r: &Retry, attempt: u32) -> u64 {
    let base = r.backoff_ms.saturating_mul(1u64 << (attempt - 1).min(10));
    jitter(base.min(10_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn digests_ignore_key_order() {
        assert_eq!(
            digest(&json!({"a": 1, "b": [1, {"y": 2, "x": 1}]})),
            digest(&json!({"b": [1, {"x": 1, "y": 2}], "a": 1}))
        );
        assert_ne!(digest(&json!({"a": 1})), digest(&json!({"a": 2})));
    }

    #[test]
    fn backoff_doubles_within_jitter() {
        let r = Retry {
            max_attempts: 3,
            backoff_ms: 100,
        };
        for _ in 0..20 {
            let first = backoff(&r, 1);
            let second = backoff(&r, 2);
            assert!((50..=100).contains(&first), "{first}");
            assert!((100..=200).contains(&second), "{second}");
        }
    }
}
