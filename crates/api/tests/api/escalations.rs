//! Supervision over HTTP: policies, reassignment reported by `task.fail`, and
//! escalations listed and resolved by operators or supervisor agents.

use axum::http::Method;
use serde_json::{Value, json};

use crate::harness::{Agent, App, Call, Resp};

/// An agent declaring `caps`: `summarize` with a strict input and output
/// schema, any other capability with none.
async fn worker(app: &App, name: &str, caps: &[&str]) -> Agent {
    let caps: Vec<Value> = caps
        .iter()
        .map(|c| match *c {
            "summarize" => json!({
                "name": "summarize",
                "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
                "output_schema": {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}
            }),
            other => json!({"name": other}),
        })
        .collect();
    app.agent_with(json!({"name": name, "capabilities": caps})).await
}

/// PUT /v1/supervision/{capability} as `token`.
async fn put_policy(app: &App, token: &str, capability: &str, body: &Value) -> Resp {
    app.send(
        Call::new(Method::PUT, &format!("/v1/supervision/{capability}"))
            .token(token)
            .json(body),
    )
    .await
}

/// Submits a `summarize` task with `max_attempts`; returns its id.
async fn submit(app: &App, max_attempts: u32) -> String {
    let r = app
        .post(
            "/v1/tasks",
            &app.admin,
            &json!({"capability": "summarize", "input": {"text": "hello"}, "max_attempts": max_attempts}),
        )
        .await;
    r.expect(201);
    r.json()["id"].as_str().expect("a task id").to_string()
}

/// The tasks `token` leases now (possibly none).
async fn lease(app: &App, token: &str) -> Vec<Value> {
    let r = app.post("/v1/tasks/lease", token, &json!({})).await;
    r.expect(200);
    r.json()["tasks"].as_array().expect("tasks").clone()
}

/// Leases task `id` as `token` and fails it; returns `task.fail`'s response body.
async fn lease_and_fail(app: &App, token: &str, id: &str) -> Value {
    let t = lease(app, token).await;
    assert_eq!(t.len(), 1, "expected to lease {id}");
    assert_eq!(t[0]["id"], id);
    let r = app
        .post(
            &format!("/v1/tasks/{id}/fail"),
            token,
            &json!({"lease_id": t[0]["lease_id"], "error": {"why": "stuck"}}),
        )
        .await;
    r.expect(200);
    r.json()
}

async fn task(app: &App, id: &str) -> Value {
    app.get(&format!("/v1/tasks/{id}"), &app.admin)
        .await
        .expect(200)
        .json()
}

async fn escalation(app: &App, id: &str) -> Value {
    app.get(&format!("/v1/escalations/{id}"), &app.admin)
        .await
        .expect(200)
        .json()
}

async fn resolve(app: &App, token: &str, esc: &str, body: &Value) -> Resp {
    app.post(&format!("/v1/escalations/{esc}/resolve"), token, body)
        .await
}

/// A task escalated to operators; returns (task id, escalation id, its worker).
async fn escalated_to_human(app: &App) -> (String, String, Agent) {
    let w = worker(app, "w", &["summarize"]).await;
    put_policy(
        app,
        &app.admin,
        "summarize",
        &json!({"on_dead": "escalate_to_human"}),
    )
    .await
    .expect(200);
    let id = submit(app, 1).await;
    let out = lease_and_fail(app, &w.token, &id).await;
    assert_eq!(out["state"], "escalated", "{out}");
    let esc = out["supervision"]["escalation"]
        .as_str()
        .expect("an escalation id")
        .to_string();
    (id, esc, w)
}

