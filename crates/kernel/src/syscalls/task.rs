//! `task.*`: submitting work, leasing it, finishing it.

use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Serialize;
use strata_core::{Access, Effect, Error, ErrorCode, Method, Principal, Result, Spec, Syscall};
use strata_orchestrator::dispatch::Wake;
use strata_orchestrator::lease::{
    self, BatchOutcome, Completion, Completions, Extended, Failure, Heartbeat, LeaseResponse, Outcome,
};
use strata_orchestrator::task::{self, Submitted, TaskFilter, validate};
use strata_orchestrator::{LeaseRequest, NewTask, Task};

use super::ById;
use crate::{Action, Cx, Each, Handler, Kernel};

/// The most items a batch call takes.
const MAX_BATCH: usize = 100;

fn agent_of(cx: &Cx) -> Result<&str> {
    match &cx.principal {
        Principal::Agent { agent_id, .. } => Ok(agent_id),
        Principal::Admin { .. } => Err(Error::forbidden("only agents hold leases; use an agent's token")),
    }
}

fn random_u64() -> u64 {
    u64::from_le_bytes(strata_core::secret::random_bytes())
}

const fn spec(
    name: &'static str,
    description: &'static str,
    effect: Effect,
    method: Method,
    path: &'static str,
    status: u16,
) -> Spec {
    Spec {
        name,
        description,
        resource: "task",
        effect,
        access: Access::Principal,
        method,
        path,
        status,
    }
}

/// `task.submit`
pub struct SubmitTask;

impl Syscall for SubmitTask {
    type Request = NewTask;
    type Response = Submitted;
    const SPEC: Spec = spec(
        "task.submit",
        "Submit a task for any agent declaring its capability. The input is checked against the capability's input schema.",
        Effect::Store,
        Method::Post,
        "/v1/tasks",
        201,
    );
}

impl Handler for SubmitTask {
    async fn handle(k: &Kernel, cx: &Cx, req: NewTask) -> Result<Action<Submitted>> {
        let t = k
            .orchestrator()
            .prepare_task(req, cx.principal.audit_name(), k.now_ms())
            .await?;
        let k2 = k.clone();
        // Waiters are woken from inside the write: their leases run after it in
        // the writer (later in its batch or in a later one), so they see the task.
        Ok(Action::write(t.id().to_string(), move |c| {
            Box::pin(async move {
                let out = task::insert(c, &t).await?;
                k2.orchestrator().dispatcher().queued([t.ready()]);
                Ok(out)
            })
        }))
    }
}

/// Many submissions at once.
#[derive(Debug, Clone, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTasks {
    /// 1 to 100 tasks, each as `task.submit` takes it.
    pub tasks: Vec<NewTask>,
}

/// The tasks queued, in the order sent.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SubmittedMany {
    /// One per task sent.
    pub tasks: Vec<Submitted>,
}

/// `task.submit_many`
pub struct SubmitTasks;

impl Syscall for SubmitTasks {
    type Request = NewTasks;
    type Response = SubmittedMany;
    const SPEC: Spec = spec(
        "task.submit_many",
        "Submit up to 100 tasks in one call, all or none: each is checked as task.submit checks it, and an invalid one (named tasks[i]) refuses the batch.",
        Effect::Store,
        Method::Post,
        "/v1/tasks/batch",
        201,
    );
}

impl Handler for SubmitTasks {
    async fn handle(k: &Kernel, cx: &Cx, req: NewTasks) -> Result<Action<SubmittedMany>> {
        if req.tasks.is_empty() || req.tasks.len() > MAX_BATCH {
            return Err(Error::invalid(
                "tasks",
                format!("must hold 1 to {MAX_BATCH} tasks"),
            ));
        }
        let ts = k
            .orchestrator()
            .prepare_tasks(req.tasks, cx.principal.audit_name(), k.now_ms())
            .await?;
        let k2 = k.clone();
        Ok(Action::WriteEach {
            op: Box::new(move |c| {
                Box::pin(async move {
                    let tasks = task::insert_many(c, &ts).await?;
                    k2.orchestrator()
                        .dispatcher()
                        .queued(ts.iter().map(|t| t.ready()));
                    let resources = tasks.iter().map(|t| t.id.clone()).collect();
                    Ok(Each {
                        body: SubmittedMany { tasks },
                        resources,
                    })
                })
            }),
        })
    }
}

