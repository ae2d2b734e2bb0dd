//! Tasks over HTTP: the task error codes, and a full submit → lease → complete.

use serde_json::{Value, json};

use crate::harness::{App, Call};
use axum::http::Method;

async fn worker(app: &App, name: &str) -> crate::harness::Agent {
    app.agent_with(json!({"name": name, "capabilities": [{
        "name": "summarize",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        "output_schema": {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}
    }]}))
    .await
}

async fn submit(app: &App) -> String {
    let r = app
        .post(
            "/v1/tasks",
            &app.admin,
            &json!({"capability": "summarize", "input": {"text": "hello"}}),
        )
        .await;
    r.expect(201);
    r.json()["id"].as_str().expect("a task id").to_string()
}

async fn lease(app: &App, token: &str) -> Value {
    let r = app.post("/v1/tasks/lease", token, &json!({"max": 1})).await;
    r.expect(200);
    r.json()["tasks"][0].clone()
}

#[tokio::test]
async fn unknown_capability_is_no_capable_agent_and_unroutable_can_be_queued() {
    let app = App::new().await;
    let r = app
        .post("/v1/tasks", &app.admin, &json!({"capability": "summarize"}))
        .await;
    let detail = r.problem(422, "no_capable_agent");
    assert!(detail.contains("summarize"), "{detail}");
    let r = app
        .post(
            "/v1/tasks",
            &app.admin,
            &json!({"capability": "summarize", "allow_unroutable": true}),
        )
        .await;
    assert_eq!(r.expect(201).json()["state"], "queued");
}

#[tokio::test]
async fn schema_violating_input_is_invalid_input_naming_the_path() {
    let app = App::new().await;
    worker(&app, "w").await;
    let r = app
        .post(
            "/v1/tasks",
            &app.admin,
            &json!({"capability": "summarize", "input": {"text": ["no"]}}),
        )
        .await;
    let detail = r.problem(400, "invalid_input");
    assert!(detail.starts_with("input/text"), "{detail}");
    let listed = app.get("/v1/tasks", &app.admin).await;
    assert_eq!(listed.expect(200).json()["items"], json!([]));
}

#[tokio::test]
async fn schema_violating_output_is_invalid_output_and_changes_nothing() {
    let app = App::new().await;
    let w = worker(&app, "w").await;
    let id = submit(&app).await;
    let t = lease(&app, &w.token).await;
    let r = app
        .post(
            &format!("/v1/tasks/{id}/complete"),
            &w.token,
            &json!({"lease_id": t["lease_id"], "result": {"summary": 3}}),
        )
        .await;
    r.problem(400, "invalid_output");
    let task = app.get(&format!("/v1/tasks/{id}"), &app.admin).await;
    assert_eq!(task.expect(200).json()["state"], "leased");
}

#[tokio::test]
async fn completing_someone_elses_lease_is_lease_lost() {
    let app = App::new().await;
    let a = worker(&app, "a").await;
    let b = worker(&app, "b").await;
    let id = submit(&app).await;
    let t = lease(&app, &a.token).await;
    let r = app
        .post(
            &format!("/v1/tasks/{id}/complete"),
            &b.token,
            &json!({"lease_id": t["lease_id"], "result": {"summary": "x"}}),
        )
        .await;
    r.problem(409, "lease_lost");
    let task = app.get(&format!("/v1/tasks/{id}"), &app.admin).await;
    assert_eq!(task.expect(200).json()["leased_by"], json!(a.id));
}

#[tokio::test]
async fn heartbeating_a_finished_task_is_task_finished() {
    let app = App::new().await;
    let w = worker(&app, "w").await;
    let id = submit(&app).await;
    let t = lease(&app, &w.token).await;
    let done = app
        .post(
            &format!("/v1/tasks/{id}/complete"),
            &w.token,
            &json!({"lease_id": t["lease_id"], "result": {"summary": "ok"}}),
        )
        .await;
    assert_eq!(done.expect(200).json()["state"], "succeeded");
    let r = app
        .post(
            &format!("/v1/tasks/{id}/heartbeat"),
            &w.token,
            &json!({"lease_id": t["lease_id"]}),
        )
        .await;
    r.problem(409, "task_finished");
    let task = app
        .get(&format!("/v1/tasks/{id}"), &app.admin)
        .await
        .expect(200)
        .json();
    assert_eq!(
        (task["state"].clone(), task["result"].clone()),
        (json!("succeeded"), json!({"summary": "ok"}))
    );
}

#[tokio::test]
async fn lease_path_does_not_shadow_task_ids_and_operators_cannot_lease() {
    let app = App::new().await;
    worker(&app, "w").await;
    let id = submit(&app).await;
    assert_eq!(
        app.get(&format!("/v1/tasks/{id}"), &app.admin)
            .await
            .expect(200)
            .json()["id"],
        json!(id)
    );
    let r = app
        .send(
            Call::new(Method::POST, "/v1/tasks/lease")
                .token(&app.admin)
                .json(&json!({})),
        )
        .await;
    r.problem(403, "forbidden");
    // The static lease route wins over `{id}`; task ids are `tsk_…`, never `lease`.
    app.get("/v1/tasks/lease", &app.admin)
        .await
        .problem(405, "method_not_allowed");
}
