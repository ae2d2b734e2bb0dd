//! A Strata app in a temporary directory, driven in-process through its Router.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use strata_core::{ManualClock, MasterKey};
use strata_kernel::{Config, Kernel, MIGRATIONS};
use tempfile::TempDir;
use tower::ServiceExt;

/// The clock's start: 2027-01-15T08:00:00Z.
pub(crate) const START_MS: i64 = 1_800_000_000_000;

/// A running app over a fresh store.
pub(crate) struct App {
    /// The router (cheap to clone).
    pub(crate) router: Router,
    /// The kernel behind it.
    pub(crate) kernel: Kernel,
    /// The clock the kernel reads.
    pub(crate) clock: Arc<ManualClock>,
    /// The bootstrap operator token.
    pub(crate) admin: String,
    /// Keeps the database alive.
    _dir: TempDir,
}

/// A response, read whole.
#[derive(Debug)]
pub(crate) struct Resp {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) bytes: Vec<u8>,
}

impl Resp {
    /// The body as JSON (panics when it is not).
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): status {}, body {:?}",
                self.status,
                String::from_utf8_lossy(&self.bytes)
            )
        })
    }

    /// The body as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// A header as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The content type, if any.
    pub(crate) fn content_type(&self) -> Option<&str> {
        self.header("content-type")
    }

    /// Asserts the status is `status`, showing the body otherwise.
    #[track_caller]
    pub(crate) fn expect(&self, status: u16) -> &Resp {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text()
        );
        self
    }

    /// Asserts this is an RFC 9457 problem with `status` and `code`; returns its detail.
    #[track_caller]
    pub(crate) fn problem(&self, status: u16, code: &str) -> String {
        self.expect(status);
        assert_eq!(
            self.content_type(),
            Some("application/problem+json"),
            "problem content type; body: {}",
            self.text()
        );
        let p = self.json();
        assert_eq!(p["code"], code, "problem code; body: {p}");
        assert_eq!(p["status"], status, "problem status field; body: {p}");
        assert_eq!(
            p["type"],
            format!("https://strata.dev/problems/{code}"),
            "problem type; body: {p}"
        );
        assert!(
            p["title"].as_str().is_some_and(|t| !t.is_empty()),
            "problem title; body: {p}"
        );
        p["detail"]
            .as_str()
            .unwrap_or_else(|| panic!("problem detail is not a string: {p}"))
            .to_string()
    }
}

/// A request under construction.
pub(crate) struct Call {
    builder: axum::http::request::Builder,
    body: Body,
}

impl Call {
    /// A request for `method` and `uri`.
    pub(crate) fn new(method: Method, uri: &str) -> Call {
        Call {
            builder: Request::builder().method(method).uri(uri),
            body: Body::empty(),
        }
    }

    /// With `Authorization: Bearer token`.
    pub(crate) fn token(self, token: &str) -> Call {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// With a header.
    pub(crate) fn header(mut self, name: &str, value: &str) -> Call {
        self.builder = self.builder.header(name, value);
        self
    }

    /// With a header given as raw bytes.
    pub(crate) fn header_bytes(mut self, name: &str, value: &[u8]) -> Call {
        let v = axum::http::HeaderValue::from_bytes(value).expect("a valid header value");
        self.builder = self.builder.header(name, v);
        self
    }

    /// With a JSON body.
    pub(crate) fn json(self, body: &Value) -> Call {
        self.raw("application/json", body.to_string().into_bytes())
    }

    /// With a raw body and content type.
    pub(crate) fn raw(mut self, content_type: &str, body: Vec<u8>) -> Call {
        self.builder = self.builder.header("content-type", content_type);
        self.body = Body::from(body);
        self
    }

    /// With a raw body and no content type.
    pub(crate) fn body(mut self, body: Vec<u8>) -> Call {
        self.body = Body::from(body);
        self
    }

    /// With `Idempotency-Key`.
    pub(crate) fn key(self, key: &str) -> Call {
        self.header("idempotency-key", key)
    }

    /// The finished request.
    pub(crate) fn build(self) -> Request<Body> {
        self.builder.body(self.body).expect("a valid request")
    }
}

/// Sends `req` to `router` and reads the whole response.
pub(crate) async fn send(router: &Router, req: Request<Body>) -> Resp {
    let resp = router.clone().oneshot(req).await.unwrap_or_else(|e| match e {});
    let (parts, body) = resp.into_parts();
    let bytes = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .expect("the body completes within 30 s")
        .expect("the body can be read")
        .to_bytes()
        .to_vec();
    Resp {
        status: parts.status,
        headers: parts.headers,
        bytes,
    }
}

/// An agent created through the API.
#[derive(Debug, Clone)]
pub(crate) struct Agent {
    pub(crate) id: String,
    pub(crate) token: String,
    pub(crate) token_id: String,
    /// The whole creation response.
    pub(crate) body: Value,
}

impl App {
    /// A fresh app with the default options.
    pub(crate) async fn new() -> App {
        App::with_options(strata_api::Options::default()).await
    }

