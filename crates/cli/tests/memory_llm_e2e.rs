//! `strata serve --llm-url`: the memory layer extracts facts with an
//! OpenAI-compatible chat model. The model here is a small endpoint served by
//! the test itself, answering with fixed facts; `POST /v1/memories` must add
//! exactly those (and their slot keys must drive updates), and a model that
//! answers junk must make the add fail with `extractor_failed`.

mod support;

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use reqwest::Method;
use serde_json::{Value, json};
use support::{Server, call, http, strata};

/// What the fake model saw: (authorization header, request body).
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// Answers each chat completion with the facts for the first message it sees
/// mentioning Oslo, Bergen, or neither (then junk that is not the asked JSON).
async fn completions(State(seen): State<Seen>, headers: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let user = body["messages"][1]["content"].as_str().unwrap_or("").to_string();
    seen.lock().expect("seen lock").push((auth, body));
    let content = if user.contains("Oslo") {
        json!({"facts": [
            {"text": "Ana lives in Oslo", "key": "ana|lives_in", "entities": ["Ana", "Oslo"]},
            {"text": "Ana adopted a grey cat named Miso", "entities": ["Ana", "Miso"]},
        ]})
        .to_string()
    } else if user.contains("Bergen") {
        json!({"facts": [{"text": "Ana lives in Bergen", "key": "ana|lives_in", "entities": ["Ana", "Bergen"]}]})
            .to_string()
    } else {
        "Sorry, I cannot help with that.".to_string()
    };
    Json(json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memories_are_the_facts_the_configured_chat_model_returns() {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(completions))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the fake model");
    let model_url = format!("http://{}/v1", listener.local_addr().expect("local addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let tmp = tempfile::tempdir().expect("a temporary folder");
    let mut cmd = strata();
    cmd.args(["serve", "--llm-url", &model_url, "--llm-model", "tiny-test-model"])
        .env("STRATA_LLM_API_KEY", "sk-test-key");
    let dir = tmp.path().join("data");
    let server = tokio::task::spawn_blocking(move || {
        Server::try_start_with(&dir, cmd)
            .unwrap_or_else(|r| panic!("serve exited ({:?}):\n{}", r.status, r.stderr))
    })
    .await
    .expect("start the server");
    let http = http();
    let url = format!("{}/v1/memories", server.url);
    let token = server.admin_token.clone();

    let body = json!({
        "messages": [{"role": "user", "name": "Ana", "content": "I moved to Oslo and adopted Miso, my grey cat."}],
        "user_id": "ana",
    });
    let (status, added) = call(&http, Method::POST, &url, &token, Some(&body)).await;
    assert!(status == 200 || status == 201, "{status} {added}");
    let changes: Vec<(String, String)> = added["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|c| {
            (
                c["event"].as_str().unwrap_or("").into(),
                c["memory"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("ADD".to_string(), "Ana lives in Oslo".to_string()),
            ("ADD".to_string(), "Ana adopted a grey cat named Miso".to_string()),
        ],
        "{added}"
    );
    {
        let seen = seen.lock().expect("seen lock");
        assert_eq!(seen.len(), 1, "one add, one model call");
        let (auth, req) = &seen[0];
        assert_eq!(auth, "Bearer sk-test-key");
        assert_eq!(req["model"], "tiny-test-model");
        let prompt = req["messages"][1]["content"].as_str().unwrap_or("");
        assert!(
            prompt.contains("Ana: I moved to Oslo and adopted Miso"),
            "{prompt}"
        );
    }

    // The model's slot key makes a later fact supersede the first.
    let oslo_id = added["results"][0]["id"].as_str().expect("id").to_string();
    let body = json!({"text": "Ana says she lives in Bergen now.", "user_id": "ana"});
    let (status, moved) = call(&http, Method::POST, &url, &token, Some(&body)).await;
    assert!(status == 200 || status == 201, "{status} {moved}");
    assert_eq!(moved["results"][0]["event"], "UPDATE", "{moved}");
    assert_eq!(moved["results"][0]["id"], Value::from(oslo_id.clone()), "{moved}");
    assert_eq!(moved["results"][0]["memory"], "Ana lives in Bergen", "{moved}");
    let (status, got) = call(&http, Method::GET, &format!("{url}/{oslo_id}"), &token, None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["memory"], "Ana lives in Bergen", "{got}");

    // A model answering something other than the asked JSON fails the add, visibly.
    let body = json!({"text": "Nothing the model understands.", "user_id": "ana"});
    let (status, failed) = call(&http, Method::POST, &url, &token, Some(&body)).await;
    assert_eq!(status, 502, "{failed}");
    assert_eq!(failed["code"], "extractor_failed", "{failed}");
    let (status, listed) = call(&http, Method::GET, &format!("{url}?user_id=ana"), &token, None).await;
    assert_eq!(status, 200, "{listed}");
    let texts: Vec<&str> = listed["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|m| m["memory"].as_str())
        .collect();
    assert_eq!(texts.len(), 2, "the failed add added nothing: {listed}");
    assert!(
        texts.contains(&"Ana lives in Bergen") && texts.contains(&"Ana adopted a grey cat named Miso"),
        "{listed}"
    );
}
