//! Mem0 compatibility: the endpoints the `mem0ai` Python package's
//! `MemoryClient` calls, served under `/compat/mem0`.
//!
//! Point the client at Strata with `MemoryClient(api_key=<a Strata token>,
//! host="http://HOST:PORT/compat/mem0")`. It sends `Authorization: Token <key>`;
//! each route maps the Mem0 request onto a kernel memory syscall (`memory.add`,
//! `memory.search`, `memory.list`, `memory.get`, `memory.update`,
//! `memory.delete`, `memory.history`), so authentication, policy, audit and
//! scope are the same as on `/v1`. The shapes follow what the client reads
//! (mem0ai 2.2.1, `mem0/client/main.py`):
//!
//! | client method | route |
//! |---|---|
//! | constructor | `GET /v1/ping/` |
//! | `add` | `POST /v3/memories/add/` |
//! | `search` | `POST /v3/memories/search/` |
//! | `get_all` | `POST /v3/memories/?page=&page_size=` |
//! | `get`, `update`, `delete` | `GET`, `PUT`, `DELETE /v1/memories/{id}/` |
//! | `history` | `GET /v1/memories/{id}/history/` |
//! | `delete_all` | `DELETE /v1/memories/?user_id=…` |
//!
//! Mem0 options Strata has no use for (`version`, `output_format`, `rerank`,
//! `async_mode`, …) are accepted and ignored, as a client sends them by default.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use strata_core::{Error, ErrorCode};
use strata_kernel::Request;

use crate::problem::problem_response;
use crate::route::AppState;

/// The routes, to be mounted at the root (they carry the `/compat/mem0` prefix).
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/compat/mem0/v1/ping/", get(ping))
        .route("/compat/mem0/v3/memories/add/", post(add))
        .route("/compat/mem0/v3/memories/search/", post(search))
        .route("/compat/mem0/v3/memories/", post(get_all))
        .route("/compat/mem0/v1/memories/", axum::routing::delete(delete_all))
        .route(
            "/compat/mem0/v1/memories/{id}/",
            get(get_one).put(update).delete(delete_one),
        )
        .route("/compat/mem0/v1/memories/{id}/history/", get(history))
}

/// `Authorization: Token <key>` (Mem0's scheme) or `Bearer <key>`.
fn token(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer"))
        .then(|| token.trim().to_string())
}

async fn call(state: &AppState, headers: &HeaderMap, syscall: &str, input: Value) -> Result<Value, Error> {
    let reply = state
        .kernel
        .call(Request {
            syscall: syscall.to_string(),
            token: token(headers),
            input,
            idempotency_key: None,
        })
        .await?;
    Ok(reply.body)
}

fn respond(r: Result<Value, Error>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => problem_response(&e),
    }
}

