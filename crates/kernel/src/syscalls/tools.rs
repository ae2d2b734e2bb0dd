//! `secret.*`, `connection.*`, `grant.*`, `tool.*`, `tool_call.list`: the tool
//! gateway.
//!
//! The gateway commits its own rows (and starts upstreams, fetches documents,
//! calls tools), so every mutating syscall here is planned as an
//! [`Action::External`]: the kernel records an intent before the gateway acts
//! and the outcome, idempotency record and audit entry after. A call to a
//! read-only tool is an [`Action::ExternalRead`]: no intent, the rest after.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use strata_core::{Error, Principal, Result, Spec, Syscall};
use strata_tools::{
    CallOutput, CallRecord, CallRequest, Caller, ConnectionInfo, Grant, ListCalls, ListTools, NewConnection,
    NewGrant, NewSecret, Page, SecretInfo, SyncReport, ToolInfo,
};

use super::{ById, NoParams};
use crate::{Action, Cx, Handler, Kernel};

/// A request naming a secret or a connection (from the path).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ByName {
    /// Its name.
    pub name: String,
}

/// A request to call an upstream tool.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    /// `connection.tool` (from the path).
    pub name: String,
    /// The arguments, matching the tool's input schema (default `{}`).
    #[serde(default)]
    pub arguments: Value,
    /// The task the call is made for (`tsk_…`), recorded in the call log.
    #[serde(default)]
    pub task: Option<String>,
}

/// The answer to a removal by name.
#[derive(Debug, Clone, serde::Serialize, JsonSchema)]
pub struct RemovedName {
    /// The name of what was removed.
    pub name: String,
    /// Always true.
    pub removed: bool,
}

/// Who the gateway sees: operators see and call everything; an agent is
/// matched against the grants by its id and its labels.
pub async fn caller(k: &Kernel, principal: &Principal) -> Result<Caller> {
    match principal {
        Principal::Admin { .. } => Ok(Caller::Operator),
        Principal::Agent { agent_id, .. } => {
            let labels: BTreeMap<String, String> = k.agent_labels(agent_id).await?;
            Ok(Caller::Agent {
                id: agent_id.clone(),
                labels,
            })
        }
    }
}

fn page<T>(items: Vec<T>) -> Page<T> {
    Page { items, next: None }
}

/// `secret.set`
pub struct SetSecret;

impl Syscall for SetSecret {
    type Request = NewSecret;
    type Response = SecretInfo;
    const SPEC: Spec = spec!(
        "secret.set",
        "Store or replace a secret in the vault, sealed under the master key. Its value is never returned.",
        "secret",
        External,
        Admin,
        Post,
        "/v1/secrets",
        200
    );
}

impl Handler for SetSecret {
    async fn handle(k: &Kernel, _cx: &Cx, req: NewSecret) -> Result<Action<SecretInfo>> {
        let tools = k.tools().clone();
        Ok(Action::external(req.name.clone(), async move {
            tools.set_secret(req).await
        }))
    }
}

/// `secret.list`
pub struct ListSecrets;

impl Syscall for ListSecrets {
    type Request = NoParams;
    type Response = Page<SecretInfo>;
    const SPEC: Spec = spec!(
        "secret.list",
        "List the vault's secrets by name: description, version and dates, never values.",
        "secret",
        Read,
        Admin,
        Get,
        "/v1/secrets",
        200
    );
}

impl Handler for ListSecrets {
    async fn handle(k: &Kernel, _cx: &Cx, _req: NoParams) -> Result<Action<Page<SecretInfo>>> {
        Ok(Action::Done(page(k.tools().list_secrets().await?)))
    }
}

/// `secret.remove`
pub struct RemoveSecret;

impl Syscall for RemoveSecret {
    type Request = ByName;
    type Response = RemovedName;
    const SPEC: Spec = spec!(
        "secret.remove",
        "Remove a secret from the vault; refused while a connection references it.",
        "secret",
        External,
        Admin,
        Delete,
        "/v1/secrets/{name}",
        200
    );
}

impl Handler for RemoveSecret {
    async fn handle(k: &Kernel, _cx: &Cx, req: ByName) -> Result<Action<RemovedName>> {
        let tools = k.tools().clone();
        Ok(Action::external(req.name.clone(), async move {
            tools.remove_secret(&req.name).await?;
            Ok(RemovedName {
                name: req.name,
                removed: true,
            })
        }))
    }
}

/// `connection.add`
pub struct AddConnection;

