//! A compute service per test, on a fresh database and its own cgroups.

use std::sync::Arc;

use strata_compute::{Caller, Compute, Config, RunOutcome, RunRequest};
use strata_core::{ManualClock, SystemClock};
use strata_store::{Backend, Options, Store};

pub(crate) struct Env {
    pub compute: Compute,
    pub store: Store,
    pub dir: tempfile::TempDir,
    pub cgroup_name: String,
    pub clock: Option<Arc<ManualClock>>,
    /// The host uid this env's sandboxed commands run as (unique per env, so
    /// a test can count its own processes while others run).
    pub user_uid: u32,
}

static NEXT_UID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub(crate) fn config(dir: &std::path::Path, cgroup_name: &str, user_uid: u32) -> Config {
    let mut c = Config::new(dir.join("data"), env!("CARGO_BIN_EXE_strata-compute-init"));
    c.cgroup_name = cgroup_name.to_string();
    c.host_root_uid = user_uid + 1;
    c.host_user_uid = user_uid;
    c
}

pub(crate) async fn env_on(backend: Backend, manual_clock: bool) -> Env {
    env_with(backend, manual_clock, |_| {}).await
}

pub(crate) async fn env_with(backend: Backend, manual_clock: bool, tweak: impl FnOnce(&mut Config)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let url = strata_store::testing::fresh_url(backend, dir.path())
        .await
        .unwrap();
    let store = Store::open(Options::new(url), &[strata_compute::MIGRATIONS])
        .await
        .unwrap();
    let cgroup_name = format!("strata-test-{}", ulid_like());
    let clock = manual_clock.then(|| Arc::new(ManualClock::new(1_700_000_000_000)));
    let c: Arc<dyn strata_core::Clock> = match &clock {
        Some(m) => m.clone(),
        None => Arc::new(SystemClock),
    };
    let n = NEXT_UID.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
    let user_uid = 400_000 + (std::process::id() % 1000) * 1000 + n;
    let mut cfg = config(dir.path(), &cgroup_name, user_uid);
    tweak(&mut cfg);
    let compute = Compute::open(store.clone(), cfg, c).await.unwrap();
    Env {
        compute,
        store,
        dir,
        cgroup_name,
        clock,
        user_uid,
    }
}

pub(crate) async fn env() -> Env {
    env_on(Backend::Sqlite, false).await
}

fn ulid_like() -> String {
    strata_core::Id::new("t").to_string().replace("t_", "")
}

impl Env {
    /// Stops everything the test left running, the way a server would.
    #[allow(dead_code)]
    pub(crate) async fn shutdown(&self) {
        self.compute.shutdown().await.unwrap();
    }
}

impl Drop for Env {
    /// Whatever a test left (also when it failed): workspace mounts under its
    /// folder and its cgroups, with the processes in them.
    fn drop(&mut self) {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for mp in info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&dir))
        {
            let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
        }
        for ctrl in ["memory", "pids", "cpu", "cpuacct", "unified"] {
            remove_cgroup(std::path::Path::new(&format!(
                "/sys/fs/cgroup/{ctrl}/{}",
                self.cgroup_name
            )));
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
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

pub(crate) fn cmd(args: &[&str]) -> RunRequest {
    RunRequest {
        command: args.iter().map(|s| s.to_string()).collect(),
        timeout_ms: Some(20_000),
        ..Default::default()
    }
}

pub(crate) fn sh(script: &str) -> RunRequest {
    cmd(&["sh", "-c", script])
}

pub(crate) fn py(code: &str) -> RunRequest {
    cmd(&["python3", "-c", code])
}

pub(crate) async fn run(env: &Env, req: RunRequest) -> RunOutcome {
    env.compute.run(req, &Caller::default()).await.unwrap()
}
