//! Supervision on both backends: what happens to a task whose attempts run out
//! (reassignment, escalation to a supervisor agent or to operators), how an
//! escalation is resolved, and how each step is audited.

use std::time::Duration;

use serde_json::{Value, json};
use strata_core::ErrorCode;
use strata_store::Backend;

use super::harness::Harness;

/// The strict `summarize` capability: `{text}` in, `{summary}` out.
fn summarize() -> Value {
    json!({
        "name": "summarize",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        "output_schema": {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}
    })
}

/// An agent declaring `caps` (`summarize` with its schemas, others with none);
/// returns its id and token.
async fn agent(h: &Harness, name: &str, caps: &[&str]) -> (String, String) {
    let caps: Vec<Value> = caps
        .iter()
        .map(|c| match *c {
            "summarize" => summarize(),
            other => json!({"name": other}),
        })
        .collect();
    let a = h
        .call(
            &h.admin,
            "agent.create",
            json!({"name": name, "capabilities": caps}),
        )
        .await
        .unwrap()
        .body;
    (
        a["id"].as_str().unwrap().to_string(),
        a["token"].as_str().unwrap().to_string(),
    )
}

async fn set_policy(h: &Harness, policy: Value) {
    h.call(&h.admin, "supervision.set", policy).await.unwrap();
}

/// Submits a `summarize` task with `max_attempts` and no backoff between attempts.
async fn submit(h: &Harness, max_attempts: u32) -> String {
    h.call(
        &h.admin,
        "task.submit",
        json!({"capability": "summarize", "input": {"text": "hello"}, "max_attempts": max_attempts,
               "backoff": {"initial_ms": 0, "max_ms": 0}}),
    )
    .await
    .unwrap()
    .body["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn lease(h: &Harness, token: &str) -> Vec<Value> {
    h.call(token, "task.lease", json!({})).await.unwrap().body["tasks"]
        .as_array()
        .unwrap()
        .clone()
}

/// Leases task `id` as `token` (it must be the one handed out) and fails it;
/// returns `task.fail`'s response.
async fn lease_and_fail(h: &Harness, token: &str, id: &str, error: Value) -> Value {
    let t = lease(h, token).await;
    assert_eq!(t.len(), 1, "expected to lease {id}");
    assert_eq!(t[0]["id"], id);
    h.call(
        token,
        "task.fail",
        json!({"id": id, "lease_id": t[0]["lease_id"], "error": error}),
    )
    .await
    .unwrap()
    .body
}

/// Leases one task for 1 s as `token`.
async fn lease_briefly(h: &Harness, token: &str) -> Value {
    h.call(token, "task.lease", json!({"lease_ms": 1000}))
        .await
        .unwrap()
        .body["tasks"][0]
        .clone()
}

async fn task(h: &Harness, id: &str) -> Value {
    h.call(&h.admin, "task.get", json!({"id": id}))
        .await
        .unwrap()
        .body
}

async fn escalations(h: &Harness, filter: Value) -> Vec<Value> {
    h.call(&h.admin, "escalation.list", filter).await.unwrap().body["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// Calls `escalation.resolve` as `token`.
async fn resolve(h: &Harness, token: &str, body: Value) -> strata_core::Result<strata_kernel::Reply> {
    h.call(token, "escalation.resolve", body).await
}

async fn escalation(h: &Harness, id: &str) -> Value {
    h.call(&h.admin, "escalation.get", json!({"id": id}))
        .await
        .unwrap()
        .body
}

/// Every audit entry, oldest first.
async fn audit(h: &Harness) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = h
            .call(&h.admin, "audit.list", json!({"after": after, "limit": 1000}))
            .await
            .unwrap()
            .body;
        all.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next"].as_i64() {
            Some(n) => after = n,
            None => return all,
        }
    }
}

