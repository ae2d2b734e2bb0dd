//! End-to-end tests of the task API: the real `strata` binary as a child process,
//! with real worker processes (`tests/fixtures/worker.py`, Python 3 standard
//! library only) leasing, heartbeating and completing tasks over HTTP, and both
//! workers and server killed with SIGKILL along the way.
//!
//! Every wait has a deadline, and every child is killed when its guard drops, so a
//! misbehaving binary or worker fails a test instead of hanging the suite.

#![allow(clippy::unwrap_used)]

mod support;

mod workers {
    use crate::support::{Server, call};
    use std::io::{BufRead, BufReader, Read};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::thread;
    use std::time::{Duration, Instant};

    use reqwest::Method;
    use serde_json::{Value, json};

    /// The worker script.
    pub(crate) const WORKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/worker.py");

    /// SIGKILL (if still running), and reap.
    fn kill_child(child: &mut Child) {
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// A running `worker.py`, killed when dropped.
    pub(crate) struct Worker {
        child: Child,
        done: Arc<Mutex<Vec<String>>>,
        log: Arc<Mutex<String>>,
        pub(crate) label: String,
    }

    impl Worker {
        /// Starts a worker against `url` with an agent `token`; `label` goes into
        /// each result's `by`.
        pub(crate) fn start(url: &str, token: &str, label: &str, extra: &[&str]) -> Worker {
            let mut child = Command::new("python3")
                .arg("-u")
                .arg(WORKER)
                .args([url, token, "--label", label])
                .args(extra)
                .env("PYTHONUNBUFFERED", "1")
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn python3 worker.py (is python3 on PATH?)");
            let done = Arc::new(Mutex::new(Vec::new()));
            let log = Arc::new(Mutex::new(String::new()));
            let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
            let sink = done.clone();
            thread::spawn(move || {
                for line in stdout.lines() {
                    let Ok(line) = line else { break };
                    if let Some(id) = line.strip_prefix("done ") {
                        sink.lock().expect("done lock").push(id.trim().to_string());
                    }
                }
            });
            let mut stderr = child.stderr.take().expect("piped stderr");
            let sink = log.clone();
            thread::spawn(move || {
                let mut buf = [0_u8; 4096];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut log = sink.lock().expect("log lock");
                    log.push_str(&String::from_utf8_lossy(&buf[..n]));
                    // Keep only the tail: a worker retrying against a dead server
                    // writes a line every 100 ms.
                    if log.len() > 64 * 1024 {
                        let cut = log.len() - 32 * 1024;
                        let cut = (cut..log.len())
                            .find(|i| log.is_char_boundary(*i))
                            .unwrap_or(log.len());
                        log.drain(..cut);
                    }
                }
            });
            Worker {
                child,
                done,
                log,
                label: label.to_string(),
            }
        }

        /// The task ids it has printed as done.
        pub(crate) fn done(&self) -> Vec<String> {
            self.done.lock().expect("done lock").clone()
        }

        /// The tail of its stderr.
        pub(crate) fn log(&self) -> String {
            self.log.lock().expect("log lock").clone()
        }

        /// Whether it is still running.
        pub(crate) fn running(&mut self) -> bool {
            matches!(self.child.try_wait(), Ok(None))
        }

        /// SIGKILL, and reap the process.
        pub(crate) fn kill(&mut self) {
            kill_child(&mut self.child);
        }
    }

    impl Drop for Worker {
        fn drop(&mut self) {
            kill_child(&mut self.child);
        }
    }

    /// `POST {base}{path}` with `body`.
    pub(crate) async fn post(
        http: &reqwest::Client,
        base: &str,
        path: &str,
        token: &str,
        body: Value,
    ) -> (u16, Value) {
        call(http, Method::POST, &format!("{base}{path}"), token, Some(&body)).await
    }

    /// `GET {base}{path}`.
    pub(crate) async fn get(http: &reqwest::Client, base: &str, path: &str, token: &str) -> (u16, Value) {
        call(http, Method::GET, &format!("{base}{path}"), token, None).await
    }

