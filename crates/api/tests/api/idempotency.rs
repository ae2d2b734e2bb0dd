//! `Idempotency-Key`: replay, conflicts, scoping per principal, concurrency.

use axum::http::Method;
use serde_json::{Value, json};

use crate::harness::{App, Call, send};

fn create(token: &str, key: &str, body: &Value) -> Call {
    Call::new(Method::POST, "/v1/agents")
        .token(token)
        .key(key)
        .json(body)
}

async fn events(app: &App) -> Vec<Value> {
    let r = app.get("/v1/events?limit=1000", &app.admin).await;
    r.expect(200);
    r.json()["items"].as_array().expect("items").clone()
}

#[tokio::test]
async fn replay_returns_the_identical_response_and_has_no_second_effect() {
    let app = App::new().await;
    let body = json!({"name": "once", "capabilities": [{"name": "sum"}], "hold_private_key": true});
    let first = app.send(create(&app.admin, "key-1", &body)).await;
    first.expect(201);
    assert_eq!(first.header("idempotency-replayed"), None);
    let audit_before = app.audit().await.len();
    let events_before = events(&app).await.len();

    let second = app.send(create(&app.admin, "key-1", &body)).await;
    second.expect(201);
    assert_eq!(second.header("idempotency-replayed"), Some("true"));
    assert_eq!(second.content_type(), first.content_type());
    assert_eq!(second.json(), first.json(), "the replayed body is the stored one");
    assert_eq!(second.bytes, first.bytes, "byte for byte");

    assert_eq!(
        app.agent_ids().await,
        vec![first.json()["id"].as_str().unwrap().to_string()]
    );
    assert_eq!(
        app.audit().await.len(),
        audit_before,
        "a replay is not audited again"
    );
    assert_eq!(events(&app).await.len(), events_before, "a replay emits no event");
    // The replayed token is the one that was minted, and it works.
    let token = second.json()["token"].as_str().unwrap().to_string();
    app.get("/v1/agents", &token).await.expect(200);
}

#[tokio::test]
async fn same_key_with_a_different_body_is_refused_and_changes_nothing() {
    let app = App::new().await;
    app.send(create(&app.admin, "k", &json!({"name": "a"})))
        .await
        .expect(201);
    let audit_before = app.audit().await.len();
    for other in [
        json!({"name": "b"}),
        json!({"name": "a", "labels": {"x": "y"}}),
        json!({"name": "a", "hold_private_key": true}),
    ] {
        app.send(create(&app.admin, "k", &other))
            .await
            .problem(409, "idempotency_key_reused");
    }
    assert_eq!(app.agent_ids().await.len(), 1);
    assert_eq!(app.audit().await.len(), audit_before);
}

#[tokio::test]
async fn same_key_on_a_different_syscall_is_refused() {
    let app = App::new().await;
    app.send(create(&app.admin, "k", &json!({"name": "a"})))
        .await
        .expect(201);
    let r = app
        .send(
            Call::new(Method::POST, "/v1/tokens")
                .token(&app.admin)
                .key("k")
                .json(&json!({})),
        )
        .await;
    let detail = r.problem(409, "idempotency_key_reused");
    assert!(detail.contains("agent.create"), "{detail}");
}

#[tokio::test]
async fn same_key_for_another_resource_in_the_path_is_refused() {
    let app = App::new().await;
    let a = app.agent("a").await;
    let b = app.agent("b").await;
    let mint = |id: &str| {
        Call::new(Method::POST, &format!("/v1/agents/{id}/tokens"))
            .token(&app.admin)
            .key("mint")
            .json(&json!({"scopes": ["agent.get"]}))
    };
    app.send(mint(&a.id)).await.expect(201);
    app.send(mint(&b.id)).await.problem(409, "idempotency_key_reused");
}

#[tokio::test]
async fn keys_are_per_principal() {
    let app = App::new().await;
    let a = app.agent("a").await;
    let b = app.agent("b").await;
    let mint = |agent: &crate::harness::Agent| {
        Call::new(Method::POST, &format!("/v1/agents/{}/tokens", agent.id))
            .token(&agent.token)
            .key("shared")
            .json(&json!({"scopes": ["agent.get"]}))
    };
    // The operator uses the key first, for something else entirely.
    app.send(create(&app.admin, "shared", &json!({"name": "c"})))
        .await
        .expect(201);
    let ra = app.send(mint(&a)).await;
    ra.expect(201);
    assert_eq!(ra.header("idempotency-replayed"), None);
    let rb = app.send(mint(&b)).await;
    rb.expect(201);
    assert_eq!(rb.header("idempotency-replayed"), None);
    assert_eq!(ra.json()["agent_id"], a.id);
    assert_eq!(rb.json()["agent_id"], b.id);
    assert_ne!(ra.json()["id"], rb.json()["id"]);
    // Each principal's own repeat is a replay of its own response.
    let ra2 = app.send(mint(&a)).await;
    assert_eq!(ra2.header("idempotency-replayed"), Some("true"));
    assert_eq!(ra2.json(), ra.json());
}