/// A page of tasks.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TaskPage {
    /// The tasks, oldest first.
    pub items: Vec<Task>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `task.list`
pub struct ListTasks;

impl Syscall for ListTasks {
    type Request = TaskFilter;
    type Response = TaskPage;
    const SPEC: Spec = spec(
        "task.list",
        "List tasks by state, capability or agent, oldest first, a page at a time.",
        Effect::Read,
        Method::Get,
        "/v1/tasks",
        200,
    );
}

impl Handler for ListTasks {
    async fn handle(k: &Kernel, _cx: &Cx, req: TaskFilter) -> Result<Action<TaskPage>> {
        let (items, next) = k.orchestrator().list(&req).await?;
        Ok(Action::Done(TaskPage { items, next }))
    }
}

/// `task.get`
pub struct GetTask;

impl Syscall for GetTask {
    type Request = ById;
    type Response = Task;
    const SPEC: Spec = spec(
        "task.get",
        "Get a task with its state, result or error, and the history of its attempts.",
        Effect::Read,
        Method::Get,
        "/v1/tasks/{id}",
        200,
    );
}

impl Handler for GetTask {
    async fn handle(k: &Kernel, _cx: &Cx, req: ById) -> Result<Action<Task>> {
        Ok(Action::Done(k.orchestrator().get(&req.id).await?))
    }
}

/// The state of a task after a cancellation.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Cancelled {
    /// `tsk_…`
    pub id: String,
    /// `cancelled`.
    pub state: strata_orchestrator::TaskState,
}

/// `task.cancel`
pub struct CancelTask;

impl Syscall for CancelTask {
    type Request = ById;
    type Response = Cancelled;
    const SPEC: Spec = spec(
        "task.cancel",
        "Cancel a task that has not finished (operators, or the agent that submitted it).",
        Effect::Store,
        Method::Post,
        "/v1/tasks/{id}/cancel",
        200,
    );
}

impl Handler for CancelTask {
    async fn handle(k: &Kernel, cx: &Cx, req: ById) -> Result<Action<Cancelled>> {
        let t = k.orchestrator().get(&req.id).await?;
        if !cx.principal.is_admin() && t.submitted_by != cx.principal.audit_name() {
            return Err(Error::forbidden(
                "only operators and the submitting agent may cancel a task",
            ));
        }
        let now = k.now_ms();
        let id = req.id;
        Ok(Action::write(id.clone(), move |c| {
            Box::pin(async move {
                let state = task::cancel(c, &id, now).await?;
                Ok(Cancelled { id, state })
            })
        }))
    }
}

/// How often a waiting lease looks at the queue on its own.
const RECHECK: Duration = Duration::from_millis(500);

/// `task.lease`
pub struct LeaseTasks;

impl Syscall for LeaseTasks {
    type Request = LeaseRequest;
    type Response = LeaseResponse;
    const SPEC: Spec = spec(
        "task.lease",
        "Take ready tasks this agent is capable of, highest priority then oldest; waits up to wait_ms (long poll) when none is ready.",
        Effect::Store,
        Method::Post,
        "/v1/tasks/lease",
        200,
    );
}

