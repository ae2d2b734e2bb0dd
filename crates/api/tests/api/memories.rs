//! The memory layer over HTTP: add, list, search, update, history, delete,
//! scope, handoffs, and the memory problem codes.

use axum::http::Method;
use serde_json::{Value, json};

use crate::harness::{Agent, App, Call};

async fn add(app: &App, token: &str, body: Value) -> Value {
    let r = app.post("/v1/memories", token, &body).await;
    r.expect(200);
    r.json()
}

async fn search(app: &App, token: &str, body: Value) -> Vec<Value> {
    let r = app.post("/v1/memories/search", token, &body).await;
    r.expect(200);
    r.json()["results"].as_array().expect("results").clone()
}

fn ids(hits: &[Value]) -> Vec<String> {
    hits.iter()
        .map(|h| h["id"].as_str().expect("id").to_string())
        .collect()
}

async fn patch(app: &App, uri: &str, token: &str, body: &Value) -> crate::harness::Resp {
    app.send(Call::new(Method::PATCH, uri).token(token).json(body))
        .await
}

#[tokio::test]
async fn add_returns_its_changes_with_ids_and_list_pages_the_memories() {
    let app = App::new().await;
    let first = add(
        &app,
        &app.admin,
        json!({"text": "I adopted a golden retriever named Biscuit.", "user_id": "u1", "source": {"dia_id": "D1:3"}}),
    )
    .await;
    let change = &first["results"][0];
    assert_eq!(change["event"], "ADD", "{first}");
    let id = change["id"].as_str().expect("an id").to_string();
    assert!(id.starts_with("mem_"), "{id}");
    assert_eq!(change["memory"], "User adopted a golden retriever named Biscuit.");

    let again = add(
        &app,
        &app.admin,
        json!({"text": "I adopted a golden retriever named Biscuit.", "user_id": "u1"}),
    )
    .await;
    assert_eq!(again["results"][0]["event"], "NONE", "adding twice is idempotent");
    assert_eq!(again["results"][0]["id"], json!(id));

    add(
        &app,
        &app.admin,
        json!({"text": "I play the cello in an orchestra.", "user_id": "u1"}),
    )
    .await;
    add(
        &app,
        &app.admin,
        json!({"text": "I collect vintage typewriters.", "user_id": "u2"}),
    )
    .await;

    let page = app.get("/v1/memories?user_id=u1&page_size=1", &app.admin).await;
    page.expect(200);
    let page = page.json();
    assert_eq!(page["count"], 2, "{page}");
    assert_eq!(page["results"].as_array().map(Vec::len), Some(1));
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let next = app
        .get(
            &format!("/v1/memories?user_id=u1&page_size=1&cursor={cursor}"),
            &app.admin,
        )
        .await;
    next.expect(200);
    assert_eq!(next.json()["next_cursor"], Value::Null);

    let filtered = app
        .get(
            "/v1/memories?filters=%7B%22user_id%22%3A%7B%22in%22%3A%5B%22u2%22%5D%7D%7D",
            &app.admin,
        )
        .await;
    filtered.expect(200);
    assert_eq!(filtered.json()["count"], 1, "{}", filtered.text());

    let got = app.get(&format!("/v1/memories/{id}"), &app.admin).await;
    got.expect(200);
    assert_eq!(got.json()["sources"], json!([{"dia_id": "D1:3"}]));

    let audit = app.audit().await;
    assert_eq!(
        audit
            .iter()
            .filter(|e| e["syscall"] == "memory.add" && e["outcome"] == "ok")
            .count(),
        4,
        "every add is audited"
    );
}

