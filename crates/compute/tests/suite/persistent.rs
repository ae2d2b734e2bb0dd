//! Persistent sandboxes: state across execs and stop/start, files, snapshots,
//! streaming, sweeps — with metadata on SQLite and on PostgreSQL.

use std::time::Duration;

use strata_compute::{Caller, CreateSandbox, ExecEvent, ExecRequest, SandboxState, Status, Stream};
use strata_core::ErrorCode;
use strata_store::Backend;

use super::harness::{Env, env_on};

fn ex(script: &str) -> ExecRequest {
    ExecRequest {
        command: vec!["sh".into(), "-c".into(), script.into()],
        timeout_ms: Some(20_000),
        ..Default::default()
    }
}

async fn exec(e: &Env, id: &str, script: &str) -> strata_compute::RunOutcome {
    e.compute.exec(id, ex(script), &Caller::default()).await.unwrap()
}

async fn create(e: &Env) -> String {
    e.compute
        .create(CreateSandbox::default(), &Caller::default())
        .await
        .unwrap()
        .id
}

async fn workspace_survives_execs_and_stop_start(backend: Backend) {
    let e = env_on(backend, false).await;
    let id = create(&e).await;
    assert!(id.starts_with("sbx_"));
    exec(&e, &id, "echo kept > /workspace/a; mkdir -p d && echo deep > d/b").await;
    assert_eq!(exec(&e, &id, "cat a d/b").await.stdout, "kept\ndeep\n");
    let info = e.compute.stop(&id).await.unwrap();
    assert_eq!(info.state, SandboxState::Stopped);
    let err = e
        .compute
        .exec(&id, ex("true"), &Caller::default())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::SandboxStopped);
    // Files are readable while stopped, from the saved copy.
    assert_eq!(e.compute.get_file(&id, "d/b").await.unwrap(), b"deep\n");
    e.compute.start(&id).await.unwrap();
    let o = exec(&e, &id, "cat a d/b; id -u; stat -c %u a").await;
    assert_eq!(o.stdout, "kept\ndeep\n1000\n1000\n", "{o:?}");
    assert_eq!(o.usage.sandbox_id.as_deref(), Some(id.as_str()));
    e.compute.delete(&id).await.unwrap();
    assert_eq!(e.compute.get(&id).await.unwrap_err().code, ErrorCode::NotFound);
    assert!(!e.dir.path().join("data/sandboxes").join(&id).exists());
}

#[tokio::test]
async fn workspace_survives_execs_and_stop_start_sqlite() {
    workspace_survives_execs_and_stop_start(Backend::Sqlite).await;
}

#[tokio::test]
async fn workspace_survives_execs_and_stop_start_postgres() {
    workspace_survives_execs_and_stop_start(Backend::Postgres).await;
}

