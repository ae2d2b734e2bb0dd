//! Strata as an MCP server: streamable HTTP at `/mcp`.
//!
//! The tools are derived, never written by hand: every syscall in the kernel's
//! registry that the caller's token may call (the policy check the pipeline
//! itself makes) is a tool named after the syscall, with the declaration's
//! description and the request's JSON Schema as its input schema. After them
//! come the upstream tools the caller's grants name (`connection.tool`),
//! called through the `tool.call` syscall. A call runs through the kernel's
//! pipeline with the caller's token, so it is authorized, audited, metered and
//! idempotent exactly like the same call over HTTP; `_meta.idempotencyKey`
//! plays the part of the `Idempotency-Key` header. A refused or failed call is
//! an MCP tool error whose `structuredContent` is the problem document, with
//! its stable `code`.
//!
//! Protocol revisions are negotiated per request by `rmcp`, the official SDK:
//! 2026-07-28 (stateless, `server/discover`) and the initialize-based
//! revisions (2025-03-26 to 2025-11-25, with `Mcp-Session-Id` and SSE).
//! Every HTTP request must carry a bearer token; it is checked before the SDK
//! sees the request, and a missing or bad one is a `401` problem. Against DNS
//! rebinding, a request carrying an `Origin` (browsers send one) is refused
//! unless the origin is a loopback one or listed in `Options::mcp_origins`;
//! `Host` is not restricted, so the server can be reached by any name.
//!
//! When the upstream tools or the grants change, `notifications/tools/list_changed`
//! goes to every initialized session (over its stream) and to every
//! 2026-07-28 `subscriptions/listen` stream that asked for it; the client lists
//! again to see what its own token may now use.

use std::borrow::Cow;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use rmcp::ErrorData as McpError;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, InitializeResult,
    JsonObject, ListToolsResult, PaginatedRequestParams, ResultType, ServerCapabilities, ServerConfig,
    ServerNotification, SubscriptionFilter, Tool, ToolAnnotations, ToolListChangedNotification,
};
use rmcp::service::{NotificationContext, RequestContext, RoleServer, SubscriptionContext};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};
use strata_core::{Effect, Error, ErrorCode, Principal, Spec};
use strata_kernel::{Kernel, Request as Call};

use crate::problem::{problem_body, problem_response};

mod stateless;

/// Browser origins always allowed: pages served from this machine.
const LOOPBACK_ORIGINS: [&str; 6] = [
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
    "https://[::1]:*",
];

/// Who is calling, established by the HTTP layer before the SDK runs.
#[derive(Clone)]
struct Caller {
    principal: Principal,
    token: String,
}

/// A syscall as a tool, built once.
struct SyscallTool {
    spec: Spec,
    tool: Tool,
}

/// The MCP server's handler: one per session (or per stateless request),
/// sharing the kernel and the derived tools.
#[derive(Clone)]
struct Handler {
    kernel: Kernel,
    syscalls: Arc<Vec<SyscallTool>>,
    shutdown: tokio_util::sync::CancellationToken,
    max_body_bytes: usize,
}

