//! Rate limits, retries, the circuit breaker, timeouts and the call log.

use std::time::Duration;

use serde_json::json;
use strata_core::ErrorCode;
use strata_store::Backend;
use strata_tools::{Caller, ListCalls, Rate};

use super::harness::{Gateway, agent, openapi_connection, service};
use crate::on_both_backends;

async fn setup(g: &Gateway) -> super::harness::Service {
    g.secret("API_KEY", "k-123456").await;
    let svc = service("k-123456").await;
    g.connect(openapi_connection("svc", &svc, json!({}))).await;
    svc
}

async fn an_agent_over_its_rate_is_told_when_to_retry(b: Backend) {
    let g = Gateway::with(b, |c| {
        c.agent_rate = Rate {
            burst: 2,
            per_second: 1,
        }
    })
    .await;
    let svc = setup(&g).await;
    let (id, me) = agent();
    let (other_id, other) = agent();
    g.grant(&id, "*").await;
    g.grant(&other_id, "*").await;
    g.call(&me, "svc.getItem", json!({"id": 1})).await.unwrap();
    g.call(&me, "svc.getItem", json!({"id": 2})).await.unwrap();
    let e = g.call(&me, "svc.getItem", json!({"id": 3})).await.unwrap_err();
    assert_eq!(e.error.code, ErrorCode::RateLimited);
    assert_eq!(e.retry_after, Some(Duration::from_millis(1000)));
    assert_eq!(svc.calls.get(), 2, "the refused call did not reach the upstream");
    g.call(&other, "svc.getItem", json!({"id": 1}))
        .await
        .expect("limits are per agent");
    g.clock.advance(Duration::from_millis(1000));
    g.call(&me, "svc.getItem", json!({"id": 3})).await.unwrap();
}

async fn a_tool_over_its_rate_is_limited_across_agents(b: Backend) {
    let g = Gateway::new(b).await;
    g.secret("API_KEY", "k-123456").await;
    let svc = service("k-123456").await;
    let mut spec = openapi_connection("svc", &svc, json!({}));
    spec["rate_limit"] = json!({"burst": 1, "per_second": 2});
    g.connect(spec).await;
    let (a, ca) = agent();
    let (b2, cb) = agent();
    g.grant(&a, "*").await;
    g.grant(&b2, "*").await;
    g.call(&ca, "svc.getItem", json!({"id": 1})).await.unwrap();
    let e = g.call(&cb, "svc.getItem", json!({"id": 1})).await.unwrap_err();
    assert_eq!(e.error.code, ErrorCode::RateLimited);
    assert_eq!(e.retry_after, Some(Duration::from_millis(500)));
    g.call(&cb, "svc.echoHeaders", json!({}))
        .await
        .expect("another tool has its own bucket");
}

async fn idempotent_calls_are_retried_and_others_are_not(b: Backend) {
    let g = Gateway::new(b).await;
    let svc = setup(&g).await;
    let me = Caller::Operator;
    // GET /flaky fails twice with 503, then works: three tries.
    let out = g.call(&me, "svc.flaky", json!({})).await.unwrap();
    assert_eq!(out.attempts, 3);
    assert_eq!(svc.calls.get(), 3);
    // POST is not idempotent: one try only.
    let e = g.call(&me, "svc.flakyPost", json!({})).await.unwrap_err();
    assert_eq!(e.error.code, ErrorCode::UpstreamFailed);
    assert_eq!(svc.calls.get(), 4);
}

async fn a_failing_connection_opens_its_breaker_and_calls_stop_reaching_it(b: Backend) {
    let g = Gateway::with(b, |c| {
        c.breaker_failures = 3;
        c.breaker_cooldown = Duration::from_secs(10);
    })
    .await;
    let svc = setup(&g).await;
    let me = Caller::Operator;
    for _ in 0..3 {
        assert_eq!(
            g.call(&me, "svc.flakyPost", json!({}))
                .await
                .unwrap_err()
                .error
                .code,
            ErrorCode::UpstreamFailed
        );
    }
    let e = g.call(&me, "svc.getItem", json!({"id": 1})).await.unwrap_err();
    assert_eq!(
        e.error.code,
        ErrorCode::CircuitOpen,
        "the breaker is per connection: {e}"
    );
    assert!(e.retry_after.is_some());
    assert_eq!(svc.calls.get(), 3);
    g.clock.advance(Duration::from_secs(10));
    g.call(&me, "svc.getItem", json!({"id": 1}))
        .await
        .expect("one probe after the cooldown, and it closes the breaker");
    g.call(&me, "svc.getItem", json!({"id": 1})).await.unwrap();
}

async fn a_slow_upstream_times_out(b: Backend) {
    let g = Gateway::new(b).await;
    g.secret("API_KEY", "k-123456").await;
    let svc = service("k-123456").await;
    let mut spec = openapi_connection("svc", &svc, json!({}));
    spec["timeout_ms"] = json!(300);
    spec["retry"] = json!({"max_attempts": 1, "backoff_ms": 1});
    g.connect(spec).await;
    let started = std::time::Instant::now();
    let e = g
        .call(&Caller::Operator, "svc.slow", json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.error.code, ErrorCode::UpstreamTimeout);
    assert!(started.elapsed() < Duration::from_millis(1500));
}

async fn every_call_is_logged_and_the_log_pages(b: Backend) {
    let g = Gateway::new(b).await;
    let _svc = setup(&g).await;
    let (id, me) = agent();
    g.grant(&id, "svc.getItem").await;
    let task = strata_core::Id::new("tsk").to_string();
    for i in 0..3 {
        g.tools
            .call(
                &me,
                serde_json::from_value(json!({"tool": "svc.getItem", "arguments": {"id": i}, "task": task}))
                    .unwrap(),
            )
            .await
            .unwrap();
    }
    let _ = g.call(&me, "svc.getItem", json!({"id": "x"})).await.unwrap_err();
    let _ = g
        .call(&me, "svc.createItem", json!({"body": {"name": "x"}}))
        .await
        .unwrap_err();
    g.tools.flush_log().await;
    let first = g
        .tools
        .list_calls(&ListCalls {
            agent: Some(id.clone()),
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.items[0].status, "forbidden", "newest first");
    assert_eq!(first.items[1].status, "invalid_arguments");
    let second = g
        .tools
        .list_calls(&ListCalls {
            agent: Some(id.clone()),
            after: first.next.clone(),
            limit: Some(10),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(second.items.len(), 3);
    assert!(second.next.is_none());
    let r = &second.items[0];
    assert_eq!(
        (r.status.as_str(), r.tool.as_str(), r.agent.as_str()),
        ("ok", "svc.getItem", id.as_str())
    );
    assert_eq!(r.task.as_deref(), Some(task.as_str()));
    assert_eq!(r.cost_key, "tool:svc.getItem");
    assert!(r.arguments_digest.starts_with("sha256:"));
    assert!(r.response_bytes > 0 && r.request_bytes > 0);
    assert_ne!(second.items[0].arguments_digest, second.items[1].arguments_digest);
    let by_task = g
        .tools
        .list_calls(&ListCalls {
            task: Some(task),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_task.items.len(), 3);
}

on_both_backends!(
    an_agent_over_its_rate_is_told_when_to_retry,
    a_tool_over_its_rate_is_limited_across_agents,
    idempotent_calls_are_retried_and_others_are_not,
    a_failing_connection_opens_its_breaker_and_calls_stop_reaching_it,
    a_slow_upstream_times_out,
    every_call_is_logged_and_the_log_pages,
);
