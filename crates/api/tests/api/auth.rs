//! Tokens: expiry, revocation, deletion, scopes, operator-only syscalls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::Method;
use serde_json::json;
use strata_core::time::rfc3339;

use crate::harness::{App, Call, START_MS, send};

const DAY: Duration = Duration::from_secs(24 * 3600);

#[tokio::test]
async fn agent_tokens_default_to_ninety_days() {
    let app = App::new().await;
    let a = app.agent("a").await;
    assert_eq!(a.body["token_expires_at"], "2027-04-15T08:00:00.000Z");
    assert_eq!(a.body["token_expires_at"], rfc3339(START_MS + 90 * 86_400_000));
    app.get("/v1/agents", &a.token).await.expect(200);
    app.advance(90 * DAY - Duration::from_secs(2));
    app.get("/v1/agents", &a.token).await.expect(200);
    app.advance(Duration::from_secs(2));
    app.get("/v1/agents", &a.token)
        .await
        .problem(401, "token_expired");
}

#[tokio::test]
async fn expires_in_sets_the_lifetime_in_seconds_and_the_cache_does_not_extend_it() {
    let app = App::new().await;
    let a = app
        .agent_with(json!({"name": "a", "token": {"expires_in": 60}}))
        .await;
    assert_eq!(a.body["token_expires_at"], "2027-01-15T08:01:00.000Z");
    app.advance(Duration::from_millis(59_500));
    // Verified (and cached) half a second before expiry...
    app.get("/v1/agents", &a.token).await.expect(200);
    app.advance(Duration::from_millis(500));
    // ...and refused at expiry although the cache entry is younger than its TTL.
    app.get("/v1/agents", &a.token)
        .await
        .problem(401, "token_expired");
}

#[tokio::test]
async fn minted_token_expires_after_expires_in() {
    let app = App::new().await;
    let a = app.agent("a").await;
    let r = app
        .post(
            &format!("/v1/agents/{}/tokens", a.id),
            &app.admin,
            &json!({"expires_in": 5, "name": "short", "scopes": ["agent.*"]}),
        )
        .await;
    r.expect(201);
    let t = r.json();
    assert_eq!(t["agent_id"], a.id);
    assert_eq!(t["scopes"], json!(["agent.*"]));
    assert_eq!(t["expires_at"], rfc3339(START_MS + 5_000));
    let token = t["token"].as_str().unwrap();
    assert!(token.starts_with("stk_"));
    app.get("/v1/agents", token).await.expect(200);
    app.advance(Duration::from_secs(5));
    app.get("/v1/agents", token).await.problem(401, "token_expired");
    // The agent's first token is unaffected.
    app.get("/v1/agents", &a.token).await.expect(200);
}

#[tokio::test]
async fn lifetimes_outside_the_limits_are_refused() {
    let app = App::new().await;
    let a = app.agent("a").await;
    for expires_in in [json!(0), json!(10 * 365 * 86_400 + 1), json!(u64::MAX)] {
        let detail = app
            .post(
                &format!("/v1/agents/{}/tokens", a.id),
                &app.admin,
                &json!({ "expires_in": expires_in }),
            )
            .await
            .problem(400, "invalid_request");
        assert!(detail.starts_with("expires_in: "), "{detail}");
    }
    let detail = app
        .post(
            &format!("/v1/agents/{}/tokens", a.id),
            &app.admin,
            &json!({ "expires_in": -1 }),
        )
        .await
        .problem(400, "invalid_request");
    assert!(detail.starts_with("expires_in: "), "{detail}");
}

#[tokio::test]
async fn revocation_takes_effect_immediately() {
    let app = App::new().await;
    let a = app.agent("a").await;
    // Verified and cached; the clock never moves in this test.
    app.get("/v1/agents", &a.token).await.expect(200);
    let r = app
        .delete(&format!("/v1/tokens/{}", a.token_id), &app.admin)
        .await;
    r.expect(200);
    assert_eq!(r.json(), json!({"id": a.token_id, "removed": true}));
    app.get("/v1/agents", &a.token)
        .await
        .problem(401, "token_revoked");
    // Revoking twice is not an error.
    app.delete(&format!("/v1/tokens/{}", a.token_id), &app.admin)
        .await
        .expect(200);
}