async fn snapshot_forks_see_the_snapshot_not_later_changes(backend: Backend) {
    let e = env_on(backend, false).await;
    let id = create(&e).await;
    exec(&e, &id, "echo v1 > f; ln -s f link").await;
    let snap = e.compute.snapshot(&id, &Caller::default()).await.unwrap();
    assert!(snap.id.starts_with("snp_") && snap.bytes == 3, "{snap:?}");
    exec(&e, &id, "echo v2 > f").await;
    let fork = e
        .compute
        .create(
            CreateSandbox {
                from_snapshot: Some(snap.id.clone()),
                ..Default::default()
            },
            &Caller::default(),
        )
        .await
        .unwrap();
    assert_eq!(fork.from_snapshot.as_deref(), Some(snap.id.as_str()));
    assert_eq!(exec(&e, &fork.id, "cat f link").await.stdout, "v1\nv1\n");
    assert_eq!(exec(&e, &id, "cat f").await.stdout, "v2\n");
    // The snapshot outlives its sandbox.
    e.compute.delete(&id).await.unwrap();
    let again = e
        .compute
        .create(
            CreateSandbox {
                from_snapshot: Some(snap.id.clone()),
                ..Default::default()
            },
            &Caller::default(),
        )
        .await
        .unwrap();
    assert_eq!(exec(&e, &again.id, "cat f").await.stdout, "v1\n");
    let snap_dir = e.dir.path().join("data/snapshots").join(&snap.id);
    assert!(snap_dir.is_dir());
    e.compute.delete_snapshot(&snap.id).await.unwrap();
    assert!(!snap_dir.exists(), "the snapshot's files are removed");
    assert_eq!(
        e.compute.delete_snapshot(&snap.id).await.unwrap_err().code,
        ErrorCode::NotFound
    );
    let err = e
        .compute
        .create(
            CreateSandbox {
                from_snapshot: Some(snap.id),
                ..Default::default()
            },
            &Caller::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
}

#[tokio::test]
async fn snapshot_forks_see_the_snapshot_not_later_changes_sqlite() {
    snapshot_forks_see_the_snapshot_not_later_changes(Backend::Sqlite).await;
}

#[tokio::test]
async fn snapshot_forks_see_the_snapshot_not_later_changes_postgres() {
    snapshot_forks_see_the_snapshot_not_later_changes(Backend::Postgres).await;
}

#[tokio::test]
async fn files_put_get_and_list_round_trip() {
    let e = env_on(Backend::Sqlite, false).await;
    let id = create(&e).await;
    e.compute
        .put_file(&id, "src/main.py", b"print('hi')\n".to_vec())
        .await
        .unwrap();
    assert_eq!(
        exec(&e, &id, "python3 src/main.py; echo more >> src/main.py")
            .await
            .stdout,
        "hi\n"
    );
    assert_eq!(
        e.compute.get_file(&id, "src/main.py").await.unwrap(),
        b"print('hi')\nmore\n"
    );
    let top = e.compute.list_files(&id, None).await.unwrap();
    assert_eq!(top.len(), 1);
    assert_eq!((top[0].name.as_str(), top[0].kind.as_str()), ("src", "dir"));
    let src = e.compute.list_files(&id, Some("src")).await.unwrap();
    assert_eq!((src[0].name.as_str(), src[0].size), ("main.py", 17));
    assert_eq!(
        e.compute.get_file(&id, "missing").await.unwrap_err().code,
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn attack_files_api_traversal_and_planted_symlinks_are_refused() {
    let e = env_on(Backend::Sqlite, false).await;
    let id = create(&e).await;
    for p in ["../../etc/passwd", "/etc/passwd", "a/../../x"] {
        let err = e.compute.get_file(&id, p).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidPath, "{p}");
        let err = e.compute.put_file(&id, p, b"x".to_vec()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidPath, "{p}");
    }
    // The sandbox plants links to host paths; the host side must not follow them.
    exec(
        &e,
        &id,
        "ln -s /etc etc; ln -s / root; ln -s /etc/shadow shadow; mkdir d; ln -s ../.. d/up",
    )
    .await;
    for p in ["etc/passwd", "root/etc/shadow", "shadow", "d/up/etc/passwd"] {
        let err = e.compute.get_file(&id, p).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidPath, "{p}");
    }
    let marker = format!("strata-planted-{}", std::process::id());
    let err = e
        .compute
        .put_file(&id, &format!("etc/{marker}"), b"x".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidPath);
    let err = e
        .compute
        .put_file(&id, "shadow", b"x".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidPath);
    assert!(!std::path::Path::new(&format!("/etc/{marker}")).exists());
    let err = e.compute.list_files(&id, Some("root")).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidPath);
    // Saving and snapshotting copy the links as links, not what they point to.
    let snap = e.compute.snapshot(&id, &Caller::default()).await.unwrap();
    let snap_dir = e.dir.path().join("data/snapshots").join(&snap.id);
    assert!(
        std::fs::symlink_metadata(snap_dir.join("shadow"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(!snap_dir.join("etc").join("passwd").exists() || snap_dir.join("etc").is_symlink());
    // A file larger than the API accepts.
    let big = vec![0u8; (e.compute.config().max_file_bytes + 1) as usize];
    assert_eq!(
        e.compute.put_file(&id, "big", big).await.unwrap_err().code,
        ErrorCode::FileTooLarge
    );
}

#[tokio::test]
async fn streamed_exec_delivers_ordered_chunks_then_done() {
    let e = env_on(Backend::Sqlite, false).await;
    let id = create(&e).await;
    let mut rx = e
        .compute
        .exec_stream(
            &id,
            ex("echo one; sleep 0.1; echo two >&2; sleep 0.1; echo three; exit 4"),
            &Caller::default(),
        )
        .await
        .unwrap();
    let (mut out, mut err, mut done) = (Vec::new(), Vec::new(), None);
    let mut order = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            ExecEvent::Output(c) => {
                order.push(String::from_utf8_lossy(&c.data).trim().to_string());
                match c.stream {
                    Stream::Stdout => out.extend(c.data),
                    Stream::Stderr => err.extend(c.data),
                }
            }
            ExecEvent::Done(o) => done = Some(o),
        }
    }
    assert_eq!(out, b"one\nthree\n");
    assert_eq!(err, b"two\n");
    assert_eq!(order, ["one", "two", "three"]);
    let done = done.unwrap();
    assert_eq!((done.status, done.exit_code), (Status::Exited, Some(4)));
}

#[tokio::test]
async fn exec_timeout_kills_that_exec_and_its_leftovers_only() {
    let e = env_on(Backend::Sqlite, false).await;
    let id = create(&e).await;
    let mut req = ex("echo started > s; sleep 100");
    req.timeout_ms = Some(300);
    let o = e.compute.exec(&id, req, &Caller::default()).await.unwrap();
    assert_eq!(o.status, Status::Timeout);
    // Background processes end with their exec, and the sandbox lives on.
    let o = exec(&e, &id, "sleep 100 & echo bg").await;
    assert_eq!(o.stdout, "bg\n");
    let o = exec(
        &e,
        &id,
        "cat s; ps -e -o comm= 2>/dev/null | grep -c sleep || true",
    )
    .await;
    assert!(o.stdout.starts_with("started\n"), "{o:?}");
}

#[tokio::test]
async fn exec_past_the_memory_limit_is_oom_and_the_sandbox_survives() {
    let e = env_on(Backend::Sqlite, false).await;
    let s = e
        .compute
        .create(
            CreateSandbox {
                limits: strata_compute::Limits {
                    memory_bytes: Some(64 << 20),
                    ..Default::default()
                },
                ..Default::default()
            },
            &Caller::default(),
        )
        .await
        .unwrap();
    let o = exec(&e, &s.id, "python3 -c 'b = bytearray(300 << 20)'").await;
    assert_eq!(o.status, Status::Oom, "{o:?}");
    assert_eq!(exec(&e, &s.id, "echo alive").await.stdout, "alive\n");
}

async fn sweep_stops_idle_and_deletes_expired(backend: Backend) {
    let e = env_on(backend, true).await;
    let clock = e.clock.clone().unwrap();
    let idle = e
        .compute
        .create(
            CreateSandbox {
                idle_stop_ms: Some(1_000),
                ..Default::default()
            },
            &Caller::default(),
        )
        .await
        .unwrap();
    let ttl = e
        .compute
        .create(
            CreateSandbox {
                ttl_ms: Some(5_000),
                ..Default::default()
            },
            &Caller::default(),
        )
        .await
        .unwrap();
    exec(&e, &idle.id, "echo x > f").await;
    clock.advance(Duration::from_millis(2_000));
    let now = strata_core::Clock::now_ms(&*clock);
    let r = e.compute.sweep(now).await.unwrap();
    assert_eq!(r.stopped, vec![idle.id.clone()]);
    assert!(r.deleted.is_empty());
    assert_eq!(
        e.compute.get(&idle.id).await.unwrap().state,
        SandboxState::Stopped
    );
    clock.advance(Duration::from_millis(4_000));
    let r = e
        .compute
        .sweep(strata_core::Clock::now_ms(&*clock))
        .await
        .unwrap();
    assert_eq!(r.deleted, vec![ttl.id.clone()]);
    assert_eq!(
        e.compute.get(&ttl.id).await.unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(e.compute.get_file(&idle.id, "f").await.unwrap(), b"x\n");
}

#[tokio::test]
async fn sweep_stops_idle_and_deletes_expired_sqlite() {
    sweep_stops_idle_and_deletes_expired(Backend::Sqlite).await;
}

#[tokio::test]
async fn sweep_stops_idle_and_deletes_expired_postgres() {
    sweep_stops_idle_and_deletes_expired(Backend::Postgres).await;
}

#[tokio::test]
async fn template_setup_runs_once_in_new_sandboxes() {
    let e = env_on(Backend::Sqlite, false).await;
    e.compute
        .put_template(strata_compute::Template {
            name: "with-setup".into(),
            limits: Default::default(),
            env: [("MODE".to_string(), "t".to_string())].into(),
            ro_binds: vec![],
            network: Default::default(),
            backend: Default::default(),
            setup: vec![vec![
                "sh".into(),
                "-c".into(),
                "echo ready > /workspace/setup.txt".into(),
            ]],
        })
        .await
        .unwrap();
    let s = e
        .compute
        .create(
            CreateSandbox {
                template: Some("with-setup".into()),
                ..Default::default()
            },
            &Caller::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        exec(&e, &s.id, "cat setup.txt; echo $MODE").await.stdout,
        "ready\nt\n"
    );
    assert_eq!(e.compute.templates().await.unwrap().len(), 1);
    e.shutdown().await;
    assert_eq!(e.compute.get(&s.id).await.unwrap().state, SandboxState::Stopped);
    assert_eq!(e.compute.cgroup_count(), 0);
}

#[tokio::test]
async fn a_restarted_service_finds_running_sandboxes_stopped_with_their_files() {
    let e = env_on(Backend::Sqlite, false).await;
    let id = create(&e).await;
    exec(&e, &id, "echo survived > f").await;
    // A second service on the same store and data folder, as after a crash:
    // the first one's holders are gone once it is dropped.
    let cfg = e.compute.config().clone();
    let store = e.store.clone();
    drop(e.compute.clone());
    let reopened = strata_compute::Compute::open(store, cfg, std::sync::Arc::new(strata_core::SystemClock))
        .await
        .unwrap();
    assert_eq!(reopened.get(&id).await.unwrap().state, SandboxState::Stopped);
    assert_eq!(reopened.get_file(&id, "f").await.unwrap(), b"survived\n");
    reopened.start(&id).await.unwrap();
    let o = reopened.exec(&id, ex("cat f"), &Caller::default()).await.unwrap();
    assert_eq!(o.stdout, "survived\n");
    reopened.delete(&id).await.unwrap();
}

async fn snapshots_are_listed_by_owner_and_sandbox_a_page_at_a_time(backend: Backend) {
    let e = env_on(backend, false).await;
    let id = create(&e).await;
    let agent = |a: &str| Caller {
        agent_id: Some(a.to_string()),
        ..Default::default()
    };
    let a1 = e.compute.snapshot(&id, &agent("agt_a")).await.unwrap();
    let b1 = e.compute.snapshot(&id, &agent("agt_b")).await.unwrap();
    let a2 = e.compute.snapshot(&id, &agent("agt_a")).await.unwrap();
    let op = e.compute.snapshot(&id, &Caller::default()).await.unwrap();
    assert_eq!(a1.owner_agent.as_deref(), Some("agt_a"));
    assert_eq!(op.owner_agent, None);
    let ids = |p: strata_compute::SnapshotPage| p.items.into_iter().map(|s| s.id).collect::<Vec<_>>();
    let c = &e.compute;
    let page = c.list_snapshots(Some("agt_a"), None, None, 1).await.unwrap();
    assert_eq!(page.next.as_deref(), Some(a1.id.as_str()));
    assert_eq!(ids(page), [a1.id.as_str()]);
    let page = c
        .list_snapshots(Some("agt_a"), None, Some(&a1.id), 1)
        .await
        .unwrap();
    assert_eq!(page.next, None, "a2 is agt_a's last");
    assert_eq!(ids(page), [a2.id.as_str()]);
    let page = c
        .list_snapshots(Some("agt_a"), None, Some(&a2.id), 1)
        .await
        .unwrap();
    assert!(page.items.is_empty() && page.next.is_none());
    let all = c.list_snapshots(None, Some(&id), None, 50).await.unwrap();
    assert_eq!(ids(all), [a1.id.clone(), b1.id, a2.id, op.id]);
    let other = create(&e).await;
    assert!(
        c.list_snapshots(None, Some(&other), None, 50)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    for bad in [(Some("nope"), None), (None, Some("snp_nope"))] {
        let err = c.list_snapshots(None, bad.0, bad.1, 50).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest, "{bad:?}");
    }
}

#[tokio::test]
async fn snapshots_are_listed_by_owner_and_sandbox_a_page_at_a_time_sqlite() {
    snapshots_are_listed_by_owner_and_sandbox_a_page_at_a_time(Backend::Sqlite).await;
}

#[tokio::test]
async fn snapshots_are_listed_by_owner_and_sandbox_a_page_at_a_time_postgres() {
    snapshots_are_listed_by_owner_and_sandbox_a_page_at_a_time(Backend::Postgres).await;
}

async fn usage_of_a_run_and_two_execs_is_stored_and_summed(backend: Backend) {
    let e = env_on(backend, false).await;
    let caller = Caller {
        agent_id: Some("agt_a".into()),
        task_id: Some("tsk_t".into()),
        ..Default::default()
    };
    let run = e
        .compute
        .run(super::harness::sh("echo hi"), &caller)
        .await
        .unwrap();
    let id = create(&e).await;
    let x1 = e.compute.exec(&id, ex("echo one"), &caller).await.unwrap();
    // Streamed execs are stored too.
    let mut rx = e
        .compute
        .exec_stream(&id, ex("head -c 2000000 /dev/zero | wc -c"), &caller)
        .await
        .unwrap();
    let mut x2 = None;
    while let Some(ev) = rx.recv().await {
        if let ExecEvent::Done(o) = ev {
            x2 = Some(o);
        }
    }
    let x2 = x2.expect("the streamed exec's outcome");
    let filter = strata_compute::UsageFilter {
        agent: Some("agt_a".into()),
        ..Default::default()
    };
    let page = e.compute.usage(&filter, None, 100).await.unwrap();
    let reported = [&run, &x1, &x2];
    assert_eq!(page.items.len(), 3, "{page:?}");
    for (rec, out) in page.items.iter().zip(reported) {
        let u = &out.usage;
        assert_eq!(
            (rec.wall_ms, rec.cpu_ms, rec.peak_memory_bytes),
            (u.wall_ms, u.cpu_ms, u.peak_memory_bytes)
        );
        assert_eq!(rec.agent_id, u.agent_id);
        assert_eq!(rec.task_id, u.task_id);
        assert_eq!(rec.sandbox_id, u.sandbox_id);
        assert_eq!(rec.status, "exited");
    }
    assert_eq!(
        page.items.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(),
        ["run", "exec", "exec"]
    );
    let t = &page.totals;
    assert_eq!(t.records, 3);
    assert_eq!(t.wall_ms, reported.iter().map(|o| o.usage.wall_ms).sum::<u64>());
    assert_eq!(t.cpu_ms, reported.iter().map(|o| o.usage.cpu_ms).sum::<u64>());
    assert_eq!(
        t.peak_memory_bytes,
        reported.iter().map(|o| o.usage.peak_memory_bytes).max().unwrap()
    );
    let by_sandbox = strata_compute::UsageFilter {
        sandbox: Some(id.clone()),
        ..Default::default()
    };
    assert_eq!(
        e.compute
            .usage(&by_sandbox, None, 100)
            .await
            .unwrap()
            .totals
            .records,
        2
    );
    let nobody = strata_compute::UsageFilter {
        agent: Some("agt_b".into()),
        ..Default::default()
    };
    let none = e.compute.usage(&nobody, None, 100).await.unwrap();
    assert!(none.items.is_empty());
    assert_eq!(none.totals, strata_compute::UsageTotals::default());
}

#[tokio::test]
async fn usage_of_a_run_and_two_execs_is_stored_and_summed_sqlite() {
    usage_of_a_run_and_two_execs_is_stored_and_summed(Backend::Sqlite).await;
}

#[tokio::test]
async fn usage_of_a_run_and_two_execs_is_stored_and_summed_postgres() {
    usage_of_a_run_and_two_execs_is_stored_and_summed(Backend::Postgres).await;
}
