//! The wasm backend: WASI modules (inline `.wat`) run, persist, stream, are
//! limited and metered, and cannot reach the host.

use std::collections::BTreeMap;

use strata_compute::{
    Backend, Caller, CreateSandbox, ExecEvent, ExecRequest, FileInput, Limits, Network, RunOutcome,
    RunRequest, Status, Stream, UsageFilter,
};
use strata_core::ErrorCode;

use super::harness::{Env, env};

/// A module with the WASI imports the tests use, a page of memory, and two
/// helpers: `$write(fd, ptr, len)` and `$read(fd, ptr, len) -> n` (-1 on error).
/// Bytes 0..64 are scratch; `body` keeps its data at 64 and up.
fn module(body: &str) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $read (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (if (call $fd_read (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))
      (then (return (i32.const -1))))
    (i32.load (i32.const 8)))
  {body})"#
    )
}

fn hello() -> String {
    module(
        r#"(data (i32.const 64) "hello\n")
  (func (export "_start") (call $write (i32.const 1) (i32.const 64) (i32.const 6)))"#,
    )
}

/// Writes "oops\n" to stderr and exits with `code`.
fn exits(code: i32) -> String {
    module(&format!(
        r#"(data (i32.const 64) "oops\n")
  (func (export "_start")
    (call $write (i32.const 2) (i32.const 64) (i32.const 5))
    (call $proc_exit (i32.const {code})))"#
    ))
}

/// Copies fd `fd` to stdout until end of file.
fn copy_loop() -> &'static str {
    r#"(func $copy (param $fd i32) (local $n i32)
    (block $done (loop $more
      (local.set $n (call $read (local.get $fd) (i32.const 1024) (i32.const 4096)))
      (br_if $done (i32.le_s (local.get $n) (i32.const 0)))
      (call $write (i32.const 1) (i32.const 1024) (local.get $n))
      (br $more))))"#
}

fn echo_stdin() -> String {
    module(&format!(
        r#"{}
  (func (export "_start") (call $copy (i32.const 0)))"#,
        copy_loop()
    ))
}

/// Opens `path` under the preopened workspace (fd 3) for reading and copies
/// it to stdout; exits with the errno when the open fails.
fn cat(path: &str) -> String {
    module(&format!(
        r#"(data (i32.const 64) "{path}")
  {}
  (func (export "_start") (local $e i32)
    (local.set $e (call $path_open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const {len})
      (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 16)))
    (if (local.get $e) (then (call $proc_exit (local.get $e))))
    (call $copy (i32.load (i32.const 16))))"#,
        copy_loop(),
        len = path.len()
    ))
}

/// Creates (or truncates) `path` under the workspace and writes `text` to it.
fn write_file(path: &str, text: &str) -> String {
    let escaped = text.replace('\n', "\\0a");
    module(&format!(
        r#"(data (i32.const 64) "{path}")
  (data (i32.const 512) "{escaped}")
  (func (export "_start") (local $e i32)
    (local.set $e (call $path_open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const {plen})
      (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 16)))
    (if (local.get $e) (then (call $proc_exit (local.get $e))))
    (call $write (i32.load (i32.const 16)) (i32.const 512) (i32.const {tlen}))
    (drop (call $fd_close (i32.load (i32.const 16)))))"#,
        plen = path.len(),
        tlen = text.len()
    ))
}

/// Prints its arguments, then its environment, one per line.
fn dump_args_and_env() -> String {
    module(
        r#"(func $dump (param $ptr i32) (param $len i32) (local $i i32)
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $i) (local.get $len)))
      (if (i32.eqz (i32.load8_u (i32.add (local.get $ptr) (local.get $i))))
        (then (i32.store8 (i32.add (local.get $ptr) (local.get $i)) (i32.const 10))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (call $write (i32.const 1) (local.get $ptr) (local.get $len)))
  (func (export "_start")
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 2048) (i32.const 4096)))
    (call $dump (i32.const 4096) (i32.load (i32.const 20)))
    (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $environ_get (i32.const 2048) (i32.const 8192)))
    (call $dump (i32.const 8192) (i32.load (i32.const 20))))"#,
    )
}