    /// An agent declaring `capabilities`: (its id, its token).
    pub(crate) async fn create_agent(
        http: &reqwest::Client,
        server: &Server,
        name: &str,
        capabilities: Value,
    ) -> (String, String) {
        let body = json!({"name": name, "capabilities": capabilities});
        let (status, v) = post(http, &server.url, "/v1/agents", &server.admin_token, body).await;
        assert_eq!(status, 201, "create {name}: {v}");
        let id = v["id"].as_str().expect("agent id").to_string();
        let token = v["token"].as_str().expect("agent token").to_string();
        assert!(id.starts_with("agt_") && token.starts_with("stk_"), "{v}");
        (id, token)
    }

    /// A task as `GET /v1/tasks/{id}` shows it.
    pub(crate) async fn task(http: &reqwest::Client, server: &Server, id: &str) -> Value {
        let (status, v) = get(http, &server.url, &format!("/v1/tasks/{id}"), &server.admin_token).await;
        assert_eq!(status, 200, "GET task {id}: {v}");
        v
    }

    /// Every task (in `state`, if given), read page by page with `after=<next>`.
    pub(crate) async fn list_tasks(
        http: &reqwest::Client,
        server: &Server,
        state: Option<&str>,
    ) -> Vec<Value> {
        let mut items = Vec::new();
        let mut after = String::new();
        loop {
            let mut path = format!("/v1/tasks?limit=500&after={after}");
            if let Some(s) = state {
                path.push_str(&format!("&state={s}"));
            }
            let (status, page) = get(http, &server.url, &path, &server.admin_token).await;
            assert_eq!(status, 200, "{path}: {page}");
            items.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next"].as_str() {
                Some(next) => after = next.to_string(),
                None => return items,
            }
        }
    }

    /// The outcomes of a task's attempts, oldest first.
    pub(crate) fn outcomes(task: &Value) -> Vec<String> {
        task["history"]
            .as_array()
            .map(|h| {
                h.iter()
                    .map(|a| a["outcome"].as_str().unwrap_or("<open>").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Polls `check` every 100 ms until it returns `Some`, or panics with
    /// `what()` after `timeout`.
    pub(crate) async fn wait_for<T, F, Fut>(timeout: Duration, mut check: F, what: impl Fn() -> String) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?}: {}", what());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn data_dir(tmp: &tempfile::TempDir) -> PathBuf {
        tmp.path().join("data")
    }
}

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Server, http};
use workers::{Worker, create_agent, data_dir, get, list_tasks, outcomes, post, task, wait_for};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("make a temporary folder")
}