    /// A fresh app with `options`.
    pub(crate) async fn with_options(options: strata_api::Options) -> App {
        App::with(options, |_| {}).await
    }

    /// A fresh app with `options`, its kernel configured by `configure`.
    pub(crate) async fn with(options: strata_api::Options, configure: impl FnOnce(&mut Config)) -> App {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = strata_store::Store::open(
            strata_store::Options::new(strata_store::sqlite_url(dir.path())),
            MIGRATIONS,
        )
        .await
        .expect("the store opens");
        let clock = Arc::new(ManualClock::new(START_MS));
        let mut config = Config::new(MasterKey::generate());
        config.clock = clock.clone();
        configure(&mut config);
        let kernel = Kernel::new(store, config).await.expect("the kernel opens");
        let mut admin = String::new();
        let made = kernel
            .bootstrap_admin_token(|t| {
                admin = t.to_string();
                Ok(())
            })
            .await
            .expect("the bootstrap token is made");
        assert!(made, "a fresh store has no admin token yet");
        let router = strata_api::router(kernel.clone(), options);
        App {
            router,
            kernel,
            clock,
            admin,
            _dir: dir,
        }
    }

    /// Sends a request.
    pub(crate) async fn send(&self, call: Call) -> Resp {
        send(&self.router, call.build()).await
    }

    /// GET `uri` as `token`.
    pub(crate) async fn get(&self, uri: &str, token: &str) -> Resp {
        self.send(Call::new(Method::GET, uri).token(token)).await
    }

    /// DELETE `uri` as `token`.
    pub(crate) async fn delete(&self, uri: &str, token: &str) -> Resp {
        self.send(Call::new(Method::DELETE, uri).token(token)).await
    }

    /// POST `body` to `uri` as `token`.
    pub(crate) async fn post(&self, uri: &str, token: &str, body: &Value) -> Resp {
        self.send(Call::new(Method::POST, uri).token(token).json(body))
            .await
    }

    /// Creates an agent named `name` with the default token.
    pub(crate) async fn agent(&self, name: &str) -> Agent {
        self.agent_with(json!({ "name": name })).await
    }

    /// Creates an agent from a full request body.
    pub(crate) async fn agent_with(&self, body: Value) -> Agent {
        let r = self.post("/v1/agents", &self.admin, &body).await;
        r.expect(201);
        let body = r.json();
        Agent {
            id: body["id"].as_str().expect("id").to_string(),
            token: body["token"].as_str().expect("token").to_string(),
            token_id: body["token_id"].as_str().expect("token_id").to_string(),
            body,
        }
    }

    /// Creates an agent whose token has exactly `scopes`.
    pub(crate) async fn agent_scoped(&self, name: &str, scopes: &[&str]) -> Agent {
        self.agent_with(json!({ "name": name, "token": { "scopes": scopes } }))
            .await
    }

    /// The ids of all live agents, following `next` cursors.
    pub(crate) async fn agent_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        let mut uri = "/v1/agents?limit=500".to_string();
        loop {
            let r = self.get(&uri, &self.admin).await;
            r.expect(200);
            let page = r.json();
            for a in page["items"].as_array().expect("items") {
                ids.push(a["id"].as_str().expect("id").to_string());
            }
            match page["next"].as_str() {
                Some(next) => uri = format!("/v1/agents?limit=500&after={next}"),
                None => return ids,
            }
        }
    }

    /// Every audit entry, oldest first.
    pub(crate) async fn audit(&self) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let r = self
                .get(&format!("/v1/audit?after={after}&limit=1000"), &self.admin)
                .await;
            r.expect(200);
            let page = r.json();
            let items = page["items"].as_array().expect("items").clone();
            all.extend(items);
            match page["next"].as_i64() {
                Some(n) => after = n,
                None => return all,
            }
        }
    }

    /// Moves the kernel's clock forward.
    pub(crate) fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
}
