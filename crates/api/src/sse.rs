//! `/v1/events` as Server-Sent Events, resumable with `Last-Event-ID`.
//!
//! The stream is a loop of `event.list` syscalls: each page goes through the
//! kernel (so a revoked token ends the stream), and between pages it waits for
//! the store's commit signal — no polling while nothing changes. On PostgreSQL,
//! where another replica may commit, it also re-reads every second.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream;
use serde_json::{Value, json};
use strata_core::Error;
use strata_kernel::{Kernel, Request};

use crate::problem::problem_response;

pub(crate) fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

struct Tail {
    kernel: Kernel,
    token: Option<String>,
    after: i64,
    buffered: VecDeque<Value>,
    commits: tokio::sync::watch::Receiver<u64>,
}

impl Tail {
    async fn page(&mut self) -> Result<(), Error> {
        let reply = self
            .kernel
            .call(Request {
                syscall: "event.list".into(),
                token: self.token.clone(),
                input: json!({"after": self.after, "limit": 500}),
                idempotency_key: None,
            })
            .await?;
        if let Some(items) = reply.body.get("items").and_then(Value::as_array) {
            self.buffered.extend(items.iter().cloned());
        }
        Ok(())
    }
}

pub(crate) async fn stream(
    kernel: Kernel,
    token: Option<String>,
    input: Value,
    headers: &HeaderMap,
) -> Response {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let after = resume
        .or_else(|| input.get("after").and_then(Value::as_i64))
        .unwrap_or(0);
    let commits = kernel.store().commits();
    let mut tail = Tail {
        kernel,
        token,
        after,
        buffered: VecDeque::new(),
        commits,
    };
    // The first page runs before the response starts, so refusals are plain problems.
    if let Err(e) = tail.page().await {
        return problem_response(&e);
    }
    let events = stream::unfold(Some(tail), |tail| async move {
        let mut tail = tail?;
        loop {
            if let Some(ev) = tail.buffered.pop_front() {
                let seq = ev.get("seq").and_then(Value::as_i64).unwrap_or(tail.after);
                tail.after = seq;
                let kind = ev
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or("event")
                    .to_string();
                let sse = Event::default()
                    .id(seq.to_string())
                    .event(kind)
                    .data(ev.to_string());
                return Some((Ok::<_, Infallible>(sse), Some(tail)));
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), tail.commits.changed()).await;
            if let Err(e) = tail.page().await {
                let sse = Event::default()
                    .event("error")
                    .data(json!({"code": e.code.as_str(), "detail": e.detail}).to_string());
                return Some((Ok(sse), None));
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
