//! Nothing leaks: mounts, cgroups, folders and processes are counted before
//! and after many runs, including failed setups, timeouts and exec failures.

use strata_compute::{Caller, CreateSandbox, FileInput};

use super::attacks::host_processes_of_uid;
use super::harness::{cmd, env, sh};

/// Host mounts under `dir` (other tests mount their own workspaces meanwhile;
/// a sandbox's own mounts live in its mount namespace and never show here).
fn mounts(dir: &std::path::Path) -> usize {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&dir)))
        .count()
}

fn entries(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn two_hundred_runs_leave_no_mount_cgroup_folder_or_process() {
    let e = env().await;
    let data = e.dir.path().join("data");
    let before = (
        mounts(&data),
        e.compute.cgroup_count(),
        entries(&data.join("sandboxes")),
        entries(&data.join("root")),
    );
    assert_eq!(before.1, 0);
    let caller = Caller::default();
    for i in 0..200 {
        let out = match i % 5 {
            0 => e.compute.run(cmd(&["true"]), &caller).await.map(|_| ()),
            1 => e
                .compute
                .run(cmd(&["/no/such/binary"]), &caller)
                .await
                .map(|_| ()),
            2 => e
                .compute
                .run(sh("echo x > /workspace/f; exit 7"), &caller)
                .await
                .map(|_| ()),
            3 => {
                // A setup that fails inside the init, half-way through
                // building the root: a file name longer than a name may be.
                let mut req = sh("true");
                req.files = vec![FileInput {
                    path: "x".repeat(300),
                    content: Some("x".into()),
                    content_base64: None,
                    mode: None,
                }];
                let err = e.compute.run(req, &caller).await.unwrap_err();
                assert_eq!(err.code, strata_core::ErrorCode::InvalidRequest, "{err}");
                assert!(err.detail.contains("File name too long"), "{err}");
                Ok(())
            }
            _ => {
                let mut req = sh("sleep 10 & sleep 10");
                req.timeout_ms = Some(if i % 20 == 4 { 50 } else { 20_000 });
                if i % 20 != 4 {
                    req = sh("sleep 0.001");
                }
                e.compute.run(req, &caller).await.map(|_| ())
            }
        };
        out.unwrap();
    }
    // And persistent sandboxes, created, used and deleted.
    for _ in 0..5 {
        let s = e.compute.create(CreateSandbox::default(), &caller).await.unwrap();
        e.compute.stop(&s.id).await.unwrap();
        e.compute.start(&s.id).await.unwrap();
        assert_eq!(
            mounts(&data),
            before.0 + 1,
            "a running sandbox has its workspace mounted"
        );
        e.compute.delete(&s.id).await.unwrap();
    }
    let after = (
        mounts(&data),
        e.compute.cgroup_count(),
        entries(&data.join("sandboxes")),
        entries(&data.join("root")),
    );
    assert_eq!(
        before, after,
        "(mounts, cgroups, sandbox folders, root folder entries)"
    );
    assert_eq!(host_processes_of_uid(e.user_uid), 0);
    assert_eq!(host_processes_of_uid(e.user_uid + 1), 0);
}

#[tokio::test]
async fn settle_waits_for_the_tear_down_of_every_run_that_has_returned() {
    // A run's tear-down starts only once its usage has committed, after the
    // reply; `settle` must count it from the reply on, or a caller that
    // settles and then counts would see the run's cgroups still there.
    let e = env().await;
    let caller = Caller::default();
    for i in 0..20 {
        e.compute.run(cmd(&["true"]), &caller).await.unwrap();
        e.compute.settle().await;
        assert_eq!(e.compute.cgroup_count(), 0, "run {i}");
    }
}