#[tokio::test]
async fn task_fail_reports_a_reassignment_and_another_agent_gets_the_task() {
    let app = App::new().await;
    let a = worker(&app, "a", &["summarize"]).await;
    let b = worker(&app, "b", &["summarize"]).await;
    put_policy(&app, &app.admin, "summarize", &json!({"on_dead": "reassign"}))
        .await
        .expect(200);
    let id = submit(&app, 1).await;
    let out = lease_and_fail(&app, &a.token, &id).await;
    assert_eq!(
        out,
        json!({"id": id, "state": "queued", "supervision": {"action": "reassigned"}})
    );
    assert!(lease(&app, &a.token).await.is_empty());
    let got = lease(&app, &b.token).await;
    assert_eq!(
        (got[0]["id"].clone(), got[0]["attempt"].clone()),
        (json!(id), json!(2))
    );
}

#[tokio::test]
async fn open_escalations_are_listed_with_their_assignee() {
    let app = App::new().await;
    let (id, esc, _) = escalated_to_human(&app).await;
    let open = app
        .get("/v1/escalations?state=open", &app.admin)
        .await
        .expect(200)
        .json();
    let items = open["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{open}");
    assert_eq!(
        (
            &items[0]["id"],
            &items[0]["task_id"],
            &items[0]["assignee"],
            &items[0]["state"]
        ),
        (&json!(esc), &json!(id), &json!("human"), &json!("open"))
    );
    assert_eq!(items[0]["error"], json!({"why": "stuck"}));
    assert_eq!(task(&app, &id).await["state"], "escalated");
    let resolved = app
        .get("/v1/escalations?state=resolved", &app.admin)
        .await
        .expect(200)
        .json();
    assert_eq!(resolved["items"], json!([]));
    app.get("/v1/escalations?state=pending", &app.admin)
        .await
        .problem(400, "invalid_request");
}

#[tokio::test]
async fn an_agent_resolving_an_escalation_for_people_is_forbidden() {
    let app = App::new().await;
    let (id, esc, w) = escalated_to_human(&app).await;
    let detail = resolve(&app, &w.token, &esc, &json!({"action": "cancel"}))
        .await
        .problem(403, "forbidden");
    assert!(detail.contains("human"), "{detail}");
    assert_eq!(escalation(&app, &esc).await["state"], "open");
    assert_eq!(task(&app, &id).await["state"], "escalated");
}

#[tokio::test]
async fn resolving_with_retry_queues_a_leasable_task_with_more_attempts() {
    let app = App::new().await;
    let (id, esc, w) = escalated_to_human(&app).await;
    let r = resolve(&app, &app.admin, &esc, &json!({"action": "retry", "attempts": 2})).await;
    let body = r.expect(200).json();
    assert_eq!(
        (&body["state"], &body["resolution"]["action"]),
        (&json!("resolved"), &json!("retry"))
    );
    let t = task(&app, &id).await;
    assert_eq!(
        (t["state"].clone(), t["max_attempts"].clone()),
        (json!("queued"), json!(3))
    );
    let got = lease(&app, &w.token).await;
    assert_eq!(got[0]["id"], id);
}

#[tokio::test]
async fn resolving_with_cancel_cancels_the_task() {
    let app = App::new().await;
    let (id, esc, _) = escalated_to_human(&app).await;
    resolve(&app, &app.admin, &esc, &json!({"action": "cancel"}))
        .await
        .expect(200);
    assert_eq!(task(&app, &id).await["state"], "cancelled");
}

#[tokio::test]
async fn resolving_with_complete_with_checks_the_result_against_the_output_schema() {
    let app = App::new().await;
    let (id, esc, _) = escalated_to_human(&app).await;
    let detail = resolve(
        &app,
        &app.admin,
        &esc,
        &json!({"action": "complete_with", "result": {"summary": 1}}),
    )
    .await
    .problem(400, "invalid_output");
    assert!(detail.starts_with("result/summary"), "{detail}");
    assert_eq!(escalation(&app, &esc).await["state"], "open");
    assert_eq!(task(&app, &id).await["state"], "escalated");

    resolve(
        &app,
        &app.admin,
        &esc,
        &json!({"action": "complete_with", "result": {"summary": "done by hand"}}),
    )
    .await
    .expect(200);
    let t = task(&app, &id).await;
    assert_eq!(
        (t["state"].clone(), t["result"].clone()),
        (json!("succeeded"), json!({"summary": "done by hand"}))
    );
}

