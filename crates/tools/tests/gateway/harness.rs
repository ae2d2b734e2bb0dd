//! A gateway on a fresh database, the upstreams it talks to, and captured logs.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use strata_core::{ManualClock, MasterKey};
use strata_store::{Backend, Options, Store};
use strata_tools::{Caller, Config, NewConnection, NewGrant, NewSecret, SecretValue, Subject, Tools};

/// Declares one test per backend for each scenario `fn name(Backend) -> impl Future`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(strata_store::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(strata_store::Backend::Postgres).await })*
        }
    };
}

pub(crate) struct Gateway {
    pub(crate) tools: Tools,
    pub(crate) store: Store,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) key: MasterKey,
    pub(crate) _dir: tempfile::TempDir,
}

impl Gateway {
    pub(crate) async fn new(backend: Backend) -> Gateway {
        Self::with(backend, |_| {}).await
    }

    pub(crate) async fn with(backend: Backend, tune: impl FnOnce(&mut Config)) -> Gateway {
        capture_logs();
        let dir = tempfile::tempdir().unwrap();
        let url = strata_store::testing::fresh_url(backend, dir.path())
            .await
            .unwrap();
        let store = Store::open(Options::new(&url), &[strata_tools::MIGRATIONS])
            .await
            .unwrap();
        let clock = Arc::new(ManualClock::new(1_800_000_000_000));
        let key = MasterKey::generate();
        let mut config = Config::new(key.clone());
        config.clock = clock.clone();
        config.timeout = Duration::from_secs(20);
        tune(&mut config);
        let tools = Tools::open(store.clone(), config).await.unwrap();
        Gateway {
            tools,
            store,
            clock,
            key,
            _dir: dir,
        }
    }

    pub(crate) async fn secret(&self, name: &str, value: &str) {
        self.tools
            .set_secret(NewSecret {
                name: name.into(),
                value: SecretValue::new(value),
                description: None,
            })
            .await
            .unwrap();
    }

    pub(crate) async fn connect(&self, spec: Value) -> strata_tools::ConnectionInfo {
        let spec: NewConnection = serde_json::from_value(spec).unwrap();
        self.tools.add_connection(spec).await.unwrap()
    }

    pub(crate) async fn grant(&self, agent: &str, tools: &str) {
        self.tools
            .grant(NewGrant {
                subject: Subject::Agent(agent.into()),
                tools: tools.into(),
            })
            .await
            .unwrap();
    }

    pub(crate) async fn call(
        &self,
        caller: &Caller,
        tool: &str,
        args: Value,
    ) -> Result<strata_tools::CallOutput, strata_tools::CallError> {
        self.tools
            .call(
                caller,
                serde_json::from_value(json!({"tool": tool, "arguments": args})).unwrap(),
            )
            .await
    }

    /// Every row of the call log, as JSON text.
    pub(crate) async fn log_text(&self) -> String {
        self.tools.flush_log().await;
        let page = self
            .tools
            .list_calls(&strata_tools::ListCalls {
                limit: Some(500),
                ..Default::default()
            })
            .await
            .unwrap();
        serde_json::to_string(&page).unwrap()
    }
}

/// A fresh agent id and its caller.
pub(crate) fn agent() -> (String, Caller) {
    let id = strata_core::Id::new("agt").to_string();
    (
        id.clone(),
        Caller::Agent {
            id,
            labels: BTreeMap::new(),
        },
    )
}

/// The folder holding the npm upstreams' `node_modules`.
pub(crate) fn node_modules() -> PathBuf {
    let dir = std::env::var_os("STRATA_TOOLS_UPSTREAMS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/upstreams"))
        .join("node_modules");
    assert!(
        dir.join("@modelcontextprotocol/server-everything").exists(),
        "\n\n*** The MCP reference servers are not installed: run `npm ci` in crates/tools/tests/upstreams \
         (CI does), or point STRATA_TOOLS_UPSTREAMS at a folder where they are. ***\n\n"
    );
    dir
}

/// `node` and the entry script of an npm package's server.
pub(crate) fn npm_server(package: &str) -> (String, String) {
    let script = node_modules()
        .join("@modelcontextprotocol")
        .join(package)
        .join("dist/index.js");
    ("node".to_string(), script.display().to_string())
}

/// A test script under `tests/upstreams`.
pub(crate) fn script(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/upstreams")
        .join(name)
        .display()
        .to_string()
}