fn work_capability() -> Value {
    json!([{"name": "work"}])
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_worker_mid_task_loses_its_lease_and_another_worker_completes_it() {
    let tmp = tempdir();
    let server = Server::start(&data_dir(&tmp));
    let http = http();
    let (a_id, a_token) = create_agent(&http, &server, "worker-a", work_capability()).await;
    let (b_id, b_token) = create_agent(&http, &server, "worker-b", work_capability()).await;

    let input = json!({"text": "the only task", "n": 1});
    let body = json!({"capability": "work", "input": input, "max_attempts": 5});
    let (status, submitted) = post(&http, &server.url, "/v1/tasks", &server.admin_token, body).await;
    assert_eq!(status, 201, "{submitted}");
    assert_eq!(submitted["state"], "queued", "{submitted}");
    let id = submitted["id"].as_str().expect("task id").to_string();

    // A leases the task, then "works" for a minute, heartbeating its 1 s lease.
    let mut worker_a = Worker::start(&server.url, &a_token, &a_id, &["--sleep-ms", "60000"]);
    let leased = wait_for(
        Duration::from_secs(30),
        || async {
            let t = task(&http, &server, &id).await;
            (t["state"] == "leased" && t["leased_by"] == a_id.as_str()).then_some(t)
        },
        || format!("task {id} never leased by A; worker A log:\n{}", worker_a.log()),
    )
    .await;
    assert_eq!(leased["attempts"], 1, "{leased}");

    // Longer than the lease: A keeps it only by heartbeating.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let held = task(&http, &server, &id).await;
    assert_eq!(
        held["state"], "leased",
        "A's heartbeats did not keep its lease: {held}"
    );
    assert_eq!(held["leased_by"], a_id.as_str(), "{held}");
    assert_eq!(
        held["attempts"], 1,
        "the lease changed hands while A was alive: {held}"
    );
    assert!(worker_a.running(), "worker A exited:\n{}", worker_a.log());

    worker_a.kill();
    let killed = Instant::now();
    let worker_b = Worker::start(&server.url, &b_token, &b_id, &[]);
    let done = wait_for(
        Duration::from_secs(10),
        || async {
            let t = task(&http, &server, &id).await;
            (t["state"] == "succeeded").then_some(t)
        },
        || {
            format!(
                "task {id} not succeeded 10 s after killing A; worker B log:\n{}\nserver log:\n{}",
                worker_b.log(),
                server.log()
            )
        },
    )
    .await;
    println!("task completed by B {:?} after A was killed", killed.elapsed());

    assert_eq!(done["result"]["by"], b_id.as_str(), "{done}");
    assert_eq!(done["result"]["input"], input, "{done}");
    assert_eq!(outcomes(&done), ["expired", "succeeded"], "{done}");
    let holders: Vec<&str> = done["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|a| a["agent_id"].as_str())
        .collect();
    assert_eq!(holders, [a_id.as_str(), b_id.as_str()], "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert!(
        worker_a.done().is_empty(),
        "A completed something: {:?}",
        worker_a.done()
    );
    let b_done = wait_for(
        Duration::from_secs(5),
        || async {
            let d = worker_b.done();
            (!d.is_empty()).then_some(d)
        },
        || format!("B never printed its completion; its log:\n{}", worker_b.log()),
    )
    .await;
    assert_eq!(b_done, [id.as_str()], "B's completions");
    assert_eq!(worker_b.label, b_id);
}

/// What the submitters saw.
#[derive(Default)]
struct Submissions {
    /// Tasks acknowledged with a full 201 body, with their input.
    acked: Vec<(String, Value)>,
    /// Answers other than 201.
    other: Vec<String>,
    /// Requests that got no answer (the server was down).
    unreachable: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_server_under_load_loses_no_acknowledged_task_and_completes_none_twice() {
    let tmp = tempdir();
    let dir = data_dir(&tmp);
    let mut server = Server::start(&dir);
    let http = http();
    let mut agents = Vec::new();
    for n in 0..4 {
        agents.push(create_agent(&http, &server, &format!("load-{n}"), work_capability()).await);
    }
    let spawn_workers = |url: &str| -> Vec<Worker> {
        agents
            .iter()
            .map(|(id, token)| Worker::start(url, token, id, &["--sleep-ms", "5"]))
            .collect()
    };
    let mut workers = spawn_workers(&server.url);

    let url = Arc::new(Mutex::new(server.url.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut submitters = Vec::new();
    for c in 0..4 {
        let (url, token, stop) = (url.clone(), server.admin_token.clone(), stop.clone());
        submitters.push(tokio::spawn(async move {
            let http = support::http();
            let mut seen = Submissions::default();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let input = json!({"submitter": c, "i": i});
                let body = json!({"capability": "work", "input": input, "max_attempts": 5});
                let base = url.lock().expect("url lock").clone();
                let sent = http
                    .post(format!("{base}/v1/tasks"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await;
                let Ok(resp) = sent else {
                    seen.unreachable += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let status = resp.status().as_u16();
                // Acknowledged only once the whole 201 body has arrived.
                match resp.json::<Value>().await {
                    Ok(v) if status == 201 => {
                        let id = v["id"]
                            .as_str()
                            .unwrap_or_else(|| panic!("201 without an id: {v}"));
                        assert_eq!(v["state"], "queued", "{v}");
                        seen.acked.push((id.to_string(), input));
                    }
                    Ok(v) => seen.other.push(format!("{status} {v}")),
                    Err(_) => seen.unreachable += 1, // cut off by the kill: not acknowledged
                }
            }
            seen
        }));
    }

    // The kill must find the workers busy: wait for their first completion (the
    // interpreters may be slow to start on a loaded machine), then load for 2 s.
    let started = Instant::now();
    wait_for(
        Duration::from_secs(30),
        || async { workers.iter().any(|w| !w.done().is_empty()).then_some(()) },
        || {
            let logs: Vec<String> = workers.iter().map(|w| w.log()).collect();
            format!(
                "no worker completed a task; their logs:\n{}",
                logs.join("\n---\n")
            )
        },
    )
    .await;
    println!("first completion {:?} after the load started", started.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let done_before: usize = workers.iter().map(|w| w.done().len()).sum();
    server.kill();
    // The old workers die too (they point at the dead server's port); keep what
    // they printed.
    let mut done_lines: Vec<(String, String)> = Vec::new();
    for mut w in workers.drain(..) {
        w.kill();
        done_lines.extend(w.done().into_iter().map(|id| (id, w.label.clone())));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let restarted = Instant::now();
    let server = Server::start(&dir);
    *url.lock().expect("url lock") = server.url.clone();
    let workers = spawn_workers(&server.url);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);

    let mut seen = Submissions::default();
    for s in submitters {
        let s = tokio::time::timeout(Duration::from_secs(60), s)
            .await
            .expect("submitters stop within 60 s")
            .expect("submitter task");
        seen.acked.extend(s.acked);
        seen.other.extend(s.other);
        seen.unreachable += s.unreachable;
    }
    println!(
        "acknowledged tasks: {} ({} requests unanswered while the server was down); completions before the kill: {done_before}",
        seen.acked.len(),
        seen.unreachable
    );
    assert!(seen.other.is_empty(), "submissions refused: {:?}", seen.other);
    assert!(seen.unreachable > 0, "the submitters had stopped before the kill");
    assert!(!seen.acked.is_empty(), "no task was acknowledged");
    let acked: HashMap<String, Value> = seen.acked.iter().cloned().collect();
    assert_eq!(acked.len(), seen.acked.len(), "an id was acknowledged twice");

    // Every acknowledged task — and every other task stored — ends up succeeded.
    let all = wait_for(
        Duration::from_secs(60),
        || async {
            let all = list_tasks(&http, &server, None).await;
            let stuck: Vec<&Value> = all
                .iter()
                .filter(|t| !matches!(t["state"].as_str(), Some("queued" | "leased" | "succeeded")))
                .collect();
            assert!(stuck.is_empty(), "tasks that will never succeed: {stuck:?}");
            let ids: HashSet<&str> = all.iter().filter_map(|t| t["id"].as_str()).collect();
            let lost: Vec<&String> = acked.keys().filter(|id| !ids.contains(id.as_str())).collect();
            assert!(lost.is_empty(), "acknowledged tasks lost by the crash: {lost:?}");
            all.iter().all(|t| t["state"] == "succeeded").then_some(all)
        },
        || {
            let logs: Vec<String> = workers.iter().map(|w| w.log()).collect();
            format!(
                "tasks not all succeeded 60 s after the restart; worker logs:\n{}\nserver log:\n{}",
                logs.join("\n---\n"),
                server.log()
            )
        },
    )
    .await;
    let took = restarted.elapsed();
    println!(
        "restart to all {} tasks succeeded: {took:?} ({} acknowledged, {} stored without an acknowledgement)",
        all.len(),
        acked.len(),
        all.len() - acked.len()
    );
    let succeeded = list_tasks(&http, &server, Some("succeeded")).await;
    assert_eq!(succeeded.len(), all.len(), "state=succeeded listing disagrees");

    for w in &workers {
        done_lines.extend(w.done().into_iter().map(|id| (id, w.label.clone())));
    }

    // Read every task with its history, 8 at a time.
    let ids: Vec<String> = all
        .iter()
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect();
    let base = Arc::new((server.url.clone(), server.admin_token.clone()));
    let mut readers = Vec::new();
    for chunk in ids.chunks(ids.len().div_ceil(8).max(1)) {
        let (chunk, base) = (chunk.to_vec(), base.clone());
        readers.push(tokio::spawn(async move {
            let http = support::http();
            let mut out = Vec::new();
            for id in chunk {
                let (status, t) = get(&http, &base.0, &format!("/v1/tasks/{id}"), &base.1).await;
                assert_eq!(status, 200, "GET {id}: {t}");
                out.push(t);
            }
            out
        }));
    }
    let mut full = HashMap::new();
    for r in readers {
        for t in r.await.expect("reader task") {
            full.insert(t["id"].as_str().expect("id").to_string(), t);
        }
    }

    let mut problems = Vec::new();
    let mut retried = 0;
    for (id, t) in &full {
        let outs = outcomes(t);
        let wins = outs.iter().filter(|o| *o == "succeeded").count();
        if t["state"] != "succeeded" {
            problems.push(format!("{id}: state {}", t["state"]));
        }
        if wins != 1 || outs.iter().any(|o| o != "succeeded" && o != "expired") {
            problems.push(format!("{id}: attempt outcomes {outs:?}"));
        }
        if outs.len() > 1 {
            retried += 1;
        }
        if t["attempts"].as_u64() != Some(outs.len() as u64) {
            problems.push(format!("{id}: attempts {} but history {outs:?}", t["attempts"]));
        }
        let winner = t["history"]
            .as_array()
            .and_then(|h| h.iter().find(|a| a["outcome"] == "succeeded"))
            .map(|a| a["agent_id"].clone());
        if winner.as_ref() != Some(&t["result"]["by"]) {
            problems.push(format!(
                "{id}: result by {} but succeeded attempt by {winner:?}",
                t["result"]["by"]
            ));
        }
        if t["result"]["input"] != t["input"] {
            problems.push(format!("{id}: result {} for input {}", t["result"], t["input"]));
        }
        if let Some(input) = acked.get(id)
            && &t["input"] != input
        {
            problems.push(format!("{id}: input {} but submitted {input}", t["input"]));
        }
    }
    for id in acked.keys() {
        if !full.contains_key(id) {
            problems.push(format!("{id}: acknowledged but missing"));
        }
    }
    // A completion acknowledged to a worker is one that committed.
    let mut printed: HashMap<&str, Vec<&str>> = HashMap::new();
    for (id, by) in &done_lines {
        printed.entry(id).or_default().push(by);
    }
    for (id, bys) in &printed {
        if bys.len() > 1 {
            problems.push(format!(
                "{id}: completion acknowledged {} times, to {bys:?}",
                bys.len()
            ));
        }
        match full.get(*id) {
            Some(t) if t["result"]["by"] == bys[0] => {}
            Some(t) => problems.push(format!(
                "{id}: acknowledged to {} but result by {}",
                bys[0], t["result"]["by"]
            )),
            None => problems.push(format!("{id}: a worker completed a task that does not exist")),
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems, first ones: {:#?}",
        problems.len(),
        &problems[..problems.len().min(20)]
    );
    println!(
        "{} tasks verified: {retried} with an expired attempt before their success; {} completions acknowledged to workers",
        full.len(),
        done_lines.len()
    );

    let (status, verify) = get(&http, &server.url, "/v1/audit/verify", &server.admin_token).await;
    assert_eq!(status, 200, "{verify}");
    assert_eq!(verify["ok"], true, "audit chain after the crash: {verify}");
    println!("audit chain ok: {} entries", verify["entries"]);
}

/// Asserts a refusal's status and problem code.
fn refused(what: &str, (status, body): (u16, Value), want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{what}: {body}");
    assert_eq!(body["code"], want_code, "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_task_calls_change_nothing() {
    let tmp = tempdir();
    let server = Server::start(&data_dir(&tmp));
    let http = http();
    let (w1_id, w1) = create_agent(&http, &server, "w1", work_capability()).await;
    let (_w2_id, w2) = create_agent(&http, &server, "w2", work_capability()).await;
    let strict = json!([{"name": "strict", "input_schema": {"type": "object", "required": ["text"]}}]);
    let (_s_id, _s) = create_agent(&http, &server, "s1", strict).await;
    let admin = server.admin_token.clone();
    let base = server.url.clone();

    // Nobody declares the capability: nothing is queued.
    let before = list_tasks(&http, &server, None).await;
    assert!(before.is_empty(), "{before:?}");
    let r = post(
        &http,
        &base,
        "/v1/tasks",
        &admin,
        json!({"capability": "nobody-does-this", "input": {}}),
    )
    .await;
    refused("unknown capability", r, 422, "no_capable_agent");
    assert_eq!(
        list_tasks(&http, &server, None).await,
        before,
        "after an unroutable submit"
    );

    // The input misses the schema's required field: nothing is queued.
    let r = post(
        &http,
        &base,
        "/v1/tasks",
        &admin,
        json!({"capability": "strict", "input": {"txt": "typo"}}),
    )
    .await;
    refused("input against the schema", r, 400, "invalid_input");
    assert_eq!(
        list_tasks(&http, &server, None).await,
        before,
        "after an invalid input"
    );
    // The same capability with a valid input is accepted: the refusal was the schema's.
    let (status, ok) = post(
        &http,
        &base,
        "/v1/tasks",
        &admin,
        json!({"capability": "strict", "input": {"text": "hi"}}),
    )
    .await;
    assert_eq!(status, 201, "{ok}");

    // w1 leases a `work` task.
    let input = json!({"text": "mine"});
    let (status, sub) = post(
        &http,
        &base,
        "/v1/tasks",
        &admin,
        json!({"capability": "work", "input": input}),
    )
    .await;
    assert_eq!(status, 201, "{sub}");
    let id = sub["id"].as_str().expect("task id").to_string();
    let queued = task(&http, &server, &id).await;
    let r = post(
        &http,
        &base,
        "/v1/tasks/lease",
        &w1,
        json!({"max": 1, "lease_ms": 50}),
    )
    .await;
    refused("a lease shorter than 100 ms", r, 400, "invalid_request");
    assert_eq!(task(&http, &server, &id).await, queued, "after a refused lease");
    let (status, leased) = post(
        &http,
        &base,
        "/v1/tasks/lease",
        &w1,
        json!({"max": 1, "wait_ms": 1000, "lease_ms": 60000}),
    )
    .await;
    assert_eq!(status, 200, "{leased}");
    let tasks = leased["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 1, "{leased}");
    assert_eq!(tasks[0]["id"], id.as_str(), "{leased}");
    assert_eq!(tasks[0]["attempt"], 1, "{leased}");
    assert_eq!(tasks[0]["input"], input, "{leased}");
    let lease_id = tasks[0]["lease_id"].as_str().expect("lease_id").to_string();
    let held = task(&http, &server, &id).await;
    assert_eq!(held["state"], "leased", "{held}");
    assert_eq!(held["leased_by"], w1_id.as_str(), "{held}");

    // w2 tries to finish, extend or fail w1's lease.
    let complete = format!("/v1/tasks/{id}/complete");
    let heartbeat = format!("/v1/tasks/{id}/heartbeat");
    let r = post(
        &http,
        &base,
        &complete,
        &w2,
        json!({"lease_id": lease_id, "result": {"by": "w2"}}),
    )
    .await;
    refused("completing w1's lease as w2", r, 409, "lease_lost");
    assert_eq!(task(&http, &server, &id).await, held, "after a foreign complete");
    let r = post(&http, &base, &heartbeat, &w2, json!({"lease_id": lease_id})).await;
    refused("heartbeating w1's lease as w2", r, 409, "lease_lost");
    let r = post(
        &http,
        &base,
        &format!("/v1/tasks/{id}/fail"),
        &w2,
        json!({"lease_id": lease_id, "error": "nope", "retryable": false}),
    )
    .await;
    refused("failing w1's lease as w2", r, 409, "lease_lost");
    // w1 with a made-up lease id.
    let r = post(
        &http,
        &base,
        &complete,
        &w1,
        json!({"lease_id": "lse_00000000000000000000000000", "result": {}}),
    )
    .await;
    refused("completing with a made-up lease", r, 409, "lease_lost");
    assert_eq!(task(&http, &server, &id).await, held, "after foreign lease calls");

    // w1 still holds it and completes it.
    let (status, outcome) = post(
        &http,
        &base,
        &complete,
        &w1,
        json!({"lease_id": lease_id, "result": {"by": w1_id}}),
    )
    .await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome, json!({"id": id, "state": "succeeded"}));
    let finished = task(&http, &server, &id).await;
    assert_eq!(finished["state"], "succeeded", "{finished}");
    assert_eq!(finished["result"], json!({"by": w1_id}), "{finished}");
    assert_eq!(outcomes(&finished), ["succeeded"], "{finished}");
    let all = list_tasks(&http, &server, None).await;

    // Nothing moves a finished task.
    let r = post(&http, &base, &heartbeat, &w1, json!({"lease_id": lease_id})).await;
    refused("heartbeating a finished task", r, 409, "task_finished");
    let r = post(
        &http,
        &base,
        &heartbeat,
        &w2,
        json!({"lease_id": lease_id, "lease_ms": 1000}),
    )
    .await;
    refused(
        "heartbeating a finished task as another agent",
        r,
        409,
        "task_finished",
    );
    let r = post(
        &http,
        &base,
        &complete,
        &w1,
        json!({"lease_id": lease_id, "result": {"by": "again"}}),
    )
    .await;
    refused("completing a finished task again", r, 409, "task_finished");
    let r = post(&http, &base, &format!("/v1/tasks/{id}/cancel"), &admin, json!({})).await;
    refused("cancelling a finished task", r, 409, "task_finished");
    assert_eq!(
        task(&http, &server, &id).await,
        finished,
        "after calls on a finished task"
    );
    assert_eq!(
        list_tasks(&http, &server, None).await,
        all,
        "the task list after the refusals"
    );
}

/// Runs `strata ARGS` against `server` (STRATA_URL/STRATA_TOKEN) and returns stdout.
fn cli(server: &Server, args: &[&str]) -> String {
    let out = support::strata()
        .env("STRATA_URL", &server.url)
        .env("STRATA_TOKEN", &server.admin_token)
        .args(args)
        .output()
        .expect("run strata");
    assert!(
        out.status.success(),
        "strata {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn task_cli_submits_lists_gets_cancels_and_watches() {
    let tmp = tempdir();
    let server = Server::start(&data_dir(&tmp));
    let http = http();
    create_agent(&http, &server, "w1", work_capability()).await;

    // `task watch` follows the event stream from the start; it runs until killed.
    let mut watch = support::strata()
        .env("STRATA_URL", &server.url)
        .env("STRATA_TOKEN", &server.admin_token)
        .args(["task", "watch", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn strata task watch");

    let submitted: Value = serde_json::from_str(&cli(
        &server,
        &[
            "task",
            "submit",
            "work",
            "--input",
            r#"{"n": 1}"#,
            "--priority",
            "5",
            "-l",
            "team=a",
            "-o",
            "json",
        ],
    ))
    .expect("submit prints JSON");
    let id = submitted["id"].as_str().expect("a task id").to_string();
    assert_eq!(submitted["state"], "queued");

    let got: Value = serde_json::from_str(&cli(&server, &["task", "get", &id, "-o", "json"])).expect("JSON");
    assert_eq!(
        (got["input"].clone(), got["priority"].clone()),
        (json!({"n": 1}), json!(5))
    );
    assert_eq!(got["labels"], json!({"team": "a"}));

    let table = cli(&server, &["task", "list", "--state", "queued"]);
    assert!(
        table.lines().next().is_some_and(|h| h.starts_with("ID")),
        "{table}"
    );
    assert!(table.contains(&id), "{table}");

    let cancelled: Value =
        serde_json::from_str(&cli(&server, &["task", "cancel", &id, "-o", "json"])).expect("JSON");
    assert_eq!(cancelled["state"], "cancelled");
    let empty = cli(&server, &["task", "list", "--state", "queued", "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&empty).expect("JSON")["items"],
        json!([])
    );

    // The watcher saw the submission and the cancellation of this task, in order.
    let stdout = watch.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut kinds = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while kinds.len() < 2 && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let ev: Value = serde_json::from_str(&line).expect("watch prints JSON lines");
            assert!(
                ev["kind"].as_str().is_some_and(|k| k.starts_with("task.")),
                "{ev}"
            );
            if ev["subject"] == id {
                kinds.push(ev["kind"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(kinds, vec!["task.submit", "task.cancel"]);
}