/// The agent ids of a task's attempts, oldest first.
fn attempt_agents(t: &Value) -> Vec<String> {
    t["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap().to_string())
        .collect()
}

async fn without_a_policy_a_task_whose_attempts_run_out_is_dead(b: Backend) {
    let h = Harness::new(b).await;
    let (_, a) = agent(&h, "a", &["summarize"]).await;
    agent(&h, "b", &["summarize"]).await;
    let id = submit(&h, 1).await;
    let out = lease_and_fail(&h, &a, &id, json!("boom")).await;
    assert_eq!(out, json!({"id": id, "state": "dead"}));
    assert_eq!(task(&h, &id).await["state"], "dead");
    assert!(escalations(&h, json!({})).await.is_empty());
}

async fn reassign_queues_the_task_again_for_another_capable_agent(b: Backend) {
    let h = Harness::new(b).await;
    let (a_id, a) = agent(&h, "a", &["summarize"]).await;
    let (b_id, b_tok) = agent(&h, "b", &["summarize"]).await;
    set_policy(&h, json!({"capability": "summarize", "on_dead": "reassign"})).await;
    let id = submit(&h, 2).await;
    let out = lease_and_fail(&h, &a, &id, json!("first")).await;
    assert_eq!(out["state"], "queued", "a retry, not yet supervision: {out}");
    assert!(out.get("supervision").is_none(), "{out}");
    let out = lease_and_fail(&h, &a, &id, json!("second")).await;
    assert_eq!(out["state"], "queued");
    assert_eq!(out["supervision"], json!({"action": "reassigned"}));
    let t = task(&h, &id).await;
    assert_eq!(
        (
            t["state"].clone(),
            t["attempts"].clone(),
            t["max_attempts"].clone()
        ),
        (json!("queued"), json!(2), json!(3))
    );
    assert!(lease(&h, &a).await.is_empty(), "the failing agent got it back");
    let got = lease(&h, &b_tok).await;
    assert_eq!(
        (got[0]["id"].clone(), got[0]["attempt"].clone()),
        (json!(id), json!(3))
    );
    let done = h
        .call(
            &b_tok,
            "task.complete",
            json!({"id": id, "lease_id": got[0]["lease_id"], "result": {"summary": "s"}}),
        )
        .await
        .unwrap()
        .body;
    assert_eq!(done["state"], "succeeded");
    let t = task(&h, &id).await;
    assert_eq!(t["result"], json!({"summary": "s"}));
    assert_eq!(attempt_agents(&t), vec![a_id.clone(), a_id, b_id]);
}

async fn reassign_applies_then_once_its_reassigns_are_used_up(b: Backend) {
    let h = Harness::new(b).await;
    let (_, a) = agent(&h, "a", &["summarize"]).await;
    let (_, b_tok) = agent(&h, "b", &["summarize"]).await;
    set_policy(
        &h,
        json!({"capability": "summarize", "on_dead": "reassign", "reassigns": 2, "then": "escalate_to_human"}),
    )
    .await;
    let id = submit(&h, 1).await;
    let out = lease_and_fail(&h, &a, &id, json!("a1")).await;
    assert_eq!(out["supervision"]["action"], "reassigned");
    // Now B fails it: the second reassignment sends it away from B, back to A.
    let out = lease_and_fail(&h, &b_tok, &id, json!("b1")).await;
    assert_eq!(out["supervision"]["action"], "reassigned");
    assert!(
        lease(&h, &b_tok).await.is_empty(),
        "B got back the task it failed"
    );
    let out = lease_and_fail(&h, &a, &id, json!("a2")).await;
    assert_eq!(out["state"], "escalated");
    assert_eq!(out["supervision"]["action"], "escalated_to_human");
    assert_eq!(task(&h, &id).await["state"], "escalated");

    // With the default `then`, the task is dead after its one reassignment.
    set_policy(&h, json!({"capability": "summarize", "on_dead": "reassign"})).await;
    let id = submit(&h, 1).await;
    let out = lease_and_fail(&h, &a, &id, json!("a")).await;
    assert_eq!(out["supervision"]["action"], "reassigned");
    let out = lease_and_fail(&h, &b_tok, &id, json!("b")).await;
    assert_eq!(out, json!({"id": id, "state": "dead"}));
    assert_eq!(task(&h, &id).await["state"], "dead");
}

async fn reassign_without_another_capable_agent_falls_through_to_then(b: Backend) {
    let h = Harness::new(b).await;
    let (_, a) = agent(&h, "a", &["summarize"]).await;
    // An agent with another capability does not count.
    agent(&h, "other", &["translate"]).await;
    set_policy(&h, json!({"capability": "summarize", "on_dead": "reassign"})).await;
    let id = submit(&h, 1).await;
    let out = lease_and_fail(&h, &a, &id, json!("boom")).await;
    assert_eq!(out, json!({"id": id, "state": "dead"}));
    assert_eq!(task(&h, &id).await["state"], "dead");

    set_policy(
        &h,
        json!({"capability": "summarize", "on_dead": "reassign", "then": "escalate_to_human"}),
    )
    .await;
    let id = submit(&h, 1).await;
    let out = lease_and_fail(&h, &a, &id, json!("boom")).await;
    assert_eq!(out["supervision"]["action"], "escalated_to_human");
    assert_eq!(task(&h, &id).await["state"], "escalated");
}

async fn a_capability_policy_takes_precedence_over_the_wildcard(b: Backend) {
    let h = Harness::new(b).await;
    let (_, a) = agent(&h, "a", &["summarize"]).await;
    set_policy(&h, json!({"capability": "*", "on_dead": "escalate_to_human"})).await;
    set_policy(&h, json!({"capability": "summarize", "on_dead": "dead_letter"})).await;
    let id = submit(&h, 1).await;
    let out = lease_and_fail(&h, &a, &id, json!("boom")).await;
    assert_eq!(out["state"], "dead");
    h.call(&h.admin, "supervision.delete", json!({"capability": "summarize"}))
        .await
        .unwrap();
    let id = submit(&h, 1).await;
    let out = lease_and_fail(&h, &a, &id, json!("boom")).await;
    assert_eq!(out["state"], "escalated");
    assert_eq!(out["supervision"]["action"], "escalated_to_human");
}

async fn escalate_to_human_opens_an_escalation_only_operators_may_resolve(b: Backend) {
    let h = Harness::new(b).await;
    let (_, a) = agent(&h, "a", &["summarize"]).await;
    set_policy(
        &h,
        json!({"capability": "summarize", "on_dead": "escalate_to_human"}),
    )
    .await;
    let id = submit(&h, 1).await;
    let out = lease_and_fail(&h, &a, &id, json!({"why": "stuck"})).await;
    assert_eq!(out["state"], "escalated");
    assert_eq!(out["supervision"]["action"], "escalated_to_human");
    assert!(out["supervision"].get("review_task").is_none(), "{out}");
    let esc = out["supervision"]["escalation"].as_str().unwrap().to_string();
    assert!(esc.starts_with("esc_"), "{esc}");
    assert_eq!(task(&h, &id).await["state"], "escalated");

    let open = escalations(&h, json!({"state": "open"})).await;
    assert_eq!(open.len(), 1);
    let e = &open[0];
    assert_eq!(
        (
            &e["id"],
            &e["task_id"],
            &e["capability"],
            &e["assignee"],
            &e["state"],
            &e["error"]
        ),
        (
            &json!(esc),
            &json!(id),
            &json!("summarize"),
            &json!("human"),
            &json!("open"),
            &json!({"why": "stuck"})
        )
    );
    assert!(escalations(&h, json!({"state": "resolved"})).await.is_empty());

    // Neither an agent declaring the task's capability nor one declaring a
    // capability named like the assignee may decide for a person.
    let (_, impostor) = agent(&h, "impostor", &["human"]).await;
    for token in [&a, &impostor] {
        let err = resolve(&h, token, json!({"id": esc, "action": "cancel"}))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden);
    }
    assert_eq!(escalation(&h, &esc).await["state"], "open");
    assert_eq!(task(&h, &id).await["state"], "escalated");
}

