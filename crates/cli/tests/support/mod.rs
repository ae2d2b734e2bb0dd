//! Helpers shared by the end-to-end test binaries: the real `strata` binary as a
//! child process, killed when its guard drops, and a few HTTP shortcuts.

#![allow(dead_code)]

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_strata");

/// The longest a child may take to start, or a command to finish.
pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// A `strata` command that inherits no `STRATA_*` settings from the caller.
pub(crate) fn strata() -> Command {
    let mut cmd = Command::new(BIN);
    for key in [
        "STRATA_URL",
        "STRATA_TOKEN",
        "STRATA_DATA_DIR",
        "STRATA_DATABASE_URL",
        "STRATA_MASTER_KEY",
        "STRATA_LISTEN",
        "STRATA_MAX_BODY_BYTES",
        "STRATA_MODELS_DIR",
        "STRATA_LLM_URL",
        "STRATA_LLM_MODEL",
        "STRATA_LLM_API_KEY",
    ] {
        cmd.env_remove(key);
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

/// What a finished command printed.
pub(crate) struct Output {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl Output {
    /// Panics unless the command exited 0.
    pub(crate) fn success(self) -> Output {
        assert!(self.status.success(), "command failed:\n{self}");
        self
    }

    /// Panics unless the command exited non-zero.
    pub(crate) fn failure(self) -> Output {
        assert!(!self.status.success(), "command should have failed:\n{self}");
        self
    }

    /// Stdout parsed as JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits up to `timeout` for `child` to exit.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("poll a child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to completion; kills it and panics after `timeout`.
pub(crate) fn run_for(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn strata");
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let status = wait_timeout(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    let Some(status) = status else {
        panic!(
            "{cmd:?} did not finish within {timeout:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        );
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Runs `strata ARGS…` with the default deadline.
pub(crate) fn run(args: &[&str]) -> Output {
    let mut cmd = strata();
    cmd.args(args);
    run_for(cmd, WAIT)
}

/// Runs a client command against `server`, authenticating with `token`, or
/// with the data folder's admin.token when `token` is `None`.
pub(crate) fn client_cmd(server: &Server, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = strata();
    cmd.args(args).arg("--data-dir").arg(&server.dir);
    cmd.env("STRATA_URL", &server.url);
    if let Some(t) = token {
        cmd.env("STRATA_TOKEN", t);
    }
    run_for(cmd, WAIT)
}

/// Why `strata serve` exited instead of serving.
pub(crate) struct Refused {
    pub(crate) status: Option<ExitStatus>,
    pub(crate) stderr: String,
}

/// A running `strata serve`, killed when dropped.
pub(crate) struct Server {
    child: Child,
    log: Arc<Mutex<String>>,
    pub(crate) url: String,
    pub(crate) admin_token: String,
    pub(crate) dir: PathBuf,
}

impl Server {
    /// Starts a server on `dir` and waits for its URL; panics if it does not serve.
    pub(crate) fn start(dir: &Path) -> Server {
        Server::try_start(dir).unwrap_or_else(|r| {
            panic!(
                "strata serve exited ({:?}) instead of serving:\n{}",
                r.status, r.stderr
            )
        })
    }

    /// Starts a server on `dir`: its URL once it serves, or how it exited.
    pub(crate) fn try_start(dir: &Path) -> Result<Server, Refused> {
        let mut cmd = strata();
        cmd.arg("serve");
        Server::try_start_with(dir, cmd)
    }

    /// Like [`Server::try_start`] for a prepared `strata() serve …` command
    /// (extra flags, env vars); the data folder and listen address are added.
    pub(crate) fn try_start_with(dir: &Path, mut cmd: Command) -> Result<Server, Refused> {
        let mut child = cmd
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strata serve");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let sink = log.clone();
        // Reads stderr to the end (so the server never blocks on a full pipe),
        // keeping it for failure messages and sending the URL when announced.
        thread::spawn(move || {
            let mut buf = Vec::new();
            while matches!(stderr.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&buf).into_owned();
                buf.clear();
                sink.lock().expect("log lock").push_str(&line);
                if let Some(rest) = line.strip_prefix("strata listening on ") {
                    let url = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(url.to_string());
                }
            }
        });
        match rx.recv_timeout(WAIT) {
            Ok(url) => {
                let admin_token = std::fs::read_to_string(dir.join("admin.token"))
                    .expect("admin.token exists once the server serves")
                    .trim()
                    .to_string();
                Ok(Server {
                    child,
                    log,
                    url,
                    admin_token,
                    dir: dir.to_path_buf(),
                })
            }
            Err(RecvTimeoutError::Disconnected) => {
                // Stderr closed without a URL: the process is exiting.
                let status = wait_timeout(&mut child, WAIT);
                if status.is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                let stderr = log.lock().expect("log lock").clone();
                Err(Refused { status, stderr })
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "strata serve printed no URL within {WAIT:?}:\n{}",
                    log.lock().expect("log lock")
                );
            }
        }
    }

    /// What the server has written to stderr so far.
    pub(crate) fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// SIGKILL, and reap the process.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub(crate) fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        wait_timeout(&mut self.child, timeout)
    }

    /// Stops the server gracefully if it manages within a few seconds, else kills it.
    pub(crate) fn stop(&mut self) {
        if self.terminate(Duration::from_secs(10)).is_none() {
            eprintln!("strata serve ignored SIGTERM for 10 s; killing it");
            self.kill();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// An HTTP client that never waits forever.
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build an HTTP client")
}

/// Sends one request; returns the status and the JSON body (`Null` if none).
pub(crate) async fn call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Creates an agent over HTTP with the admin token; returns its JSON.
pub(crate) async fn create_agent(http: &reqwest::Client, server: &Server, name: &str) -> Value {
    let body = serde_json::json!({"name": name, "capabilities": [{"name": "summarize"}]});
    let url = format!("{}/v1/agents", server.url);
    let (status, v) = call(http, Method::POST, &url, &server.admin_token, Some(&body)).await;
    assert_eq!(status, 201, "create {name}: {v}");
    v
}

/// Registers a connection over HTTP with the admin token; returns its JSON.
pub(crate) async fn add_connection(http: &reqwest::Client, server: &Server, spec: &Value) -> Value {
    let url = format!("{}/v1/connections", server.url);
    let (status, v) = call(http, Method::POST, &url, &server.admin_token, Some(spec)).await;
    assert_eq!(status, 201, "add connection {}: {v}", spec["name"]);
    v
}

/// Every audit entry, read page by page with `after=<next>`.
pub(crate) async fn audit_entries(http: &reqwest::Client, server: &Server) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let url = format!("{}/v1/audit?limit=1000&after={after}", server.url);
        let (status, page) = call(http, Method::GET, &url, &server.admin_token, None).await;
        assert_eq!(status, 200, "{url}: {page}");
        entries.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next"].as_i64() {
            Some(next) => after = next,
            None => return entries,
        }
    }
}

/// `strata audit verify --data-dir DIR --json`: the exit status and the report.
pub(crate) fn verify_offline(dir: &Path) -> (Output, Value) {
    let mut cmd = strata();
    cmd.args(["audit", "verify", "--json", "--data-dir"]).arg(dir);
    let out = run_for(cmd, WAIT);
    let report = out.json();
    (out, report)
}