/// The `/mcp` route; `shutdown` ends its open streams when the server stops.
pub(crate) fn router<S: Clone + Send + Sync + 'static>(
    kernel: Kernel,
    options: &crate::Options,
) -> Router<S> {
    let handler = Handler {
        syscalls: Arc::new(derive_tools(&kernel)),
        kernel: kernel.clone(),
        shutdown: options.shutdown.clone(),
        max_body_bytes: options.max_body_bytes,
    };
    let origins = LOOPBACK_ORIGINS
        .iter()
        .map(|o| o.to_string())
        .chain(options.mcp_origins.iter().cloned());
    // A stateless (2026-07-28) call whose first message is its answer gets it
    // as plain JSON, not as a one-event SSE stream; a handler that sends
    // something first (progress) still streams.
    let config = StreamableHttpServerConfig::default()
        .with_json_response(true)
        .disable_allowed_hosts()
        .with_allowed_origins(origins)
        .enforce_origin_validation()
        .with_max_request_body_bytes(options.max_body_bytes)
        .with_cancellation_token(options.shutdown.clone());
    let fast = handler.clone();
    let service = StreamableHttpService::new(
        move || Ok(handler.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    // Layers run outside in: the token first, then the stateless fast path.
    Router::new()
        .route_service("/mcp", service)
        .layer(middleware::from_fn_with_state(fast, stateless::tools_call))
        .layer(middleware::from_fn_with_state(kernel, authenticate))
}

/// Refuses a request without a valid bearer token, before the SDK sees it.
async fn authenticate(State(kernel): State<Kernel>, mut req: Request, next: Next) -> Response {
    let token = crate::route::bearer(req.headers());
    match kernel.authenticate(token.as_deref()).await {
        Ok(principal) => {
            req.extensions_mut().insert(Caller {
                principal,
                token: token.unwrap_or_default(),
            });
            next.run(req).await
        }
        Err(e) => problem_response(&e),
    }
}

fn derive_tools(kernel: &Kernel) -> Vec<SyscallTool> {
    kernel
        .registry()
        .entries()
        .iter()
        .map(|e| {
            let mut schema = match &e.request_schema {
                Value::Object(m) => m.clone(),
                _ => JsonObject::new(),
            };
            schema.remove("$schema");
            schema.remove("title");
            schema.entry("type").or_insert_with(|| json!("object"));
            let verb = e.spec.name.rsplit('.').next().unwrap_or_default();
            let annotations = ToolAnnotations::new()
                .read_only(e.spec.effect == Effect::Read)
                .destructive(matches!(verb, "delete" | "remove" | "revoke" | "cancel"))
                .open_world(e.spec.effect == Effect::External);
            SyscallTool {
                spec: e.spec,
                tool: Tool::new(e.spec.name, e.spec.description, schema).with_annotations(annotations),
            }
        })
        .collect()
}

fn caller(cx: &RequestContext<RoleServer>) -> Result<Caller, McpError> {
    cx.extensions
        .get::<axum::http::request::Parts>()
        .and_then(|p| p.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| McpError::internal_error("the request reached the handler unauthenticated", None))
}

/// A kernel error as an MCP tool error carrying the problem document.
fn tool_error(e: &Error) -> CallToolResult {
    let body = problem_body(e);
    let text = format!(
        "{}: {}",
        e.code.as_str(),
        body["detail"].as_str().unwrap_or_default()
    );
    let mut result = CallToolResult::error(vec![ContentBlock::text(text)]);
    result.structured_content = Some(body);
    result
}

/// A syscall's reply as a tool result: the JSON as text, and as structured
/// content (an object, as MCP requires; other values are wrapped).
fn tool_success(body: Value) -> CallToolResult {
    let text = body.to_string();
    let structured = match body {
        Value::Object(_) => body,
        other => json!({ "result": other }),
    };
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(structured);
    result
}

impl Handler {
    /// Calls tool `name`: a syscall, or else an upstream tool through `tool.call`.
    async fn call(
        &self,
        caller: &Caller,
        name: &str,
        arguments: Value,
        key: Option<String>,
    ) -> Result<CallToolResult, McpError> {
        if self.kernel.registry().get(name).is_some() {
            Ok(self.call_syscall(caller, name, arguments, key).await)
        } else {
            self.call_upstream(caller, name, arguments, key).await
        }
    }

    async fn call_syscall(
        &self,
        caller: &Caller,
        name: &str,
        input: Value,
        key: Option<String>,
    ) -> CallToolResult {
        let call = Call {
            syscall: name.to_string(),
            token: Some(caller.token.clone()),
            input,
            idempotency_key: key,
        };
        match self.kernel.call(call).await {
            Ok(reply) => tool_success(reply.body),
            Err(e) => tool_error(&e),
        }
    }

    /// An upstream tool, through `tool.call`: the upstream's own result
    /// (content, structured content, error flag) goes back as it came.
    async fn call_upstream(
        &self,
        caller: &Caller,
        name: &str,
        arguments: Value,
        key: Option<String>,
    ) -> Result<CallToolResult, McpError> {
        let call = Call {
            syscall: "tool.call".to_string(),
            token: Some(caller.token.clone()),
            input: json!({ "name": name, "arguments": arguments }),
            idempotency_key: key,
        };
        match self.kernel.call(call).await {
            Ok(reply) => {
                let result = reply.body.get("result").cloned().unwrap_or(Value::Null);
                let mut result: CallToolResult = serde_json::from_value(result).map_err(|e| {
                    McpError::internal_error(format!("the upstream's result is malformed: {e}"), None)
                })?;
                // The upstream may speak an older revision; the SDK drops the
                // field again for clients that do.
                result.result_type = Some(ResultType::COMPLETE);
                Ok(result)
            }
            Err(e) if e.code == ErrorCode::NotFound => Err(McpError::invalid_params(
                format!("unknown tool '{name}'"),
                Some(problem_body(&e)),
            )),
            Err(e) => Ok(tool_error(&e)),
        }
    }
}

impl rmcp::ServerHandler for Handler {
    fn get_info(&self) -> ServerConfig {
        InitializeResult::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("strata", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Strata's system calls as tools: identities, tasks, tools and the rest, each named \
                 after its syscall; upstream tools you are granted are named connection.tool. \
                 Failures carry a problem document with a stable `code`.",
        )
    }

    /// An initialized (pre-2026-07-28) session: announce tool-list changes
    /// to it until it closes or the server stops.
    async fn on_initialized(&self, cx: NotificationContext<RoleServer>) {
        let (mut changes, shutdown, peer) = (self.kernel.tool_changes(), self.shutdown.clone(), cx.peer);
        changes.mark_unchanged();
        tokio::spawn(async move {
            // A closed session is noticed at the next change or check.
            let mut check = tokio::time::interval(std::time::Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = check.tick() => {
                        if peer.is_transport_closed() { break }
                        continue;
                    }
                    r = changes.changed() => if r.is_err() { break },
                }
                if peer.is_transport_closed() || peer.notify_tool_list_changed().await.is_err() {
                    break;
                }
            }
        });
    }

    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        let tools = SubscriptionFilter::builder().tools_list_changed().build();
        Some(requested.intersection(&tools))
    }

    /// A 2026-07-28 `subscriptions/listen` stream: tool-list changes until the
    /// client cancels it or the server stops.
    async fn listen(&self, cx: SubscriptionContext) -> Result<(), McpError> {
        let mut changes = self.kernel.tool_changes();
        changes.mark_unchanged();
        loop {
            tokio::select! {
                _ = cx.cancelled() => return Ok(()),
                _ = self.shutdown.cancelled() => return Ok(()),
                r = changes.changed() => if r.is_err() { return Ok(()) },
            }
            if cx.accepted().tools_list_changed != Some(true) {
                continue;
            }
            let note =
                ServerNotification::ToolListChangedNotification(ToolListChangedNotification::default());
            if cx.sink().send(note).await.is_err() {
                return Ok(());
            }
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        cx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let caller = caller(&cx)?;
        let mut tools: Vec<Tool> = self
            .syscalls
            .iter()
            .filter(|t| self.kernel.permits(&caller.principal, &t.spec))
            .map(|t| t.tool.clone())
            .collect();
        let may_call_upstream = self
            .kernel
            .registry()
            .get("tool.call")
            .is_some_and(|e| self.kernel.permits(&caller.principal, &e.spec));
        if may_call_upstream {
            let reply = self
                .kernel
                .call(Call {
                    syscall: "tool.list".to_string(),
                    token: Some(caller.token.clone()),
                    input: json!({}),
                    idempotency_key: None,
                })
                .await;
            // A token that may call tools but not list them still sees its syscalls.
            if let Ok(reply) = reply {
                for t in reply.body["items"].as_array().into_iter().flatten() {
                    let (Some(name), Some(Value::Object(schema))) =
                        (t["name"].as_str(), t.get("input_schema"))
                    else {
                        continue;
                    };
                    let description = t["description"].as_str().unwrap_or_default().to_string();
                    // What the gateway knows of the tool, as MCP hints.
                    let hints = ToolAnnotations::new()
                        .open_world(true)
                        .read_only(t["read_only"] == true)
                        .idempotent(t["idempotent"] == true);
                    let mut tool =
                        Tool::new(name.to_string(), description, schema.clone()).with_annotations(hints);
                    // The upstream's promise about its structured content, relayed.
                    if let Some(Value::Object(output)) = t.get("output_schema") {
                        tool.output_schema = Some(std::sync::Arc::new(output.clone()));
                    }
                    tools.push(tool);
                }
            }
        }
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let caller = caller(&cx)?;
        let key = idempotency_key(&request, &cx);
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        let name: Cow<'static, str> = request.name;
        Ok(self.call(&caller, &name, arguments, key).await?.into())
    }
}

/// `_meta.idempotencyKey` of the call, wherever the SDK left the request's meta.
fn idempotency_key(request: &CallToolRequestParams, cx: &RequestContext<RoleServer>) -> Option<String> {
    let from = |m: &JsonObject| {
        m.get("idempotencyKey")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    request
        .meta
        .as_ref()
        .and_then(|m| from(&m.0.0))
        .or_else(|| from(&cx.meta.0.0))
}