fn body_object(bytes: &Bytes) -> Result<Map<String, Value>, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::invalid("body", "must be a JSON object")),
        Err(e) => Err(Error::new(
            ErrorCode::InvalidJson,
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

/// Copies the fields named in `keys` that are present and not null.
fn pick(from: &Map<String, Value>, keys: &[&str]) -> Map<String, Value> {
    keys.iter()
        .filter_map(|k| {
            from.get(*k)
                .filter(|v| !v.is_null())
                .map(|v| (k.to_string(), v.clone()))
        })
        .collect()
}

/// Mem0's `timestamp` (Unix seconds) as RFC 3339.
fn timestamp(v: &Value) -> Result<String, Error> {
    let secs = v
        .as_i64()
        .ok_or_else(|| Error::invalid("timestamp", "must be Unix seconds (an integer)"))?;
    let ms = secs
        .checked_mul(1000)
        .ok_or_else(|| Error::invalid("timestamp", "out of range"))?;
    Ok(strata_core::time::rfc3339(ms))
}

async fn ping(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match state.kernel.authenticate(token(&headers).as_deref()).await {
        // The client refuses to start without an organisation and a project;
        // Strata has neither, so it names one of each, fixed.
        Ok(_) => axum::Json(
            json!({"status": "ok", "org_id": "strata", "project_id": "strata", "user_email": null}),
        )
        .into_response(),
        Err(e) => problem_response(&e),
    }
}

async fn add(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    respond(
        async {
            let b = body_object(&body)?;
            let mut input = pick(
                &b,
                &["messages", "user_id", "agent_id", "run_id", "metadata", "infer"],
            );
            if let Some(t) = b.get("timestamp").filter(|v| !v.is_null()) {
                input.insert("observed_at".into(), Value::String(timestamp(t)?));
            }
            call(&state, &headers, "memory.add", Value::Object(input)).await
        }
        .await,
    )
}

async fn search(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    respond(
        async {
            let b = body_object(&body)?;
            let input = pick(&b, &["query", "filters", "top_k", "threshold"]);
            call(&state, &headers, "memory.search", Value::Object(input)).await
        }
        .await,
    )
}

/// A positive integer from the query string.
fn number(q: &std::collections::HashMap<String, String>, k: &str, default: u64) -> Result<u64, Error> {
    match q.get(k) {
        None => Ok(default),
        Some(s) => s
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| Error::invalid(k, format!("'{s}' is not a positive integer"))),
    }
}

async fn get_all(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
    body: Bytes,
) -> Response {
    respond(
        async {
            let b = body_object(&body)?;
            let page = number(&q, "page", 1)?;
            let size = number(&q, "page_size", 100)?.min(1000);
            // Mem0 pages by number, Strata by cursor: walk the cursors to page N.
            let (mut cursor, mut count, mut results) = (None::<String>, 0, json!([]));
            for i in 1..=page {
                let mut input = pick(&b, &["filters"]);
                input.insert("page_size".into(), json!(size));
                if let Some(c) = &cursor {
                    input.insert("cursor".into(), json!(c));
                }
                let mut out = call(&state, &headers, "memory.list", Value::Object(input)).await?;
                count = out["count"].as_u64().unwrap_or(0);
                cursor = out["next_cursor"].as_str().map(str::to_string);
                if i == page {
                    results = out["results"].take();
                } else if cursor.is_none() {
                    break; // past the last page: no results
                }
            }
            let link = |p: u64| format!("/compat/mem0/v3/memories/?page={p}&page_size={size}");
            Ok(json!({
                "count": count,
                "next": cursor.as_ref().map(|_| link(page + 1)),
                "previous": (page > 1).then(|| link(page - 1)),
                "results": results,
            }))
        }
        .await,
    )
}

async fn get_one(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    respond(call(&state, &headers, "memory.get", json!({"id": id})).await)
}

async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    respond(
        async {
            let b = body_object(&body)?;
            let mut input = pick(&b, &["text", "metadata"]);
            input.insert("id".into(), Value::String(id.clone()));
            call(&state, &headers, "memory.update", Value::Object(input)).await?;
            call(&state, &headers, "memory.get", json!({"id": id})).await
        }
        .await,
    )
}

async fn delete_one(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    respond(
        async {
            call(&state, &headers, "memory.delete", json!({"id": id})).await?;
            Ok(json!({"message": "Memory deleted successfully!"}))
        }
        .await,
    )
}

async fn history(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    respond(
        async {
            let mut h = call(&state, &headers, "memory.history", json!({"id": id})).await?;
            let mut entries = match h["results"].take() {
                Value::Array(a) => a,
                _ => Vec::new(),
            };
            // Mem0's history entries carry created_at and updated_at.
            for e in &mut entries {
                let at = e["recorded_at"].clone();
                e["created_at"] = at.clone();
                e["updated_at"] = at;
            }
            Ok(Value::Array(entries))
        }
        .await,
    )
}

async fn delete_all(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    respond(
        async {
            let scope = ["user_id", "agent_id", "run_id"];
            let mut input = Map::new();
            for (k, v) in &q {
                if !scope.contains(&k.as_str()) {
                    return Err(Error::invalid(
                        k,
                        "only user_id, agent_id and run_id are accepted",
                    ));
                }
                input.insert(k.clone(), Value::String(v.clone()));
            }
            if input.is_empty() {
                return Err(Error::invalid(
                    "user_id",
                    "name a user_id, agent_id or run_id to delete",
                ));
            }
            input.insert("page_size".into(), json!(1000));
            loop {
                let page = call(&state, &headers, "memory.list", Value::Object(input.clone())).await?;
                let ids: Vec<String> = page["results"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|m| m["id"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                if ids.is_empty() {
                    break;
                }
                for id in ids {
                    call(&state, &headers, "memory.delete", json!({"id": id})).await?;
                }
            }
            Ok(json!({"message": "Memories deleted successfully!"}))
        }
        .await,
    )
}
