//! `fleet.*`: managed agents — apply a deployment, see what runs, read its output.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use strata_core::{Access, Effect, Method, Result, Spec, Syscall};
use strata_orchestrator::fleet::{self, Deployment};

use super::{NoParams, Removed};
use crate::fleet::{Described, LogLine};
use crate::{Action, Cx, Handler, Kernel};

const fn spec(
    name: &'static str,
    description: &'static str,
    effect: Effect,
    method: Method,
    path: &'static str,
) -> Spec {
    Spec {
        name,
        description,
        resource: "deployment",
        effect,
        access: Access::Admin,
        method,
        path,
        status: 200,
    }
}

/// What an apply did.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AppliedReply {
    /// The deployment.
    pub name: String,
    /// Its generation now (unchanged when the spec was the same).
    pub generation: i64,
}

/// `fleet.apply`
pub struct ApplyDeployment;

impl Syscall for ApplyDeployment {
    type Request = Deployment;
    type Response = AppliedReply;
    const SPEC: Spec = spec(
        "fleet.apply",
        "Create or update a deployment of managed agents (what `strata apply -f` sends); the reconciler starts, restarts and scales its processes.",
        Effect::Store,
        Method::Put,
        "/v1/fleet/{name}",
    );
}

impl Handler for ApplyDeployment {
    async fn handle(k: &Kernel, _cx: &Cx, req: Deployment) -> Result<Action<AppliedReply>> {
        req.check()?;
        check_sandbox(k, &req).await?;
        let now = k.now_ms();
        Ok(Action::write(req.name.clone(), move |c| {
            Box::pin(async move {
                let generation = fleet::apply(c, &req, now).await?;
                Ok(AppliedReply {
                    name: req.name,
                    generation,
                })
            })
        }))
    }
}

/// Checks a deployment's sandbox settings against the compute layer: its
/// limits within the service's bounds (`invalid_limits`), its template known
/// (`unknown_template`). A server without
/// sandboxes accepts them (its replicas then fail, saying why).
async fn check_sandbox(k: &Kernel, req: &Deployment) -> Result<()> {
    let Some(sb) = req.sandbox() else {
        return Ok(());
    };
    let limits = crate::fleet::sandbox_limits(&sb)?;
    let Ok(compute) = k.compute() else {
        return Ok(());
    };
    let cfg = compute.config();
    let base = match &sb.template {
        Some(name) => {
            // `unknown_template` (404) when there is none, as for a run.
            let t = compute.template(name).await?;
            strata_compute::ResolvedLimits::resolve(&cfg.default_limits, &t.limits, &cfg.max_limits)?
        }
        None => cfg.default_limits,
    };
    strata_compute::ResolvedLimits::resolve(&base, &limits, &cfg.max_limits)?;
    Ok(())
}

/// A deployment named by the path.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ByName {
    /// The deployment's name.
    pub name: String,
}

/// Every deployment.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Deployments {
    /// By name.
    pub items: Vec<Described>,
}

/// `fleet.list`
pub struct ListDeployments;

impl Syscall for ListDeployments {
    type Request = NoParams;
    type Response = Deployments;
    const SPEC: Spec = spec(
        "fleet.list",
        "List deployments of managed agents with their replicas' phases, restarts and health.",
        Effect::Read,
        Method::Get,
        "/v1/fleet",
    );
}

impl Handler for ListDeployments {
    async fn handle(k: &Kernel, _cx: &Cx, _req: NoParams) -> Result<Action<Deployments>> {
        let items = k
            .orchestrator()
            .deployments()
            .await?
            .into_iter()
            .map(|a| describe(k, a))
            .collect();
        Ok(Action::Done(Deployments { items }))
    }
}

fn describe(k: &Kernel, applied: fleet::Applied) -> Described {
    let name = applied.spec.name.clone();
    Described {
        status: k.fleet().status(k, &name),
        name,
        applied,
    }
}

/// `fleet.get`
pub struct GetDeployment;

impl Syscall for GetDeployment {
    type Request = ByName;
    type Response = Described;
    const SPEC: Spec = spec(
        "fleet.get",
        "Describe one deployment: its spec, generation and every replica's phase, pid, restarts, last exit and silence.",
        Effect::Read,
        Method::Get,
        "/v1/fleet/{name}",
    );
}

impl Handler for GetDeployment {
    async fn handle(k: &Kernel, _cx: &Cx, req: ByName) -> Result<Action<Described>> {
        let applied = k.orchestrator().deployment(&req.name).await?;
        Ok(Action::Done(describe(k, applied)))
    }
}

/// `fleet.delete`
pub struct DeleteDeployment;

impl Syscall for DeleteDeployment {
    type Request = ByName;
    type Response = Removed;
    const SPEC: Spec = spec(
        "fleet.delete",
        "Delete a deployment: its processes get SIGTERM, then SIGKILL after 5 s, and its agents are deleted.",
        Effect::Store,
        Method::Delete,
        "/v1/fleet/{name}",
    );
}

impl Handler for DeleteDeployment {
    async fn handle(_k: &Kernel, _cx: &Cx, req: ByName) -> Result<Action<Removed>> {
        Ok(Action::write(req.name.clone(), move |c| {
            Box::pin(async move {
                fleet::remove(c, &req.name).await?;
                Ok(Removed {
                    id: req.name,
                    removed: true,
                })
            })
        }))
    }
}

/// Which output to read.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// The deployment (from the path).
    pub name: String,
    /// Only this replica.
    #[serde(default)]
    pub replica: Option<u32>,
    /// The last this many lines (1–500, default 100).
    #[serde(default)]
    pub tail: Option<u32>,
}

/// Recent output.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Logs {
    /// Oldest first.
    pub lines: Vec<LogLine>,
}

/// `fleet.logs`
pub struct DeploymentLogs;

impl Syscall for DeploymentLogs {
    type Request = LogsQuery;
    type Response = Logs;
    const SPEC: Spec = spec(
        "fleet.logs",
        "Read the recent output of a deployment's replicas (the last 500 lines of each, kept in memory).",
        Effect::Read,
        Method::Get,
        "/v1/fleet/{name}/logs",
    );
}

impl Handler for DeploymentLogs {
    async fn handle(k: &Kernel, _cx: &Cx, req: LogsQuery) -> Result<Action<Logs>> {
        k.orchestrator().deployment(&req.name).await?;
        let tail = req.tail.unwrap_or(100).clamp(1, 500) as usize;
        Ok(Action::Done(Logs {
            lines: k.fleet().logs(&req.name, req.replica, tail),
        }))
    }
}