impl Handler for LeaseTasks {
    async fn handle(k: &Kernel, cx: &Cx, req: LeaseRequest) -> Result<Action<LeaseResponse>> {
        let agent = agent_of(cx)?.to_string();
        let (wait, max, lease_ms) = req.bounds(k.orchestrator())?;
        let caps: Vec<String> = k
            .agent_capabilities(&agent)
            .await?
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let until = Instant::now() + Duration::from_millis(wait);
        // An agent whose attempts keep failing gets nothing until its breaker
        // closes; it still waits out its long poll so it does not spin.
        if let Some(closes) = k.orchestrator().breaker_open_until(&agent, k.now_ms()).await? {
            let closes_in = Duration::from_millis(u64::try_from(closes - k.now_ms()).unwrap_or(0));
            tokio::time::sleep(closes_in.min(until.saturating_duration_since(Instant::now()))).await;
            if k.orchestrator()
                .breaker_open_until(&agent, k.now_ms())
                .await?
                .is_some()
            {
                return Ok(Action::Done(LeaseResponse { tasks: Vec::new() }));
            }
        }
        // Wait without polling: the dispatcher wakes this lease when a task it can
        // take is queued (or leases requeue); a re-check twice a second finds
        // what nobody announces (a retry whose backoff ends, a steal delay that
        // passes, a submission on another replica).
        let waiting = k
            .orchestrator()
            .dispatcher()
            .wait(&agent, &caps, u32::try_from(max).unwrap_or(1));
        let mut ready = k.orchestrator().has_candidates(&agent, &caps, k.now_ms()).await?;
        while !ready {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Action::Done(LeaseResponse { tasks: Vec::new() }));
            }
            ready = match waiting.woken(left.min(RECHECK)).await {
                Some(Wake::Lease) => true,
                Some(Wake::Check) | None => {
                    k.orchestrator().has_candidates(&agent, &caps, k.now_ms()).await?
                }
            };
        }
        // The write that woke this lease may be waiting to commit with it.
        let follower = waiting.follower();
        drop(waiting);
        let steal_after = k.orchestrator().config().steal_after_ms;
        let k2 = k.clone();
        // One audit entry per task leased, on the task (on the agent when a
        // racing lease took them all first).
        Ok(Action::WriteEach {
            op: Box::new(move |c| {
                Box::pin(async move {
                    drop(follower);
                    let now = k2.now_ms();
                    let tasks = lease::lease(c, &agent, &caps, max, lease_ms, steal_after, now).await?;
                    let mut resources: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
                    if resources.is_empty() {
                        resources.push(agent);
                    }
                    Ok(Each {
                        body: LeaseResponse { tasks },
                        resources,
                    })
                })
            }),
        })
    }
}

/// `task.heartbeat`
pub struct HeartbeatTask;

impl Syscall for HeartbeatTask {
    type Request = Heartbeat;
    type Response = Extended;
    const SPEC: Spec = spec(
        "task.heartbeat",
        "Extend the lease on a task this agent holds.",
        Effect::Store,
        Method::Post,
        "/v1/tasks/{id}/heartbeat",
        200,
    );
}

impl Handler for HeartbeatTask {
    async fn handle(k: &Kernel, cx: &Cx, req: Heartbeat) -> Result<Action<Extended>> {
        let agent = agent_of(cx)?.to_string();
        let lease_ms = lease::lease_len(k.orchestrator(), req.lease_ms, "lease_ms")?;
        let now = k.now_ms();
        Ok(Action::write(req.id.clone(), move |c| {
            Box::pin(async move { lease::heartbeat(c, &req.id, &agent, &req.lease_id, lease_ms, now).await })
        }))
    }
}

/// `task.complete`
pub struct CompleteTask;

impl Syscall for CompleteTask {
    type Request = Completion;
    type Response = Outcome;
    const SPEC: Spec = spec(
        "task.complete",
        "Finish a task this agent holds with its result, checked against the capability's output schema.",
        Effect::Store,
        Method::Post,
        "/v1/tasks/{id}/complete",
        200,
    );
}

impl Handler for CompleteTask {
    async fn handle(k: &Kernel, cx: &Cx, req: Completion) -> Result<Action<Outcome>> {
        let agent = agent_of(cx)?.to_string();
        let capability = k.orchestrator().capability_of(&req.id).await?;
        let caps = k.agent_capabilities(&agent).await?;
        if let Some(cap) = caps.iter().find(|c| c.name == capability) {
            validate(
                &cap.output_schema,
                &req.result,
                ErrorCode::InvalidOutput,
                "result",
            )?;
        }
        let now = k.now_ms();
        Ok(Action::write(req.id.clone(), move |c| {
            Box::pin(
                async move { lease::complete(c, &req.id, &agent, &req.lease_id, &req.result, now).await },
            )
        }))
    }
}