/// A task escalated to operators; returns (task id, escalation id, agent token).
async fn escalated_to_human(h: &Harness) -> (String, String, String) {
    let (_, a) = agent(h, "a", &["summarize"]).await;
    set_policy(
        h,
        json!({"capability": "summarize", "on_dead": "escalate_to_human"}),
    )
    .await;
    let id = submit(h, 1).await;
    let out = lease_and_fail(h, &a, &id, json!("boom")).await;
    let esc = out["supervision"]["escalation"].as_str().unwrap().to_string();
    (id, esc, a)
}

async fn resolving_with_retry_queues_the_task_again_with_more_attempts(b: Backend) {
    let h = Harness::new(b).await;
    let (id, esc, a) = escalated_to_human(&h).await;
    let resolved = resolve(
        &h,
        &h.admin,
        json!({"id": esc, "action": "retry", "attempts": 2, "note": "fixed upstream"}),
    )
    .await
    .unwrap()
    .body;
    assert_eq!(resolved["state"], "resolved");
    assert_eq!(resolved["resolution"]["action"], "retry");
    assert_eq!(resolved["resolution"]["note"], "fixed upstream");
    assert!(
        resolved["resolution"]["by"]
            .as_str()
            .unwrap()
            .starts_with("admin:tok_"),
        "{resolved}"
    );
    assert!(resolved["resolved_at"].is_string());
    let t = task(&h, &id).await;
    assert_eq!(
        (
            t["state"].clone(),
            t["attempts"].clone(),
            t["max_attempts"].clone()
        ),
        (json!("queued"), json!(1), json!(3))
    );
    // Any capable agent may take it, the one that failed included.
    let got = lease(&h, &a).await;
    assert_eq!(
        (got[0]["id"].clone(), got[0]["attempt"].clone()),
        (json!(id), json!(2))
    );
    assert!(escalations(&h, json!({"state": "open"})).await.is_empty());
    assert_eq!(escalations(&h, json!({"state": "resolved"})).await.len(), 1);

    let err = resolve(&h, &h.admin, json!({"id": esc, "action": "cancel"}))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::EscalationResolved);
    assert_eq!(task(&h, &id).await["state"], "leased");
}

