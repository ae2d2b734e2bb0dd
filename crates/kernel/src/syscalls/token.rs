//! `token.*`: minting and revoking bearer tokens.

use schemars::JsonSchema;
use serde::Deserialize;
use strata_core::syscall::scope_covers;
use strata_core::{Access, Effect, Error, ErrorCode, Method, Principal, Result, Spec, Syscall};
use strata_governance::{AuditDraft, audit};
use strata_identity::token::{self, NewToken, TokenCreated};

use super::{ById, Removed};
use crate::{Action, Cx, Handler, Kernel};

/// A request for a token for agent `id`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentTokenRequest {
    /// The agent (from the path).
    pub id: String,
    /// Syscall name patterns (`*`, `agent.*`, `agent.get`); default `["*"]`. An
    /// agent minting its own token may only narrow its current scopes.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Lifetime in seconds (default 90 days).
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// A label for the token.
    #[serde(default)]
    pub name: Option<String>,
}

/// A request for an operator token.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenRequest {
    /// A label for the token.
    #[serde(default)]
    pub name: Option<String>,
}

/// Checks that every scope names a syscall and, for an agent, is within its own.
pub(crate) fn check_scopes(k: &Kernel, caller: Option<&Principal>, scopes: Option<&[String]>) -> Result<()> {
    let Some(scopes) = scopes else { return Ok(()) };
    for s in scopes {
        if !k.registry().scope_is_known(s) {
            return Err(Error::new(
                ErrorCode::InvalidScope,
                format!("scope '{s}' names no syscall"),
            ));
        }
        if let Some(Principal::Agent { scopes: own, .. }) = caller
            && !own.iter().any(|o| scope_covers(o, s))
        {
            return Err(Error::new(
                ErrorCode::InvalidScope,
                format!("scope '{s}' is wider than the caller's own"),
            ));
        }
    }
    Ok(())
}

/// `token.create`
pub struct CreateToken;

impl Syscall for CreateToken {
    type Request = AgentTokenRequest;
    type Response = TokenCreated;
    const SPEC: Spec = Spec {
        name: "token.create",
        description: "Mint a scoped, expiring bearer token for an agent (operators for any agent, an agent for itself). The token is shown once.",
        resource: "token",
        effect: Effect::Store,
        access: Access::Principal,
        method: Method::Post,
        path: "/v1/agents/{id}/tokens",
        status: 201,
    };
}

impl Handler for CreateToken {
    async fn handle(k: &Kernel, cx: &Cx, req: AgentTokenRequest) -> Result<Action<TokenCreated>> {
        if let Principal::Agent { agent_id, .. } = &cx.principal
            && *agent_id != req.id
        {
            return Err(Error::forbidden("an agent may mint tokens only for itself"));
        }
        check_scopes(k, Some(&cx.principal), req.scopes.as_deref())?;
        k.identity().get(&req.id).await?;
        // An agent that names no scopes gets its own, never the default `*`.
        let scopes = match (&cx.principal, req.scopes) {
            (Principal::Agent { scopes: own, .. }, None) => Some(own.clone()),
            (_, requested) => requested,
        };
        let t = token::prepare(
            Some(&req.id),
            NewToken {
                scopes,
                expires_in: req.expires_in,
                name: req.name,
            },
            cx.now,
        )?;
        let id = t.id().to_string();
        Ok(Action::write(id, move |c| Box::pin(token::insert(c, t))))
    }
}

/// `token.create_admin`
pub struct CreateAdminToken;

impl Syscall for CreateAdminToken {
    type Request = AdminTokenRequest;
    type Response = TokenCreated;
    const SPEC: Spec = Spec {
        name: "token.create_admin",
        description: "Mint another operator token (no expiry, every scope). The token is shown once.",
        resource: "token",
        effect: Effect::Store,
        access: Access::Admin,
        method: Method::Post,
        path: "/v1/tokens",
        status: 201,
    };
}

impl Handler for CreateAdminToken {
    async fn handle(_k: &Kernel, cx: &Cx, req: AdminTokenRequest) -> Result<Action<TokenCreated>> {
        let t = token::prepare_admin(req.name.as_deref().unwrap_or("admin"), cx.now)?;
        let id = t.id().to_string();
        Ok(Action::write(id, move |c| Box::pin(token::insert(c, t))))
    }
}

/// `token.revoke`
pub struct RevokeToken;

impl Syscall for RevokeToken {
    type Request = ById;
    type Response = Removed;
    const SPEC: Spec = Spec {
        name: "token.revoke",
        description: "Revoke a token at once (operators any token, an agent its own).",
        resource: "token",
        effect: Effect::Store,
        access: Access::Principal,
        method: Method::Delete,
        path: "/v1/tokens/{id}",
        status: 200,
    };
}

impl Handler for RevokeToken {
    async fn handle(k: &Kernel, cx: &Cx, req: ById) -> Result<Action<Removed>> {
        let info = k.identity().token_info(&req.id).await?;
        if let Principal::Agent { agent_id, .. } = &cx.principal
            && info.agent_id.as_deref() != Some(agent_id.as_str())
        {
            // Not found rather than forbidden: do not confirm other agents' token ids.
            return Err(Error::not_found("token", &req.id));
        }
        let now = cx.now;
        let id = req.id;
        Ok(Action::write(id.clone(), move |c| {
            Box::pin(async move {
                token::revoke(c, &id, now).await?;
                Ok(Removed { id, removed: true })
            })
        }))
    }
}

impl Kernel {
    /// Creates the first operator token when none exists. `persist` receives the
    /// plaintext *before* the token is committed, so a crash in between leaves a
    /// file holding a token that does not work yet (and is replaced at the next
    /// start) rather than a working token nobody knows. Returns whether one was made.
    pub async fn bootstrap_admin_token(&self, persist: impl FnOnce(&str) -> Result<()>) -> Result<bool> {
        if self.identity().has_admin_token().await? {
            return Ok(false);
        }
        let now = self.now();
        let t = token::prepare_admin("bootstrap", now)?;
        persist(t.plain())?;
        let draft = AuditDraft {
            at: now,
            principal: "system".into(),
            syscall: "token.create_admin".into(),
            resource: t.id().to_string(),
            intent_id: strata_core::Id::new("int").to_string(),
            outcome: "ok".into(),
            status: 201,
            request_digest: String::new(),
        };
        self.store()
            .write(move |c| {
                Box::pin(async move {
                    token::insert(c, t).await?;
                    audit::append(c, &draft).await?;
                    Ok::<_, Error>(())
                })
            })
            .await?;
        Ok(true)
    }
}