fn file(path: &str, content: &str) -> FileInput {
    FileInput {
        path: path.into(),
        content: Some(content.into()),
        content_base64: None,
        mode: None,
    }
}

/// An ephemeral wasm run of `source` (given as `prog.wat`).
fn wasm_run(source: &str) -> RunRequest {
    RunRequest {
        command: vec!["prog.wat".into()],
        backend: Some(Backend::Wasm),
        files: vec![file("prog.wat", source)],
        timeout_ms: Some(20_000),
        ..Default::default()
    }
}

async fn run(e: &Env, req: RunRequest) -> RunOutcome {
    e.compute.run(req, &Caller::default()).await.unwrap()
}

#[tokio::test]
async fn hello_module_writes_stdout_and_exits_zero() {
    let e = env().await;
    let caller = Caller {
        agent_id: Some("agt_01jd3c5v7m2k9w8x4y6z0a1b2c".into()),
        task_id: Some("tsk_01jd3c5v7m2k9w8x4y6z0a1b2c".into()),
        host_egress_granted: false,
    };
    let o = e.compute.run(wasm_run(&hello()), &caller).await.unwrap();
    assert_eq!(o.status, Status::Exited, "{o:?}");
    assert_eq!(o.exit_code, Some(0));
    assert_eq!(o.stdout, "hello\n");
    assert_eq!(o.stderr, "");
    // One page of linear memory, attributed to the caller.
    assert_eq!(o.usage.peak_memory_bytes, 65_536, "{o:?}");
    assert_eq!(o.usage.agent_id, caller.agent_id);
    assert_eq!(o.usage.task_id, caller.task_id);
    // Stored through the same usage path as a process run.
    let page = e
        .compute
        .usage(
            &UsageFilter {
                agent: caller.agent_id.clone(),
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1, "{page:?}");
    assert_eq!(page.items[0].kind, "run");
    assert_eq!(page.items[0].status, "exited");
    assert_eq!(page.items[0].peak_memory_bytes, 65_536);
    // The run's workspace is gone afterwards.
    let runs = e.dir.path().join("data/runs");
    assert_eq!(std::fs::read_dir(runs).unwrap().count(), 0);
}

#[tokio::test]
async fn proc_exit_gives_the_exit_code_and_stderr_is_kept() {
    let e = env().await;
    let o = run(&e, wasm_run(&exits(7))).await;
    assert_eq!(o.status, Status::Exited, "{o:?}");
    assert_eq!(o.exit_code, Some(7));
    assert_eq!(o.stderr, "oops\n");
    assert_eq!(o.stdout, "");
}

#[tokio::test]
async fn stdin_args_and_env_reach_the_module() {
    let e = env().await;
    let mut req = wasm_run(&echo_stdin());
    req.stdin = Some("from stdin\nsecond line\n".into());
    let o = run(&e, req).await;
    assert_eq!(o.stdout, "from stdin\nsecond line\n", "{o:?}");

    let mut req = wasm_run(&dump_args_and_env());
    req.command = vec!["/workspace/prog.wat".into(), "first".into(), "second arg".into()];
    req.env = BTreeMap::from([("GREETING".to_string(), "hi there".to_string())]);
    let o = run(&e, req).await;
    assert!(
        o.stdout.starts_with("/workspace/prog.wat\nfirst\nsecond arg\n"),
        "{o:?}"
    );
    assert!(o.stdout.contains("\nGREETING=hi there\n"), "{o:?}");
    assert!(o.stdout.contains("\nHOME=/workspace\n"), "{o:?}");
}

#[tokio::test]
async fn output_past_the_cap_is_cut_and_flagged() {
    let e = env().await;
    let mut req = wasm_run(&hello());
    req.limits = Limits {
        output_bytes: Some(3),
        ..Default::default()
    };
    let o = run(&e, req).await;
    assert_eq!(o.status, Status::Exited, "{o:?}");
    assert_eq!(o.stdout, "hel");
    assert!(o.stdout_truncated && !o.stderr_truncated, "{o:?}");
}

#[tokio::test]
async fn an_endless_loop_and_a_long_sleep_end_at_the_timeout() {
    let e = env().await;
    let spin = module(r#"(func (export "_start") (loop $l (br $l)))"#);
    // poll_oneoff on a 60 s monotonic clock: asleep in the host, not in wasm.
    let sleep = module(
        r#"(func (export "_start")
    (i32.store8 (i32.const 1032) (i32.const 0))
    (i32.store (i32.const 1040) (i32.const 1))
    (i64.store (i32.const 1048) (i64.const 60000000000))
    (i64.store (i32.const 1056) (i64.const 0))
    (i32.store16 (i32.const 1064) (i32.const 0))
    (drop (call $poll_oneoff (i32.const 1024) (i32.const 2048) (i32.const 1) (i32.const 16))))"#,
    );
    for (source, spins) in [(spin, true), (sleep, false)] {
        let mut req = wasm_run(&source);
        req.timeout_ms = Some(300);
        let started = std::time::Instant::now();
        let o = run(&e, req).await;
        assert_eq!(o.status, Status::Timeout, "{o:?}");
        assert_eq!(o.exit_code, None);
        assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
        assert!(o.usage.wall_ms >= 300, "{o:?}");
        if spins {
            // Its thread's CPU time is metered.
            assert!(o.usage.cpu_ms > 0, "{o:?}");
        }
    }
}

#[tokio::test]
async fn memory_grow_past_the_limit_is_oom_and_within_it_is_metered() {
    let e = env().await;
    // 1000 pages (64 MiB) against a limit of 8 MiB.
    let greedy = module(
        r#"(func (export "_start")
    (if (i32.lt_s (memory.grow (i32.const 1000)) (i32.const 0)) (then (call $proc_exit (i32.const 9)))))"#,
    );
    let mut req = wasm_run(&greedy);
    req.limits = Limits {
        memory_bytes: Some(8 << 20),
        ..Default::default()
    };
    let o = run(&e, req).await;
    assert_eq!(o.status, Status::Oom, "{o:?}");
    assert_eq!(o.exit_code, None);
    assert!(o.usage.peak_memory_bytes <= 8 << 20, "{o:?}");

    let modest = module(
        r#"(func (export "_start")
    (if (i32.lt_s (memory.grow (i32.const 10)) (i32.const 0)) (then (call $proc_exit (i32.const 9)))))"#,
    );
    let o = run(&e, wasm_run(&modest)).await;
    assert_eq!(o.status, Status::Exited, "{o:?}");
    assert_eq!(o.exit_code, Some(0));
    assert_eq!(o.usage.peak_memory_bytes, 11 * 65_536, "{o:?}");
}