async fn resolving_with_cancel_cancels_the_task(b: Backend) {
    let h = Harness::new(b).await;
    let (id, esc, a) = escalated_to_human(&h).await;
    let resolved = resolve(&h, &h.admin, json!({"id": esc, "action": "cancel"}))
        .await
        .unwrap()
        .body;
    assert_eq!(resolved["resolution"]["action"], "cancel");
    assert_eq!(task(&h, &id).await["state"], "cancelled");
    assert!(lease(&h, &a).await.is_empty());
}

async fn resolving_with_complete_with_succeeds_the_task_with_a_checked_result(b: Backend) {
    let h = Harness::new(b).await;
    let (id, esc, _) = escalated_to_human(&h).await;
    let err = resolve(
        &h,
        &h.admin,
        json!({"id": esc, "action": "complete_with", "result": {"summary": 7}}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidOutput);
    let err = resolve(&h, &h.admin, json!({"id": esc, "action": "complete_with"}))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidRequest);
    assert_eq!(escalation(&h, &esc).await["state"], "open");
    assert_eq!(task(&h, &id).await["state"], "escalated");

    resolve(
        &h,
        &h.admin,
        json!({"id": esc, "action": "complete_with", "result": {"summary": "by hand"}}),
    )
    .await
    .unwrap();
    let t = task(&h, &id).await;
    assert_eq!(
        (t["state"].clone(), t["result"].clone()),
        (json!("succeeded"), json!({"summary": "by hand"}))
    );
}

