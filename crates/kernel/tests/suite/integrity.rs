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

/// What verifying the audit chain of `k`'s store says.
async fn chain(k: &strata_kernel::Kernel) -> serde_json::Value {
    let v = strata_governance::audit::verify(k.store().pool()).await.unwrap();
    serde_json::to_value(&v).unwrap()
}

/// A store made before the leaner-index migrations (governance 3, tools 3)
/// keeps its audit chain, events and call log when they run, and goes on.
async fn the_leaner_index_migrations_keep_what_an_older_store_holds(b: Backend) {
    use strata_kernel::{Config, Kernel};
    use strata_store::{Options, Store};
    let dir = tempfile::tempdir().unwrap();
    let url = strata_store::testing::fresh_url(b, dir.path()).await.unwrap();
    // Each layer without its version 3. Later versions that today's code reads
    // (tools 4: `tl_tools.read_only`) touch other tables and are kept.
    let before: Vec<Vec<strata_store::Migration>> = strata_kernel::MIGRATIONS
        .iter()
        .map(|set| match set.first().map(|m| m.layer) {
            Some("governance") | Some("tools") => set.iter().filter(|m| m.version != 3).cloned().collect(),
            _ => set.to_vec(),
        })
        .collect();
    let before: Vec<&'static [strata_store::Migration]> =
        before.into_iter().map(|set| &*Vec::leak(set)).collect();
    let key = strata_core::MasterKey::generate();
    let open = |migrations: Vec<&'static [strata_store::Migration]>| {
        let (url, key) = (url.clone(), key.clone());
        async move {
            let store = Store::open(Options::new(&url), &migrations).await.unwrap();
            Kernel::new(store, Config::new(key)).await.unwrap()
        }
    };
    let old = open(before).await;
    let mut admin = String::new();
    old.bootstrap_admin_token(|t| {
        admin = t.to_string();
        Ok(())
    })
    .await
    .unwrap();
    let create = |k: Kernel, name: String, token: String| async move {
        let req = strata_kernel::Request {
            syscall: "agent.create".into(),
            token: Some(token),
            input: json!({"name": name}),
            idempotency_key: None,
        };
        k.call(req).await.unwrap();
    };
    for i in 0..5 {
        create(old.clone(), format!("old-{i}"), admin.clone()).await;
    }
    sqlx::query(
        "INSERT INTO tl_calls (id, at, agent, task, tool, arguments_digest, status, error, attempts, \
         latency_us, request_bytes, response_bytes, cost_key) \
         VALUES ('tcl_1', 1, 'agt_x', NULL, 'ev.echo', 'd', 'ok', NULL, 1, 10, 2, 3, 'tool:ev.echo')",
    )
    .execute(old.store().pool())
    .await
    .unwrap();
    let events: i64 = sqlx::query("SELECT COUNT(*) FROM store_events")
        .fetch_one(old.store().pool())
        .await
        .unwrap()
        .get(0);
    old.store().close().await;
    drop(old);

    let new = open(strata_kernel::MIGRATIONS.to_vec()).await;
    assert_eq!(chain(&new).await, json!({"ok": true, "entries": 6}));
    let pool = new.store().pool();
    let count =
        |sql: &'static str| async move { sqlx::query(sql).fetch_one(pool).await.unwrap().get::<i64, _>(0) };
    assert_eq!(count("SELECT COUNT(*) FROM store_events").await, events);
    assert_eq!(
        count("SELECT COUNT(*) FROM tl_calls WHERE tool = 'ev.echo'").await,
        1
    );
    create(new.clone(), "new-0".into(), admin.clone()).await;
    assert_eq!(chain(&new).await, json!({"ok": true, "entries": 7}));
    assert_eq!(count("SELECT COUNT(*) FROM store_events").await, events + 1);
}

crate::on_both_backends!(
    the_leaner_index_migrations_keep_what_an_older_store_holds,
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
