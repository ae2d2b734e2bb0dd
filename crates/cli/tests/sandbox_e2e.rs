//! End-to-end tests of `strata sandbox …` and `strata template …` against the
//! real binary, which is also its own sandbox init (needs root and user
//! namespaces, as on the CI machine).

mod support;

use support::{Output, Server, WAIT, run_for, strata};

/// A client command against `server` with its admin token; `args` end the
/// command line (everything after `--` is the sandboxed command).
fn client_cmd(server: &Server, _token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = strata();
    cmd.args(args);
    cmd.env("STRATA_URL", &server.url);
    cmd.env("STRATA_TOKEN", &server.admin_token);
    run_for(cmd, WAIT)
}

#[test]
fn sandbox_run_prints_the_output_and_exits_with_the_commands_code() {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let mut server = Server::start(&tmp.path().join("data"));
    let hi = client_cmd(&server, None, &["sandbox", "run", "--", "sh", "-c", "echo hi"]).success();
    assert_eq!(hi.stdout, "hi\n", "{hi}");
    let failed = client_cmd(
        &server,
        None,
        &[
            "sandbox",
            "run",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ],
    );
    assert_eq!(failed.status.code(), Some(7), "{failed}");
    assert_eq!(failed.stdout, "out\n", "{failed}");
    assert!(failed.stderr.contains("err"), "{failed}");
    let missing = client_cmd(&server, None, &["sandbox", "run", "--", "/no/such/program"]).failure();
    assert!(missing.stderr.contains("exec_failed"), "{missing}");
    server.stop();
}

#[test]
fn sandbox_run_backend_wasm_runs_a_local_module_with_its_exit_code() {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let mut server = Server::start(&tmp.path().join("data"));
    let module = tmp.path().join("hi.wat");
    std::fs::write(
        &module,
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hi from wasm\0a")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 13))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $exit (i32.const 5))))"#,
    )
    .expect("write the module");
    let file = format!("{}:mod/hi.wat", module.to_str().expect("utf-8 path"));
    let out = client_cmd(
        &server,
        None,
        &[
            "sandbox",
            "run",
            "--backend",
            "wasm",
            "--file",
            &file,
            "--",
            "mod/hi.wat",
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{out}");
    assert_eq!(out.stdout, "hi from wasm\n", "{out}");
    let id = client_cmd(&server, None, &["sandbox", "create", "--backend", "wasm"])
        .success()
        .stdout
        .trim()
        .to_string();
    assert!(id.starts_with("sbx_"), "{id}");
    let listed = client_cmd(&server, None, &["sandbox", "ls"]).success();
    assert!(listed.stdout.contains("wasm"), "{listed}");
    let bad = client_cmd(&server, None, &["sandbox", "run", "--backend", "jvm", "--", "x"]).failure();
    assert!(bad.stderr.contains("invalid_request"), "{bad}");
    server.stop();
}

#[test]
fn persistent_sandbox_commands_round_trip_with_streamed_exec() {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let mut server = Server::start(&tmp.path().join("data"));
    let cli = |args: &[&str]| client_cmd(&server, None, args);
    let id = cli(&["sandbox", "create"]).success().stdout.trim().to_string();
    assert!(id.starts_with("sbx_"), "{id}");
    let local = tmp.path().join("in.txt");
    std::fs::write(&local, "from the host\n").expect("write a local file");
    cli(&[
        "sandbox",
        "cp",
        local.to_str().expect("utf-8 path"),
        &format!("{id}:dir/in.txt"),
    ])
    .success();
    let out = cli(&[
        "sandbox",
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "cat dir/in.txt; echo made > out.txt; echo warn >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out}");
    assert_eq!(out.stdout, "from the host\n", "{out}");
    assert!(out.stderr.contains("warn"), "{out}");
    let ls = cli(&["sandbox", "ls", &id]).success();
    assert!(ls.stdout.contains("out.txt") && ls.stdout.contains("dir"), "{ls}");
    let listed = cli(&["sandbox", "ls"]).success();
    assert!(
        listed.stdout.contains(&id) && listed.stdout.contains("running"),
        "{listed}"
    );
    cli(&["sandbox", "stop", &id]).success();
    let back = tmp.path().join("out.txt");
    cli(&[
        "sandbox",
        "cp",
        &format!("{id}:out.txt"),
        back.to_str().expect("utf-8 path"),
    ])
    .success();
    assert_eq!(std::fs::read_to_string(&back).expect("copied out"), "made\n");
    cli(&["sandbox", "start", &id]).success();
    let snp = cli(&["sandbox", "snapshot", &id])
        .success()
        .stdout
        .trim()
        .to_string();
    assert!(snp.starts_with("snp_"), "{snp}");
    let fork = cli(&["sandbox", "create", "--from-snapshot", &snp])
        .success()
        .stdout
        .trim()
        .to_string();
    let cat = cli(&["sandbox", "exec", &fork, "--", "cat", "out.txt"]).success();
    assert_eq!(cat.stdout, "made\n", "{cat}");
    let tpl = tmp.path().join("t.json");
    std::fs::write(&tpl, r#"{"env": {"GREETING": "hej"}}"#).expect("write the template");
    cli(&[
        "template",
        "set",
        "greet",
        "-f",
        tpl.to_str().expect("utf-8 path"),
    ])
    .success();
    assert!(cli(&["template", "ls"]).success().stdout.contains("greet"));
    let greeted = cli(&[
        "sandbox",
        "run",
        "--template",
        "greet",
        "--",
        "sh",
        "-c",
        "echo $GREETING",
    ])
    .success();
    assert_eq!(greeted.stdout, "hej\n", "{greeted}");
    cli(&["template", "rm", "greet"]).success();
    cli(&["sandbox", "rm", &id]).success();
    cli(&["sandbox", "rm", &fork]).success();
    assert!(!cli(&["sandbox", "ls"]).success().stdout.contains("sbx_"));
    server.stop();
}

/// The host pid of a process whose command line is exactly `argv`, if any.
fn pid_running(argv: &[&str]) -> Option<u32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Starts a server (`extra` serve flags), runs `sleep MARKER` in an ephemeral
/// sandbox through the CLI, kills the server with SIGKILL while it runs, and
/// checks the sandboxed process dies too.
fn a_run_dies_with_its_killed_server(extra: &[&str], marker: &str) {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let mut cmd = strata();
    cmd.arg("serve").args(extra);
    let mut server =
        Server::try_start_with(&tmp.path().join("data"), cmd).unwrap_or_else(|r| panic!("{}", r.stderr));
    let mut client = strata();
    client
        .args(["sandbox", "run", "--timeout", "600s", "--", "sleep", marker])
        .env("STRATA_URL", &server.url)
        .env("STRATA_TOKEN", &server.admin_token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut client = client.spawn().expect("start the client");
    let argv = ["sleep", marker];
    wait_until("the sandboxed sleep to start", || pid_running(&argv).is_some());
    let pid = pid_running(&argv).expect("the sandboxed sleep");
    server.kill(); // SIGKILL: the server tears nothing down itself
    wait_until(
        &format!("the sandboxed sleep {pid} to die with its server"),
        || !std::path::Path::new(&format!("/proc/{pid}")).exists(),
    );
    let _ = client.kill();
    let _ = client.wait();
}

#[test]
fn a_cold_run_dies_with_its_killed_server() {
    a_run_dies_with_its_killed_server(&[], "2998");
}

#[test]
fn a_pooled_run_dies_with_its_killed_server() {
    a_run_dies_with_its_killed_server(&["--sandbox-pool", "1"], "2997");
}