#[tokio::test]
async fn complete_with_without_a_result_is_invalid_request() {
    let app = App::new().await;
    let (id, esc, _) = escalated_to_human(&app).await;
    let detail = resolve(&app, &app.admin, &esc, &json!({"action": "complete_with"}))
        .await
        .problem(400, "invalid_request");
    assert!(detail.starts_with("result"), "{detail}");
    assert_eq!(escalation(&app, &esc).await["state"], "open");
    assert_eq!(task(&app, &id).await["state"], "escalated");
}

#[tokio::test]
async fn resolving_a_resolved_escalation_is_escalation_resolved() {
    let app = App::new().await;
    let (id, esc, _) = escalated_to_human(&app).await;
    resolve(&app, &app.admin, &esc, &json!({"action": "cancel"}))
        .await
        .expect(200);
    let detail = resolve(&app, &app.admin, &esc, &json!({"action": "retry"}))
        .await
        .problem(409, "escalation_resolved");
    assert!(detail.contains(&esc), "{detail}");
    assert_eq!(task(&app, &id).await["state"], "cancelled");
    assert_eq!(escalation(&app, &esc).await["resolution"]["action"], "cancel");
}

#[tokio::test]
async fn unknown_escalation_is_not_found() {
    let app = App::new().await;
    let id = "esc_01jd3c5v7m2k9w8x4y6z0a1b2c";
    app.get(&format!("/v1/escalations/{id}"), &app.admin)
        .await
        .problem(404, "not_found");
    resolve(&app, &app.admin, id, &json!({"action": "cancel"}))
        .await
        .problem(404, "not_found");
}

#[tokio::test]
async fn a_supervisor_agent_leases_the_review_task_and_resolves_the_escalation() {
    let app = App::new().await;
    let w = worker(&app, "w", &["summarize"]).await;
    let reviewer = worker(&app, "reviewer", &["review"]).await;
    let bystander = worker(&app, "bystander", &["translate"]).await;
    put_policy(
        &app,
        &app.admin,
        "summarize",
        &json!({"on_dead": "escalate_to_agent", "supervisor": "review"}),
    )
    .await
    .expect(200);
    let id = submit(&app, 1).await;
    let out = lease_and_fail(&app, &w.token, &id).await;
    assert_eq!(out["supervision"]["action"], "escalated_to_agent");
    let esc = out["supervision"]["escalation"].as_str().expect("escalation");
    let listed = app
        .get("/v1/escalations?state=open", &app.admin)
        .await
        .expect(200)
        .json();
    assert_eq!(listed["items"][0]["assignee"], "review");

    for token in [&w.token, &bystander.token] {
        resolve(&app, token, esc, &json!({"action": "cancel"}))
            .await
            .problem(403, "forbidden");
    }
    let got = lease(&app, &reviewer.token).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["id"], out["supervision"]["review_task"]);
    assert_eq!(got[0]["capability"], "review");
    let input = &got[0]["input"];
    assert_eq!(input["escalation"], esc);
    assert_eq!(
        (
            &input["task"]["id"],
            &input["task"]["input"],
            &input["task"]["error"]
        ),
        (&json!(id), &json!({"text": "hello"}), &json!({"why": "stuck"}))
    );
    assert_eq!(input["task"]["history"][0]["agent_id"], json!(w.id));

    let r = resolve(
        &app,
        &reviewer.token,
        esc,
        &json!({"action": "retry", "note": "transient"}),
    )
    .await;
    assert_eq!(r.expect(200).json()["resolution"]["by"], json!(reviewer.id));
    assert_eq!(task(&app, &id).await["state"], "queued");
}

