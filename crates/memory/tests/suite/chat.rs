//! The chat extractor and the HTTP embedder against small local OpenAI-compatible servers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use strata_core::{ErrorCode, ManualClock};
use strata_memory::chat::ChatExtractor;
use strata_memory::{Config, Embedder, Event, HttpEmbedder, Memory, SearchRequest, Viewer};
use strata_store::{Backend, Options, Store};

use crate::suite::harness::{Harness, T0, add_req};

/// Serves `router` on a loopback port; returns its base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/v1")
}

/// A chat model that answers each request with the next canned reply, and records requests.
fn chat_server(replies: Vec<String>, seen: Arc<std::sync::Mutex<Vec<Value>>>) -> Router {
    let n = Arc::new(AtomicUsize::new(0));
    Router::new().route(
        "/v1/chat/completions",
        post(move |Json(body): Json<Value>| {
            let i = n.fetch_add(1, Ordering::SeqCst);
            let reply = replies.get(i).cloned().unwrap_or_default();
            seen.lock().unwrap().push(body);
            async move { Json(json!({"choices": [{"message": {"role": "assistant", "content": reply}}]})) }
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_extractor_facts_go_through_the_same_curation() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let replies = vec![
        json!({"facts": [{"text": "Ana lives in Oslo", "key": "ana|lives_in", "entities": ["Ana", "Oslo"]},
                         {"text": "Ana has a cat named Miso", "entities": ["Ana", "Miso"]}]})
        .to_string(),
        format!(
            "```json\n{}\n```",
            json!({"facts": [{"text": "Ana lives in Rome", "key": "ANA|lives_in"}]})
        ),
        "I could not find any facts, sorry!".to_string(),
    ];
    let url = serve(chat_server(replies, seen.clone())).await;
    let extractor = Arc::new(ChatExtractor::new(url, Some("sk-test".into()), "tiny-model"));
    let h = Harness::with_extractor(Backend::Sqlite, extractor).await;
    let first = h
        .memory
        .add(add_req(json!({"messages": [{"role": "user", "name": "Ana", "content": "I live in Oslo with my cat Miso."}], "user_id": "ana"})), &Viewer::All)
        .await
        .unwrap();
    let events: Vec<Event> = first.results.iter().map(|c| c.event).collect();
    assert_eq!(events, vec![Event::Add, Event::Add]);
    let moved = h
        .memory
        .add(
            add_req(json!({"text": "I moved to Rome.", "user_id": "ana"})),
            &Viewer::All,
        )
        .await
        .unwrap();
    assert_eq!(
        moved.results[0].event,
        Event::Update,
        "the model's slot key drives the update"
    );
    assert_eq!(moved.results[0].id, first.results[0].id);
    let junk = h
        .memory
        .add(
            add_req(json!({"text": "blah blah", "user_id": "ana"})),
            &Viewer::All,
        )
        .await
        .unwrap_err();
    assert_eq!((junk.code, junk.code.status()), (ErrorCode::ExtractorFailed, 502));
    let req = &seen.lock().unwrap()[0];
    assert_eq!(req["model"], "tiny-model");
    assert!(
        req["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains("Ana: I live in Oslo")
    );
    assert!(
        req["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains("2023-05-08")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_extractor_reports_an_unreachable_model_as_extractor_failed() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    drop(listener);
    let h = Harness::with_extractor(Backend::Sqlite, Arc::new(ChatExtractor::new(url, None, "m"))).await;
    let e = h
        .memory
        .add(
            add_req(json!({"text": "I like tea.", "user_id": "u"})),
            &Viewer::All,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ExtractorFailed);
}

/// Embeds by hashing words into 16 buckets: similar wording, similar vectors.
fn bag_of_words(text: &str) -> Vec<f32> {
    let mut v = vec![0.0_f32; 16];
    for w in strata_memory::term::terms(text) {
        let h = w
            .bytes()
            .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
        v[(h % 16) as usize] += 1.0;
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_embeddings_feed_the_vector_signal() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let router = Router::new().route(
        "/v1/embeddings",
        post(move |Json(body): Json<Value>| {
            c.fetch_add(1, Ordering::SeqCst);
            let data: Vec<Value> = body["input"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, t)| json!({"index": i, "embedding": bag_of_words(t.as_str().unwrap())}))
                .collect();
            async move { Json(json!({"data": data, "model": "bow"})) }
        }),
    );
    let url = serve(router).await;
    let embedder: Arc<dyn Embedder> = Arc::new(HttpEmbedder::new(url, None, "bow-16"));
    let dir = tempfile::tempdir().unwrap();
    let db = strata_store::testing::fresh_url(Backend::Sqlite, dir.path())
        .await
        .unwrap();
    let store = Store::open(Options::new(&db), &[strata_memory::MIGRATIONS])
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let m = Memory::open(
        store.clone(),
        clock.clone(),
        Arc::new(strata_memory::RuleExtractor),
        Some(embedder.clone()),
        Config::default(),
    )
    .await
    .unwrap();
    assert!(m.has_embedder());
    let batch = vec![
        add_req(json!({"text": "I bake bread every weekend.", "user_id": "u"})),
        add_req(json!({"text": "I swim in the lake at dawn.", "user_id": "u"})),
    ];
    m.add_many(batch, &Viewer::All).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one batch of embeddings for the whole ingest"
    );
    let q: SearchRequest = serde_json::from_value(json!({"query": "bake bread", "user_id": "u"})).unwrap();
    let hits = m.search(q.clone(), &Viewer::All).await.unwrap().results;
    assert!(hits[0].memory.contains("bread"));
    assert!(hits[0].score_parts.unwrap().vector > 0.5);
    m.search(q, &Viewer::All).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a repeated query is embedded once"
    );
    // Vectors are stored: a restart with the same model embeds nothing again.
    let before = calls.load(Ordering::SeqCst);
    let again = Memory::open(
        store,
        clock,
        Arc::new(strata_memory::RuleExtractor),
        Some(embedder),
        Config::default(),
    )
    .await
    .unwrap();
    assert_eq!(again.indexed(), 2);
    assert_eq!(calls.load(Ordering::SeqCst), before);
}
