//! The declaration of a syscall, and who is calling it.
//!
//! A syscall is declared once, as a type implementing [`Syscall`]: its typed request
//! and response (serde + JSON Schema) and a [`Spec`]. Everything else — the HTTP
//! route and its OpenAPI entry, the MCP tool, the policy action, the audit record —
//! is derived from that declaration by the kernel and the adapters.

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What a syscall does to the world, which decides how the kernel commits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Reads only: no intent, no audit entry.
    Read,
    /// Changes only the store: effect, idempotency record, audit entry and event
    /// commit in one transaction.
    Store,
    /// Acts outside the store: the intent commits before the effect, the outcome after.
    External,
}

impl Effect {
    /// Whether the syscall changes anything (and so is audited and idempotent).
    pub fn mutates(self) -> bool {
        !matches!(self, Effect::Read)
    }
}

/// Who may call a syscall at all, before finer checks by the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Operators only (admin tokens).
    Admin,
    /// Any authenticated principal whose token scopes match the syscall's name.
    Principal,
}

/// The HTTP method a syscall is served with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
}

impl Method {
    /// The method's lowercase name, as OpenAPI writes it.
    pub fn as_lower(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
            Method::Put => "put",
            Method::Patch => "patch",
            Method::Delete => "delete",
        }
    }
}

/// Everything about a syscall that is not its types.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Stable dotted name: `agent.create`. Also the policy action and the MCP tool name.
    pub name: &'static str,
    /// One or two sentences for humans and for agents choosing a tool.
    pub description: &'static str,
    /// The kind of resource touched: `agent`, `token`, `audit`.
    pub resource: &'static str,
    /// How the effect commits.
    pub effect: Effect,
    /// Who may call it.
    pub access: Access,
    /// HTTP method of its route.
    pub method: Method,
    /// Route path with `{param}` placeholders that fill request fields of the same name.
    pub path: &'static str,
    /// HTTP status of a success.
    pub status: u16,
}

/// A syscall declaration: the typed request and response plus its [`Spec`].
pub trait Syscall: Send + Sync + 'static {
    /// The request; unknown fields are rejected.
    type Request: DeserializeOwned + JsonSchema + Send + 'static;
    /// The response.
    type Response: Serialize + JsonSchema + Send + 'static;
    /// The declaration.
    const SPEC: Spec;
}

/// The authenticated caller of a syscall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An operator, holding an admin token.
    Admin {
        /// The token used.
        token_id: String,
    },
    /// An agent, holding one of its scoped tokens.
    Agent {
        /// The agent.
        agent_id: String,
        /// The token used.
        token_id: String,
        /// Syscall name patterns the token allows (`*`, `agent.*`, `agent.get`).
        scopes: Vec<String>,
    },
}

impl Principal {
    /// How the principal is written in the audit log: `admin:tok_…` or `agt_…`.
    pub fn audit_name(&self) -> String {
        match self {
            Principal::Admin { token_id } => format!("admin:{token_id}"),
            Principal::Agent { agent_id, .. } => agent_id.clone(),
        }
    }

    /// The key idempotency records are scoped by, so two callers never share one:
    /// each operator token, or each agent (across its tokens).
    pub fn idempotency_scope(&self) -> String {
        match self {
            Principal::Admin { token_id } => format!("admin:{token_id}"),
            Principal::Agent { agent_id, .. } => agent_id.clone(),
        }
    }

    /// Whether this is an operator.
    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin { .. })
    }

    /// Whether the principal's scopes allow the syscall `name`.
    pub fn allows(&self, name: &str) -> bool {
        match self {
            Principal::Admin { .. } => true,
            Principal::Agent { scopes, .. } => scopes.iter().any(|s| scope_covers(s, name)),
        }
    }
}

/// Whether scope pattern `scope` covers `name`, which is a syscall name or
/// itself a pattern (`agent.*` covers `agent.get` and `agent.*`; `*` covers all).
pub fn scope_covers(scope: &str, name: &str) -> bool {
    if scope == "*" || scope == name {
        return true;
    }
    match scope.strip_suffix(".*") {
        Some(prefix) => name
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.')),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_cover_names_and_narrower_patterns_only() {
        assert!(scope_covers("*", "agent.get"));
        assert!(scope_covers("agent.*", "agent.get"));
        assert!(scope_covers("agent.*", "agent.*"));
        assert!(!scope_covers("agent.*", "agents.get"));
        assert!(!scope_covers("agent.get", "agent.*"));
        assert!(!scope_covers("agent.get", "*"));
        assert!(!scope_covers("agent.*", "*"));
    }
}
