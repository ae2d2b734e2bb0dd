//! The syscall declarations, one module per layer.
//!
//! Each syscall is a unit struct implementing [`strata_core::Syscall`] (its types
//! and [`strata_core::Spec`]) and [`crate::Handler`] (what it does). Adding one
//! here is all it takes to get its HTTP route, OpenAPI entry, policy action, audit
//! record and metrics.

/// A syscall's [`strata_core::Spec`], written positionally: name, description,
/// resource, effect, access (omitted: any principal), method, path, status.
macro_rules! spec {
    ($name:literal, $desc:literal, $res:literal, $effect:ident, $access:ident, $method:ident, $path:literal, $status:literal) => {
        strata_core::Spec {
            name: $name,
            description: $desc,
            resource: $res,
            effect: strata_core::Effect::$effect,
            access: strata_core::Access::$access,
            method: strata_core::Method::$method,
            path: $path,
            status: $status,
        }
    };
    ($name:literal, $desc:literal, $res:literal, $effect:ident, $method:ident, $path:literal, $status:literal) => {
        spec!($name, $desc, $res, $effect, Principal, $method, $path, $status)
    };
}

pub mod agent;
pub mod audit;
pub mod compute;
pub mod event;
pub mod fleet;
pub mod memory;
pub mod supervise;
pub mod task;
pub mod token;
pub mod tools;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::Registry;

/// The registry of every syscall.
pub(crate) fn registry() -> Registry {
    let mut r = Registry::new();
    r.add::<agent::CreateAgent>();
    r.add::<agent::ListAgents>();
    r.add::<agent::GetAgent>();
    r.add::<agent::DeleteAgent>();
    r.add::<token::CreateToken>();
    r.add::<token::CreateAdminToken>();
    r.add::<token::RevokeToken>();
    r.add::<audit::ListAudit>();
    r.add::<audit::VerifyAudit>();
    r.add::<event::ListEvents>();
    r.add::<task::SubmitTask>();
    r.add::<task::SubmitTasks>();
    r.add::<task::ListTasks>();
    r.add::<task::GetTask>();
    r.add::<task::CancelTask>();
    r.add::<task::LeaseTasks>();
    r.add::<task::HeartbeatTask>();
    r.add::<task::CompleteTask>();
    r.add::<task::CompleteTasks>();
    r.add::<task::FailTask>();
    r.add::<task::Discover>();
    r.add::<supervise::SetSupervision>();
    r.add::<supervise::ListSupervision>();
    r.add::<supervise::DeleteSupervision>();
    r.add::<supervise::ListEscalations>();
    r.add::<supervise::GetEscalation>();
    r.add::<supervise::ResolveEscalation>();
    r.add::<fleet::ApplyDeployment>();
    r.add::<fleet::ListDeployments>();
    r.add::<fleet::GetDeployment>();
    r.add::<fleet::DeleteDeployment>();
    r.add::<fleet::DeploymentLogs>();
    r.add::<tools::SetSecret>();
    r.add::<tools::ListSecrets>();
    r.add::<tools::RemoveSecret>();
    r.add::<tools::AddConnection>();
    r.add::<tools::ListConnections>();
    r.add::<tools::GetConnection>();
    r.add::<tools::SyncConnection>();
    r.add::<tools::RemoveConnection>();
    r.add::<tools::AddGrant>();
    r.add::<tools::ListGrants>();
    r.add::<tools::RevokeGrant>();
    r.add::<tools::ListUpstreamTools>();
    r.add::<tools::CallTool>();
    r.add::<tools::ListToolCalls>();
    r.add::<memory::AddMemory>();
    r.add::<memory::SearchMemories>();
    r.add::<memory::ListMemories>();
    r.add::<memory::GetMemory>();
    r.add::<memory::UpdateMemory>();
    r.add::<memory::DeleteMemory>();
    r.add::<memory::MemoryHistory>();
    r.add::<memory::SendHandoff>();
    r.add::<memory::ListHandoffs>();
    r.add::<memory::GetHandoff>();
    r.add::<memory::AcceptHandoff>();
    r.add::<memory::RejectHandoff>();
    r.add::<compute::RunSandbox>();
    r.add::<compute::CreateSandboxCall>();
    r.add::<compute::ListSandboxes>();
    r.add::<compute::GetSandbox>();
    r.add::<compute::ExecSandbox>();
    r.add::<compute::PutFile>();
    r.add::<compute::GetFile>();
    r.add::<compute::ListFiles>();
    r.add::<compute::StopSandbox>();
    r.add::<compute::StartSandbox>();
    r.add::<compute::SnapshotSandbox>();
    r.add::<compute::DeleteSandbox>();
    r.add::<compute::ListSnapshots>();
    r.add::<compute::DeleteSnapshot>();
    r.add::<compute::SandboxUsage>();
    r.add::<compute::SetTemplate>();
    r.add::<compute::ListTemplates>();
    r.add::<compute::GetTemplate>();
    r.add::<compute::DeleteTemplate>();
    r
}

/// A request naming one resource by id (from the path).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ById {
    /// The resource's id.
    pub id: String,
}

/// A request with no parameters.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// Cursor paging by id.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Return items after this id (the `next` of the previous page).
    #[serde(default)]
    pub after: Option<String>,
    /// Page size, 1–500 (default 50).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Cursor paging by sequence number.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeqParams {
    /// Return entries after this sequence number (default 0: from the start).
    #[serde(default)]
    pub after: Option<i64>,
    /// Page size, 1–1000 (default 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

impl SeqParams {
    pub(crate) fn bounds(&self) -> (i64, i64) {
        (
            self.after.unwrap_or(0).max(0),
            i64::from(self.limit.unwrap_or(100).clamp(1, 1000)),
        )
    }
}

/// A page of entries addressed by sequence number.
#[derive(Debug, Clone, serde::Serialize, JsonSchema)]
pub struct SeqPage<T> {
    /// The entries, oldest first.
    pub items: Vec<T>,
    /// Pass as `after` for the next page; absent when this page is not full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<i64>,
}

impl<T> SeqPage<T> {
    pub(crate) fn new(items: Vec<T>, limit: i64, seq: impl Fn(&T) -> i64) -> SeqPage<T> {
        let next = if items.len() as i64 == limit {
            items.last().map(seq)
        } else {
            None
        };
        SeqPage { items, next }
    }
}

/// The answer to a deletion or revocation.
#[derive(Debug, Clone, serde::Serialize, JsonSchema)]
pub struct Removed {
    /// The id of what was removed.
    pub id: String,
    /// Always true.
    pub removed: bool,
}