impl Syscall for AddConnection {
    type Request = NewConnection;
    type Response = ConnectionInfo;
    const SPEC: Spec = spec!(
        "connection.add",
        "Register an upstream (an MCP server over stdio or streamable HTTP, or an OpenAPI 3 service) and import its tools as `connection.tool`.",
        "connection",
        External,
        Admin,
        Post,
        "/v1/connections",
        201
    );
}

impl Handler for AddConnection {
    async fn handle(k: &Kernel, _cx: &Cx, req: NewConnection) -> Result<Action<ConnectionInfo>> {
        // Upstream tools are named `connection.tool` beside the syscalls on the
        // MCP endpoint, so a connection may not take a syscall's namespace.
        let prefix = format!("{}.", req.name);
        if k.registry()
            .entries()
            .iter()
            .any(|e| e.spec.name.starts_with(&prefix))
        {
            return Err(Error::invalid(
                "name",
                format!(
                    "'{}' is a syscall namespace; pick another connection name",
                    req.name
                ),
            ));
        }
        let tools = k.tools().clone();
        Ok(Action::external(req.name.clone(), async move {
            tools.add_connection(req).await
        }))
    }
}

/// `connection.list`
pub struct ListConnections;

impl Syscall for ListConnections {
    type Request = NoParams;
    type Response = Page<ConnectionInfo>;
    const SPEC: Spec = spec!(
        "connection.list",
        "List the registered connections with their definitions (secret references, never values).",
        "connection",
        Read,
        Admin,
        Get,
        "/v1/connections",
        200
    );
}

impl Handler for ListConnections {
    async fn handle(k: &Kernel, _cx: &Cx, _req: NoParams) -> Result<Action<Page<ConnectionInfo>>> {
        Ok(Action::Done(page(k.tools().list_connections())))
    }
}

/// `connection.get`
pub struct GetConnection;

impl Syscall for GetConnection {
    type Request = ByName;
    type Response = ConnectionInfo;
    const SPEC: Spec = spec!(
        "connection.get",
        "Get one connection: its definition, tool count and the secrets it references.",
        "connection",
        Read,
        Admin,
        Get,
        "/v1/connections/{name}",
        200
    );
}

impl Handler for GetConnection {
    async fn handle(k: &Kernel, _cx: &Cx, req: ByName) -> Result<Action<ConnectionInfo>> {
        Ok(Action::Done(k.tools().get_connection(&req.name)?))
    }
}

/// `connection.sync`
pub struct SyncConnection;

impl Syscall for SyncConnection {
    type Request = ByName;
    type Response = SyncReport;
    const SPEC: Spec = spec!(
        "connection.sync",
        "Re-read a connection's tools from its upstream and report which appeared, went or changed.",
        "connection",
        External,
        Admin,
        Post,
        "/v1/connections/{name}/sync",
        200
    );
}

impl Handler for SyncConnection {
    async fn handle(k: &Kernel, _cx: &Cx, req: ByName) -> Result<Action<SyncReport>> {
        let tools = k.tools().clone();
        Ok(Action::external(req.name.clone(), async move {
            tools.sync_connection(&req.name).await
        }))
    }
}

/// `connection.remove`
pub struct RemoveConnection;

impl Syscall for RemoveConnection {
    type Request = ByName;
    type Response = RemovedName;
    const SPEC: Spec = spec!(
        "connection.remove",
        "Remove a connection and its tools, stopping its upstream.",
        "connection",
        External,
        Admin,
        Delete,
        "/v1/connections/{name}",
        200
    );
}

impl Handler for RemoveConnection {
    async fn handle(k: &Kernel, _cx: &Cx, req: ByName) -> Result<Action<RemovedName>> {
        let tools = k.tools().clone();
        Ok(Action::external(req.name.clone(), async move {
            tools.remove_connection(&req.name).await?;
            Ok(RemovedName {
                name: req.name,
                removed: true,
            })
        }))
    }
}

/// `grant.add`
pub struct AddGrant;

impl Syscall for AddGrant {
    type Request = NewGrant;
    type Response = Grant;
    const SPEC: Spec = spec!(
        "grant.add",
        "Let an agent (by id) or every agent with a label list and call the tools a pattern names (`*`, `conn.*`, `conn.tool`).",
        "grant",
        External,
        Admin,
        Post,
        "/v1/grants",
        201
    );
}

impl Handler for AddGrant {
    async fn handle(k: &Kernel, _cx: &Cx, req: NewGrant) -> Result<Action<Grant>> {
        let tools = k.tools().clone();
        Ok(Action::external("grant", async move { tools.grant(req).await }))
    }
}

/// `grant.list`
pub struct ListGrants;