#[tokio::test]
async fn search_ranks_with_score_parts_and_sources_and_honours_filters_top_k_as_of_and_max_tokens() {
    let app = App::new().await;
    add(
        &app,
        &app.admin,
        json!({"text": "I live in Oslo.", "user_id": "u1", "observed_at": "2023-01-01T00:00:00Z", "source": {"dia_id": "D1:1"}}),
    )
    .await;
    add(
        &app,
        &app.admin,
        json!({"text": "I live in Lisbon.", "user_id": "u1", "observed_at": "2023-05-01T00:00:00Z", "source": {"dia_id": "D2:1"}}),
    )
    .await;
    add(
        &app,
        &app.admin,
        json!({"text": "I play the cello in an orchestra.", "user_id": "u1"}),
    )
    .await;
    add(
        &app,
        &app.admin,
        json!({"text": "I live in Lisbon too.", "user_id": "u2"}),
    )
    .await;

    let hits = search(
        &app,
        &app.admin,
        json!({"query": "where does the user live?", "filters": {"user_id": "u1"}}),
    )
    .await;
    assert!(!hits.is_empty());
    let top = &hits[0];
    assert!(top["memory"].as_str().unwrap_or("").contains("Lisbon"), "{top}");
    // Lisbon superseded Oslo: the memory links back to both turns.
    assert_eq!(top["version"], 2, "{top}");
    assert_eq!(
        top["sources"],
        json!([{"dia_id": "D1:1"}, {"dia_id": "D2:1"}]),
        "{top}"
    );
    assert_eq!(top["user_id"], "u1");
    for part in ["lexical", "vector", "graph", "recency"] {
        assert!(top["score_parts"][part].is_number(), "score_parts.{part}: {top}");
    }
    assert!(top["score"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(hits.iter().all(|h| h["user_id"] == "u1"), "the filter holds");

    let one = search(
        &app,
        &app.admin,
        json!({"query": "live", "user_id": "u1", "top_k": 1}),
    )
    .await;
    assert_eq!(one.len(), 1);

    let then = search(
        &app,
        &app.admin,
        json!({"query": "where does the user live?", "user_id": "u1", "as_of": "2023-02-01T00:00:00Z"}),
    )
    .await;
    assert!(!then.is_empty());
    assert!(
        then.iter()
            .all(|h| !h["memory"].as_str().unwrap_or("").contains("Lisbon")),
        "as_of sees only what was true then: {then:?}"
    );
    let before = search(
        &app,
        &app.admin,
        json!({"query": "where does the user live?", "user_id": "u1", "as_of": "2022-01-01T00:00:00Z"}),
    )
    .await;
    assert!(before.is_empty(), "{before:?}");

    let all = search(&app, &app.admin, json!({"query": "live Lisbon Oslo cello"})).await;
    let trimmed = search(
        &app,
        &app.admin,
        json!({"query": "live Lisbon Oslo cello", "max_tokens": 8}),
    )
    .await;
    assert!(
        all.len() > 1 && trimmed.len() < all.len(),
        "{} vs {}",
        trimmed.len(),
        all.len()
    );
}

#[tokio::test]
async fn update_makes_a_version_history_shows_it_and_delete_retires() {
    let app = App::new().await;
    let made = add(
        &app,
        &app.admin,
        json!({"text": "I drive a blue car.", "user_id": "u1"}),
    )
    .await;
    let id = made["results"][0]["id"].as_str().expect("id").to_string();

    let r = patch(
        &app,
        &format!("/v1/memories/{id}"),
        &app.admin,
        &json!({"text": "User drives a red car."}),
    )
    .await;
    r.expect(200);
    assert_eq!(r.json()["event"], "UPDATE");
    let got = app.get(&format!("/v1/memories/{id}"), &app.admin).await;
    got.expect(200);
    assert_eq!(got.json()["memory"], "User drives a red car.");
    assert_eq!(got.json()["version"], 2);

    let h = app.get(&format!("/v1/memories/{id}/history"), &app.admin).await;
    h.expect(200);
    let h = h.json()["results"].as_array().expect("results").clone();
    let events: Vec<&str> = h.iter().map(|e| e["event"].as_str().unwrap_or("")).collect();
    assert_eq!(events, ["ADD", "UPDATE"]);
    assert_eq!(h[1]["old_memory"], h[0]["new_memory"]);
    assert_eq!(h[1]["new_memory"], "User drives a red car.");
    assert!(h[0]["valid_to"].is_string(), "the old version was closed: {h:?}");

    let d = app.delete(&format!("/v1/memories/{id}"), &app.admin).await;
    d.expect(200);
    assert_eq!(d.json()["event"], "DELETE");
    app.get(&format!("/v1/memories/{id}"), &app.admin)
        .await
        .problem(404, "not_found");
    assert!(
        search(&app, &app.admin, json!({"query": "car", "user_id": "u1"}))
            .await
            .is_empty()
    );
    let h = app.get(&format!("/v1/memories/{id}/history"), &app.admin).await;
    h.expect(200);
    let events: Vec<String> = h.json()["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(events, ["ADD", "UPDATE", "DELETE"], "the history stays");
    let audited: Vec<String> = app
        .audit()
        .await
        .iter()
        .filter(|e| e["resource"] == json!(id))
        .map(|e| e["syscall"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(audited, ["memory.update", "memory.delete"]);
}

#[tokio::test]
async fn an_agent_works_in_its_own_scope_and_never_sees_another_agents_memories() {
    let app = App::new().await;
    let a = app.agent("a").await;
    let b = app.agent("b").await;
    let made = add(
        &app,
        &a.token,
        json!({"text": "The deploy password rotates on Fridays.", "user_id": "u1"}),
    )
    .await;
    let id = made["results"][0]["id"].as_str().expect("id").to_string();
    let got = app.get(&format!("/v1/memories/{id}"), &a.token).await;
    got.expect(200);
    assert_eq!(
        got.json()["agent_id"],
        json!(a.id),
        "an agent's add lands in its own scope"
    );

    app.get(&format!("/v1/memories/{id}"), &b.token)
        .await
        .problem(404, "not_found");
    assert!(
        search(&app, &b.token, json!({"query": "deploy password"}))
            .await
            .is_empty()
    );
    let listed = app.get("/v1/memories", &b.token).await;
    listed.expect(200);
    assert_eq!(listed.json()["count"], 0);
    app.post(
        "/v1/memories",
        &b.token,
        &json!({"text": "Agent A likes chaos.", "agent_id": a.id}),
    )
    .await
    .problem(403, "forbidden");
    assert_eq!(
        search(&app, &app.admin, json!({"query": "deploy password"}))
            .await
            .len(),
        1
    );
}

async fn worker(app: &App, name: &str) -> Agent {
    app.agent_with(json!({"name": name, "capabilities": [{"name": "summarize"}]}))
        .await
}

/// A pending handoff from `a` to `b` with one memory and one task `a` holds.
async fn handoff(app: &App, a: &Agent, b: &Agent) -> (String, String, String) {
    let made = add(
        app,
        &a.token,
        json!({"text": "The customer prefers email over phone calls.", "user_id": "cust"}),
    )
    .await;
    let mem = made["results"][0]["id"].as_str().expect("id").to_string();
    let t = app
        .post(
            "/v1/tasks",
            &a.token,
            &json!({"capability": "summarize", "input": {"text": "call notes"}, "agent": a.id}),
        )
        .await;
    t.expect(201);
    let task = t.json()["id"].as_str().expect("task id").to_string();
    let leased = app.post("/v1/tasks/lease", &a.token, &json!({"max": 1})).await;
    leased.expect(200);
    assert_eq!(leased.json()["tasks"][0]["id"], json!(task));
    let h = app
        .post(
            "/v1/handoffs",
            &a.token,
            &json!({"to": b.id, "summary": "Customer 42: follow up by email.", "memory_ids": [mem],
                    "task_ids": [task], "state": {"step": 3}}),
        )
        .await;
    h.expect(201);
    let h = h.json();
    assert_eq!(h["status"], "pending");
    assert_eq!(h["from"], json!(a.id));
    (h["id"].as_str().expect("id").to_string(), mem, task)
}

#[tokio::test]
async fn accepting_a_handoff_moves_its_tasks_and_memory_access_all_audited() {
    let app = App::new().await;
    let a = worker(&app, "a").await;
    let b = worker(&app, "b").await;
    let (hof, mem, task) = handoff(&app, &a, &b).await;

    let inbox = app.get("/v1/handoffs?to=me", &b.token).await;
    inbox.expect(200);
    let inbox = inbox.json();
    assert_eq!(inbox["results"][0]["id"], json!(hof), "{inbox}");
    assert_eq!(inbox["results"][0]["state"], json!({"step": 3}));
    let a_inbox = app.get("/v1/handoffs", &a.token).await;
    a_inbox.expect(200);
    assert_eq!(a_inbox.json()["results"], json!([]), "a agent's default is to=me");
    app.get(&format!("/v1/handoffs?to={}", a.id), &b.token)
        .await
        .problem(403, "forbidden");
    app.get(&format!("/v1/memories/{mem}"), &b.token)
        .await
        .problem(404, "not_found");
    app.post(&format!("/v1/handoffs/{hof}/accept"), &a.token, &json!({}))
        .await
        .problem(403, "forbidden");

    let r = app
        .post(&format!("/v1/handoffs/{hof}/accept"), &b.token, &json!({}))
        .await;
    r.expect(200);
    let r = r.json();
    assert_eq!(r["handoff"]["status"], "accepted");
    assert_eq!(r["moved_tasks"], json!([task]));
    assert_eq!(r["kept_tasks"], json!([]));

    let got = app.get(&format!("/v1/memories/{mem}"), &b.token).await;
    got.expect(200);
    assert!(
        ids(&search(
            &app,
            &b.token,
            json!({"query": "how does the customer like to be contacted?"})
        )
        .await)
        .contains(&mem),
        "the receiver now reads the handed memory"
    );
    let t = app.get(&format!("/v1/tasks/{task}"), &app.admin).await;
    t.expect(200);
    let t = t.json();
    assert_eq!(t["state"], "queued", "a's lease ended: {t}");
    assert_eq!(t["agent"], json!(b.id), "{t}");
    let leased = app.post("/v1/tasks/lease", &b.token, &json!({"max": 1})).await;
    leased.expect(200);
    assert_eq!(
        leased.json()["tasks"][0]["id"],
        json!(task),
        "b leases the moved task"
    );

    let audited: Vec<(String, String)> = app
        .audit()
        .await
        .iter()
        .filter(|e| e["syscall"].as_str().is_some_and(|s| s.starts_with("handoff.")))
        .filter(|e| e["outcome"] == "ok")
        .map(|e| {
            (
                e["syscall"].as_str().unwrap_or("").to_string(),
                e["resource"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        audited.contains(&("handoff.accept".into(), hof.clone())),
        "{audited:?}"
    );
    assert!(
        audited.contains(&("handoff.accept".into(), task.clone())),
        "{audited:?}"
    );
    assert!(audited.iter().any(|(s, _)| s == "handoff.send"), "{audited:?}");

    let again = app
        .post(&format!("/v1/handoffs/{hof}/accept"), &b.token, &json!({}))
        .await;
    again.problem(409, "handoff_decided");
    app.post(&format!("/v1/handoffs/{hof}/reject"), &b.token, &json!({}))
        .await
        .problem(409, "handoff_decided");
}

#[tokio::test]
async fn rejecting_a_handoff_moves_nothing_and_cannot_be_decided_again() {
    let app = App::new().await;
    let a = worker(&app, "a").await;
    let b = worker(&app, "b").await;
    let (hof, mem, task) = handoff(&app, &a, &b).await;
    let r = app
        .post(
            &format!("/v1/handoffs/{hof}/reject"),
            &b.token,
            &json!({"reason": "not my area"}),
        )
        .await;
    r.expect(200);
    let r = r.json();
    assert_eq!(r["handoff"]["status"], "rejected");
    assert_eq!(r["handoff"]["reason"], "not my area");
    assert_eq!(r["moved_tasks"], json!([]));
    app.get(&format!("/v1/memories/{mem}"), &b.token)
        .await
        .problem(404, "not_found");
    let t = app.get(&format!("/v1/tasks/{task}"), &app.admin).await;
    assert_eq!(t.json()["leased_by"], json!(a.id), "a keeps its task");
    app.post(&format!("/v1/handoffs/{hof}/accept"), &b.token, &json!({}))
        .await
        .problem(409, "handoff_decided");
    let sent = app.get("/v1/handoffs?from=me&status=rejected", &a.token).await;
    sent.expect(200);
    assert_eq!(sent.json()["results"][0]["id"], json!(hof));
}

#[tokio::test]
async fn a_handoff_names_only_the_senders_open_tasks_and_a_known_receiver() {
    let app = App::new().await;
    let a = worker(&app, "a").await;
    let b = worker(&app, "b").await;
    let t = app
        .post(
            "/v1/tasks",
            &app.admin,
            &json!({"capability": "summarize", "input": {}}),
        )
        .await;
    t.expect(201);
    let task = t.json()["id"].as_str().expect("id").to_string();
    app.post(
        "/v1/handoffs",
        &a.token,
        &json!({"to": b.id, "summary": "take it", "task_ids": [task]}),
    )
    .await
    .problem(403, "forbidden");
    app.post(
        "/v1/handoffs",
        &a.token,
        &json!({"to": "agt_01ARZ3NDEKTSV4RRFFQ69G5FAV", "summary": "take it"}),
    )
    .await
    .problem(404, "not_found");
    app.post("/v1/handoffs", &app.admin, &json!({"to": b.id, "summary": "x"}))
        .await
        .problem(403, "forbidden");
    let listed = app.get("/v1/handoffs", &app.admin).await;
    listed.expect(200);
    assert_eq!(listed.json()["results"], json!([]), "nothing was handed off");
}

#[tokio::test]
async fn bad_memory_input_is_a_4xx_with_its_code_and_changes_nothing() {
    let app = App::new().await;
    let big = "word ".repeat(4000);
    let cases = [
        (json!({"text": big, "user_id": "u1"}), 413, "memory_too_large"),
        (
            json!({"text": "hi", "user_id": "u1", "metadata": {"blob": "x".repeat(70 * 1024)}}),
            413,
            "memory_too_large",
        ),
        (json!({"text": "   ", "user_id": "u1"}), 400, "invalid_request"),
        (json!({"text": "hello there friend"}), 400, "invalid_request"),
        (
            json!({"text": "x y z", "user_id": "u1", "observed_at": "last tuesday"}),
            400,
            "invalid_request",
        ),
        (
            json!({"text": "x y z", "user_id": "u1", "colour": "red"}),
            400,
            "invalid_request",
        ),
    ];
    for (body, status, code) in cases {
        let r = app.post("/v1/memories", &app.admin, &body).await;
        r.problem(status, code);
    }
    let searches = [
        (
            json!({"query": "x", "filters": {"user_id": {"like": "u%"}}}),
            "invalid_filter",
        ),
        (
            json!({"query": "x", "filters": {"AND": "nope"}}),
            "invalid_filter",
        ),
        (json!({"query": "x", "top_k": 0}), "invalid_request"),
        (json!({"query": "x", "top_k": 1000}), "invalid_request"),
        (json!({"query": ""}), "invalid_request"),
        (json!({"query": "x", "as_of": "yesterday"}), "invalid_request"),
    ];
    for (body, code) in searches {
        app.post("/v1/memories/search", &app.admin, &body)
            .await
            .problem(400, code);
    }
    app.get("/v1/memories?filters=%7Bnot-json", &app.admin)
        .await
        .problem(400, "invalid_filter");
    app.get("/v1/memories?page_size=0", &app.admin)
        .await
        .problem(400, "invalid_request");
    app.get("/v1/memories/not-an-id", &app.admin)
        .await
        .problem(400, "invalid_request");
    patch(
        &app,
        "/v1/memories/mem_01ARZ3NDEKTSV4RRFFQ69G5FAV",
        &app.admin,
        &json!({"text": "x".repeat(17 * 1024)}),
    )
    .await
    .problem(413, "memory_too_large");

    let listed = app.get("/v1/memories", &app.admin).await;
    listed.expect(200);
    assert_eq!(listed.json()["count"], 0, "nothing was remembered");
    assert!(
        app.audit()
            .await
            .iter()
            .all(|e| !(e["syscall"] == "memory.add" && e["outcome"] == "ok")),
        "no add succeeded"
    );
}