/// `task.complete_many`
pub struct CompleteTasks;

impl Syscall for CompleteTasks {
    type Request = Completions;
    type Response = BatchOutcome;
    const SPEC: Spec = spec(
        "task.complete_many",
        "Finish up to 100 tasks this agent holds in one call. Each completion is checked and applied on its own; a refused one (lease lost, invalid result) reports its problem in its outcome and changes nothing.",
        Effect::Store,
        Method::Post,
        "/v1/tasks/complete",
        200,
    );
}

impl Handler for CompleteTasks {
    async fn handle(k: &Kernel, cx: &Cx, req: Completions) -> Result<Action<BatchOutcome>> {
        let agent = agent_of(cx)?.to_string();
        let items = req.completions;
        if items.is_empty() || items.len() > MAX_BATCH {
            return Err(Error::invalid(
                "completions",
                format!("must hold 1 to {MAX_BATCH} completions"),
            ));
        }
        let ids: Vec<&str> = items.iter().map(|c| c.id.as_str()).collect();
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = ids.iter().find(|id| !seen.insert(**id)) {
            return Err(Error::invalid(
                "completions",
                format!("task '{dup}' appears more than once"),
            ));
        }
        let task_caps = k.orchestrator().capabilities_of_tasks(&ids).await?;
        let caps = k.agent_capabilities(&agent).await?;
        let refused = items
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let cap = task_caps
                    .get(&c.id)
                    .and_then(|name| caps.iter().find(|d| &d.name == name))?;
                validate(
                    &cap.output_schema,
                    &c.result,
                    ErrorCode::InvalidOutput,
                    &format!("completions[{i}].result"),
                )
                .err()
            })
            .collect();
        let now = k.now_ms();
        Ok(Action::WriteEach {
            op: Box::new(move |c| {
                Box::pin(async move {
                    let (body, resources) = lease::complete_many(c, &items, refused, &agent, now).await?;
                    Ok(Each { body, resources })
                })
            }),
        })
    }
}

/// `task.fail`
pub struct FailTask;

impl Syscall for FailTask {
    type Request = Failure;
    type Response = Outcome;
    const SPEC: Spec = spec(
        "task.fail",
        "Report that an attempt failed: retried with backoff when retryable and attempts remain, else dead-lettered or failed.",
        Effect::Store,
        Method::Post,
        "/v1/tasks/{id}/fail",
        200,
    );
}

impl Handler for FailTask {
    async fn handle(k: &Kernel, cx: &Cx, req: Failure) -> Result<Action<Outcome>> {
        let agent = agent_of(cx)?.to_string();
        let now = k.now_ms();
        let random = random_u64();
        Ok(Action::write(req.id.clone(), move |c| {
            Box::pin(async move {
                let out = lease::fail(c, &req, &agent, now, random).await?;
                if let Some(sup) = &out.supervision {
                    crate::background::record_supervision(c, now, &req.id, sup).await?;
                }
                Ok(out)
            })
        }))
    }
}

/// `discovery.find`
pub struct Discover;

impl Syscall for Discover {
    type Request = strata_orchestrator::discovery::Query;
    type Response = strata_orchestrator::discovery::Ranking;
    const SPEC: Spec = Spec {
        name: "discovery.find",
        description: "Who can do a capability: live agents declaring it, ranked by a score of success rate, load and trust, with the parts shown.",
        resource: "agent",
        effect: Effect::Read,
        access: Access::Principal,
        method: Method::Get,
        path: "/v1/discovery",
        status: 200,
    };
}

impl Handler for Discover {
    async fn handle(
        k: &Kernel,
        _cx: &Cx,
        req: strata_orchestrator::discovery::Query,
    ) -> Result<Action<strata_orchestrator::discovery::Ranking>> {
        Ok(Action::Done(
            k.orchestrator().discover(&req.capability, k.now_ms()).await?,
        ))
    }
}
