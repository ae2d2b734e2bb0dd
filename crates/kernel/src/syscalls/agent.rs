//! `agent.*`: registering, reading and deleting agents.

use strata_core::{Access, Effect, Method, Result, Spec, Syscall};
use strata_identity::{Agent, AgentCreated, NewAgent, Page, agent};

use super::{ById, ListParams, Removed};
use crate::{Action, Cx, Handler, Kernel};

/// `agent.create`
pub struct CreateAgent;

impl Syscall for CreateAgent {
    type Request = NewAgent;
    type Response = AgentCreated;
    const SPEC: Spec = Spec {
        name: "agent.create",
        description: "Register an agent with a capability manifest. Returns its did:key identity and a first bearer token (shown once).",
        resource: "agent",
        effect: Effect::Store,
        access: Access::Admin,
        method: Method::Post,
        path: "/v1/agents",
        status: 201,
    };
}

impl Handler for CreateAgent {
    async fn handle(k: &Kernel, _cx: &Cx, req: NewAgent) -> Result<Action<AgentCreated>> {
        if let Some(t) = &req.token {
            super::token::check_scopes(k, None, t.scopes.as_deref())?;
        }
        let prepared = k.identity().prepare_agent(req)?;
        let id = prepared.id().to_string();
        Ok(Action::write(id, move |c| Box::pin(agent::insert(c, prepared))))
    }
}

/// `agent.list`
pub struct ListAgents;

impl Syscall for ListAgents {
    type Request = ListParams;
    type Response = Page<Agent>;
    const SPEC: Spec = Spec {
        name: "agent.list",
        description: "List live agents in registration order, a page at a time.",
        resource: "agent",
        effect: Effect::Read,
        access: Access::Principal,
        method: Method::Get,
        path: "/v1/agents",
        status: 200,
    };
}

impl Handler for ListAgents {
    async fn handle(k: &Kernel, _cx: &Cx, req: ListParams) -> Result<Action<Page<Agent>>> {
        let page = k
            .identity()
            .list(req.after.as_deref(), req.limit.unwrap_or(50))
            .await?;
        Ok(Action::Done(page))
    }
}

/// `agent.get`
pub struct GetAgent;

impl Syscall for GetAgent {
    type Request = ById;
    type Response = Agent;
    const SPEC: Spec = Spec {
        name: "agent.get",
        description: "Get one agent: its identity, capabilities and labels.",
        resource: "agent",
        effect: Effect::Read,
        access: Access::Principal,
        method: Method::Get,
        path: "/v1/agents/{id}",
        status: 200,
    };
}

impl Handler for GetAgent {
    async fn handle(k: &Kernel, _cx: &Cx, req: ById) -> Result<Action<Agent>> {
        Ok(Action::Done(k.identity().get(&req.id).await?))
    }
}

/// `agent.delete`
pub struct DeleteAgent;

impl Syscall for DeleteAgent {
    type Request = ById;
    type Response = Removed;
    const SPEC: Spec = Spec {
        name: "agent.delete",
        description: "Delete an agent and revoke all its tokens. Its history stays in the audit log.",
        resource: "agent",
        effect: Effect::Store,
        access: Access::Admin,
        method: Method::Delete,
        path: "/v1/agents/{id}",
        status: 200,
    };
}

impl Handler for DeleteAgent {
    async fn handle(_k: &Kernel, cx: &Cx, req: ById) -> Result<Action<Removed>> {
        let now = cx.now;
        let id = req.id;
        Ok(Action::write(id.clone(), move |c| {
            Box::pin(async move {
                agent::delete(c, &id, now).await?;
                Ok(Removed { id, removed: true })
            })
        }))
    }
}