async fn escalate_to_agent_submits_a_review_task_with_the_failed_tasks_input_error_and_history(b: Backend) {
    let h = Harness::new(b).await;
    let (a_id, a) = agent(&h, "a", &["summarize"]).await;
    agent(&h, "reviewer", &["review"]).await;
    set_policy(
        &h,
        json!({"capability": "summarize", "on_dead": "escalate_to_agent", "supervisor": "review"}),
    )
    .await;
    let id = submit(&h, 2).await;
    lease_and_fail(&h, &a, &id, json!("first")).await;
    let out = lease_and_fail(&h, &a, &id, json!({"why": "second"})).await;
    assert_eq!(out["state"], "escalated");
    let sup = &out["supervision"];
    assert_eq!(sup["action"], "escalated_to_agent");
    let esc = sup["escalation"].as_str().unwrap();
    let review = sup["review_task"].as_str().unwrap();
    assert_eq!(task(&h, &id).await["state"], "escalated");

    let e = escalation(&h, esc).await;
    assert_eq!(
        (&e["task_id"], &e["assignee"], &e["review_task"], &e["state"]),
        (&json!(id), &json!("review"), &json!(review), &json!("open"))
    );

    let r = task(&h, review).await;
    assert_eq!(
        (&r["capability"], &r["state"], &r["parent"]),
        (&json!("review"), &json!("queued"), &json!(id))
    );
    assert_eq!(r["labels"]["strata.escalation"], esc);
    let input = &r["input"];
    assert_eq!(input["escalation"], esc);
    assert_eq!(input["task"]["id"], id);
    assert_eq!(input["task"]["input"], json!({"text": "hello"}));
    assert_eq!(input["task"]["error"], json!({"why": "second"}));
    let history = input["task"]["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{input}");
    for (i, (attempt, error)) in [(1, json!("first")), (2, json!({"why": "second"}))]
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            (
                &history[i]["attempt"],
                &history[i]["agent_id"],
                &history[i]["outcome"],
                &history[i]["error"]
            ),
            (&json!(attempt), &json!(a_id), &json!("failed"), &error)
        );
    }
}

async fn only_agents_declaring_the_supervisor_capability_may_resolve_its_escalations(b: Backend) {
    let h = Harness::new(b).await;
    let (_, a) = agent(&h, "a", &["summarize"]).await;
    let (reviewer_id, reviewer) = agent(&h, "reviewer", &["review"]).await;
    let (_, bystander) = agent(&h, "bystander", &["translate"]).await;
    set_policy(
        &h,
        json!({"capability": "summarize", "on_dead": "escalate_to_agent", "supervisor": "review"}),
    )
    .await;
    let id = submit(&h, 1).await;
    let out = lease_and_fail(&h, &a, &id, json!("boom")).await;
    let esc = out["supervision"]["escalation"].as_str().unwrap().to_string();
    let review = out["supervision"]["review_task"].as_str().unwrap().to_string();

    for token in [&a, &bystander] {
        let err = resolve(
            &h,
            token,
            json!({"id": esc, "action": "complete_with", "result": {"summary": "mine"}}),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden);
    }
    assert_eq!(escalation(&h, &esc).await["state"], "open");

    let got = lease(&h, &reviewer).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["id"], review);
    assert_eq!(got[0]["input"]["escalation"], esc);
    let resolved = resolve(
        &h,
        &reviewer,
        json!({"id": esc, "action": "complete_with", "result": {"summary": "reviewed"}}),
    )
    .await
    .unwrap()
    .body;
    assert_eq!(resolved["resolution"]["by"], reviewer_id);
    let t = task(&h, &id).await;
    assert_eq!(
        (t["state"].clone(), t["result"].clone()),
        (json!("succeeded"), json!({"summary": "reviewed"}))
    );
    // The review task is the reviewer's own to finish.
    let done = h
        .call(
            &reviewer,
            "task.complete",
            json!({"id": review, "lease_id": got[0]["lease_id"], "result": {"ok": true}}),
        )
        .await
        .unwrap()
        .body;
    assert_eq!(done["state"], "succeeded");
}