/// The stdio `server-everything` connection definition named `name`.
pub(crate) fn everything(name: &str, env: Value) -> Value {
    let (cmd, script) = npm_server("server-everything");
    json!({"name": name, "upstream": {"kind": "mcp_stdio", "command": cmd, "args": [script, "stdio"], "env": env}})
}

/// A free loopback port (bound and released).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on `port`.
pub(crate) async fn wait_for_port(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on port {port}");
}

// --- captured logs ---

#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static LOGS: OnceLock<Captured> = OnceLock::new();

/// Sends every tracing event of every crate, at TRACE, into a buffer the tests read.
pub(crate) fn capture_logs() {
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        captured
    });
}

/// Everything logged so far, by every test in this binary.
pub(crate) fn logs() -> String {
    String::from_utf8_lossy(&LOGS.get().unwrap().0.lock().unwrap()).into_owned()
}

// --- the OpenAPI service written for the tests ---

/// Counts the requests that reached the service.
#[derive(Clone, Default)]
pub(crate) struct Counter(pub(crate) Arc<AtomicUsize>);

impl Counter {
    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        strata_core::Id::new("x").as_str().trim_start_matches("x_")
    )
}

/// What the test service knows and counts.
#[derive(Default)]
pub(crate) struct ServiceState {
    pub(crate) api_key: String,
    pub(crate) flaky_failures_left: usize,
    pub(crate) tokens_issued: Vec<String>,
    pub(crate) refresh_token: String,
    pub(crate) token_requests: usize,
    pub(crate) last_grant_type: String,
}

/// A running test service.
pub(crate) struct Service {
    pub(crate) base: String,
    pub(crate) calls: Counter,
    pub(crate) state: Arc<Mutex<ServiceState>>,
}

