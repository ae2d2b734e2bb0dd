//! /v1/events as JSON pages and as a Server-Sent Events stream.

use std::time::Duration;

use axum::body::Body;
use axum::http::Method;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::harness::{App, Call};

/// One parsed SSE event.
#[derive(Debug, Clone, Default)]
struct Sse {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// Reads an SSE body incrementally.
struct Reader {
    body: Body,
    buf: String,
    ended: bool,
}

impl Reader {
    /// The next event (skipping comments such as keep-alives), `None` at the end of
    /// the stream; panics when nothing arrives within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Sse::default();
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim_start().to_string());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("event:") {
                        ev.event = Some(v.trim_start().to_string());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !ev.data.is_empty() {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(v.trim_start());
                        any = true;
                    }
                }
                if any {
                    return Some(ev);
                }
            }
            if self.ended {
                return None;
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .expect("an SSE frame arrives in time");
            match frame {
                None => self.ended = true,
                Some(f) => {
                    let f = f.expect("the stream does not fail");
                    if let Ok(data) = f.into_data() {
                        self.buf
                            .push_str(std::str::from_utf8(&data).expect("UTF-8 frames"));
                    }
                }
            }
        }
    }
}

async fn open(app: &App, token: &str, uri: &str, last_event_id: Option<&str>) -> Reader {
    let mut call = Call::new(Method::GET, uri)
        .token(token)
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        call = call.header("last-event-id", id);
    }
    let resp = app
        .router
        .clone()
        .oneshot(call.build())
        .await
        .unwrap_or_else(|e| match e {});
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    Reader {
        body: resp.into_body(),
        buf: String::new(),
        ended: false,
    }
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn events_page_as_json_in_commit_order() {
    let app = App::new().await;
    let mut ids = Vec::new();
    for n in ["a", "b", "c"] {
        ids.push(app.agent(n).await.id);
    }
    let r = app.get("/v1/events", &app.admin).await;
    r.expect(200);
    let items = r.json()["items"].as_array().unwrap().clone();
    let seqs: Vec<i64> = items.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    for (e, id) in items.iter().zip(&ids) {
        assert_eq!(e["kind"], "agent.create");
        assert_eq!(e["subject"], *id);
    }
    let r = app.get("/v1/events?after=1&limit=1", &app.admin).await;
    let p = r.json();
    assert_eq!(p["items"][0]["seq"], 2);
    assert_eq!(p["next"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_resumes_after_last_event_id_and_follows_new_commits() {
    let app = App::new().await;
    let mut ids = Vec::new();
    for n in ["a", "b", "c"] {
        ids.push(app.agent(n).await.id);
    }
    let mut s = open(&app, &app.admin, "/v1/events", Some("1")).await;
    for (want, id) in [("2", &ids[1]), ("3", &ids[2])] {
        let ev = s.next(WAIT).await.expect("an event");
        assert_eq!(ev.id.as_deref(), Some(want), "{ev:?}");
        assert_eq!(ev.event.as_deref(), Some("agent.create"));
        let data: Value = serde_json::from_str(&ev.data).expect("JSON data");
        assert_eq!(data["seq"].to_string(), want);
        assert_eq!(data["subject"], *id);
    }
    // A change committed while the stream is open arrives as the next event.
    let d = app.agent("d").await;
    let ev = s.next(WAIT).await.expect("the new event");
    assert_eq!(ev.id.as_deref(), Some("4"), "{ev:?}");
    assert_eq!(ev.event.as_deref(), Some("agent.create"));
    let data: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(data["subject"], d.id);
    // And the next one too, of another kind.
    app.delete(&format!("/v1/agents/{}", ids[0]), &app.admin)
        .await
        .expect(200);
    let ev = s.next(WAIT).await.expect("the deletion");
    assert_eq!(ev.id.as_deref(), Some("5"));
    assert_eq!(ev.event.as_deref(), Some("agent.delete"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_starts_after_the_query_cursor_without_last_event_id() {
    let app = App::new().await;
    for n in ["a", "b", "c"] {
        app.agent(n).await;
    }
    let mut s = open(&app, &app.admin, "/v1/events?after=2", None).await;
    assert_eq!(s.next(WAIT).await.unwrap().id.as_deref(), Some("3"));
    // Last-Event-ID wins over the query.
    let mut s = open(&app, &app.admin, "/v1/events?after=2", Some("0")).await;
    assert_eq!(s.next(WAIT).await.unwrap().id.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_ends_with_an_error_event_when_its_token_is_revoked() {
    let app = App::new().await;
    let r = app.post("/v1/tokens", &app.admin, &json!({"name": "tail"})).await;
    r.expect(201);
    let t = r.json();
    let mut s = open(&app, t["token"].as_str().unwrap(), "/v1/events", None).await;
    // The token's own creation is the first event.
    let ev = s.next(WAIT).await.unwrap();
    assert_eq!(ev.event.as_deref(), Some("token.create_admin"));
    app.delete(&format!("/v1/tokens/{}", t["id"].as_str().unwrap()), &app.admin)
        .await
        .expect(200);
    // The revocation itself may still be delivered if the stream pages between the
    // commit and the cache being cleared; then comes the error.
    let mut ev = s.next(WAIT).await.expect("an event");
    if ev.event.as_deref() == Some("token.revoke") {
        ev = s.next(WAIT).await.expect("an error event");
    }
    assert_eq!(ev.event.as_deref(), Some("error"), "{ev:?}");
    let data: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(data["code"], "token_revoked");
    assert!(s.next(WAIT).await.is_none(), "the stream ends after the error");
}

#[tokio::test]
async fn event_stream_refusals_are_problems() {
    let app = App::new().await;
    let r = app
        .send(Call::new(Method::GET, "/v1/events").header("accept", "text/event-stream"))
        .await;
    r.problem(401, "unauthenticated");
    let r = app
        .send(
            Call::new(Method::GET, "/v1/events?after=x")
                .token(&app.admin)
                .header("accept", "text/event-stream"),
        )
        .await;
    let detail = r.problem(400, "invalid_request");
    assert!(detail.starts_with("after: "), "{detail}");
}
