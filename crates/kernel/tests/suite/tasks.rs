//! Tasks, leases, retries and the sweeper on both backends.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strata_core::ErrorCode;
use strata_store::Backend;

use super::harness::Harness;

/// An agent offering `summarize` with a strict input and output schema; returns its token.
async fn worker(h: &Harness, name: &str) -> (String, String) {
    let a = h
        .call(
            &h.admin,
            "agent.create",
            json!({"name": name, "capabilities": [{
                "name": "summarize",
                "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
                "output_schema": {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}
            }]}),
        )
        .await
        .unwrap()
        .body;
    (
        a["id"].as_str().unwrap().to_string(),
        a["token"].as_str().unwrap().to_string(),
    )
}

async fn submit(h: &Harness, body: Value) -> String {
    h.call(&h.admin, "task.submit", body).await.unwrap().body["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn lease(h: &Harness, token: &str, input: Value) -> Vec<Value> {
    h.call(token, "task.lease", input).await.unwrap().body["tasks"]
        .as_array()
        .unwrap()
        .clone()
}

async fn state(h: &Harness, id: &str) -> Value {
    h.call(&h.admin, "task.get", json!({"id": id}))
        .await
        .unwrap()
        .body
}

async fn submission_is_routed_by_capability_and_checked_against_its_schema(b: Backend) {
    let h = Harness::new(b).await;
    let e = h
        .call(
            &h.admin,
            "task.submit",
            json!({"capability": "summarize", "input": {"text": "x"}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NoCapableAgent);
    let queued = h
        .call(
            &h.admin,
            "task.submit",
            json!({"capability": "translate", "allow_unroutable": true}),
        )
        .await
        .unwrap();
    assert_eq!(
        (queued.status, queued.body["state"].clone()),
        (201, json!("queued"))
    );
    worker(&h, "w1").await;
    let e = h
        .call(
            &h.admin,
            "task.submit",
            json!({"capability": "summarize", "input": {"text": 5}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidInput);
    assert!(e.detail.starts_with("input/text:"), "{}", e.detail);
    let e = h
        .call(
            &h.admin,
            "task.submit",
            json!({"capability": "summarize", "input": {}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidInput);
    let e = h
        .call(
            &h.admin,
            "task.submit",
            json!({"capability": "summarize", "input": {"text": "x"}, "priority": 10}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    let n = h.call(&h.admin, "task.list", json!({})).await.unwrap().body["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(n, 1, "refused submissions must not leave tasks");
}

async fn leases_go_highest_priority_first_then_oldest(b: Backend) {
    let h = Harness::new(b).await;
    let (_, tok) = worker(&h, "w1").await;
    let low1 = submit(
        &h,
        json!({"capability": "summarize", "input": {"text": "a"}, "priority": 1}),
    )
    .await;
    let high = submit(
        &h,
        json!({"capability": "summarize", "input": {"text": "b"}, "priority": 7}),
    )
    .await;
    let low2 = submit(
        &h,
        json!({"capability": "summarize", "input": {"text": "c"}, "priority": 1}),
    )
    .await;
    let got: Vec<String> = lease(&h, &tok, json!({"max": 3}))
        .await
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, vec![high, low1, low2]);
    assert!(lease(&h, &tok, json!({})).await.is_empty());
}

async fn a_waiting_lease_wakes_when_a_task_arrives(b: Backend) {
    let h = std::sync::Arc::new(Harness::new(b).await);
    let (_, tok) = worker(&h, "w1").await;
    let started = Instant::now();
    let waiter = {
        let h = h.clone();
        tokio::spawn(async move { lease(&h, &tok, json!({"wait_ms": 10_000})).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = submit(&h, json!({"capability": "summarize", "input": {"text": "late"}})).await;
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got[0]["id"], id);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "woken late: {:?}",
        started.elapsed()
    );
}

async fn only_the_lease_holder_may_finish_and_finished_tasks_stay_finished(b: Backend) {
    let h = Harness::new(b).await;
    let (_, a) = worker(&h, "a").await;
    let (_, other) = worker(&h, "b").await;
    let id = submit(&h, json!({"capability": "summarize", "input": {"text": "t"}})).await;
    let t = lease(&h, &a, json!({})).await.remove(0);
    let lease_id = t["lease_id"].clone();
    let e = h
        .call(
            &other,
            "task.complete",
            json!({"id": id, "lease_id": lease_id, "result": {"summary": "s"}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::LeaseLost);
    let e = h
        .call(
            &a,
            "task.complete",
            json!({"id": id, "lease_id": lease_id, "result": {"sum": 1}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidOutput);
    let e = h
        .call(
            &h.admin,
            "task.complete",
            json!({"id": id, "lease_id": lease_id, "result": {"summary": "s"}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden);
    assert_eq!(state(&h, &id).await["state"], "leased");
    h.call(&a, "task.heartbeat", json!({"id": id, "lease_id": lease_id}))
        .await
        .unwrap();
    let done = h
        .call(
            &a,
            "task.complete",
            json!({"id": id, "lease_id": lease_id, "result": {"summary": "s"}}),
        )
        .await
        .unwrap();
    assert_eq!(done.body["state"], "succeeded");
    let e = h
        .call(&a, "task.heartbeat", json!({"id": id, "lease_id": lease_id}))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::TaskFinished);
    let e = h
        .call(
            &a,
            "task.complete",
            json!({"id": id, "lease_id": lease_id, "result": {"summary": "again"}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::TaskFinished);
    let t = state(&h, &id).await;
    assert_eq!(t["result"], json!({"summary": "s"}));
    assert_eq!(t["history"].as_array().unwrap().len(), 1);
}

async fn an_expired_lease_requeues_the_task_for_another_agent(b: Backend) {
    let h = Harness::new(b).await;
    let (_, a) = worker(&h, "a").await;
    let (b_id, b_tok) = worker(&h, "b").await;
    let id = submit(&h, json!({"capability": "summarize", "input": {"text": "t"}})).await;
    let first = lease(&h, &a, json!({"lease_ms": 1000})).await.remove(0);
    h.clock.advance(Duration::from_millis(1500));
    let swept = h.kernel.sweep_once().await.unwrap();
    assert_eq!(swept.len(), 1);
    let second = lease(&h, &b_tok, json!({})).await.remove(0);
    assert_eq!(
        (
            second["id"].as_str().unwrap(),
            second["attempt"].as_i64().unwrap()
        ),
        (id.as_str(), 2)
    );
    let e = h
        .call(
            &a,
            "task.complete",
            json!({"id": id, "lease_id": first["lease_id"], "result": {"summary": "late"}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::LeaseLost);
    h.call(
        &b_tok,
        "task.complete",
        json!({"id": id, "lease_id": second["lease_id"], "result": {"summary": "b"}}),
    )
    .await
    .unwrap();
    let t = state(&h, &id).await;
    assert_eq!(t["state"], "succeeded");
    let outcomes: Vec<&str> = t["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, vec!["expired", "succeeded"]);
    assert_eq!(t["history"][1]["agent_id"], b_id);
    assert_eq!(h.verify().await["ok"], true);
}

async fn failures_back_off_then_dead_letter_with_the_full_history(b: Backend) {
    let h = Harness::new(b).await;
    let (_, a) = worker(&h, "a").await;
    let id = submit(
        &h,
        json!({"capability": "summarize", "input": {"text": "t"}, "max_attempts": 2, "backoff": {"initial_ms": 10000, "max_ms": 10000}}),
    )
    .await;
    let t = lease(&h, &a, json!({})).await.remove(0);
    let out = h
        .call(
            &a,
            "task.fail",
            json!({"id": id, "lease_id": t["lease_id"], "error": "flaky"}),
        )
        .await
        .unwrap()
        .body;
    assert_eq!(out["state"], "queued");
    assert!(out["retry_at"].is_string());
    assert!(
        lease(&h, &a, json!({})).await.is_empty(),
        "leased before its backoff ended"
    );
    h.clock.advance(Duration::from_millis(10_001));
    let t = lease(&h, &a, json!({})).await.remove(0);
    assert_eq!(t["attempt"], 2);
    let out = h
        .call(
            &a,
            "task.fail",
            json!({"id": id, "lease_id": t["lease_id"], "error": {"why": "again"}}),
        )
        .await
        .unwrap()
        .body;
    assert_eq!(out["state"], "dead");
    let t = state(&h, &id).await;
    assert_eq!(t["history"].as_array().unwrap().len(), 2);
    assert_eq!(t["history"][0]["error"], "flaky");
    assert_eq!(t["error"], json!({"why": "again"}));
    let dead = h
        .call(&h.admin, "task.list", json!({"state": "dead"}))
        .await
        .unwrap()
        .body;
    assert_eq!(dead["items"][0]["id"], id);
}

async fn a_non_retryable_failure_fails_at_once(b: Backend) {
    let h = Harness::new(b).await;
    let (_, a) = worker(&h, "a").await;
    let id = submit(&h, json!({"capability": "summarize", "input": {"text": "t"}})).await;
    let t = lease(&h, &a, json!({})).await.remove(0);
    let out = h
        .call(
            &a,
            "task.fail",
            json!({"id": id, "lease_id": t["lease_id"], "error": "bad input", "retryable": false}),
        )
        .await
        .unwrap();
    assert_eq!(out.body["state"], "failed");
}

async fn a_task_past_its_deadline_fails_with_deadline_exceeded(b: Backend) {
    let h = Harness::new(b).await;
    worker(&h, "a").await;
    let deadline = strata_core::time::rfc3339(h.kernel.now_ms() + 60_000);
    let id = submit(
        &h,
        json!({"capability": "summarize", "input": {"text": "t"}, "deadline": deadline}),
    )
    .await;
    h.kernel.sweep_once().await.unwrap();
    assert_eq!(state(&h, &id).await["state"], "queued");
    h.clock.advance(Duration::from_secs(61));
    h.kernel.sweep_once().await.unwrap();
    let t = state(&h, &id).await;
    assert_eq!(
        (t["state"].clone(), t["error"]["code"].clone()),
        (json!("failed"), json!("deadline_exceeded"))
    );
}

async fn cancelling_is_for_the_submitter_and_operators_and_only_once(b: Backend) {
    let h = Harness::new(b).await;
    let (_, a) = worker(&h, "a").await;
    let (_, other) = worker(&h, "b").await;
    let mine = h
        .call(
            &a,
            "task.submit",
            json!({"capability": "summarize", "input": {"text": "t"}}),
        )
        .await
        .unwrap()
        .body;
    let id = mine["id"].as_str().unwrap();
    let e = h
        .call(&other, "task.cancel", json!({"id": id}))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden);
    h.call(&a, "task.cancel", json!({"id": id})).await.unwrap();
    let e = h
        .call(&h.admin, "task.cancel", json!({"id": id}))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::TaskFinished);
    assert!(lease(&h, &a, json!({})).await.is_empty());
}

async fn pinned_tasks_wait_for_their_agent_unless_stealable(b: Backend) {
    let h = Harness::new(b).await;
    let (a_id, _) = worker(&h, "a").await;
    let (_, b_tok) = worker(&h, "b").await;
    let pinned = submit(
        &h,
        json!({"capability": "summarize", "input": {"text": "t"}, "agent": a_id}),
    )
    .await;
    let stealable = submit(
        &h,
        json!({"capability": "summarize", "input": {"text": "t"}, "agent": a_id, "stealable": true}),
    )
    .await;
    assert!(lease(&h, &b_tok, json!({})).await.is_empty());
    h.clock.advance(Duration::from_secs(6));
    let got = lease(&h, &b_tok, json!({"max": 5})).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["id"], stealable);
    assert_eq!(state(&h, &pinned).await["state"], "queued");
}

crate::on_both_backends!(
    submission_is_routed_by_capability_and_checked_against_its_schema,
    leases_go_highest_priority_first_then_oldest,
    a_waiting_lease_wakes_when_a_task_arrives,
    only_the_lease_holder_may_finish_and_finished_tasks_stay_finished,
    an_expired_lease_requeues_the_task_for_another_agent,
    failures_back_off_then_dead_letter_with_the_full_history,
    a_non_retryable_failure_fails_at_once,
    a_task_past_its_deadline_fails_with_deadline_exceeded,
    cancelling_is_for_the_submitter_and_operators_and_only_once,
    pinned_tasks_wait_for_their_agent_unless_stealable,
);

mod breaker {
    use super::*;

    async fn an_agent_that_keeps_failing_is_offered_no_tasks_until_its_breaker_closes(b: Backend) {
        let h = Harness::new(b).await;
        let (_, bad) = worker(&h, "bad").await;
        let (_, good) = worker(&h, "good").await;
        for i in 0..5 {
            let id = submit(
                &h,
                json!({"capability": "summarize", "input": {"text": format!("{i}")}}),
            )
            .await;
            let t = lease(&h, &bad, json!({})).await.remove(0);
            assert_eq!(t["id"], id);
            let r = json!({"id": id, "lease_id": t["lease_id"], "error": "boom", "retryable": false});
            h.call(&bad, "task.fail", r).await.unwrap();
        }
        let waiting = submit(&h, json!({"capability": "summarize", "input": {"text": "next"}})).await;
        assert!(
            lease(&h, &bad, json!({})).await.is_empty(),
            "the breaker did not open"
        );
        h.clock.advance(Duration::from_secs(31));
        let t = lease(&h, &bad, json!({})).await;
        assert_eq!(
            t[0]["id"], waiting,
            "the breaker did not close after its cooldown"
        );
        // The other agent was never affected.
        submit(&h, json!({"capability": "summarize", "input": {"text": "other"}})).await;
        assert_eq!(lease(&h, &good, json!({})).await.len(), 1);
    }

    crate::on_both_backends!(an_agent_that_keeps_failing_is_offered_no_tasks_until_its_breaker_closes);
}

mod discovery {
    use super::*;

    async fn discovery_ranks_capable_agents_by_success_load_and_trust(b: Backend) {
        let h = Harness::new(b).await;
        let (good_id, good) = worker(&h, "good").await;
        let (bad_id, bad) = worker(&h, "bad").await;
        let trusted = h
            .call(
                &h.admin,
                "agent.create",
                json!({"name": "trusted", "labels": {"strata.trust": "1"},
                       "capabilities": [{"name": "summarize", "max_concurrent": 4}]}),
            )
            .await
            .unwrap()
            .body;
        let input = json!({"text": "t"});
        for _ in 0..3 {
            let id = submit(
                &h,
                json!({"capability": "summarize", "input": input, "agent": good_id}),
            )
            .await;
            let t = lease(&h, &good, json!({})).await.remove(0);
            let r = json!({"id": id, "lease_id": t["lease_id"], "result": {"summary": "s"}});
            h.call(&good, "task.complete", r).await.unwrap();
        }
        for _ in 0..2 {
            let id = submit(
                &h,
                json!({"capability": "summarize", "input": input, "agent": bad_id}),
            )
            .await;
            let t = lease(&h, &bad, json!({})).await.remove(0);
            let r = json!({"id": id, "lease_id": t["lease_id"], "error": "x", "retryable": false});
            h.call(&bad, "task.fail", r).await.unwrap();
        }
        let found = h
            .call(&bad, "discovery.find", json!({"capability": "summarize"}))
            .await
            .unwrap()
            .body;
        let agents = found["agents"].as_array().unwrap();
        let by_id = |id: &Value| agents.iter().find(|a| a["agent_id"] == *id).unwrap().clone();
        let g = by_id(&json!(good_id));
        assert_eq!(g["score_parts"]["success_rate"], 0.8); // (3 + 1) / (3 + 2)
        assert_eq!(g["recent_attempts"], 3);
        let bd = by_id(&json!(bad_id));
        assert_eq!(bd["score_parts"]["success_rate"], 0.25); // (0 + 1) / (2 + 2)
        let t = by_id(&trusted["id"]);
        assert_eq!(
            (t["score_parts"]["trust"].clone(), t["max_concurrent"].clone()),
            (json!(1.0), json!(4))
        );
        // 0.5·0.8 + 0.3·1 + 0.2·0.5 = 0.8 for good; 0.5·0.5 + 0.3 + 0.2·1 = 0.75; 0.5·0.25 + 0.3 + 0.1 = 0.525.
        let order: Vec<Value> = agents.iter().map(|a| a["agent_id"].clone()).collect();
        assert_eq!(order, vec![json!(good_id), trusted["id"].clone(), json!(bad_id)]);
        assert_eq!(g["score"], 0.8);

        // Holding a task at its concurrency makes an agent busy and lowers its score.
        submit(
            &h,
            json!({"capability": "summarize", "input": input, "agent": good_id}),
        )
        .await;
        lease(&h, &good, json!({})).await;
        let found = h
            .call(&good, "discovery.find", json!({"capability": "summarize"}))
            .await
            .unwrap()
            .body;
        let g = found["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["agent_id"] == json!(good_id))
            .unwrap()
            .clone();
        assert_eq!(
            (g["health"].clone(), g["score_parts"]["load"].clone()),
            (json!("busy"), json!(1.0))
        );
        assert_eq!(found["agents"][0]["agent_id"], trusted["id"]);

        let none = h
            .call(&good, "discovery.find", json!({"capability": "nobody"}))
            .await
            .unwrap()
            .body;
        assert_eq!(none["agents"], json!([]));
    }

    crate::on_both_backends!(discovery_ranks_capable_agents_by_success_load_and_trust);
}
