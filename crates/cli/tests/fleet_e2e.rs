//! End-to-end tests of managed agents: the real `strata` binary as a child
//! process, `strata apply -f` putting deployments, and the server's reconciler
//! starting, restarting and stopping real `sh` and `python3` processes, in
//! sandboxes (the default) and as plain children (`sandbox: false`).
//!
//! Every wait has a deadline, and the server is killed when its guard drops, so a
//! misbehaving reconciler fails a test instead of hanging the suite.

#![allow(clippy::unwrap_used)]

mod support;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use support::{Server, call, client_cmd, http};

/// A temporary folder the sandboxes' unprivileged uids can reach (a
/// replica's `workdir` is bound into its sandbox, which needs a path it may
/// traverse and read).
fn tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("make a temporary folder");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
        .expect("open the temporary folder");
    tmp
}

fn data_dir(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().join("data")
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout`
/// with `what()` (called then, so it can describe the last state seen).
async fn wait_for<T, F, Fut>(timeout: Duration, mut check: F, what: impl Fn() -> String) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {}",
            what()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes a one-document Agent manifest running `sh -c SCRIPT` and applies it
/// with `strata apply -f`.
fn apply(server: &Server, folder: &Path, name: &str, script: &str, replicas: u32, restart: &str) {
    let manifest = format!(
        "apiVersion: strata/v1\n\
         kind: Agent\n\
         metadata:\n  name: {name}\n\
         spec:\n  \
           command: sh\n  \
           args: [\"-c\", {script}]\n  \
           replicas: {replicas}\n  \
           restart: {restart}\n  \
           capabilities:\n    \
             - name: {name}-cap\n      \
               description: A test capability.\n",
        script = serde_json::to_string(script).unwrap(),
    );
    let file = folder.join(format!("{name}.yaml"));
    std::fs::write(&file, manifest).unwrap();
    client_cmd(server, None, &["apply", "-f", file.to_str().unwrap()]).success();
}

/// `GET /v1/fleet/NAME`: the status code and body.
async fn get(http: &reqwest::Client, server: &Server, name: &str) -> (u16, Value) {
    let url = format!("{}/v1/fleet/{name}", server.url);
    call(http, Method::GET, &url, &server.admin_token, None).await
}

/// The replicas of a deployment that exists.
async fn replicas(http: &reqwest::Client, server: &Server, name: &str) -> Vec<Value> {
    let (status, v) = get(http, server, name).await;
    assert_eq!(status, 200, "GET /v1/fleet/{name}: {v}");
    v["status"]["replicas"].as_array().cloned().unwrap_or_default()
}

/// The log lines of a deployment.
async fn logs(http: &reqwest::Client, server: &Server, name: &str) -> Vec<Value> {
    let url = format!("{}/v1/fleet/{name}/logs", server.url);
    let (status, v) = call(http, Method::GET, &url, &server.admin_token, None).await;
    assert_eq!(status, 200, "GET {url}: {v}");
    v["lines"].as_array().cloned().unwrap_or_default()
}

fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Process groups started by the reconciler, sent SIGKILL when dropped, so a
/// failed test (or a straggler the server left behind) leaks no `sleep 300`.
#[derive(Default)]
struct Groups(Vec<u64>);

impl Drop for Groups {
    fn drop(&mut self) {
        for pgid in &self.0 {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn phase(r: &Value) -> &str {
    r["phase"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn deployment_starts_replicas_restarts_a_killed_one_and_stops_all_on_delete() {
    let tmp = tempdir();
    let server = Server::start(&data_dir(&tmp));
    let http = http();
    let name = "echoer";
    apply(
        &server,
        tmp.path(),
        name,
        "echo hello from $STRATA_AGENT_NAME; sleep 300",
        2,
        "Always",
    );

    // Both replicas run, as distinct processes and distinct agents.
    let last = std::sync::Mutex::new(Value::Null);
    let running = wait_for(
        Duration::from_secs(20),
        || async {
            let rs = replicas(&http, &server, name).await;
            *last.lock().unwrap() = Value::from(rs.clone());
            let ok = rs.len() == 2
                && rs
                    .iter()
                    .all(|r| phase(r) == "Running" && r["pid"].as_u64().is_some());
            ok.then_some(rs)
        },
        || format!("2 Running replicas; last: {}", last.lock().unwrap()),
    )
    .await;
    let pids: Vec<u64> = running.iter().map(|r| r["pid"].as_u64().unwrap()).collect();
    // Each replica leads its own process group (pgid == pid).
    let mut groups = Groups(pids.clone());
    let agents: Vec<String> = running
        .iter()
        .map(|r| r["agent_id"].as_str().expect("agent_id").to_string())
        .collect();
    assert_ne!(pids[0], pids[1], "distinct pids: {running:?}");
    assert_ne!(agents[0], agents[1], "distinct agents: {running:?}");
    assert!(pids.iter().all(|p| pid_alive(*p)), "pids {pids:?} exist");
    let (_, described) = get(&http, &server, name).await;
    assert_eq!(described["status"]["desired"], 2, "{described}");
    assert_eq!(described["status"]["ready"], 2, "{described}");

    // Each replica greeted under its own name.
    let last_logs = std::sync::Mutex::new(Vec::new());
    wait_for(
        Duration::from_secs(10),
        || async {
            let lines = logs(&http, &server, name).await;
            let texts: Vec<String> = lines
                .iter()
                .map(|l| l["line"].as_str().unwrap_or_default().to_string())
                .collect();
            *last_logs.lock().unwrap() = texts.clone();
            let ok = texts.iter().any(|t| t == &format!("hello from {name}-0"))
                && texts.iter().any(|t| t == &format!("hello from {name}-1"));
            ok.then_some(())
        },
        || format!("greetings in the logs; last: {:?}", last_logs.lock().unwrap()),
    )
    .await;
    let lines = logs(&http, &server, name).await;
    let hello0 = lines
        .iter()
        .find(|l| l["line"] == format!("hello from {name}-0"))
        .unwrap();
    assert_eq!(hello0["replica"], 0, "{hello0}");
    assert_eq!(hello0["stream"], "stdout", "{hello0}");

    // Killed with SIGKILL, replica 0 is started again as a new process.
    let victim = running.iter().find(|r| r["replica"] == 0).unwrap();
    let old_pid = victim["pid"].as_u64().unwrap();
    let old_agent = victim["agent_id"].as_str().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-9", &old_pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -9 {old_pid}");
    let restarted = wait_for(
        Duration::from_secs(8),
        || async {
            let rs = replicas(&http, &server, name).await;
            *last.lock().unwrap() = Value::from(rs.clone());
            let r = rs.into_iter().find(|r| r["replica"] == 0)?;
            let ok = phase(&r) == "Running"
                && r["restarts"] == 1
                && r["pid"].as_u64().is_some_and(|p| p != old_pid);
            ok.then_some(r)
        },
        || {
            format!(
                "replica 0 Running again with restarts 1; last: {}",
                last.lock().unwrap()
            )
        },
    )
    .await;
    let new_pid = restarted["pid"].as_u64().unwrap();
    groups.0.push(new_pid);
    assert!(pid_alive(new_pid), "new pid {new_pid} exists");
    let last_exit = restarted["last_exit"].as_str().unwrap_or_default();
    assert!(
        last_exit.contains('9') || last_exit.to_lowercase().contains("kill"),
        "last_exit: {restarted}"
    );
    assert_eq!(
        restarted["agent_id"],
        Value::from(old_agent.clone()),
        "same agent after a restart: {restarted}"
    );
    // The other replica was left alone.
    let other = replicas(&http, &server, name)
        .await
        .into_iter()
        .find(|r| r["replica"] == 1)
        .unwrap();
    assert_eq!(other["pid"].as_u64(), Some(pids[1]), "{other}");
    assert_eq!(other["restarts"], 0, "{other}");

    // Deleting the deployment stops every process and forgets it.
    let live = [new_pid, pids[1]];
    let url = format!("{}/v1/fleet/{name}", server.url);
    let (status, body) = call(&http, Method::DELETE, &url, &server.admin_token, None).await;
    assert!((200..300).contains(&status), "DELETE {url}: {status} {body}");
    wait_for(
        Duration::from_secs(10),
        || async { live.iter().all(|p| !pid_alive(*p)).then_some(()) },
        || {
            format!(
                "pids {live:?} to exit; alive: {:?}",
                live.iter().filter(|p| pid_alive(**p)).collect::<Vec<_>>()
            )
        },
    )
    .await;
    let last_get = std::sync::Mutex::new(Value::Null);
    wait_for(
        Duration::from_secs(10),
        || async {
            let (status, v) = get(&http, &server, name).await;
            *last_get.lock().unwrap() = serde_json::json!({"status": status, "body": v});
            (status == 404).then_some(())
        },
        || format!("GET {name} to be 404; last: {}", last_get.lock().unwrap()),
    )
    .await;
    assert!(pid_alive(std::process::id().into()), "sanity: /proc works");
}

#[tokio::test(flavor = "multi_thread")]
async fn crashing_deployment_backs_off_or_fails_as_its_restart_policy_says() {
    let tmp = tempdir();
    let server = Server::start(&data_dir(&tmp));
    let http = http();

    // OnFailure: restarted again and again, with the backoff showing in the phase.
    apply(&server, tmp.path(), "crasher", "exit 3", 1, "OnFailure");
    let seen = std::sync::Mutex::new(Vec::<String>::new());
    let last = std::sync::Mutex::new(Value::Null);
    let crashed = wait_for(
        Duration::from_secs(20),
        || async {
            let r = replicas(&http, &server, "crasher").await.into_iter().next()?;
            *last.lock().unwrap() = r.clone();
            seen.lock().unwrap().push(phase(&r).to_string());
            let backing_off = matches!(phase(&r), "Restarting" | "CrashLoopBackOff");
            (backing_off && r["restarts"].as_u64().unwrap_or(0) >= 2).then_some(r)
        },
        || {
            format!(
                "restarts >= 2 while Restarting/CrashLoopBackOff; last: {}; phases seen: {:?}",
                last.lock().unwrap(),
                seen.lock().unwrap()
            )
        },
    )
    .await;
    let last_exit = crashed["last_exit"].as_str().unwrap_or_default();
    assert!(
        last_exit.contains('3'),
        "last_exit mentions the exit code: {crashed}"
    );
    // The count keeps growing, and the phase settles into CrashLoopBackOff.
    let before = crashed["restarts"].as_u64().unwrap();
    wait_for(
        Duration::from_secs(20),
        || async {
            let r = replicas(&http, &server, "crasher").await.into_iter().next()?;
            *last.lock().unwrap() = r.clone();
            (phase(&r) == "CrashLoopBackOff" && r["restarts"].as_u64().unwrap_or(0) > before).then_some(())
        },
        || {
            format!(
                "CrashLoopBackOff with restarts > {before}; last: {}",
                last.lock().unwrap()
            )
        },
    )
    .await;
    let (_, described) = get(&http, &server, "crasher").await;
    assert_eq!(described["status"]["ready"], 0, "{described}");

    // Never: one run, then Failed for good.
    apply(&server, tmp.path(), "quitter", "exit 3", 1, "Never");
    let failed = wait_for(
        Duration::from_secs(20),
        || async {
            let r = replicas(&http, &server, "quitter").await.into_iter().next()?;
            *last.lock().unwrap() = r.clone();
            (phase(&r) == "Failed").then_some(r)
        },
        || format!("phase Failed; last: {}", last.lock().unwrap()),
    )
    .await;
    assert_eq!(failed["restarts"], 0, "{failed}");
    assert!(failed["pid"].is_null(), "no pid once failed: {failed}");
    assert!(
        failed["last_exit"].as_str().unwrap_or_default().contains('3'),
        "last_exit mentions the exit code: {failed}"
    );
    // It stays Failed: nothing starts it again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = replicas(&http, &server, "quitter").await;
    assert_eq!(phase(&still[0]), "Failed", "{still:?}");
    assert_eq!(still[0]["restarts"], 0, "{still:?}");
}

/// Writes a one-document Agent manifest whose spec is `spec` (YAML, indented
/// two spaces) and applies it with `strata apply -f`.
fn apply_spec(server: &Server, folder: &Path, name: &str, spec: &str) {
    let manifest = format!("apiVersion: strata/v1\nkind: Agent\nmetadata:\n  name: {name}\nspec:\n{spec}");
    let file = folder.join(format!("{name}.yaml"));
    std::fs::write(&file, manifest).unwrap();
    client_cmd(server, None, &["apply", "-f", file.to_str().unwrap()]).success();
}

/// The cgroup folders named `group` under any controller's `strata-*` parent.
fn cgroups_named(group: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for controller in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        for parent in std::fs::read_dir(controller.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = parent.file_name();
            if name.to_string_lossy().starts_with("strata-") && parent.path().join(group).exists() {
                found.push(parent.path().join(group));
            }
        }
    }
    found
}

/// Waits until replica 0 of `name` runs; returns it.
async fn running_replica(http: &reqwest::Client, server: &Server, name: &str) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    wait_for(
        Duration::from_secs(30),
        || async {
            let r = replicas(http, server, name).await.into_iter().next()?;
            *last.lock().unwrap() = r.clone();
            (phase(&r) == "Running" && r["pid"].as_u64().is_some()).then_some(r)
        },
        || format!("{name}-0 Running; last: {}", last.lock().unwrap()),
    )
    .await
}

/// Waits until a log line of `name` satisfies `pred`; returns its text.
async fn log_line(
    http: &reqwest::Client,
    server: &Server,
    name: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let last = std::sync::Mutex::new(Vec::new());
    wait_for(
        Duration::from_secs(30),
        || async {
            let texts: Vec<String> = logs(http, server, name)
                .await
                .iter()
                .map(|l| l["line"].as_str().unwrap_or_default().to_string())
                .collect();
            *last.lock().unwrap() = texts.clone();
            texts.into_iter().find(|t| pred(t))
        },
        || format!("a matching log line of {name}; last: {:?}", last.lock().unwrap()),
    )
    .await
}

/// A python3 agent that reports whether it can read `secret`, then completes
/// every task it leases with what it saw of its sandbox.
const PROBE_AGENT: &str = r#"import json, os, sys, urllib.request
URL = os.environ["STRATA_URL"]
TOKEN = os.environ["STRATA_TOKEN"]
SECRET = sys.argv[1]
try:
    with open(SECRET) as f:
        print("secret: " + f.read().strip(), flush=True)
except OSError as e:
    print("secret unreadable: " + type(e).__name__, flush=True)
def call(method, path, body):
    req = urllib.request.Request(URL + path, data=json.dumps(body).encode(), method=method)
    req.add_header("Authorization", "Bearer " + TOKEN)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())
while True:
    for t in call("POST", "/v1/tasks/lease", {"wait_ms": 1000, "max": 1})["tasks"]:
        result = {"uid": os.getuid(), "cwd": os.getcwd(), "secret_visible": os.path.exists(SECRET)}
        call("POST", "/v1/tasks/" + t["id"] + "/complete", {"lease_id": t["lease_id"], "result": result})
        print("completed " + t["id"], flush=True)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn sandboxed_agent_completes_a_task_through_strata_url_and_cannot_read_host_files() {
    let tmp = tempdir();
    let server = Server::start(&data_dir(&tmp));
    let http = http();
    // The agent's folder, and a world-readable secret elsewhere on the host:
    // only the sandbox keeps it out of reach.
    let agent_dir = tmp.path().join("agent");
    std::fs::create_dir(&agent_dir).unwrap();
    std::fs::write(agent_dir.join("probe.py"), PROBE_AGENT).unwrap();
    let secret_dir = tempdir();
    let secret = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET\n").unwrap();
    let spec = |cap: &str, sandbox: &str| {
        format!(
            "  command: python3\n  args: [\"-u\", probe.py, {secret}]\n  workdir: agent\n{sandbox}  \
             capabilities:\n    - name: {cap}\n      description: A probe.\n",
            secret = serde_json::to_string(secret.to_str().unwrap()).unwrap(),
        )
    };
    apply_spec(&server, tmp.path(), "boxed", &spec("probe-boxed", ""));

    let replica = running_replica(&http, &server, "boxed").await;
    let sandbox = replica["sandbox"].as_str().unwrap_or_default().to_string();
    assert!(sandbox.starts_with("svc_"), "runs in a sandbox: {replica}");
    let agent = replica["agent_id"].as_str().unwrap().to_string();
    let line = log_line(&http, &server, "boxed", |t| t.starts_with("secret")).await;
    assert_eq!(
        line, "secret unreadable: FileNotFoundError",
        "the sandboxed agent's report"
    );

    // A task submitted by the operator is leased and completed through STRATA_URL.
    let url = format!("{}/v1/tasks", server.url);
    let body = serde_json::json!({"capability": "probe-boxed", "input": {}});
    let (status, submitted) = call(&http, Method::POST, &url, &server.admin_token, Some(&body)).await;
    assert_eq!(status, 201, "{submitted}");
    let id = submitted["id"].as_str().unwrap().to_string();
    let task_url = format!("{url}/{id}");
    let last = std::sync::Mutex::new(Value::Null);
    let done = wait_for(
        Duration::from_secs(30),
        || async {
            let (_, t) = call(&http, Method::GET, &task_url, &server.admin_token, None).await;
            *last.lock().unwrap() = t.clone();
            (t["state"] == "succeeded").then_some(t)
        },
        || format!("task {id} succeeded; last: {}", last.lock().unwrap()),
    )
    .await;
    assert_eq!(done["result"]["uid"], 1000, "runs as the sandbox's user: {done}");
    assert_eq!(done["result"]["secret_visible"], false, "{done}");
    let workdir = std::fs::canonicalize(&agent_dir).unwrap();
    assert_eq!(
        done["result"]["cwd"],
        workdir.to_str().unwrap(),
        "starts in its workdir: {done}"
    );
    assert_eq!(done["leased_by"], agent.as_str(), "{done}");

    // The same agent as a plain child process does read the secret: the check above can fail.
    apply_spec(
        &server,
        tmp.path(),
        "plain",
        &spec("probe-plain", "  sandbox: false\n"),
    );
    let plain = running_replica(&http, &server, "plain").await;
    assert!(plain["sandbox"].is_null(), "no sandbox: {plain}");
    let line = log_line(&http, &server, "plain", |t| t.starts_with("secret")).await;
    assert_eq!(line, "secret: TOP-SECRET", "the plain agent's report");

    // Deleted, the sandboxed agent's run is stored as a service usage record charged to it.
    let del = format!("{}/v1/fleet/boxed", server.url);
    let (status, body) = call(&http, Method::DELETE, &del, &server.admin_token, None).await;
    assert!((200..300).contains(&status), "DELETE: {status} {body}");
    let usage_url = format!("{}/v1/sandbox-usage?agent={agent}", server.url);
    let last = std::sync::Mutex::new(Value::Null);
    let record = wait_for(
        Duration::from_secs(20),
        || async {
            let (_, v) = call(&http, Method::GET, &usage_url, &server.admin_token, None).await;
            *last.lock().unwrap() = v.clone();
            v["items"]
                .as_array()?
                .iter()
                .find(|r| r["sandbox_id"] == sandbox.as_str())
                .cloned()
        },
        || format!("a usage record of {sandbox}; last: {}", last.lock().unwrap()),
    )
    .await;
    assert_eq!(record["kind"], "service", "{record}");
    assert_eq!(record["agent_id"], agent.as_str(), "{record}");
    assert!(record["wall_ms"].as_u64().unwrap() > 0, "{record}");
    assert!(record["cpu_ms"].as_u64().is_some(), "{record}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sandboxed_agent_restarts_after_a_crash_gets_sigterm_on_change_and_leaves_nothing_on_delete() {
    let tmp = tempdir();
    let server = Server::start(&data_dir(&tmp));
    let http = http();
    let script = "trap 'echo got TERM; exit 0' TERM; echo up $VERSION; while true; do sleep 0.1; done";
    let spec = |version: &str| {
        format!(
            "  command: sh\n  args: [\"-c\", {script}]\n  restart: Always\n  env: {{VERSION: \"{version}\"}}\n  \
             sandbox:\n    limits: {{memory_bytes: 268435456, pids: 64}}\n",
            script = serde_json::to_string(script).unwrap(),
        )
    };
    apply_spec(&server, tmp.path(), "looper", &spec("1"));
    let first = running_replica(&http, &server, "looper").await;
    let (pid, sandbox) = (
        first["pid"].as_u64().unwrap(),
        first["sandbox"].as_str().unwrap().to_string(),
    );
    log_line(&http, &server, "looper", |t| t == "up 1").await;
    assert!(pid_alive(pid), "pid {pid} is a host process");
    assert!(
        !cgroups_named(&sandbox).is_empty(),
        "{sandbox} has cgroups while it runs"
    );

    // Crashed (SIGKILL from the host), it is started again in a new sandbox,
    // and the old one's cgroups are gone.
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let last = std::sync::Mutex::new(Value::Null);
    let second = wait_for(
        Duration::from_secs(15),
        || async {
            let r = replicas(&http, &server, "looper").await.into_iter().next()?;
            *last.lock().unwrap() = r.clone();
            let ok = phase(&r) == "Running" && r["restarts"] == 1 && r["pid"].as_u64() != Some(pid);
            ok.then_some(r)
        },
        || format!("looper-0 restarted; last: {}", last.lock().unwrap()),
    )
    .await;
    assert!(
        second["last_exit"]
            .as_str()
            .unwrap_or_default()
            .contains("signal: 9"),
        "{second}"
    );
    let sandbox2 = second["sandbox"].as_str().unwrap().to_string();
    assert_ne!(sandbox2, sandbox, "a fresh sandbox: {second}");
    assert!(
        cgroups_named(&sandbox).is_empty(),
        "{sandbox}'s cgroups are removed"
    );
    assert!(!pid_alive(pid), "{pid} is gone");

    // A changed spec stops it with SIGTERM, which reaches the process inside.
    let pid2 = second["pid"].as_u64().unwrap();
    apply_spec(&server, tmp.path(), "looper", &spec("2"));
    log_line(&http, &server, "looper", |t| t == "got TERM").await;
    log_line(&http, &server, "looper", |t| t == "up 2").await;
    let third = running_replica(&http, &server, "looper").await;
    assert!(!pid_alive(pid2), "{pid2} is gone");
    assert!(
        cgroups_named(&sandbox2).is_empty(),
        "{sandbox2}'s cgroups are removed"
    );
    let lines = logs(&http, &server, "looper").await;
    let exit = lines
        .iter()
        .filter_map(|l| l["line"].as_str())
        .find(|t| t.starts_with("exited: exit status: 0"));
    assert!(exit.is_some(), "stopped with SIGTERM, it exited 0: {lines:?}");

    // Deleted: its process and its cgroups are gone.
    let (pid3, sandbox3) = (
        third["pid"].as_u64().unwrap(),
        third["sandbox"].as_str().unwrap().to_string(),
    );
    assert!(!cgroups_named(&sandbox3).is_empty(), "{sandbox3} has cgroups");
    let url = format!("{}/v1/fleet/looper", server.url);
    let (status, body) = call(&http, Method::DELETE, &url, &server.admin_token, None).await;
    assert!((200..300).contains(&status), "DELETE: {status} {body}");
    wait_for(
        Duration::from_secs(15),
        || async { (!pid_alive(pid3) && cgroups_named(&sandbox3).is_empty()).then_some(()) },
        || format!("{pid3} and the cgroups of {sandbox3} to be gone"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sandboxed_agents_die_with_a_killed_server() {
    let tmp = tempdir();
    let mut server = Server::start(&data_dir(&tmp));
    let http = http();
    apply(&server, tmp.path(), "sleeper", "echo up; sleep 300", 1, "Always");
    let r = running_replica(&http, &server, "sleeper").await;
    let pid = r["pid"].as_u64().unwrap();
    assert!(r["sandbox"].as_str().is_some(), "{r}");
    let _groups = Groups(vec![pid]);
    server.kill(); // SIGKILL: no clean-up runs in the server
    wait_for(
        Duration::from_secs(10),
        || async { (!pid_alive(pid)).then_some(()) },
        || format!("the sandboxed agent {pid} to die with its server"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_sandboxes_a_sandboxed_agent_fails_with_the_reason_and_a_plain_one_runs() {
    let tmp = tempdir();
    let mut cmd = support::strata();
    cmd.args(["serve", "--no-sandboxes"]);
    let server = Server::try_start_with(&data_dir(&tmp), cmd).unwrap_or_else(|r| panic!("{}", r.stderr));
    let http = http();
    apply(
        &server,
        tmp.path(),
        "boxed",
        "echo should not run; sleep 300",
        1,
        "Always",
    );
    let last = std::sync::Mutex::new(Value::Null);
    let failed = wait_for(
        Duration::from_secs(20),
        || async {
            let (_, v) = get(&http, &server, "boxed").await;
            *last.lock().unwrap() = v.clone();
            let r = v["status"]["replicas"].as_array()?.first()?.clone();
            (phase(&r) == "Failed").then_some(v)
        },
        || format!("boxed-0 Failed; last: {}", last.lock().unwrap()),
    )
    .await;
    let message = failed["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("sandbox_unavailable"), "{failed}");
    assert!(
        message.contains("sandbox: false"),
        "says how to opt out: {failed}"
    );
    let r = &failed["status"]["replicas"][0];
    assert!(r["pid"].is_null(), "{failed}");
    assert!(
        r["last_exit"]
            .as_str()
            .unwrap_or_default()
            .contains("without sandboxes"),
        "{failed}"
    );
    // It stays failed and never runs unsandboxed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let texts: Vec<String> = logs(&http, &server, "boxed")
        .await
        .iter()
        .map(|l| l["line"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(!texts.iter().any(|t| t == "should not run"), "{texts:?}");
    assert_eq!(phase(&replicas(&http, &server, "boxed").await[0]), "Failed");

    // Opting out runs it as a plain process.
    apply_spec(
        &server,
        tmp.path(),
        "plain",
        "  command: sh\n  args: [\"-c\", \"echo plain ran; sleep 300\"]\n  sandbox: false\n",
    );
    let r = running_replica(&http, &server, "plain").await;
    let _groups = Groups(vec![r["pid"].as_u64().unwrap()]);
    log_line(&http, &server, "plain", |t| t == "plain ran").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_sandbox_settings_are_refused_at_apply_with_a_code() {
    let tmp = tempdir();
    let server = Server::start(&data_dir(&tmp));
    let http = http();
    let url = format!("{}/v1/fleet/bad", server.url);
    for (sandbox, want, code) in [
        (
            serde_json::json!({"limits": {"memory_bytes": 1}}),
            400,
            "invalid_limits",
        ),
        (
            serde_json::json!({"limits": {"memory_byte": 1}}),
            400,
            "invalid_request",
        ),
        (
            serde_json::json!({"binds": ["relative/path"]}),
            400,
            "invalid_request",
        ),
        (serde_json::json!({"binds": ["/"]}), 400, "invalid_request"),
        (
            serde_json::json!({"binds": ["/tmp/../etc"]}),
            400,
            "invalid_request",
        ),
        (
            serde_json::json!({"network": "everywhere"}),
            400,
            "invalid_request",
        ),
        (
            serde_json::json!({"template": "no-such-template"}),
            404,
            "unknown_template",
        ),
        (serde_json::json!({"bogus": true}), 400, "invalid_request"),
        (serde_json::json!(3), 400, "invalid_request"),
    ] {
        let body = serde_json::json!({"command": "sh", "sandbox": sandbox});
        let (status, v) = call(&http, Method::PUT, &url, &server.admin_token, Some(&body)).await;
        assert_eq!(status, want, "sandbox {sandbox}: {v}");
        assert_eq!(v["code"], code, "sandbox {sandbox}: {v}");
    }
    let (status, v) = get(&http, &server, "bad").await;
    assert_eq!(status, 404, "nothing was applied: {v}");
    // Good settings are stored as given.
    let good = serde_json::json!({
        "command": "sh", "args": ["-c", "sleep 300"],
        "sandbox": {"limits": {"memory_bytes": 268435456}, "network": "none", "binds": ["/opt"]},
    });
    let (status, v) = call(&http, Method::PUT, &url, &server.admin_token, Some(&good)).await;
    assert_eq!(status, 200, "{v}");
    let (_, v) = get(&http, &server, "bad").await;
    assert_eq!(v["spec"]["sandbox"]["network"], "none", "{v}");
    assert_eq!(v["spec"]["sandbox"]["limits"]["memory_bytes"], 268435456, "{v}");
}