#[tokio::test]
async fn a_refused_request_does_not_use_up_its_key() {
    let app = App::new().await;
    app.send(create(&app.admin, "k", &json!({"name": "bad name"})))
        .await
        .problem(400, "invalid_request");
    let r = app.send(create(&app.admin, "k", &json!({"name": "good"}))).await;
    r.expect(201);
    assert_eq!(r.header("idempotency-replayed"), None);
}

#[tokio::test]
async fn keys_are_ignored_on_reads() {
    let app = App::new().await;
    let r = app
        .send(Call::new(Method::GET, "/v1/agents").token(&app.admin).key(""))
        .await;
    r.expect(200);
    assert_eq!(r.header("idempotency-replayed"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_create_exactly_one_agent() {
    let app = App::new().await;
    let body = json!({"name": "racer", "labels": {"k": "v"}});
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let router = app.router.clone();
        let req = create(&app.admin, "race-1", &body).build();
        tasks.push(tokio::spawn(async move { send(&router, req).await }));
    }
    let mut ids = Vec::new();
    let mut failures = Vec::new();
    for t in tasks {
        let r = t.await.expect("the task completes");
        if r.status.as_u16() == 201 {
            ids.push(r.json()["id"].as_str().unwrap().to_string());
        } else {
            failures.push(format!("{} {}", r.status, r.text()));
        }
    }
    assert!(
        failures.is_empty(),
        "every request must get the 201: {failures:#?}"
    );
    assert_eq!(ids.len(), 16);
    assert!(ids.iter().all(|id| *id == ids[0]), "all got the same id: {ids:?}");
    assert_eq!(app.agent_ids().await, vec![ids[0].clone()]);
    let created = app
        .audit()
        .await
        .into_iter()
        .filter(|e| e["syscall"] == "agent.create")
        .count();
    assert_eq!(created, 1, "one effect, one audit entry");
    // Afterwards the key replays the one stored response.
    let r = app.send(create(&app.admin, "race-1", &body)).await;
    r.expect(201);
    assert_eq!(r.header("idempotency-replayed"), Some("true"));
    assert_eq!(r.json()["id"], ids[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_and_no_unique_name_replay_one_response() {
    // token.create_admin has no uniqueness of its own, so only the idempotency
    // record stops a second effect: every caller must get the one stored token.
    let app = App::new().await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let router = app.router.clone();
        let req = Call::new(Method::POST, "/v1/tokens")
            .token(&app.admin)
            .key("race-3")
            .json(&json!({"name": "ops"}))
            .build();
        tasks.push(tokio::spawn(async move { send(&router, req).await }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let r = t.await.expect("the task completes");
        r.expect(201);
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let minted = app
        .audit()
        .await
        .into_iter()
        .filter(|e| e["syscall"] == "token.create_admin" && e["outcome"] == "ok")
        .count();
    assert_eq!(minted, 2, "the bootstrap token and exactly one more");
}

#[tokio::test]
async fn keys_are_not_shared_between_operator_tokens() {
    let app = App::new().await;
    let r = app
        .post("/v1/tokens", &app.admin, &json!({"name": "second"}))
        .await;
    r.expect(201);
    let second = r.json()["token"].as_str().unwrap().to_string();
    let mint = |token: &str| {
        Call::new(Method::POST, "/v1/tokens")
            .token(token)
            .key("deploy-1")
            .json(&json!({"name": "ci"}))
    };
    let a = app.send(mint(&app.admin)).await;
    a.expect(201);
    let b = app.send(mint(&second)).await;
    b.expect(201);
    assert_eq!(
        b.header("idempotency-replayed"),
        None,
        "operator B was handed operator A's stored response, including the secret token {}",
        a.json()["token"]
    );
    assert_ne!(a.json()["token"], b.json()["token"]);
}
