//! The warm pool: runs with default settings take a sandbox built ahead.

use strata_compute::{Caller, FileInput, Limits, Status};
use strata_store::Backend;

use super::harness::{env_with, py, sh};

#[tokio::test]
async fn pooled_runs_behave_like_cold_ones_and_the_pool_refills() {
    let e = env_with(Backend::Sqlite, false, |c| {
        c.pool_size = 2;
        c.default_limits.memory_bytes = 96 << 20;
    })
    .await;
    e.compute.fill_pool().await.unwrap();
    assert_eq!(e.compute.pool_ready(), 2);
    let caller = Caller::default();
    // In a pooled sandbox pid 1 is the holder; in a cold one it is the command.
    let mut req = sh("cat; cat in.txt; id -u; pwd; [ $$ != 1 ] && echo pooled");
    req.stdin = Some("stdin\n".into());
    req.files = vec![FileInput {
        path: "in.txt".into(),
        content: Some("file\n".into()),
        content_base64: None,
        mode: None,
    }];
    let o = e.compute.run(req, &caller).await.unwrap();
    assert_eq!(o.stdout, "stdin\nfile\n1000\n/workspace\npooled\n", "{o:?}");
    // A sandbox is never reused: the next run does not see the last one's files.
    e.compute.fill_pool().await.unwrap();
    let o = e.compute.run(sh("ls /workspace | wc -l"), &caller).await.unwrap();
    assert_eq!(o.stdout.trim(), "0");
    // The same isolation: no capabilities, no network, the seccomp filter.
    e.compute.fill_pool().await.unwrap();
    let o = e
        .compute
        .run(
            py("import ctypes, socket\nlibc = ctypes.CDLL(None, use_errno=True)\nprint(libc.unshare(0x10000000), ctypes.get_errno())\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.1', 5432))\nexcept OSError as e:\n    print(e.errno)"),
            &caller,
        )
        .await
        .unwrap();
    assert_eq!(o.stdout, "-1 1\n101\n", "{o:?}");
    // The memory limit holds, a missing program is exec_failed, and usage
    // counts the command, not the building of its sandbox.
    e.compute.fill_pool().await.unwrap();
    let o = e
        .compute
        .run(py("b = bytearray(300 << 20)\nprint('allocated')"), &caller)
        .await
        .unwrap();
    assert_eq!(o.status, Status::Oom, "{o:?}");
    assert!(!o.stdout.contains("allocated"));
    e.compute.fill_pool().await.unwrap();
    let o = e
        .compute
        .run(
            strata_compute::RunRequest {
                command: vec!["no-such-program-xyz".into()],
                ..Default::default()
            },
            &caller,
        )
        .await
        .unwrap();
    assert_eq!(o.status, Status::ExecFailed, "{o:?}");
    assert!(o.error.unwrap_or_default().contains("no-such-program-xyz"));
    e.compute.fill_pool().await.unwrap();
    let o = e
        .compute
        .run(py("b = bytearray(40 << 20)\nprint(len(b))"), &caller)
        .await
        .unwrap();
    assert!(o.usage.peak_memory_bytes >= 40 << 20, "{o:?}");
    assert!(o.usage.peak_memory_bytes < 96 << 20, "{o:?}");
    // Timeouts still end the run; requests with their own limits build a sandbox.
    e.compute.fill_pool().await.unwrap();
    let mut slow = sh("sleep 30");
    slow.timeout_ms = Some(200);
    assert_eq!(
        e.compute.run(slow, &caller).await.unwrap().status,
        Status::Timeout
    );
    let mut own = sh("grep 'Max processes' /proc/self/limits | awk '{print $3}'");
    own.limits = Limits {
        pids: Some(9),
        ..Default::default()
    };
    assert_eq!(e.compute.run(own, &caller).await.unwrap().stdout, "9\n");
    // Nothing is left once the pool is drained.
    e.compute.fill_pool().await.unwrap();
    e.compute.drain_pool().await;
    e.compute.settle().await;
    assert_eq!(e.compute.cgroup_count(), 0);
}
