//! `strata mcp`: Strata's MCP server over stdio, for clients that start their
//! servers as processes.
//!
//! It relays every request to the server's `/mcp` endpoint (streamable HTTP)
//! with the given token, so the tools, what the token may see and what a call
//! does are the server's alone; nothing is decided here. The server's
//! `tools/list_changed` (heard on the session's stream) is passed on.
//! Logs go to stderr: stdout carries only the protocol.

use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientConfig, InitializeResult, ListToolsResult,
    PaginatedRequestParams, ResultType, ServerConfig,
};
use rmcp::service::{Peer, RequestContext, RoleClient, RoleServer, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ErrorData as McpError, ServiceExt};

use crate::Conn;
use crate::client::Client;

/// Relays an MCP client on stdio to the server's `/mcp`.
#[derive(Clone)]
struct Relay {
    upstream: Peer<RoleClient>,
    info: ServerConfig,
}

fn relayed(e: ServiceError) -> McpError {
    match e {
        ServiceError::McpError(e) => e,
        other => McpError::internal_error(format!("the Strata server did not answer: {other}"), None),
    }
}

impl rmcp::ServerHandler for Relay {
    fn get_info(&self) -> ServerConfig {
        self.info.clone()
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let mut result = self.upstream.list_tools(request).await.map_err(relayed)?;
        // The upstream session may be an older revision than the stdio one;
        // the SDK drops the field again for a stdio client that is too.
        result.result_type = Some(ResultType::COMPLETE);
        Ok(result)
    }

    async fn call_tool(
        &self,
        mut request: CallToolRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        // The SDK moved the call's `_meta` into the context; pass on what is
        // the caller's (an idempotency key, a progress token), not what
        // belongs to the stdio session's own protocol.
        let mut meta = request.meta.take().unwrap_or_default();
        for (k, v) in cx.meta.0.0.iter() {
            if !k.starts_with("io.modelcontextprotocol/") {
                meta.0.0.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        request.meta = (!meta.0.0.is_empty()).then_some(meta);
        let mut response = self.upstream.call_tool_once(request).await.map_err(relayed)?;
        if let CallToolResponse::Complete(result) = &mut response {
            result.result_type = Some(ResultType::COMPLETE);
        }
        Ok(response)
    }
}

/// The relay's side of the session with the server: passes the server's
/// `tools/list_changed` on to the stdio client once that one is connected.
#[derive(Clone)]
struct Upstream {
    downstream: Arc<OnceLock<Peer<RoleServer>>>,
}

impl rmcp::ClientHandler for Upstream {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::default()
    }

    async fn on_tool_list_changed(&self, _cx: rmcp::service::NotificationContext<RoleClient>) {
        if let Some(peer) = self.downstream.get()
            && let Err(e) = peer.notify_tool_list_changed().await
        {
            tracing::warn!(error = %e, "could not pass tools/list_changed on to the stdio client");
        }
    }
}

async fn connect(client: &Client, handler: Upstream) -> anyhow::Result<RunningService<RoleClient, Upstream>> {
    let url = format!("{}/mcp", client.base());
    let config =
        StreamableHttpClientTransportConfig::with_uri(url.clone()).auth_header(client.token().to_string());
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    handler
        .serve(transport)
        .await
        .with_context(|| format!("cannot open an MCP session with {url}"))
}

pub(crate) async fn run(conn: Conn) -> anyhow::Result<ExitCode> {
    let client = Client::from_conn(&conn)?;
    let downstream = Arc::new(OnceLock::new());
    let upstream = connect(
        &client,
        Upstream {
            downstream: downstream.clone(),
        },
    )
    .await?;
    let peer = upstream
        .peer()
        .peer_info()
        .context("the Strata server sent no server information")?;
    // What the server said of itself, said again to the stdio client.
    let mut info = InitializeResult::new(peer.capabilities.clone());
    if let Some(server) = &peer.server_info {
        info = info.with_server_info(server.clone());
    }
    if let Some(text) = &peer.instructions {
        info = info.with_instructions(text.clone());
    }
    let relay = Relay {
        upstream: upstream.peer().clone(),
        info,
    };
    let served = relay
        .serve(rmcp::transport::io::stdio())
        .await
        .context("the MCP client on stdin did not complete the handshake")?;
    // From now on the server's tools/list_changed is said again on stdio.
    let _ = downstream.set(served.peer().clone());
    served.waiting().await.context("the stdio session failed")?;
    drop(upstream);
    Ok(ExitCode::SUCCESS)
}
