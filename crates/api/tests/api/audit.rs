//! The audit log as seen through /v1/audit.

use axum::http::Method;
use serde_json::json;

use crate::harness::{App, Call};

#[tokio::test]
async fn creations_are_audited_with_who_what_and_outcome() {
    let app = App::new().await;
    let before = app.audit().await;
    assert_eq!(before.len(), 1, "the bootstrap token: {before:?}");
    assert_eq!(before[0]["principal"], "system");
    let admin_token_id = before[0]["resource"].as_str().unwrap().to_string();

    let a = app.agent("a").await;
    let entries = app.audit().await;
    assert_eq!(entries.len(), 2);
    let e = &entries[1];
    assert_eq!(e["seq"], 2);
    assert_eq!(e["syscall"], "agent.create");
    assert_eq!(e["outcome"], "ok");
    assert_eq!(e["status"], 201);
    assert_eq!(e["resource"], a.id);
    assert_eq!(e["principal"], format!("admin:{admin_token_id}"));
    assert_eq!(e["at"], "2027-01-15T08:00:00.000Z");
    assert_eq!(e["request_digest"].as_str().unwrap().len(), 64);
    assert!(e["intent_id"].as_str().unwrap().starts_with("int_"));
    assert_eq!(e["prev_hash"], entries[0]["hash"]);
    // The request digest never holds the request itself.
    assert!(!e.to_string().contains("\"name\""));

    // Minting a token as the agent is audited under the agent.
    let r = app
        .post(
            &format!("/v1/agents/{}/tokens", a.id),
            &a.token,
            &json!({"scopes": ["agent.get"]}),
        )
        .await;
    r.expect(201);
    let entries = app.audit().await;
    let e = entries.last().unwrap();
    assert_eq!(e["syscall"], "token.create");
    assert_eq!(e["principal"], a.id);
    assert_eq!(e["resource"], r.json()["id"]);
    assert_eq!(e["outcome"], "ok");
}

#[tokio::test]
async fn policy_refusals_of_mutating_syscalls_are_audited_with_their_code() {
    let app = App::new().await;
    let a = app.agent("a").await;
    let b = app.agent("b").await;
    let n = app.audit().await.len();

    app.post("/v1/agents", &a.token, &json!({"name": "c"}))
        .await
        .problem(403, "forbidden");
    app.post(&format!("/v1/agents/{}/tokens", b.id), &a.token, &json!({}))
        .await
        .problem(403, "forbidden");
    app.delete(&format!("/v1/agents/{}", b.id), &a.token)
        .await
        .problem(403, "forbidden");

    let entries = app.audit().await;
    assert_eq!(entries.len(), n + 3, "{entries:#?}");
    let new = &entries[n..];
    for (e, syscall) in new.iter().zip(["agent.create", "token.create", "agent.delete"]) {
        assert_eq!(e["syscall"], syscall, "{e}");
        assert_eq!(e["outcome"], "forbidden", "{e}");
        assert_eq!(e["status"], 403, "{e}");
        assert_eq!(e["principal"], a.id, "{e}");
    }
    let verify = app.get("/v1/audit/verify", &app.admin).await;
    verify.expect(200);
    assert_eq!(verify.json()["ok"], true);
    assert_eq!(verify.json()["entries"], entries.len());
}

#[tokio::test]
async fn malformed_requests_and_reads_are_not_audited() {
    let app = App::new().await;
    let a = app.agent("a").await;
    let n = app.audit().await.len();

    let admin = app.admin.clone();
    app.post("/v1/agents", &admin, &json!({"name": "no spaces allowed"}))
        .await
        .problem(400, "invalid_request");
    app.post("/v1/agents", &admin, &json!({"name": "x", "bogus": 1}))
        .await
        .problem(400, "invalid_request");
    app.post("/v1/agents", &admin, &json!({"name": 3}))
        .await
        .problem(400, "invalid_request");
    app.send(
        Call::new(Method::POST, "/v1/agents")
            .token(&admin)
            .raw("application/json", b"{oops".to_vec()),
    )
    .await
    .problem(400, "invalid_json");
    app.post(
        &format!("/v1/agents/{}/tokens", a.id),
        &a.token,
        &json!({"expires_in": 0}),
    )
    .await
    .problem(400, "invalid_request");
    // Refused reads are not audited either, nor unauthenticated calls.
    app.get("/v1/audit", &a.token).await.problem(403, "forbidden");
    app.send(Call::new(Method::POST, "/v1/agents").json(&json!({"name": "y"})))
        .await
        .problem(401, "unauthenticated");
    app.get("/v1/agents", &admin).await.expect(200);

    assert_eq!(app.audit().await.len(), n);
}

#[tokio::test]
async fn audit_pages_follow_next() {
    let app = App::new().await;
    for i in 0..4 {
        app.agent(&format!("a{i}")).await;
    }
    let r = app.get("/v1/audit?limit=2", &app.admin).await;
    r.expect(200);
    let p = r.json();
    assert_eq!(p["items"].as_array().unwrap().len(), 2);
    assert_eq!(p["next"], 2);
    let r = app.get("/v1/audit?limit=2&after=4", &app.admin).await;
    let p = r.json();
    assert_eq!(p["items"][0]["seq"], 5);
    assert!(p.get("next").is_none(), "a short page has no next: {p}");
    let seqs: Vec<i64> = app
        .audit()
        .await
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn every_successful_write_is_audited_once_with_an_event() {
    let app = App::new().await;
    let a = app.agent("a").await;
    let t = app
        .post(&format!("/v1/agents/{}/tokens", a.id), &app.admin, &json!({}))
        .await;
    t.expect(201);
    let t = t.json();
    let op = app.post("/v1/tokens", &app.admin, &json!({})).await;
    op.expect(201);
    app.delete(&format!("/v1/tokens/{}", t["id"].as_str().unwrap()), &app.admin)
        .await
        .expect(200);
    app.delete(&format!("/v1/agents/{}", a.id), &app.admin)
        .await
        .expect(200);

    let entries = app.audit().await;
    let got: Vec<(String, String, String)> = entries[1..]
        .iter()
        .map(|e| {
            (
                e["syscall"].as_str().unwrap().to_string(),
                e["resource"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = vec![
        ("agent.create".to_string(), a.id.clone(), "ok".to_string()),
        (
            "token.create".into(),
            t["id"].as_str().unwrap().into(),
            "ok".into(),
        ),
        (
            "token.create_admin".into(),
            op.json()["id"].as_str().unwrap().into(),
            "ok".into(),
        ),
        (
            "token.revoke".into(),
            t["id"].as_str().unwrap().into(),
            "ok".into(),
        ),
        ("agent.delete".into(), a.id.clone(), "ok".into()),
    ];
    assert_eq!(got, want);
    // The event log has the same changes in the same order.
    let events = app.get("/v1/events", &app.admin).await.json();
    let kinds: Vec<(String, String)> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().into(),
                e["subject"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = want.into_iter().map(|(s, r, _)| (s, r)).collect();
    assert_eq!(kinds, want);
    let v = app.get("/v1/audit/verify", &app.admin).await.json();
    assert_eq!(v, json!({"ok": true, "entries": 6}));
}
