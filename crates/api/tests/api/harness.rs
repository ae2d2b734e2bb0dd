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
    /// Removes what sandboxes left (mounts, cgroups), before the folder goes.
    _sandboxes: Option<SandboxGuard>,
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

    /// A fresh app with sandboxes (real ones: needs root and user namespaces),
    /// their configuration adjusted by `tweak`.
    pub(crate) async fn with_sandboxes(tweak: impl FnOnce(&mut strata_compute::Config)) -> App {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let cgroup_name = format!(
            "strata-apitest-{}",
            strata_core::Id::new("t").to_string().replace("t_", "")
        );
        let mut compute = strata_compute::Config::new(dir.path().join("compute"), sandbox_init());
        compute.cgroup_name = cgroup_name.clone();
        tweak(&mut compute);
        let guard = SandboxGuard {
            dir: dir.path().to_path_buf(),
            cgroup_name,
        };
        let mut app = App::in_dir(dir, strata_api::Options::default(), |c| c.compute = Some(compute)).await;
        app._sandboxes = Some(guard);
        app
    }

    /// A fresh app with `options`, its kernel configured by `configure`.
    pub(crate) async fn with(options: strata_api::Options, configure: impl FnOnce(&mut Config)) -> App {
        let dir = tempfile::tempdir().expect("a temporary directory");
        App::in_dir(dir, options, configure).await
    }

    async fn in_dir(dir: TempDir, options: strata_api::Options, configure: impl FnOnce(&mut Config)) -> App {
        App::in_dir_with_store(dir, |_| {}, options, configure).await
    }

    /// A fresh app whose store is opened with options `store` adjusts.
    pub(crate) async fn with_store(
        store: impl FnOnce(&mut strata_store::Options),
        configure: impl FnOnce(&mut Config),
    ) -> App {
        let dir = tempfile::tempdir().expect("a temporary directory");
        App::in_dir_with_store(dir, store, strata_api::Options::default(), configure).await
    }

    async fn in_dir_with_store(
        dir: TempDir,
        store: impl FnOnce(&mut strata_store::Options),
        options: strata_api::Options,
        configure: impl FnOnce(&mut Config),
    ) -> App {
        let mut store_options = strata_store::Options::new(strata_store::sqlite_url(dir.path()));
        store(&mut store_options);
        let store = strata_store::Store::open(store_options, MIGRATIONS)
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
            _sandboxes: None,
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

/// The sandbox init program: the cli's `strata-sandbox-init`, built once
/// beside this test binary if it is not there yet.
fn sandbox_init() -> std::path::PathBuf {
    static INIT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    INIT.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        // target/<profile>/deps/api-… → target/<profile>/strata-sandbox-init
        let profile_dir = exe
            .parent()
            .and_then(std::path::Path::parent)
            .expect("the test binary lives in target/<profile>/deps");
        let init = profile_dir.join("strata-sandbox-init");
        if !init.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = std::process::Command::new(cargo);
            cmd.args(["build", "-p", "strata-cli", "--bin", "strata-sandbox-init"]);
            if profile_dir.file_name().is_some_and(|p| p == "release") {
                cmd.arg("--release");
            }
            if let Some(target) = profile_dir.parent() {
                cmd.env("CARGO_TARGET_DIR", target);
            }
            let status = cmd.status().expect("cargo runs");
            assert!(status.success(), "building strata-sandbox-init failed");
        }
        init
    })
    .clone()
}

/// What a test's sandboxes leave when it ends early: workspace mounts under
/// its folder and its cgroups (with their processes).
struct SandboxGuard {
    dir: std::path::PathBuf,
    cgroup_name: String,
}

impl Drop for SandboxGuard {
    fn drop(&mut self) {
        let dir = self.dir.to_string_lossy().into_owned();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for mp in info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&dir))
        {
            let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
        }
        for ctrl in ["memory", "pids", "cpu", "cpuacct", "unified"] {
            remove_cgroup(
                &std::path::Path::new("/sys/fs/cgroup")
                    .join(ctrl)
                    .join(&self.cgroup_name),
            );
        }
    }
}

fn remove_cgroup(d: &std::path::Path) {
    if let Ok(es) = std::fs::read_dir(d) {
        for e in es.flatten() {
            if e.path().is_dir() {
                remove_cgroup(&e.path());
            }
        }
    }
    for _ in 0..100 {
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if std::fs::remove_dir(d).is_ok() || !d.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
