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

async fn the_best_ranked_waiting_agent_is_woken_first(b: Backend) {
    let h = std::sync::Arc::new(Harness::new(b).await);
    let (_, plain) = worker(&h, "plain").await;
    let trusted = h
        .call(
            &h.admin,
            "agent.create",
            json!({"name": "trusted", "labels": {"strata.trust": "1"},
                   "capabilities": [{"name": "summarize"}]}),
        )
        .await
        .unwrap()
        .body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let dispatcher = h.kernel.orchestrator().dispatcher().clone();
    let wait_for = |n: usize| {
        let d = dispatcher.clone();
        async move {
            while d.waiting() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let waiting = |tok: String| {
        let h = h.clone();
        tokio::spawn(async move { lease(&h, &tok, json!({"wait_ms": 1500})).await })
    };
    // The plain agent waits longest, so arrival order alone would pick it.
    let plain = waiting(plain);
    wait_for(1).await;
    let trusted = waiting(trusted);
    wait_for(2).await;
    h.kernel
        .orchestrator()
        .rank_waiters(h.kernel.now_ms())
        .await
        .unwrap();
    let id = submit(&h, json!({"capability": "summarize", "input": {"text": "one"}})).await;
    let got = trusted.await.unwrap();
    assert_eq!(got.len(), 1, "the trusted agent ranks first and is woken");
    assert_eq!(got[0]["id"], id);
    assert!(plain.await.unwrap().is_empty(), "one task wakes one waiter");
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
    the_best_ranked_waiting_agent_is_woken_first,
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

mod batch {
    use super::*;

    fn many(n: usize) -> Value {
        let tasks: Vec<Value> = (0..n)
            .map(
                |i| json!({"capability": "summarize", "input": {"text": format!("t{i}")}, "priority": i % 3}),
            )
            .collect();
        json!({ "tasks": tasks })
    }

    /// Sends `completions` (a JSON array) in one `task.complete_many`; returns the outcome.
    async fn complete_many(h: &Harness, token: &str, completions: Value) -> Value {
        h.call(token, "task.complete_many", json!({ "completions": completions }))
            .await
            .unwrap()
            .body
    }

    /// The audit entries after `after`, as (syscall, resource).
    async fn audited(h: &Harness, after: i64) -> Vec<(String, String)> {
        let page = h
            .call(&h.admin, "audit.list", json!({"after": after, "limit": 1000}))
            .await
            .unwrap()
            .body;
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["syscall"].as_str().unwrap().to_string(),
                    e["resource"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    async fn a_batch_is_queued_leased_and_completed_with_one_audit_entry_per_task(b: Backend) {
        let h = Harness::new(b).await;
        let (_, token) = worker(&h, "w").await;
        let before = h.verify().await["entries"].as_i64().unwrap();
        let sent = h.call(&h.admin, "task.submit_many", many(5)).await.unwrap();
        assert_eq!(sent.status, 201);
        let ids: Vec<String> = sent.body["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), 5);
        let leased = lease(&h, &token, json!({"max": 10})).await;
        assert_eq!(leased.len(), 5);
        // Highest priority first, then oldest: t2 (2), t1 and t4 (1), t0 and t3 (0).
        let texts: Vec<&str> = leased
            .iter()
            .map(|t| t["input"]["text"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["t2", "t1", "t4", "t0", "t3"]);
        let completions: Vec<Value> = leased
            .iter()
            .map(|t| json!({"id": t["id"], "lease_id": t["lease_id"], "result": {"summary": t["input"]["text"]}}))
            .collect();
        let done = complete_many(&h, &token, json!(completions)).await;
        assert_eq!(done["completed"], json!(5), "{done}");
        for t in &leased {
            let got = state(&h, t["id"].as_str().unwrap()).await;
            assert_eq!(got["state"], "succeeded");
            assert_eq!(got["result"]["summary"], t["input"]["text"]);
            assert_eq!(got["history"][0]["outcome"], "succeeded", "{got}");
        }
        let log = audited(&h, before).await;
        for id in &ids {
            for syscall in ["task.submit_many", "task.lease", "task.complete_many"] {
                let n = log
                    .iter()
                    .filter(|(s, r)| s == syscall && (r == id || syscall == "task.lease"))
                    .count();
                assert!(n >= 1, "no {syscall} entry for {id}: {log:?}");
            }
            let completes = log
                .iter()
                .filter(|(s, r)| s == "task.complete_many" && r == id)
                .count();
            assert_eq!(completes, 1, "{log:?}");
        }
        assert_eq!(h.verify().await["ok"], json!(true));
    }

    async fn a_refused_completion_changes_only_its_own_task(b: Backend) {
        let h = Harness::new(b).await;
        let (_, token) = worker(&h, "w").await;
        let (_, other) = worker(&h, "w2").await;
        h.call(&h.admin, "task.submit_many", many(3)).await.unwrap();
        let leased = lease(&h, &token, json!({"max": 3})).await;
        assert_eq!(leased.len(), 3);
        let extra = submit(&h, json!({"capability": "summarize", "input": {"text": "x"}})).await;
        let theirs = lease(&h, &other, json!({"max": 1})).await;
        assert_eq!(theirs[0]["id"], json!(extra));
        let completions = json!([
            {"id": leased[0]["id"], "lease_id": leased[0]["lease_id"], "result": {"summary": "ok"}},
            {"id": leased[1]["id"], "lease_id": leased[1]["lease_id"], "result": {"summary": 7}},
            {"id": leased[2]["id"], "lease_id": "lse_forged", "result": {"summary": "ok"}},
            {"id": extra, "lease_id": theirs[0]["lease_id"], "result": {"summary": "stolen"}},
            {"id": "tsk_nope", "lease_id": "lse_x", "result": {}}
        ]);
        let out = complete_many(&h, &token, completions).await;
        let codes: Vec<Value> = out["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["error"]["code"].clone())
            .collect();
        assert_eq!(
            codes,
            [
                Value::Null,
                json!("invalid_output"),
                json!("lease_lost"),
                json!("lease_lost"),
                json!("not_found")
            ],
            "{out}"
        );
        assert_eq!(out["completed"], json!(1));
        assert_eq!(out["outcomes"][0]["state"], "succeeded");
        for (id, want) in [
            (&leased[0]["id"], "succeeded"),
            (&leased[1]["id"], "leased"),
            (&leased[2]["id"], "leased"),
            (&json!(extra), "leased"),
        ] {
            assert_eq!(state(&h, id.as_str().unwrap()).await["state"], want, "{id}");
        }
        // The refused ones can still be completed properly.
        let again = json!([{"id": leased[1]["id"], "lease_id": leased[1]["lease_id"], "result": {"summary": "fixed"}}]);
        let out = complete_many(&h, &token, again).await;
        assert_eq!(out["completed"], json!(1), "{out}");
        assert_eq!(h.verify().await["ok"], json!(true));
    }

    async fn an_invalid_task_refuses_the_whole_submission(b: Backend) {
        let h = Harness::new(b).await;
        worker(&h, "w").await;
        let mut body = many(3);
        body["tasks"][2]["input"] = json!({"text": 5});
        let e = h.call(&h.admin, "task.submit_many", body).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidInput);
        assert!(e.detail.starts_with("tasks[2].input"), "{}", e.detail);
        let listed = h.call(&h.admin, "task.list", json!({})).await.unwrap().body;
        assert_eq!(listed["items"], json!([]));
        for (body, field) in [(json!({"tasks": []}), "tasks"), (many(101), "tasks")] {
            let e = h.call(&h.admin, "task.submit_many", body).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest);
            assert!(e.detail.starts_with(field), "{}", e.detail);
        }
        let (_, token) = worker(&h, "w2").await;
        let dup =
            json!({"completions": [{"id": "tsk_a", "lease_id": "l"}, {"id": "tsk_a", "lease_id": "l"}]});
        let e = h.call(&token, "task.complete_many", dup).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.detail.contains("more than once"), "{}", e.detail);
        let e = h
            .call(
                &h.admin,
                "task.complete_many",
                json!({"completions": [{"id": "tsk_a", "lease_id": "l"}]}),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
    }

    crate::on_both_backends!(
        a_batch_is_queued_leased_and_completed_with_one_audit_entry_per_task,
        a_refused_completion_changes_only_its_own_task,
        an_invalid_task_refuses_the_whole_submission,
    );
}