impl Syscall for ListGrants {
    type Request = NoParams;
    type Response = Page<Grant>;
    const SPEC: Spec = spec!(
        "grant.list",
        "List the tool grants.",
        "grant",
        Read,
        Admin,
        Get,
        "/v1/grants",
        200
    );
}

impl Handler for ListGrants {
    async fn handle(k: &Kernel, _cx: &Cx, _req: NoParams) -> Result<Action<Page<Grant>>> {
        Ok(Action::Done(page(k.tools().list_grants().await?)))
    }
}

/// `grant.revoke`
pub struct RevokeGrant;

impl Syscall for RevokeGrant {
    type Request = ById;
    type Response = super::Removed;
    const SPEC: Spec = spec!(
        "grant.revoke",
        "Revoke a tool grant; the agents it covered stop seeing and calling its tools at once.",
        "grant",
        External,
        Admin,
        Delete,
        "/v1/grants/{id}",
        200
    );
}

impl Handler for RevokeGrant {
    async fn handle(k: &Kernel, _cx: &Cx, req: ById) -> Result<Action<super::Removed>> {
        let tools = k.tools().clone();
        Ok(Action::external(req.id.clone(), async move {
            tools.revoke_grant(&req.id).await?;
            Ok(super::Removed {
                id: req.id,
                removed: true,
            })
        }))
    }
}

/// `tool.list`
pub struct ListUpstreamTools;

impl Syscall for ListUpstreamTools {
    type Request = ListTools;
    type Response = Page<ToolInfo>;
    const SPEC: Spec = spec!(
        "tool.list",
        "List the upstream tools the caller may call (an agent: those its grants name), optionally searched by words.",
        "tool",
        Read,
        Principal,
        Get,
        "/v1/tools",
        200
    );
}

impl Handler for ListUpstreamTools {
    async fn handle(k: &Kernel, cx: &Cx, req: ListTools) -> Result<Action<Page<ToolInfo>>> {
        let caller = caller(k, &cx.principal).await?;
        Ok(Action::Done(page(k.tools().list_tools(&caller, &req))))
    }
}

/// `tool.call`
pub struct CallTool;

impl Syscall for CallTool {
    type Request = ToolCall;
    type Response = CallOutput;
    const SPEC: Spec = spec!(
        "tool.call",
        "Call an upstream tool the caller is granted, with arguments checked against its schema; rate-limited, timed out and logged.",
        "tool",
        External,
        Principal,
        Post,
        "/v1/tools/{name}/call",
        200
    );
}

impl Handler for CallTool {
    async fn handle(k: &Kernel, cx: &Cx, req: ToolCall) -> Result<Action<CallOutput>> {
        let caller = caller(k, &cx.principal).await?;
        let tools = k.tools().clone();
        let read_only = tools.is_read_only(&req.name);
        let resource = req.name.clone();
        let run = async move {
            let call = CallRequest {
                tool: req.name,
                arguments: req.arguments,
                task: req.task,
            };
            tools.call(&caller, call).await.map_err(|e| {
                let ms = e
                    .retry_after
                    .map(|d| d.as_millis().try_into().unwrap_or(u64::MAX));
                match ms {
                    Some(ms) => e.error.retry_after(ms.max(1)),
                    None => e.error,
                }
            })
        };
        // A read-only tool's call is no side effect: no intent before it.
        Ok(if read_only {
            Action::external_read(resource, run)
        } else {
            Action::external(resource, run)
        })
    }
}

/// `tool_call.list`
pub struct ListToolCalls;

impl Syscall for ListToolCalls {
    type Request = ListCalls;
    type Response = Page<CallRecord>;
    const SPEC: Spec = spec!(
        "tool_call.list",
        "Read the tool-call log, newest first: who called which tool, with what outcome and latency (arguments only as a digest). An agent sees its own calls.",
        "tool_call",
        Read,
        Principal,
        Get,
        "/v1/tool-calls",
        200
    );
}

impl Handler for ListToolCalls {
    async fn handle(k: &Kernel, cx: &Cx, mut req: ListCalls) -> Result<Action<Page<CallRecord>>> {
        if let Principal::Agent { agent_id, .. } = &cx.principal {
            if req.agent.as_ref().is_some_and(|a| a != agent_id) {
                return Err(Error::forbidden("an agent may read only its own tool calls"));
            }
            req.agent = Some(agent_id.clone());
        }
        // Every answered call is already there: its log row commits no later
        // than the call's outcome write, which its answer waits for.
        Ok(Action::Done(k.tools().list_calls(&req).await?))
    }
}