#[tokio::test]
async fn host_paths_outside_the_workspace_cannot_be_opened() {
    let e = env().await;
    for path in ["../../../../etc/passwd", "/etc/passwd", "./../etc/passwd"] {
        let o = run(&e, wasm_run(&cat(path))).await;
        assert_eq!(o.status, Status::Exited, "{path}: {o:?}");
        assert!(o.exit_code.is_some_and(|c| c != 0), "{path}: {o:?}");
        assert!(!o.stdout.contains("root:"), "{path}: {o:?}");
    }
    // The workspace is the only preopen: fd 4 is not a directory it holds.
    let probe = module(
        r#"(func (export "_start") (call $proc_exit (call $fd_prestat_get (i32.const 4) (i32.const 16))))"#,
    );
    let o = run(&e, wasm_run(&probe)).await;
    assert_eq!(o.exit_code, Some(8), "EBADF expected: {o:?}");
    // A file of the workspace is readable the same way.
    let mut req = wasm_run(&cat("data.txt"));
    req.files.push(file("data.txt", "inside\n"));
    let o = run(&e, req).await;
    assert_eq!((o.exit_code, o.stdout.as_str()), (Some(0), "inside\n"), "{o:?}");
}

#[tokio::test]
async fn modules_that_cannot_start_are_exec_failed_with_the_cause() {
    let e = env().await;
    let cases: Vec<(RunRequest, &str)> = vec![
        (wasm_run("this is not a module"), "not a valid WebAssembly module"),
        (
            RunRequest {
                command: vec!["missing.wasm".into()],
                backend: Some(Backend::Wasm),
                ..Default::default()
            },
            "no such module",
        ),
        (
            wasm_run(r#"(module (func (export "main")))"#),
            "exports no _start",
        ),
        (
            wasm_run(r#"(module (import "env" "launch" (func)) (func (export "_start")))"#),
            "cannot be instantiated",
        ),
        (
            RunRequest {
                command: vec!["/usr/bin/true".into()],
                backend: Some(Backend::Wasm),
                ..Default::default()
            },
            "inside /workspace",
        ),
    ];
    for (req, why) in cases {
        let program = req.command[0].clone();
        let o = run(&e, req).await;
        assert_eq!(o.status, Status::ExecFailed, "{program}: {o:?}");
        let error = o.error.unwrap_or_default();
        assert!(error.contains(why), "{program}: {error}");
    }
    // A trap ends the module `killed`, the trap named.
    let o = run(
        &e,
        wasm_run(r#"(module (memory 1) (func (export "_start") unreachable))"#),
    )
    .await;
    assert_eq!(o.status, Status::Killed, "{o:?}");
    assert!(o.error.unwrap_or_default().contains("unreachable"));
}

#[tokio::test]
async fn wasm_has_no_network_to_ask_for() {
    let e = env().await;
    let mut req = wasm_run(&hello());
    req.network = Network::HostEgress;
    let caller = Caller {
        host_egress_granted: true,
        ..Default::default()
    };
    let err = e.compute.run(req, &caller).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidRequest);
    assert!(err.detail.contains("network"), "{err}");
}

#[tokio::test]
async fn templates_choose_the_backend() {
    let e = env().await;
    e.compute
        .put_template(strata_compute::Template {
            name: "wasi".into(),
            limits: Default::default(),
            env: BTreeMap::from([("FROM_TEMPLATE".into(), "yes".into())]),
            ro_binds: vec![],
            network: Default::default(),
            backend: Backend::Wasm,
            setup: vec![],
        })
        .await
        .unwrap();
    let mut req = wasm_run(&dump_args_and_env());
    req.backend = None;
    req.template = Some("wasi".into());
    let o = run(&e, req).await;
    assert_eq!(o.status, Status::Exited, "{o:?}");
    assert!(o.stdout.contains("\nFROM_TEMPLATE=yes\n"), "{o:?}");
}

async fn wasm_exec(e: &Env, id: &str, command: &[&str]) -> RunOutcome {
    e.compute
        .exec(
            id,
            ExecRequest {
                command: command.iter().map(|s| s.to_string()).collect(),
                timeout_ms: Some(20_000),
                ..Default::default()
            },
            &Caller::default(),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_persistent_wasm_sandbox_keeps_files_its_modules_write() {
    let e = env().await;
    let sbx = e
        .compute
        .create(
            CreateSandbox {
                backend: Some(Backend::Wasm),
                ..Default::default()
            },
            &Caller::default(),
        )
        .await
        .unwrap();
    assert_eq!(sbx.backend, Backend::Wasm);
    let id = sbx.id;
    for (name, source) in [
        ("writer.wat", write_file("out.txt", "persisted\n")),
        ("reader.wat", cat("out.txt")),
    ] {
        e.compute.put_file(&id, name, source.into_bytes()).await.unwrap();
    }
    let w = wasm_exec(&e, &id, &["writer.wat"]).await;
    assert_eq!((w.status, w.exit_code), (Status::Exited, Some(0)), "{w:?}");
    assert_eq!(w.usage.sandbox_id.as_deref(), Some(id.as_str()));
    let r = wasm_exec(&e, &id, &["/workspace/reader.wat"]).await;
    assert_eq!(r.stdout, "persisted\n", "{r:?}");
    assert_eq!(e.compute.get_file(&id, "out.txt").await.unwrap(), b"persisted\n");
    // Stopped and started again: the workspace and the backend stay.
    e.compute.stop(&id).await.unwrap();
    let info = e.compute.start(&id).await.unwrap();
    assert_eq!(info.backend, Backend::Wasm);
    let r = wasm_exec(&e, &id, &["reader.wat"]).await;
    assert_eq!(r.stdout, "persisted\n", "{r:?}");
    // A link planted to the host's /etc is not followed.
    let ws = e.dir.path().join(format!("data/sandboxes/{id}/ws"));
    std::os::unix::fs::symlink("/etc", ws.join("etc")).unwrap();
    e.compute
        .put_file(&id, "escape.wat", cat("etc/passwd").into_bytes())
        .await
        .unwrap();
    let o = wasm_exec(&e, &id, &["escape.wat"]).await;
    assert!(o.exit_code.is_some_and(|c| c != 0), "{o:?}");
    assert!(!o.stdout.contains("root:"), "{o:?}");
    e.shutdown().await;
}

#[tokio::test]
async fn a_streamed_wasm_exec_sends_chunks_in_order() {
    let e = env().await;
    let id = e
        .compute
        .create(
            CreateSandbox {
                backend: Some(Backend::Wasm),
                ..Default::default()
            },
            &Caller::default(),
        )
        .await
        .unwrap()
        .id;
    let source = module(
        r#"(data (i32.const 64) "abc")
  (func (export "_start")
    (call $write (i32.const 1) (i32.const 64) (i32.const 1))
    (call $write (i32.const 2) (i32.const 65) (i32.const 1))
    (call $write (i32.const 1) (i32.const 66) (i32.const 1))
    (call $proc_exit (i32.const 4)))"#,
    );
    e.compute
        .put_file(&id, "mix.wat", source.into_bytes())
        .await
        .unwrap();
    let mut events = e
        .compute
        .exec_stream(
            &id,
            ExecRequest {
                command: vec!["mix.wat".into()],
                ..Default::default()
            },
            &Caller::default(),
        )
        .await
        .unwrap();
    let mut chunks = Vec::new();
    let mut done = None;
    while let Some(ev) = events.recv().await {
        match ev {
            ExecEvent::Output(c) => chunks.push((c.stream, String::from_utf8(c.data).unwrap())),
            ExecEvent::Done(o) => done = Some(o),
        }
    }
    assert_eq!(
        chunks,
        vec![
            (Stream::Stdout, "a".to_string()),
            (Stream::Stderr, "b".to_string()),
            (Stream::Stdout, "c".to_string())
        ]
    );
    let done = done.expect("a final outcome");
    assert_eq!((done.status, done.exit_code), (Status::Exited, Some(4)));
    assert_eq!(done.stdout, "");
    e.shutdown().await;
}

async fn the_backend_is_stored_and_forks_keep_it(backend: strata_store::Backend) {
    let e = super::harness::env_on(backend, false).await;
    let wasm = e
        .compute
        .create(
            CreateSandbox {
                backend: Some(Backend::Wasm),
                ..Default::default()
            },
            &Caller::default(),
        )
        .await
        .unwrap();
    let process = e
        .compute
        .create(CreateSandbox::default(), &Caller::default())
        .await
        .unwrap();
    assert_eq!(process.backend, Backend::Process);
    let listed: Vec<_> = e
        .compute
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.id, s.backend))
        .collect();
    assert!(listed.contains(&(wasm.id.clone(), Backend::Wasm)), "{listed:?}");
    assert!(
        listed.contains(&(process.id.clone(), Backend::Process)),
        "{listed:?}"
    );
    // A fork keeps the snapshot's sandbox's backend.
    let snap = e.compute.snapshot(&wasm.id, &Caller::default()).await.unwrap();
    let fork = e
        .compute
        .create(
            CreateSandbox {
                from_snapshot: Some(snap.id),
                ..Default::default()
            },
            &Caller::default(),
        )
        .await
        .unwrap();
    assert_eq!(fork.backend, Backend::Wasm);
    e.shutdown().await;
}

#[tokio::test]
async fn the_backend_is_stored_and_forks_keep_it_sqlite() {
    the_backend_is_stored_and_forks_keep_it(strata_store::Backend::Sqlite).await;
}

#[tokio::test]
async fn the_backend_is_stored_and_forks_keep_it_postgres() {
    the_backend_is_stored_and_forks_keep_it(strata_store::Backend::Postgres).await;
}