#[tokio::test]
async fn an_agent_can_revoke_its_own_tokens_but_not_see_others() {
    let app = App::new().await;
    let a = app.agent("a").await;
    let b = app.agent("b").await;
    app.delete(&format!("/v1/tokens/{}", b.token_id), &a.token)
        .await
        .problem(404, "not_found");
    app.get("/v1/agents", &b.token).await.expect(200);
    app.delete(
        &format!("/v1/tokens/{}", app.kernel_admin_token_id().await),
        &a.token,
    )
    .await
    .problem(404, "not_found");
    app.get("/v1/agents", &app.admin).await.expect(200);
    app.delete(&format!("/v1/tokens/{}", a.token_id), &a.token)
        .await
        .expect(200);
    app.get("/v1/agents", &a.token)
        .await
        .problem(401, "token_revoked");
}

#[tokio::test]
async fn deleting_an_agent_revokes_all_its_tokens() {
    let app = App::new().await;
    let a = app.agent("a").await;
    let b = app.agent("b").await;
    let second = app
        .post(&format!("/v1/agents/{}/tokens", a.id), &a.token, &json!({}))
        .await;
    second.expect(201);
    let second = second.json()["token"].as_str().unwrap().to_string();
    // Both verified and cached.
    app.get("/v1/agents", &a.token).await.expect(200);
    app.get("/v1/agents", &second).await.expect(200);

    let r = app.delete(&format!("/v1/agents/{}", a.id), &app.admin).await;
    r.expect(200);
    assert_eq!(r.json(), json!({"id": a.id, "removed": true}));
    for t in [&a.token, &second] {
        app.get("/v1/agents", t).await.problem(401, "token_revoked");
    }
    app.get(&format!("/v1/agents/{}", a.id), &app.admin)
        .await
        .problem(404, "not_found");
    assert_eq!(app.agent_ids().await, vec![b.id.clone()]);
    app.get("/v1/agents", &b.token).await.expect(200);
    // Deleting again is not found; the name is free again.
    app.delete(&format!("/v1/agents/{}", a.id), &app.admin)
        .await
        .problem(404, "not_found");
    let again = app.agent("a").await;
    assert_ne!(again.id, a.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_minted_while_its_agent_is_deleted_does_not_work() {
    let app = App::new().await;
    let mut leaked = Vec::new();
    for i in 0..40 {
        let a = app.agent(&format!("a{i}")).await;
        let mint = Call::new(Method::POST, &format!("/v1/agents/{}/tokens", a.id))
            .token(&app.admin)
            .json(&json!({}))
            .build();
        let delete = Call::new(Method::DELETE, &format!("/v1/agents/{}", a.id))
            .token(&app.admin)
            .build();
        let (r1, r2) = (app.router.clone(), app.router.clone());
        let mint = tokio::spawn(async move { send(&r1, mint).await });
        let delete = tokio::spawn(async move { send(&r2, delete).await });
        let minted = mint.await.unwrap();
        delete.await.unwrap().expect(200);
        if minted.status.as_u16() == 201 {
            let token = minted.json()["token"].as_str().unwrap().to_string();
            let r = app.get("/v1/agents", &token).await;
            if r.status.as_u16() != 401 {
                leaked.push(format!(
                    "agent {}: token {} -> {}",
                    a.id,
                    minted.json()["id"],
                    r.status
                ));
            }
        } else {
            minted.problem(404, "not_found");
        }
    }
    assert!(
        leaked.is_empty(),
        "tokens of deleted agents that still work: {leaked:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stays_revoked_under_concurrent_use() {
    // Requests in flight while a token is revoked must not put it back in the cache.
    let app = App::new().await;
    let mut stale = Vec::new();
    for i in 0..20 {
        let a = app.agent(&format!("a{i}")).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut users = Vec::new();
        for _ in 0..4 {
            let router = app.router.clone();
            let token = a.token.clone();
            let stop = stop.clone();
            users.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let req = Call::new(Method::GET, "/v1/agents?limit=1").token(&token).build();
                    let r = send(&router, req).await;
                    assert!(matches!(r.status.as_u16(), 200 | 401), "{}", r.text());
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        app.delete(&format!("/v1/tokens/{}", a.token_id), &app.admin)
            .await
            .expect(200);
        stop.store(true, Ordering::Relaxed);
        for u in users {
            u.await.unwrap();
        }
        let r = app.get("/v1/agents", &a.token).await;
        if r.status.as_u16() != 401 {
            stale.push(format!("round {i}: {}", r.status));
        }
    }
    assert!(stale.is_empty(), "revoked tokens still accepted: {stale:?}");
}

#[tokio::test]
async fn operators_may_mint_any_known_scopes_for_any_agent() {
    let app = App::new().await;
    let a = app.agent("a").await;
    let r = app
        .post(
            &format!("/v1/agents/{}/tokens", a.id),
            &app.admin,
            &json!({"scopes": ["*", "audit.list", "token.*"]}),
        )
        .await;
    r.expect(201);
    assert_eq!(r.json()["scopes"], json!(["*", "audit.list", "token.*"]));
    for bad in [
        json!(["agents.*"]),
        json!(["agent"]),
        json!([""]),
        json!(["agent.get.x"]),
    ] {
        app.post(
            &format!("/v1/agents/{}/tokens", a.id),
            &app.admin,
            &json!({ "scopes": bad }),
        )
        .await
        .problem(400, "invalid_scope");
    }
    let detail = app
        .post(
            &format!("/v1/agents/{}/tokens", a.id),
            &app.admin,
            &json!({"scopes": []}),
        )
        .await
        .problem(400, "invalid_request");
    assert!(detail.starts_with("scopes: "), "{detail}");
}

#[tokio::test]
async fn an_agent_may_only_narrow_its_own_scopes() {
    let app = App::new().await;
    let a = app.agent_scoped("a", &["agent.*", "token.create"]).await;
    let mint = |scopes: serde_json::Value| {
        let app = &app;
        let uri = format!("/v1/agents/{}/tokens", a.id);
        let token = a.token.clone();
        async move { app.post(&uri, &token, &json!({ "scopes": scopes })).await }
    };
    for ok in [
        json!(["agent.get"]),
        json!(["agent.*"]),
        json!(["agent.list", "token.create"]),
    ] {
        let r = mint(ok.clone()).await;
        r.expect(201);
        assert_eq!(r.json()["scopes"], ok);
    }
    for wider in [
        json!(["*"]),
        json!(["token.*"]),
        json!(["token.revoke"]),
        json!(["agent.get", "audit.list"]),
    ] {
        let detail = mint(wider.clone()).await.problem(400, "invalid_scope");
        assert!(detail.contains("wider"), "{wider}: {detail}");
    }
}

#[tokio::test]
async fn a_narrowed_token_allows_only_its_scopes() {
    let app = App::new().await;
    let a = app.agent("a").await;
    let r = app
        .post(
            &format!("/v1/agents/{}/tokens", a.id),
            &a.token,
            &json!({"scopes": ["agent.get"]}),
        )
        .await;
    r.expect(201);
    let narrow = r.json()["token"].as_str().unwrap().to_string();
    app.get(&format!("/v1/agents/{}", a.id), &narrow)
        .await
        .expect(200);
    let detail = app.get("/v1/agents", &narrow).await.problem(403, "forbidden");
    assert!(detail.contains("agent.list"), "{detail}");
    // Without token.create it cannot mint at all, not even narrower.
    app.post(
        &format!("/v1/agents/{}/tokens", a.id),
        &narrow,
        &json!({"scopes": ["agent.get"]}),
    )
    .await
    .problem(403, "forbidden");
}

#[tokio::test]
async fn an_agent_omitting_scopes_gets_no_more_than_its_own() {
    let app = App::new().await;
    let a = app.agent_scoped("a", &["agent.get", "token.create"]).await;
    let r = app
        .post(&format!("/v1/agents/{}/tokens", a.id), &a.token, &json!({}))
        .await;
    // Either refused, or limited to the caller's scopes; never wider.
    if r.status.as_u16() == 201 {
        let minted = r.json();
        let scopes: Vec<String> = serde_json::from_value(minted["scopes"].clone()).unwrap();
        for s in &scopes {
            assert!(
                ["agent.get", "token.create"].contains(&s.as_str()),
                "minted scope {s} is wider than the caller's [agent.get, token.create]: {minted}"
            );
        }
        let token = minted["token"].as_str().unwrap();
        app.get("/v1/agents", token).await.problem(403, "forbidden");
    } else {
        r.problem(400, "invalid_scope");
    }
}

#[tokio::test]
async fn an_agent_may_not_mint_tokens_for_another_agent() {
    let app = App::new().await;
    let a = app.agent("a").await;
    let b = app.agent("b").await;
    let detail = app
        .post(
            &format!("/v1/agents/{}/tokens", b.id),
            &a.token,
            &json!({"scopes": ["agent.get"]}),
        )
        .await
        .problem(403, "forbidden");
    assert!(detail.contains("itself"), "{detail}");
    // Nor for an agent that does not exist.
    app.post(
        "/v1/agents/agt_01jd3c5v7m2k9w8x4y6z0a1b2c/tokens",
        &a.token,
        &json!({}),
    )
    .await
    .problem(403, "forbidden");
}

#[tokio::test]
async fn agents_cannot_reach_operator_only_syscalls() {
    let app = App::new().await;
    let a = app.agent("a").await;
    let b = app.agent("b").await;
    let calls = [
        (
            "agent.create",
            Call::new(Method::POST, "/v1/agents").json(&json!({"name": "c"})),
        ),
        (
            "agent.delete",
            Call::new(Method::DELETE, &format!("/v1/agents/{}", b.id)),
        ),
        (
            "agent.delete",
            Call::new(Method::DELETE, &format!("/v1/agents/{}", a.id)),
        ),
        ("audit.list", Call::new(Method::GET, "/v1/audit")),
        ("audit.verify", Call::new(Method::GET, "/v1/audit/verify")),
        ("event.list", Call::new(Method::GET, "/v1/events")),
        (
            "event.list",
            Call::new(Method::GET, "/v1/events").header("accept", "text/event-stream"),
        ),
        (
            "token.create_admin",
            Call::new(Method::POST, "/v1/tokens").json(&json!({})),
        ),
    ];
    for (name, call) in calls {
        let detail = app.send(call.token(&a.token)).await.problem(403, "forbidden");
        assert!(detail.contains(name), "{name}: {detail}");
    }
    // Nothing happened.
    assert_eq!(app.agent_ids().await.len(), 2);
    // What an agent may do, it can.
    app.get("/v1/agents", &a.token).await.expect(200);
    app.get(&format!("/v1/agents/{}", b.id), &a.token)
        .await
        .expect(200);
}

#[tokio::test]
async fn operator_tokens_minted_through_the_api_work_until_revoked() {
    let app = App::new().await;
    let r = app.post("/v1/tokens", &app.admin, &json!({"name": "ci"})).await;
    r.expect(201);
    let t = r.json();
    assert!(t["id"].as_str().unwrap().starts_with("tok_"));
    assert!(
        t.get("expires_at").is_none(),
        "operator tokens do not expire: {t}"
    );
    assert!(t.get("agent_id").is_none(), "{t}");
    assert_eq!(t["scopes"], json!(["*"]));
    let token = t["token"].as_str().unwrap().to_string();
    app.post("/v1/agents", &token, &json!({"name": "a"}))
        .await
        .expect(201);
    app.get("/v1/audit/verify", &token).await.expect(200);
    app.advance(3650 * DAY);
    app.get("/v1/audit", &token).await.expect(200);
    app.delete(&format!("/v1/tokens/{}", t["id"].as_str().unwrap()), &app.admin)
        .await
        .expect(200);
    app.get("/v1/audit", &token).await.problem(401, "token_revoked");
    app.get("/v1/audit", &app.admin).await.expect(200);
}

impl App {
    /// The bootstrap token's id, from the audit log.
    pub(crate) async fn kernel_admin_token_id(&self) -> String {
        let first = self.audit().await.into_iter().next().expect("a first entry");
        assert_eq!(first["syscall"], "token.create_admin");
        first["resource"].as_str().expect("a token id").to_string()
    }
}