/// The test service's OpenAPI document (YAML), its server URL `base`.
pub(crate) fn service_document(base: &str) -> String {
    format!(
        r##"openapi: 3.0.3
info: {{title: test service, version: "1"}}
servers:
  - url: {base}
paths:
  /items/{{id}}:
    parameters:
      - {{name: id, in: path, required: true, schema: {{type: integer}}}}
    get:
      operationId: getItem
      summary: Read one item
      parameters:
        - {{name: verbose, in: query, schema: {{type: boolean}}}}
  /items:
    post:
      operationId: createItem
      summary: Create an item
      requestBody:
        required: true
        content:
          application/json:
            schema: {{$ref: "#/components/schemas/NewItem"}}
  /echo-headers:
    get: {{operationId: echoHeaders, summary: Answer with the request's headers and query}}
  /flaky:
    get: {{operationId: flaky, summary: Fails with 503 a few times then works}}
  /flaky-post:
    post: {{operationId: flakyPost, summary: Always fails with 503}}
  /slow:
    get: {{operationId: slow, summary: Answers after two seconds}}
  /huge:
    get: {{operationId: huge, summary: Answers with five megabytes}}
  /garbage:
    get: {{operationId: garbage, summary: Says JSON and sends something else}}
  /secure:
    get: {{operationId: secure, summary: Needs the bearer token the token endpoint issued last}}
components:
  schemas:
    NewItem:
      type: object
      required: [name]
      properties:
        name: {{type: string}}
        qty: {{type: integer, minimum: 1}}
"##
    )
}

/// Starts the test service on a free loopback port.
pub(crate) async fn service(api_key: &str) -> Service {
    use axum::extract::{Form, Path, Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::{get, post};

    type S = (Counter, Arc<Mutex<ServiceState>>);
    let calls = Counter::default();
    let state = Arc::new(Mutex::new(ServiceState {
        api_key: api_key.to_string(),
        flaky_failures_left: 2,
        refresh_token: "rt-0".into(),
        ..Default::default()
    }));
    fn count(s: &S) {
        s.0.0.fetch_add(1, Ordering::SeqCst);
    }
    async fn get_item(
        State(s): State<S>,
        headers: HeaderMap,
        Path(id): Path<i64>,
        Query(q): Query<BTreeMap<String, String>>,
    ) -> axum::response::Response {
        count(&s);
        let key = s.1.lock().unwrap().api_key.clone();
        if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(key.as_str()) {
            return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "bad key"}))).into_response();
        }
        axum::Json(json!({"id": id, "verbose": q.get("verbose")})).into_response()
    }
    async fn create_item(
        State(s): State<S>,
        axum::Json(body): axum::Json<Value>,
    ) -> axum::response::Response {
        count(&s);
        (StatusCode::CREATED, axum::Json(json!({"created": body}))).into_response()
    }
    async fn echo_headers(
        State(s): State<S>,
        headers: HeaderMap,
        Query(q): Query<BTreeMap<String, String>>,
    ) -> axum::Json<Value> {
        count(&s);
        let h: BTreeMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        axum::Json(json!({"headers": h, "query": q}))
    }
    async fn flaky(State(s): State<S>) -> axum::response::Response {
        count(&s);
        let mut st = s.1.lock().unwrap();
        if st.flaky_failures_left > 0 {
            st.flaky_failures_left -= 1;
            return (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response();
        }
        axum::Json(json!({"ok": true})).into_response()
    }
    async fn flaky_post(State(s): State<S>) -> axum::response::Response {
        count(&s);
        (StatusCode::SERVICE_UNAVAILABLE, "down").into_response()
    }
    async fn slow(State(s): State<S>) -> axum::Json<Value> {
        count(&s);
        tokio::time::sleep(Duration::from_secs(2)).await;
        axum::Json(json!({"slow": true}))
    }
    async fn huge(State(s): State<S>) -> axum::response::Response {
        count(&s);
        let body = format!("{{\"data\": \"{}\"}}", "x".repeat(5 * 1024 * 1024));
        ([("content-type", "application/json")], body).into_response()
    }
    async fn garbage(State(s): State<S>) -> axum::response::Response {
        count(&s);
        ([("content-type", "application/json")], "{\"unterminated\": [1, 2").into_response()
    }
    async fn secure(State(s): State<S>, headers: HeaderMap) -> axum::response::Response {
        count(&s);
        let want =
            s.1.lock()
                .unwrap()
                .tokens_issued
                .last()
                .map(|t| format!("Bearer {t}"));
        let got = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if want.is_some() && got == want {
            axum::Json(json!({"secure": true})).into_response()
        } else {
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": "bad token"})),
            )
                .into_response()
        }
    }
    async fn token(State(s): State<S>, Form(f): Form<BTreeMap<String, String>>) -> axum::response::Response {
        let mut st = s.1.lock().unwrap();
        st.token_requests += 1;
        let grant = f.get("grant_type").cloned().unwrap_or_default();
        st.last_grant_type = grant.clone();
        let ok = match grant.as_str() {
            "client_credentials" => {
                f.get("client_id").map(String::as_str) == Some("cid")
                    && f.get("client_secret") == Some(&st.api_key)
            }
            "refresh_token" => f.get("refresh_token") == Some(&st.refresh_token),
            _ => false,
        };
        if !ok {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": "invalid_grant", "echo": f})),
            )
                .into_response();
        }
        let n = st.token_requests;
        let access = format!("at-{n}-{}", st.api_key.len());
        st.tokens_issued.push(access.clone());
        let mut body = json!({"access_token": access, "token_type": "Bearer", "expires_in": 60});
        if grant == "refresh_token" {
            st.refresh_token = format!("rt-{n}");
            body["refresh_token"] = json!(st.refresh_token);
        }
        axum::Json(body).into_response()
    }

    let app = axum::Router::new()
        .route("/api/items/{id}", get(get_item))
        .route("/api/items", post(create_item))
        .route("/api/echo-headers", get(echo_headers))
        .route("/api/flaky", get(flaky))
        .route("/api/flaky-post", post(flaky_post))
        .route("/api/slow", get(slow))
        .route("/api/huge", get(huge))
        .route("/api/garbage", get(garbage))
        .route("/api/secure", get(secure))
        .route("/oauth/token", post(token))
        .with_state((calls.clone(), state.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Service { base, calls, state }
}

/// An OpenAPI connection `name` to `svc`, with `extra` fields merged into its upstream.
pub(crate) fn openapi_connection(name: &str, svc: &Service, extra: Value) -> Value {
    let mut upstream = json!({
        "kind": "openapi",
        "document": service_document(&format!("{}/api", svc.base)),
        "headers": {"x-api-key": {"secret": "API_KEY"}},
    });
    if let Value::Object(m) = extra {
        for (k, v) in m {
            upstream[k] = v;
        }
    }
    json!({"name": name, "upstream": upstream})
}
