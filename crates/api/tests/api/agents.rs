//! agent.create, agent.get, agent.list, agent.delete over HTTP.

use std::collections::BTreeSet;

use serde_json::json;

use crate::harness::App;

#[tokio::test]
async fn create_returns_the_identity_a_first_token_and_the_manifest() {
    let app = App::new().await;
    let body = json!({
        "name": "summarizer",
        "capabilities": [
            {"name": "summarize", "version": "2", "description": "Shortens text",
             "input_schema": {"type": "object"}, "output_schema": true},
            {"name": "translate"}
        ],
        "labels": {"team": "docs"}
    });
    let r = app.post("/v1/agents", &app.admin, &body).await;
    r.expect(201);
    assert_eq!(r.content_type(), Some("application/json"));
    let a = r.json();
    assert!(a["id"].as_str().unwrap().starts_with("agt_"), "{a}");
    assert_eq!(a["id"].as_str().unwrap().len(), 4 + 26);
    assert!(a["did"].as_str().unwrap().starts_with("did:key:z6Mk"), "{a}");
    assert_eq!(
        a["public_key"].as_str().unwrap().len(),
        43,
        "32 bytes base64url: {a}"
    );
    assert!(a["token"].as_str().unwrap().starts_with("stk_"));
    assert!(a["token_id"].as_str().unwrap().starts_with("tok_"));
    assert!(a["token_expires_at"].is_string());
    assert_eq!(a["name"], "summarizer");
    assert_eq!(a["labels"], json!({"team": "docs"}));
    assert_eq!(a["key_held_by_server"], true);
    assert!(a.get("private_key").is_none());
    assert_eq!(a["created_at"], "2027-01-15T08:00:00.000Z");
    assert_eq!(
        a["capabilities"],
        json!([
            {"name": "summarize", "version": "2", "description": "Shortens text",
             "input_schema": {"type": "object"}, "output_schema": true, "max_concurrent": 1},
            {"name": "translate", "version": "1", "description": "",
             "input_schema": {}, "output_schema": {}, "max_concurrent": 1}
        ])
    );

    // agent.get shows the same agent, without any secret.
    let g = app
        .get(&format!("/v1/agents/{}", a["id"].as_str().unwrap()), &app.admin)
        .await;
    g.expect(200);
    let g = g.json();
    for k in [
        "id",
        "name",
        "did",
        "public_key",
        "capabilities",
        "labels",
        "created_at",
        "key_held_by_server",
    ] {
        assert_eq!(g[k], a[k], "{k}");
    }
    for k in ["token", "token_id", "private_key", "sealed_private_key"] {
        assert!(g.get(k).is_none(), "{k} leaked: {g}");
    }
}

#[tokio::test]
async fn hold_private_key_returns_the_key_once_and_the_server_keeps_none() {
    let app = App::new().await;
    let a = app
        .agent_with(json!({"name": "self-custody", "hold_private_key": true}))
        .await;
    assert_eq!(a.body["key_held_by_server"], false);
    assert_eq!(a.body["private_key"].as_str().unwrap().len(), 43);
    let g = app.get(&format!("/v1/agents/{}", a.id), &app.admin).await.json();
    assert_eq!(g["key_held_by_server"], false);
    assert!(g.get("private_key").is_none());
}

#[tokio::test]
async fn dids_and_keys_are_unique_per_agent() {
    let app = App::new().await;
    let mut dids = BTreeSet::new();
    for i in 0..5 {
        let a = app.agent(&format!("a{i}")).await;
        assert!(dids.insert(a.body["did"].as_str().unwrap().to_string()));
    }
}

#[tokio::test]
async fn list_pages_in_registration_order() {
    let app = App::new().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.agent(&format!("a{i}")).await.id);
    }
    let r = app.get("/v1/agents?limit=2", &app.admin).await;
    r.expect(200);
    let p = r.json();
    let page: Vec<&str> = p["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(page, ids[..2].iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(p["next"], ids[1]);
    for a in p["items"].as_array().unwrap() {
        assert!(a.get("token").is_none(), "lists never show tokens: {a}");
    }
    let p = app
        .get(&format!("/v1/agents?limit=2&after={}", ids[1]), &app.admin)
        .await
        .json();
    assert_eq!(p["items"][0]["id"], ids[2]);
    assert_eq!(p["next"], ids[3]);
    let p = app
        .get(&format!("/v1/agents?limit=2&after={}", ids[3]), &app.admin)
        .await
        .json();
    assert_eq!(p["items"].as_array().unwrap().len(), 1);
    assert!(p.get("next").is_none(), "{p}");
    assert_eq!(app.agent_ids().await, ids);
    // An agent may list too.
    let a = app.agent("z").await;
    app.get("/v1/agents", &a.token).await.expect(200);
}

#[tokio::test]
async fn limits_outside_the_range_are_clamped() {
    let app = App::new().await;
    for i in 0..3 {
        app.agent(&format!("a{i}")).await;
    }
    let p = app.get("/v1/agents?limit=0", &app.admin).await.json();
    assert_eq!(p["items"].as_array().unwrap().len(), 1);
    let p = app.get("/v1/agents?limit=100000", &app.admin).await.json();
    assert_eq!(p["items"].as_array().unwrap().len(), 3);
    assert!(p.get("next").is_none());
}

#[tokio::test]
async fn invalid_manifests_are_refused_with_the_field_named() {
    let app = App::new().await;
    let long = "n".repeat(65);
    let cases = [
        (json!({"name": ""}), "name: "),
        (json!({"name": long}), "name: "),
        (json!({"name": "a/b"}), "name: "),
        (
            json!({"name": "a", "capabilities": [{"name": "x"}, {"name": "x"}]}),
            "capabilities[1].name: 'x' is declared twice",
        ),
        (
            json!({"name": "a", "capabilities": [{"name": "x", "version": ""}]}),
            "capabilities[0].version: ",
        ),
        (json!({"name": "a", "labels": {"": "v"}}), "labels.: "),
    ];
    for (body, want) in cases {
        let detail = app
            .post("/v1/agents", &app.admin, &body)
            .await
            .problem(400, "invalid_request");
        assert!(detail.starts_with(want), "{body}: {detail}");
    }
    assert!(app.agent_ids().await.is_empty());
}

#[tokio::test]
async fn invalid_first_token_options_are_refused_with_the_nested_field_named() {
    let app = App::new().await;
    let cases = [
        (
            json!({"name": "a", "token": {"name": "t".repeat(129)}}),
            "token.name: ",
        ),
        (
            json!({"name": "a", "token": {"expires_in": 0}}),
            "token.expires_in: ",
        ),
        (json!({"name": "a", "token": {"scopes": []}}), "token.scopes: "),
    ];
    let mut wrong = Vec::new();
    for (body, want) in cases {
        let detail = app
            .post("/v1/agents", &app.admin, &body)
            .await
            .problem(400, "invalid_request");
        if !detail.starts_with(want) {
            wrong.push(format!("want {want:?}…, got {detail:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[tokio::test]
async fn label_limits_count_characters_as_documented() {
    let app = App::new().await;
    // 100 characters, 200 bytes: within "keys are 1–128 characters".
    let key = "é".repeat(100);
    let r = app
        .post(
            "/v1/agents",
            &app.admin,
            &json!({"name": "a", "labels": { key: "v" }}),
        )
        .await;
    r.expect(201);
}