#[tokio::test]
async fn supervision_policies_are_validated() {
    let app = App::new().await;
    let cases = [
        (json!({"on_dead": "escalate_to_agent"}), "supervisor"),
        (
            json!({"on_dead": "escalate_to_agent", "supervisor": "summarize"}),
            "supervisor",
        ),
        (
            json!({"on_dead": "reassign", "then": "escalate_to_agent"}),
            "supervisor",
        ),
        (json!({"on_dead": "reassign", "reassigns": 0}), "reassigns"),
        (json!({"on_dead": "reassign", "reassigns": 11}), "reassigns"),
        (json!({"on_dead": "reassign", "then": "reassign"}), "then"),
        (json!({"on_dead": "retire"}), "on_dead"),
        (json!({"on_dead": "reassign", "after": 3}), "after"),
    ];
    for (body, field) in cases {
        let detail = put_policy(&app, &app.admin, "summarize", &body)
            .await
            .problem(400, "invalid_request");
        assert!(detail.starts_with(field), "for {body}: {detail}");
    }
    let listed = app.get("/v1/supervision", &app.admin).await.expect(200).json();
    assert_eq!(listed["items"], json!([]));
    // Ten reassignments is the most accepted.
    put_policy(
        &app,
        &app.admin,
        "summarize",
        &json!({"on_dead": "reassign", "reassigns": 10}),
    )
    .await
    .expect(200);
}

#[tokio::test]
async fn agents_cannot_set_or_delete_supervision_policies() {
    let app = App::new().await;
    let a = worker(&app, "a", &["summarize"]).await;
    put_policy(&app, &a.token, "summarize", &json!({"on_dead": "reassign"}))
        .await
        .problem(403, "forbidden");
    put_policy(&app, &app.admin, "summarize", &json!({"on_dead": "reassign"}))
        .await
        .expect(200);
    app.delete("/v1/supervision/summarize", &a.token)
        .await
        .problem(403, "forbidden");
    let listed = app.get("/v1/supervision", &a.token).await.expect(200).json();
    assert_eq!(listed["items"].as_array().expect("items").len(), 1);
}

#[tokio::test]
async fn supervision_policies_are_set_listed_replaced_and_deleted() {
    let app = App::new().await;
    let set = put_policy(
        &app,
        &app.admin,
        "summarize",
        &json!({"on_dead": "reassign", "reassigns": 2, "then": "escalate_to_human"}),
    )
    .await;
    assert_eq!(
        set.expect(200).json(),
        json!({"capability": "summarize", "on_dead": "reassign", "reassigns": 2, "then": "escalate_to_human"})
    );
    put_policy(&app, &app.admin, "*", &json!({"on_dead": "escalate_to_human"}))
        .await
        .expect(200);
    let listed = app.get("/v1/supervision", &app.admin).await.expect(200).json();
    assert_eq!(
        listed["items"],
        json!([
            {"capability": "*", "on_dead": "escalate_to_human"},
            {"capability": "summarize", "on_dead": "reassign", "reassigns": 2, "then": "escalate_to_human"}
        ])
    );
    put_policy(&app, &app.admin, "summarize", &json!({"on_dead": "dead_letter"}))
        .await
        .expect(200);
    let r = app.delete("/v1/supervision/*", &app.admin).await;
    assert_eq!(r.expect(200).json()["removed"], true);
    let listed = app.get("/v1/supervision", &app.admin).await.expect(200).json();
    assert_eq!(
        listed["items"],
        json!([{"capability": "summarize", "on_dead": "dead_letter"}])
    );
    app.delete("/v1/supervision/*", &app.admin)
        .await
        .problem(404, "not_found");
    let detail = app
        .delete("/v1/supervision/translate", &app.admin)
        .await
        .problem(404, "not_found");
    assert!(detail.contains("translate"), "{detail}");
}
