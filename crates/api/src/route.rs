//! Syscall routes, derived from the kernel's registry.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use serde_json::{Map, Value};
use strata_core::{Error, ErrorCode, Method};
use strata_kernel::{Kernel, Request};

use crate::Options;
use crate::problem::problem_response;

/// What every handler needs.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) kernel: Kernel,
    max_body_bytes: usize,
}

impl AppState {
    pub(crate) fn new(kernel: Kernel, options: Options) -> AppState {
        AppState {
            kernel,
            max_body_bytes: options.max_body_bytes,
        }
    }
}

/// How a route turns an HTTP request into a syscall request.
struct RouteInfo {
    name: &'static str,
    method: Method,
    /// Query parameters whose schema type is not a string, with that type.
    typed_params: HashMap<String, &'static str>,
}

fn filter(m: Method) -> MethodFilter {
    match m {
        Method::Get => MethodFilter::GET,
        Method::Post => MethodFilter::POST,
        Method::Put => MethodFilter::PUT,
        Method::Patch => MethodFilter::PATCH,
        Method::Delete => MethodFilter::DELETE,
    }
}

/// The non-string scalar type a JSON Schema property accepts, if any.
fn scalar_type(prop: &Value) -> Option<&'static str> {
    let types: Vec<&str> = match prop.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    ["integer", "number", "boolean"]
        .into_iter()
        .find(|t| types.contains(t))
}

pub(crate) fn syscalls(kernel: &Kernel, _options: &Options) -> Router<AppState> {
    let mut router = Router::new();
    for entry in kernel.registry().entries() {
        let spec = entry.spec;
        let typed_params = entry
            .request_schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|props| {
                props
                    .iter()
                    .filter_map(|(k, v)| scalar_type(v).map(|t| (k.clone(), t)))
                    .collect()
            })
            .unwrap_or_default();
        let info = Arc::new(RouteInfo {
            name: spec.name,
            method: spec.method,
            typed_params,
        });
        let handler = move |state: State<AppState>,
                            path: Result<Path<HashMap<String, String>>, PathRejection>,
                            query: RawQuery,
                            headers: HeaderMap,
                            body: Body| {
            let info = info.clone();
            async move {
                let path = match path {
                    Ok(p) => p.0,
                    Err(PathRejection::MissingPathParams(_)) => HashMap::new(),
                    Err(e) => return problem_response(&Error::invalid("path", e.body_text())),
                };
                serve(state.0, &info, path, query.0, headers, body).await
            }
        };
        router = router.route(spec.path, on(filter(spec.method), handler));
    }
    router
}

pub(crate) async fn wrong_method() -> Response {
    problem_response(&Error::new(
        ErrorCode::MethodNotAllowed,
        "this path does not accept that HTTP method",
    ))
}

pub(crate) async fn no_route() -> Response {
    problem_response(&Error::new(
        ErrorCode::RouteNotFound,
        "no syscall is served at this path; see /openapi.json",
    ))
}

async fn serve(
    state: AppState,
    info: &RouteInfo,
    path: HashMap<String, String>,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let input = match input(&state, info, path, query.as_deref(), &headers, body).await {
        Ok(v) => v,
        Err(e) => return problem_response(&e),
    };
    let token = bearer(&headers);
    if info.name == "event.list" && crate::sse::wants_stream(&headers) {
        return crate::sse::stream(state.kernel, token, input, &headers).await;
    }
    let streamed = info.name == "sandbox.exec" && crate::sse::wants_stream(&headers);
    let req = Request {
        syscall: info.name.to_string(),
        token,
        input,
        // Not `to_str`: a key with non-ASCII bytes must be refused, not ignored.
        idempotency_key: headers
            .get("idempotency-key")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
    };
    if streamed {
        return crate::sse::exec(state.kernel, req).await;
    }
    match state.kernel.call(req).await {
        Ok(reply) => {
            let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
            let mut resp = (status, axum::Json(reply.body)).into_response();
            if reply.replayed {
                resp.headers_mut()
                    .insert("idempotency-replayed", HeaderValue::from_static("true"));
            }
            resp
        }
        Err(e) => problem_response(&e),
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = header_str(headers, header::AUTHORIZATION.as_str())?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// Builds the request object from the path, the query and the body.
async fn input(
    state: &AppState,
    info: &RouteInfo,
    path: HashMap<String, String>,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, Error> {
    let mut obj = match info.method {
        Method::Post | Method::Put | Method::Patch => {
            if query.is_some_and(|q| !q.is_empty()) {
                return Err(Error::invalid(
                    "query",
                    "this syscall takes its parameters in the JSON body",
                ));
            }
            json_body(state, headers, body).await?
        }
        Method::Get | Method::Delete => query_object(info, query.unwrap_or(""))?,
    };
    for (k, v) in path {
        if obj.contains_key(&k) {
            return Err(Error::invalid(
                &k,
                "is given by the path and must not be repeated",
            ));
        }
        obj.insert(k, Value::String(v));
    }
    Ok(Value::Object(obj))
}

async fn json_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Map<String, Value>, Error> {
    let bytes = axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|e| {
            let too_large =
                std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                Error::new(
                    ErrorCode::PayloadTooLarge,
                    format!("the body exceeds the limit of {} bytes", state.max_body_bytes),
                )
            } else {
                Error::new(ErrorCode::InvalidJson, format!("the body could not be read: {e}"))
            }
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let ct = header_str(headers, header::CONTENT_TYPE.as_str()).unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !(essence == "application/json" || essence.ends_with("+json")) {
        return Err(Error::new(
            ErrorCode::UnsupportedMediaType,
            format!("Content-Type must be application/json, not '{ct}'"),
        ));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::invalid("body", "must be a JSON object")),
        Err(e) => Err(Error::new(
            ErrorCode::InvalidJson,
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

fn query_object(info: &RouteInfo, query: &str) -> Result<Map<String, Value>, Error> {
    let mut obj = Map::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let value = match info.typed_params.get(k.as_ref()).copied() {
            Some("integer") => v
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| Error::invalid(&k, format!("'{v}' is not an integer")))?,
            Some("number") => v
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| Error::invalid(&k, format!("'{v}' is not a number")))?,
            Some("boolean") => v
                .parse::<bool>()
                .map(Value::Bool)
                .map_err(|_| Error::invalid(&k, format!("'{v}' is not true or false")))?,
            _ => Value::String(v.to_string()),
        };
        if obj.insert(k.to_string(), value).is_some() {
            return Err(Error::invalid(&k, "is given more than once"));
        }
    }
    Ok(obj)
}

/// The `{param}` names in a route path (`{*param}`, spanning segments, too).
pub(crate) fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|p| p.strip_prefix('*').unwrap_or(p))
        .collect()
}