async fn an_expired_lease_on_the_last_attempt_is_supervised_by_the_sweeper(b: Backend) {
    let h = Harness::new(b).await;
    let (a_id, a) = agent(&h, "a", &["summarize"]).await;
    let (_, b_tok) = agent(&h, "b", &["summarize"]).await;
    set_policy(
        &h,
        json!({"capability": "summarize", "on_dead": "reassign", "then": "escalate_to_human"}),
    )
    .await;
    let id = submit(&h, 1).await;
    assert_eq!(lease_briefly(&h, &a).await["id"], id);
    h.clock.advance(Duration::from_millis(1500));
    let swept = h.kernel.sweep_once().await.unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(swept[0].task_id, id);
    assert_eq!(swept[0].reason, "lease_expired");
    assert_eq!(swept[0].state, strata_orchestrator::TaskState::Queued);
    assert_eq!(
        swept[0].supervision.as_ref().map(|s| s.action.as_str()),
        Some("reassigned")
    );
    assert!(lease(&h, &a).await.is_empty(), "the expired agent got it back");
    assert_eq!(lease_briefly(&h, &b_tok).await["id"], id);
    h.clock.advance(Duration::from_millis(1500));
    let swept = h.kernel.sweep_once().await.unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(swept[0].state, strata_orchestrator::TaskState::Escalated);
    let sup = swept[0].supervision.clone().unwrap();
    assert_eq!(sup.action, "escalated_to_human");
    let t = task(&h, &id).await;
    assert_eq!(t["state"], "escalated");
    assert_eq!(t["history"][0]["agent_id"], a_id);
    let e = escalation(&h, sup.escalation.as_deref().unwrap()).await;
    assert_eq!(
        (&e["task_id"], &e["assignee"], &e["error"]),
        (&json!(id), &json!("human"), &json!({"code": "lease_expired"}))
    );
    // A further sweep finds nothing to do.
    assert!(h.kernel.sweep_once().await.unwrap().is_empty());
}

async fn supervision_steps_are_audited_as_system_and_the_chain_verifies(b: Backend) {
    let h = Harness::new(b).await;
    let (_, a) = agent(&h, "a", &["summarize"]).await;
    let (_, b_tok) = agent(&h, "b", &["summarize"]).await;
    let (reviewer_id, reviewer) = agent(&h, "reviewer", &["review"]).await;
    set_policy(
        &h,
        json!({"capability": "summarize", "on_dead": "reassign", "then": "escalate_to_human"}),
    )
    .await;
    set_policy(
        &h,
        json!({"capability": "*", "on_dead": "escalate_to_agent", "supervisor": "review"}),
    )
    .await;
    // summarize: reassigned by task.fail, then escalated to a person by the sweeper.
    let human = submit(&h, 1).await;
    lease_and_fail(&h, &a, &human, json!("boom")).await;
    lease_briefly(&h, &b_tok).await;
    h.clock.advance(Duration::from_millis(1500));
    h.kernel.sweep_once().await.unwrap();
    let human_esc = escalations(&h, json!({})).await[0]["id"].clone();
    resolve(&h, &h.admin, json!({"id": human_esc, "action": "cancel"}))
        .await
        .unwrap();
    // translate falls under `*`: escalated to the reviewer, who settles it.
    let (_, t_tok) = agent(&h, "translator", &["translate"]).await;
    let agentic = h
        .call(
            &h.admin,
            "task.submit",
            json!({"capability": "translate", "max_attempts": 1}),
        )
        .await
        .unwrap()
        .body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = lease_and_fail(&h, &t_tok, &agentic, json!("boom")).await;
    let agent_esc = out["supervision"]["escalation"].clone();
    resolve(&h, &reviewer, json!({"id": agent_esc, "action": "cancel"}))
        .await
        .unwrap();

    let entries = audit(&h).await;
    let find = |syscall: &str, resource: &Value| -> Vec<Value> {
        entries
            .iter()
            .filter(|e| e["syscall"] == syscall && e["resource"] == *resource && e["outcome"] == "ok")
            .cloned()
            .collect()
    };
    let human_id = json!(human);
    let agentic_id = json!(agentic);
    for (syscall, resource, principal) in [
        ("task.reassigned", &human_id, json!("system")),
        ("task.escalated_to_human", &human_id, json!("system")),
        ("task.escalated_to_agent", &agentic_id, json!("system")),
        ("escalation.resolve", &agent_esc, json!(reviewer_id)),
    ] {
        let found = find(syscall, resource);
        assert_eq!(found.len(), 1, "{syscall} on {resource}: {found:?}");
        assert_eq!(found[0]["principal"], principal, "{syscall}");
    }
    let by_admin = find("escalation.resolve", &human_esc);
    assert_eq!(by_admin.len(), 1);
    assert!(
        by_admin[0]["principal"]
            .as_str()
            .unwrap()
            .starts_with("admin:tok_")
    );
    // Each supervision step follows the transition that caused it.
    let pos = |syscall: &str, resource: &Value| {
        entries
            .iter()
            .position(|e| e["syscall"] == syscall && e["resource"] == *resource)
            .unwrap()
    };
    assert!(pos("task.lease_expired", &human_id) < pos("task.escalated_to_human", &human_id));
    assert!(pos("task.reassigned", &human_id) < pos("task.lease_expired", &human_id));
    assert_eq!(h.verify().await["ok"], true);
}

