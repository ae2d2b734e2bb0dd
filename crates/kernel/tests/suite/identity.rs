//! Agents and tokens on both backends.

use base64::Engine;
use serde_json::json;
use sqlx::Row;
use strata_core::ErrorCode;
use strata_store::Backend;

use super::harness::Harness;

async fn agents_are_created_listed_fetched_and_deleted(b: Backend) {
    let h = Harness::new(b).await;
    let a = h.agent("alpha").await;
    let id = a["id"].as_str().unwrap();
    assert!(id.starts_with("agt_"));
    assert!(a["did"].as_str().unwrap().starts_with("did:key:z6Mk"));
    let got = h.call(&h.admin, "agent.get", json!({"id": id})).await.unwrap();
    assert_eq!(got.body["name"], "alpha");
    assert_eq!(got.body["capabilities"][0]["name"], "summarize");
    let taken = h
        .call(&h.admin, "agent.create", json!({"name": "alpha"}))
        .await
        .unwrap_err();
    assert_eq!(taken.code, ErrorCode::AgentNameTaken);
    h.call(&h.admin, "agent.delete", json!({"id": id})).await.unwrap();
    let gone = h
        .call(&h.admin, "agent.get", json!({"id": id}))
        .await
        .unwrap_err();
    assert_eq!(gone.code, ErrorCode::NotFound);
    // The name of a deleted agent is free again; the old row is kept.
    h.agent("alpha").await;
    let rows: i64 = sqlx::query("SELECT COUNT(*) FROM id_agents WHERE name = 'alpha'")
        .fetch_one(h.store().pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2);
}

async fn listing_pages_through_every_agent_once(b: Backend) {
    let h = Harness::new(b).await;
    for i in 0..7 {
        h.agent(&format!("a{i}")).await;
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut input = json!({"limit": 3});
        if let Some(a) = &after {
            input["after"] = json!(a);
        }
        let page = h.call(&h.admin, "agent.list", input).await.unwrap().body;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["name"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| format!("a{i}")).collect::<Vec<_>>());
}

async fn tokens_are_stored_only_as_hashes(b: Backend) {
    let h = Harness::new(b).await;
    let a = h.agent("alpha").await;
    let token = a["token"].as_str().unwrap();
    let rows = sqlx::query("SELECT hash, scopes, name FROM id_tokens")
        .fetch_all(h.store().pool())
        .await
        .unwrap();
    assert!(rows.len() >= 2);
    for r in rows {
        for i in 0..3 {
            let v: String = r.get(i);
            assert!(
                !v.contains(token) && !v.contains(&h.admin),
                "a token's plaintext is stored"
            );
        }
    }
}

async fn server_held_private_keys_are_sealed_and_held_keys_match_the_did(b: Backend) {
    let h = Harness::new(b).await;
    let held = h
        .call(
            &h.admin,
            "agent.create",
            json!({"name": "holder", "hold_private_key": true}),
        )
        .await
        .unwrap()
        .body;
    let seed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(held["private_key"].as_str().unwrap())
        .unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed.try_into().unwrap());
    let public = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
    assert_eq!(held["public_key"], public);
    assert_eq!(held["key_held_by_server"], false);

    let kept = h.agent("kept").await;
    assert!(kept.get("private_key").is_none());
    let key = h
        .kernel
        .identity()
        .signing_key(kept["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    let public = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
    assert_eq!(kept["public_key"], public);
    let sealed: Option<String> = sqlx::query("SELECT sealed_private_key FROM id_agents WHERE name = 'kept'")
        .fetch_one(h.store().pool())
        .await
        .unwrap()
        .get(0);
    let sealed = hex::decode(sealed.unwrap()).unwrap();
    let seed = key.to_bytes();
    assert!(
        !sealed.windows(32).any(|w| w == seed),
        "the private key is stored in the clear"
    );
}

async fn expired_and_revoked_tokens_are_refused(b: Backend) {
    let h = Harness::new(b).await;
    let a = h.agent("alpha").await;
    let id = a["id"].as_str().unwrap();
    let short = h
        .call(&h.admin, "token.create", json!({"id": id, "expires_in": 60}))
        .await
        .unwrap()
        .body;
    let short_token = short["token"].as_str().unwrap();
    h.call(short_token, "agent.list", json!({})).await.unwrap();
    h.clock.advance(std::time::Duration::from_secs(61));
    let e = h.call(short_token, "agent.list", json!({})).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::TokenExpired);

    let agent_token = a["token"].as_str().unwrap();
    h.call(agent_token, "agent.list", json!({})).await.unwrap();
    h.call(&h.admin, "token.revoke", json!({"id": a["token_id"]}))
        .await
        .unwrap();
    let e = h.call(agent_token, "agent.list", json!({})).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::TokenRevoked);
}

async fn idempotent_replay_has_no_second_effect_and_responses_are_sealed(b: Backend) {
    let h = Harness::new(b).await;
    let body = json!({"name": "once"});
    let first = h
        .call_with_key(&h.admin, "agent.create", body.clone(), Some("k1"))
        .await
        .unwrap();
    let again = h
        .call_with_key(&h.admin, "agent.create", body, Some("k1"))
        .await
        .unwrap();
    assert!(!first.replayed && again.replayed);
    assert_eq!(first.body, again.body);
    let other = h
        .call_with_key(&h.admin, "agent.create", json!({"name": "twice"}), Some("k1"))
        .await
        .unwrap_err();
    assert_eq!(other.code, ErrorCode::IdempotencyKeyReused);
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM id_agents")
        .fetch_one(h.store().pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let stored: String = sqlx::query("SELECT response FROM gov_idempotency")
        .fetch_one(h.store().pool())
        .await
        .unwrap()
        .get(0);
    assert!(
        !stored.contains(first.body["token"].as_str().unwrap()),
        "the shown-once token is stored in the clear"
    );
}

async fn concurrent_calls_with_one_key_take_effect_once(b: Backend) {
    let h = std::sync::Arc::new(Harness::new(b).await);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.call_with_key(&h.admin, "agent.create", json!({"name": "racer"}), Some("race"))
                .await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        ids.insert(r.body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1);
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM id_agents")
        .fetch_one(h.store().pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

crate::on_both_backends!(
    agents_are_created_listed_fetched_and_deleted,
    listing_pages_through_every_agent_once,
    tokens_are_stored_only_as_hashes,
    server_held_private_keys_are_sealed_and_held_keys_match_the_did,
    expired_and_revoked_tokens_are_refused,
    idempotent_replay_has_no_second_effect_and_responses_are_sealed,
    concurrent_calls_with_one_key_take_effect_once,
);
