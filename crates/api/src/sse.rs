//! `/v1/events` as Server-Sent Events, resumable with `Last-Event-ID`; and a
//! sandbox exec's output as it is written (see [`exec`]).
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
use strata_kernel::syscalls::compute::{OutputChunk as Chunk, OutputStream as Stream};
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

/// `POST /v1/sandboxes/{id}/exec` with `Accept: text/event-stream`: the
/// command's output as `stdout` and `stderr` events (`{"data": text}`, lossy
/// UTF-8), in the order it was written, then one `exit` event whose data is
/// the outcome (as the plain call answers, stdout and stderr empty) — or an
/// `error` event with the problem's code and detail. A call refused before
/// any output (unknown sandbox, forbidden, `exec_failed`) is a plain problem.
pub(crate) async fn exec(kernel: Kernel, req: Request) -> Response {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let mut call = tokio::spawn(async move { kernel.call_streaming(req, tx).await });
    // The sink closes when the call ends, so `None` means it ended without output.
    let first = rx.recv().await;
    if first.is_none() {
        let result = match (&mut call).await {
            Ok(r) => r,
            Err(e) => Err(Error::internal(e)),
        };
        match result {
            Ok(reply) => {
                let done = exit_event(&reply.body);
                let events = stream::iter([Ok::<_, Infallible>(done)]);
                return Sse::new(events).into_response();
            }
            Err(e) => return problem_response(&e),
        }
    }
    struct State {
        first: Option<Chunk>,
        rx: tokio::sync::mpsc::Receiver<Chunk>,
        call: Option<tokio::task::JoinHandle<strata_core::Result<strata_kernel::Reply>>>,
    }
    let state = State {
        first,
        rx,
        call: Some(call),
    };
    let events = stream::unfold(state, |mut st| async move {
        let chunk = match st.first.take() {
            Some(c) => Some(c),
            None => st.rx.recv().await,
        };
        if let Some(c) = chunk {
            let name = match c.stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            let data = json!({"data": String::from_utf8_lossy(&c.data)});
            return Some((
                Ok::<_, Infallible>(Event::default().event(name).data(data.to_string())),
                st,
            ));
        }
        let call = st.call.take()?;
        let ev = match call.await {
            Ok(Ok(reply)) => exit_event(&reply.body),
            Ok(Err(e)) => error_event(&e),
            Err(e) => error_event(&Error::internal(e)),
        };
        Some((Ok(ev), st))
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

fn exit_event(outcome: &Value) -> Event {
    Event::default().event("exit").data(outcome.to_string())
}

fn error_event(e: &Error) -> Event {
    Event::default()
        .event("error")
        .data(json!({"code": e.code.as_str(), "detail": e.detail}).to_string())
}