/// An agent with `labels`, declaring `summarize`; returns its token.
async fn labelled_agent(h: &Harness, name: &str, labels: Value) -> String {
    h.call(
        &h.admin,
        "agent.create",
        json!({"name": name, "capabilities": [summarize()], "labels": labels}),
    )
    .await
    .unwrap()
    .body["token"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn a_group_policy_governs_its_agents_tasks_before_the_capability_policy(b: Backend) {
    let h = Harness::new(b).await;
    let blue = labelled_agent(&h, "blue", json!({"strata.group": "blue"})).await;
    let plain = labelled_agent(&h, "plain", json!({})).await;
    set_policy(&h, json!({"capability": "summarize", "on_dead": "dead_letter"})).await;
    set_policy(
        &h,
        json!({"capability": "*", "group": "blue", "on_dead": "escalate_to_human"}),
    )
    .await;

    // The group's wildcard beats the capability's policy for every agent...
    let id = submit(&h, 1).await;
    let out = lease_and_fail(&h, &blue, &id, json!("boom")).await;
    assert_eq!(out["supervision"]["action"], "escalated_to_human", "{out}");
    // ...but only for the group's agents.
    let id = submit(&h, 1).await;
    let out = lease_and_fail(&h, &plain, &id, json!("boom")).await;
    assert_eq!(out, json!({"id": id, "state": "dead"}));

    // Within the group, the exact capability beats the wildcard.
    set_policy(
        &h,
        json!({"capability": "summarize", "group": "blue", "on_dead": "dead_letter"}),
    )
    .await;
    let policies = h
        .call(&h.admin, "supervision.list", json!({}))
        .await
        .unwrap()
        .body["items"]
        .clone();
    assert_eq!(policies.as_array().unwrap().len(), 3, "{policies}");
    let id = submit(&h, 1).await;
    let out = lease_and_fail(&h, &blue, &id, json!("boom")).await;
    assert_eq!(out["state"], "dead", "{out}");

    // Removing the group's policy removes only that one.
    let removed = h
        .call(
            &h.admin,
            "supervision.delete",
            json!({"capability": "summarize", "group": "blue"}),
        )
        .await
        .unwrap()
        .body;
    assert_eq!(removed["id"], "summarize@blue");
    let id = submit(&h, 1).await;
    let out = lease_and_fail(&h, &blue, &id, json!("boom")).await;
    assert_eq!(out["supervision"]["action"], "escalated_to_human", "{out}");
    let err = h
        .call(
            &h.admin,
            "supervision.delete",
            json!({"capability": "summarize", "group": "blue"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    let err = h
        .call(
            &h.admin,
            "supervision.set",
            json!({"capability": "summarize", "group": "", "on_dead": "dead_letter"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidRequest);
}

async fn a_review_task_its_supervisor_cannot_accept_goes_to_people_with_the_reason(b: Backend) {
    let h = Harness::new(b).await;
    let (_, a) = agent(&h, "a", &["summarize"]).await;
    // The supervisor wants a `ticket` the review input does not carry.
    h.call(
        &h.admin,
        "agent.create",
        json!({"name": "reviewer", "capabilities": [{"name": "review",
            "input_schema": {"type": "object", "required": ["ticket"]}}]}),
    )
    .await
    .unwrap();
    set_policy(
        &h,
        json!({"capability": "summarize", "on_dead": "escalate_to_agent", "supervisor": "review"}),
    )
    .await;
    let id = submit(&h, 1).await;
    let out = lease_and_fail(&h, &a, &id, json!("boom")).await;
    assert_eq!(out["state"], "escalated");
    assert_eq!(out["supervision"]["action"], "escalated_to_human", "{out}");
    assert!(out["supervision"].get("review_task").is_none(), "{out}");
    let esc = escalation(&h, out["supervision"]["escalation"].as_str().unwrap()).await;
    assert_eq!(esc["assignee"], "human");
    let reason = esc["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("input schema of 'review'") && reason.contains("ticket"),
        "{esc}"
    );
    let reviews = h
        .call(&h.admin, "task.list", json!({"capability": "review"}))
        .await
        .unwrap()
        .body;
    assert_eq!(reviews["items"], json!([]), "a review task was submitted anyway");
}

crate::on_both_backends!(
    without_a_policy_a_task_whose_attempts_run_out_is_dead,
    reassign_queues_the_task_again_for_another_capable_agent,
    reassign_applies_then_once_its_reassigns_are_used_up,
    reassign_without_another_capable_agent_falls_through_to_then,
    a_capability_policy_takes_precedence_over_the_wildcard,
    escalate_to_human_opens_an_escalation_only_operators_may_resolve,
    resolving_with_retry_queues_the_task_again_with_more_attempts,
    resolving_with_cancel_cancels_the_task,
    resolving_with_complete_with_succeeds_the_task_with_a_checked_result,
    escalate_to_agent_submits_a_review_task_with_the_failed_tasks_input_error_and_history,
    only_agents_declaring_the_supervisor_capability_may_resolve_its_escalations,
    an_expired_lease_on_the_last_attempt_is_supervised_by_the_sweeper,
    supervision_steps_are_audited_as_system_and_the_chain_verifies,
    reassign_hands_a_pinned_task_to_another_capable_agent,
    a_group_policy_governs_its_agents_tasks_before_the_capability_policy,
    a_review_task_its_supervisor_cannot_accept_goes_to_people_with_the_reason,
);

async fn reassign_hands_a_pinned_task_to_another_capable_agent(b: Backend) {
    let h = Harness::new(b).await;
    let (a_id, a) = agent(&h, "a", &["summarize"]).await;
    let (_, b_tok) = agent(&h, "b", &["summarize"]).await;
    set_policy(&h, json!({"capability": "summarize", "on_dead": "reassign"})).await;
    let id = h
        .call(
            &h.admin,
            "task.submit",
            json!({"capability": "summarize", "input": {"text": "hello"}, "max_attempts": 1, "agent": a_id}),
        )
        .await
        .unwrap()
        .body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = lease_and_fail(&h, &a, &id, json!("boom")).await;
    assert_eq!(out["supervision"]["action"], "reassigned");
    // Reassigned "for any capable agent but the one that failed last", the task
    // must reach B even though it was pinned to A (who now must not get it),
    // well after any steal delay.
    h.clock.advance(Duration::from_secs(60));
    assert!(lease(&h, &a).await.is_empty(), "the failing agent got it back");
    let got = lease(&h, &b_tok).await;
    assert_eq!(got.len(), 1, "the reassigned pinned task is leasable by nobody");
    assert_eq!(got[0]["id"], id);
}
