//! End-to-end tests of managed agents: the real `strata` binary as a child
//! process, `strata apply -f` putting deployments, and the server's reconciler
//! starting, restarting and stopping real `sh` child processes.
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

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("make a temporary folder")
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
