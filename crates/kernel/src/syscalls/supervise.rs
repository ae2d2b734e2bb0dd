//! `supervision.*` and `escalation.*`: what happens when a task dies, and how
//! operators or supervisor agents settle escalated tasks.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use strata_core::{Access, Effect, Error, ErrorCode, Method, Principal, Result, Spec, Syscall};
use strata_orchestrator::supervise::{self, Decision, Escalation, EscalationFilter, Resolve, SetPolicy};
use strata_orchestrator::task::validate;

use super::{ById, NoParams, Removed};
use crate::{Action, Cx, Handler, Kernel};

const fn spec(
    name: &'static str,
    description: &'static str,
    resource: &'static str,
    effect: Effect,
    access: Access,
    method: Method,
    path: &'static str,
) -> Spec {
    Spec {
        name,
        description,
        resource,
        effect,
        access,
        method,
        path,
        status: 200,
    }
}

/// `supervision.set`
pub struct SetSupervision;

impl Syscall for SetSupervision {
    type Request = SetPolicy;
    type Response = SetPolicy;
    const SPEC: Spec = spec(
        "supervision.set",
        "Set what happens when a task of a capability (or `*`), optionally for one agent group, dies: dead_letter, reassign, escalate_to_agent or escalate_to_human.",
        "supervision",
        Effect::Store,
        Access::Admin,
        Method::Put,
        "/v1/supervision/{capability}",
    );
}

impl Handler for SetSupervision {
    async fn handle(k: &Kernel, _cx: &Cx, req: SetPolicy) -> Result<Action<SetPolicy>> {
        req.check()?;
        let now = k.now_ms();
        Ok(Action::write(req.key(), move |c| {
            Box::pin(async move {
                supervise::set_policy(c, &req, now).await?;
                Ok(req)
            })
        }))
    }
}

/// Every supervision policy.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Policies {
    /// By capability.
    pub items: Vec<SetPolicy>,
}

/// `supervision.list`
pub struct ListSupervision;

impl Syscall for ListSupervision {
    type Request = NoParams;
    type Response = Policies;
    const SPEC: Spec = spec(
        "supervision.list",
        "List the supervision policies, by capability.",
        "supervision",
        Effect::Read,
        Access::Principal,
        Method::Get,
        "/v1/supervision",
    );
}

impl Handler for ListSupervision {
    async fn handle(k: &Kernel, _cx: &Cx, _req: NoParams) -> Result<Action<Policies>> {
        Ok(Action::Done(Policies {
            items: k.orchestrator().policies().await?,
        }))
    }
}

/// A policy named by its capability (from the path) and group.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ByCapability {
    /// The capability, or `*`.
    pub capability: String,
    /// The agent group whose policy to remove; absent: the policy for every agent.
    #[serde(default)]
    pub group: Option<String>,
}

/// `supervision.delete`
pub struct DeleteSupervision;

impl Syscall for DeleteSupervision {
    type Request = ByCapability;
    type Response = Removed;
    const SPEC: Spec = spec(
        "supervision.delete",
        "Remove a capability's supervision policy (for every agent, or for `group`): its dead tasks follow the next policy that applies, or stay dead.",
        "supervision",
        Effect::Store,
        Access::Admin,
        Method::Delete,
        "/v1/supervision/{capability}",
    );
}

impl Handler for DeleteSupervision {
    async fn handle(_k: &Kernel, _cx: &Cx, req: ByCapability) -> Result<Action<Removed>> {
        let key = supervise::policy_key(&req.capability, req.group.as_deref());
        Ok(Action::write(key.clone(), move |c| {
            Box::pin(async move {
                supervise::delete_policy(c, &req.capability, req.group.as_deref()).await?;
                Ok(Removed {
                    id: key,
                    removed: true,
                })
            })
        }))
    }
}

/// A page of escalations.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EscalationPage {
    /// The escalations, oldest first.
    pub items: Vec<Escalation>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `escalation.list`
pub struct ListEscalations;

impl Syscall for ListEscalations {
    type Request = EscalationFilter;
    type Response = EscalationPage;
    const SPEC: Spec = spec(
        "escalation.list",
        "List escalated tasks waiting for (or settled by) an operator or a supervisor agent, oldest first.",
        "escalation",
        Effect::Read,
        Access::Principal,
        Method::Get,
        "/v1/escalations",
    );
}

impl Handler for ListEscalations {
    async fn handle(k: &Kernel, _cx: &Cx, req: EscalationFilter) -> Result<Action<EscalationPage>> {
        let (items, next) = k.orchestrator().escalations(&req).await?;
        Ok(Action::Done(EscalationPage { items, next }))
    }
}

/// `escalation.get`
pub struct GetEscalation;

impl Syscall for GetEscalation {
    type Request = ById;
    type Response = Escalation;
    const SPEC: Spec = spec(
        "escalation.get",
        "Get one escalation: the task, who must decide, and the decision once made.",
        "escalation",
        Effect::Read,
        Access::Principal,
        Method::Get,
        "/v1/escalations/{id}",
    );
}

impl Handler for GetEscalation {
    async fn handle(k: &Kernel, _cx: &Cx, req: ById) -> Result<Action<Escalation>> {
        Ok(Action::Done(k.orchestrator().escalation(&req.id).await?))
    }
}

/// `escalation.resolve`
pub struct ResolveEscalation;

impl Syscall for ResolveEscalation {
    type Request = Resolve;
    type Response = Escalation;
    const SPEC: Spec = spec(
        "escalation.resolve",
        "Settle an open escalation: retry the task, cancel it, or complete it with a result. Operators settle any; a supervisor agent settles those assigned to a capability it declares.",
        "escalation",
        Effect::Store,
        Access::Principal,
        Method::Post,
        "/v1/escalations/{id}/resolve",
    );
}

impl Handler for ResolveEscalation {
    async fn handle(k: &Kernel, cx: &Cx, req: Resolve) -> Result<Action<Escalation>> {
        let esc = k.orchestrator().escalation(&req.id).await?;
        if let Principal::Agent { agent_id, .. } = &cx.principal {
            let declares = k
                .agent_capabilities(agent_id)
                .await?
                .iter()
                .any(|c| c.name == esc.assignee);
            if esc.assignee == "human" || !declares {
                return Err(Error::forbidden(format!(
                    "escalation '{}' is assigned to '{}'; only operators and agents declaring that capability may resolve it",
                    esc.id, esc.assignee
                )));
            }
        }
        match (req.action, &req.result) {
            (Decision::CompleteWith, None) => {
                return Err(Error::invalid("result", "complete_with needs a result"));
            }
            (Decision::CompleteWith, Some(result)) => {
                if let Some(d) = k.identity().declarations(&esc.capability).await?.first() {
                    validate(
                        &d.capability.output_schema,
                        result,
                        ErrorCode::InvalidOutput,
                        "result",
                    )?;
                }
            }
            (_, Some(_)) => {
                return Err(Error::invalid("result", "only complete_with takes a result"));
            }
            (_, None) => {}
        }
        if req.note.as_deref().is_some_and(|n| n.chars().count() > 4096) {
            return Err(Error::invalid("note", "must be at most 4096 characters"));
        }
        let by = cx.principal.audit_name();
        let now = k.now_ms();
        Ok(Action::write(req.id.clone(), move |c| {
            Box::pin(async move { supervise::resolve(c, &req, &by, now).await })
        }))
    }
}
