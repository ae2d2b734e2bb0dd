//! The audit chain and the event log on both backends.

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;
use sqlx::Row;
use strata_store::Backend;

use super::harness::Harness;

async fn concurrent_writes_chain_into_one_verifiable_audit_log(b: Backend) {
    let h = Arc::new(Harness::new(b).await);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move { h.agent(&format!("agent-{i}")).await }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v = h.verify().await;
    assert_eq!(v, json!({"ok": true, "entries": 101}));
    // Sequence numbers are dense and every create is recorded once.
    let rows = sqlx::query("SELECT seq, syscall FROM gov_audit ORDER BY seq")
        .fetch_all(h.store().pool())
        .await
        .unwrap();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.get::<i64, _>(0), i as i64 + 1);
    }
    let creates = rows
        .iter()
        .filter(|r| r.get::<String, _>(1) == "agent.create")
        .count();
    assert_eq!(creates, 100);
}

async fn altering_removing_or_reordering_an_audit_row_is_detected(b: Backend) {
    let h = Harness::new(b).await;
    for i in 0..5 {
        h.agent(&format!("a{i}")).await;
    }
    assert_eq!(h.verify().await["ok"], true);
    let pool = h.store().pool();

    sqlx::query("UPDATE gov_audit SET principal = 'mallory' WHERE seq = 3")
        .execute(pool)
        .await
        .unwrap();
    let v = h.verify().await;
    assert_eq!(
        (v["ok"].clone(), v["first_bad"].clone()),
        (json!(false), json!(3))
    );
    assert!(v["reason"].as_str().unwrap().contains("altered"));
    sqlx::query(
        "UPDATE gov_audit SET principal = (SELECT principal FROM gov_audit WHERE seq = 4) WHERE seq = 3",
    )
    .execute(pool)
    .await
    .unwrap();
    assert_eq!(h.verify().await["ok"], true);

    sqlx::query("DELETE FROM gov_audit WHERE seq = 6")
        .execute(pool)
        .await
        .unwrap();
    let v = h.verify().await;
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_bad"], 6, "{v}");
}

async fn truncating_the_end_of_the_chain_is_detected(b: Backend) {
    let h = Harness::new(b).await;
    for i in 0..3 {
        h.agent(&format!("a{i}")).await;
    }
    sqlx::query("DELETE FROM gov_audit WHERE seq = 4")
        .execute(h.store().pool())
        .await
        .unwrap();
    let v = h.verify().await;
    assert_eq!(v["ok"], false);
    assert!(
        v["reason"].as_str().unwrap().contains("removed from the end"),
        "{v}"
    );
}

async fn refusals_are_audited_but_malformed_requests_are_not(b: Backend) {
    let h = Harness::new(b).await;
    let a = h.agent("alpha").await;
    let agent_token = a["token"].as_str().unwrap();
    let before = h.verify().await["entries"].as_i64().unwrap();
    h.call(agent_token, "agent.delete", json!({"id": a["id"]}))
        .await
        .unwrap_err();
    h.call(&h.admin, "agent.create", json!({"nam": "typo"}))
        .await
        .unwrap_err();
    h.call(&h.admin, "agent.delete", json!({"id": "agt_nope"}))
        .await
        .unwrap_err();
    let page = h
        .call(&h.admin, "audit.list", json!({"after": before}))
        .await
        .unwrap()
        .body;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{page}");
    assert_eq!(
        (&items[0]["syscall"], &items[0]["outcome"]),
        (&json!("agent.delete"), &json!("forbidden"))
    );
    assert_eq!(items[0]["principal"], a["id"]);
    assert_eq!(
        (&items[1]["syscall"], &items[1]["outcome"]),
        (&json!("agent.delete"), &json!("not_found"))
    );
    assert!(items[1]["principal"].as_str().unwrap().starts_with("admin:tok_"));
    assert_eq!(h.verify().await["ok"], true);
}

async fn events_are_dense_ordered_and_match_committed_changes(b: Backend) {
    let h = Harness::new(b).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            h.agent(&format!("a{i}")).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    h.call(&h.admin, "agent.create", json!({"name": "a0"}))
        .await
        .unwrap_err();
    let page = h
        .call(&h.admin, "event.list", json!({"after": 0}))
        .await
        .unwrap()
        .body;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 5, "a failed write must not leave an event");
    for (i, e) in items.iter().enumerate() {
        assert_eq!(e["seq"], i as i64 + 1);
        assert_eq!(e["kind"], "agent.create");
        assert_eq!(e["subject"], ids[i]);
        assert!(e["data"].get("token").is_none());
    }
    let rest = h
        .call(&h.admin, "event.list", json!({"after": 3}))
        .await
        .unwrap()
        .body;
    assert_eq!(rest["items"][0]["seq"], 4);
}

crate::on_both_backends!(
    concurrent_writes_chain_into_one_verifiable_audit_log,
    altering_removing_or_reordering_an_audit_row_is_detected,
    truncating_the_end_of_the_chain_is_detected,
    refusals_are_audited_but_malformed_requests_are_not,
    events_are_dense_ordered_and_match_committed_changes,
);

#[derive(Debug, Clone)]
enum Op {
    Create(u8),
    Delete(u8),
    Mint(u8),
    Revoke(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6).prop_map(Op::Create),
        (0u8..6).prop_map(Op::Delete),
        (0u8..6).prop_map(Op::Mint),
        (0u8..6).prop_map(Op::Revoke),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever mix of successful and refused changes happens, the chain verifies
    /// and holds exactly one entry per mutating call that reached the layer.
    #[test]
    fn audit_chain_verifies_after_any_sequence_of_changes(ops in proptest::collection::vec(op(), 1..24)) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let h = Harness::new(Backend::Sqlite).await;
            let mut agents: Vec<Option<String>> = vec![None; 6];
            let mut tokens: Vec<String> = Vec::new();
            let mut audited = 1; // the bootstrap admin token
            for op in ops {
                let _ = match op {
                    Op::Create(n) => {
                        let r = h.call(&h.admin, "agent.create", json!({"name": format!("p{n}")})).await;
                        if let Ok(r) = &r { agents[n as usize] = r.body["id"].as_str().map(str::to_string); }
                        r
                    }
                    Op::Delete(n) => {
                        let id = agents[n as usize].take().unwrap_or_else(|| "agt_missing".into());
                        h.call(&h.admin, "agent.delete", json!({"id": id})).await
                    }
                    Op::Mint(n) => {
                        let id = agents[n as usize].clone().unwrap_or_else(|| "agt_missing".into());
                        let r = h.call(&h.admin, "token.create", json!({"id": id})).await;
                        if let Ok(r) = &r { tokens.push(r.body["id"].as_str().unwrap().to_string()); }
                        r
                    }
                    Op::Revoke(n) => {
                        let id = tokens.get(n as usize).cloned().unwrap_or_else(|| "tok_missing".into());
                        h.call(&h.admin, "token.revoke", json!({"id": id})).await
                    }
                };
                audited += 1;
            }
            let v = h.verify().await;
            prop_assert_eq!(v, json!({"ok": true, "entries": audited}));
            Ok(())
        })?;
    }
}
