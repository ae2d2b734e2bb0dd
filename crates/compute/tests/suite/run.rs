//! Ephemeral runs: what a command sees and what comes back.

use std::collections::BTreeMap;

use strata_compute::{Caller, FileInput, Limits, Status};

use super::harness::{cmd, env, py, run, sh};

#[tokio::test]
async fn echo_returns_stdout_stderr_and_exit_code() {
    let e = env().await;
    let o = run(&e, sh("echo hello; echo oops >&2; exit 3")).await;
    assert_eq!(o.status, Status::Exited, "{o:?}");
    assert_eq!(o.exit_code, Some(3));
    assert_eq!(o.stdout, "hello\n");
    assert_eq!(o.stderr, "oops\n");
}

#[tokio::test]
async fn stdin_files_env_and_cwd_reach_the_command() {
    let e = env().await;
    let mut req = sh("cat; cat sub/data.txt; echo $GREETING; pwd; ./run.sh");
    req.stdin = Some("from stdin\n".into());
    req.files = vec![
        FileInput {
            path: "sub/data.txt".into(),
            content: Some("from a file\n".into()),
            content_base64: None,
            mode: None,
        },
        FileInput {
            path: "run.sh".into(),
            content: None,
            content_base64: Some("IyEvYmluL3NoCmVjaG8gc2NyaXB0IHJhbgo=".into()), // "#!/bin/sh\necho script ran\n"
            mode: Some(0o755),
        },
    ];
    req.env = BTreeMap::from([("GREETING".to_string(), "hi there".to_string())]);
    let o = run(&e, req).await;
    assert_eq!(
        o.stdout, "from stdin\nfrom a file\nhi there\n/workspace\nscript ran\n",
        "{o:?}"
    );
}

#[tokio::test]
async fn python3_and_git_work_inside() {
    let e = env().await;
    let o = run(
        &e,
        py("import json, sys; print(json.dumps({'v': sys.version_info[0]}))"),
    )
    .await;
    assert_eq!(o.stdout, "{\"v\": 3}\n", "{o:?}");
    let o = run(
        &e,
        sh("git init -q repo && cd repo && git config user.email a@b && git config user.name a && echo x > f && git add f && git commit -qm one && git log --format=%s"),
    )
    .await;
    assert_eq!(o.stdout, "one\n", "{o:?}");
}

#[tokio::test]
async fn missing_binary_is_exec_failed_with_the_reason() {
    let e = env().await;
    let o = run(&e, cmd(&["no-such-program-xyz", "arg"])).await;
    assert_eq!(o.status, Status::ExecFailed, "{o:?}");
    let why = o.error.unwrap();
    assert!(
        why.contains("no-such-program-xyz") && why.contains("not found"),
        "{why}"
    );
    let o = run(&e, cmd(&["/workspace/nothing"])).await;
    assert_eq!(o.status, Status::ExecFailed);
    assert!(o.error.unwrap().contains("No such file"), "absolute path reason");
}

#[tokio::test]
async fn usage_is_measured_and_attributed() {
    let e = env().await;
    let caller = Caller {
        agent_id: Some("agt_x".into()),
        task_id: Some("tsk_y".into()),
        host_egress_granted: false,
    };
    let o = e
        .compute
        .run(
            py("x = bytearray(40 << 20)\nn = 0\nfor i in range(3_000_000): n += i\nprint(n)"),
            &caller,
        )
        .await
        .unwrap();
    assert_eq!(o.status, Status::Exited, "{o:?}");
    assert!(o.usage.cpu_ms >= 50, "cpu {:?}", o.usage);
    assert!(o.usage.peak_memory_bytes >= 40 << 20, "peak {:?}", o.usage);
    assert!(o.usage.wall_ms >= o.usage.cpu_ms / 2);
    assert_eq!(o.usage.agent_id.as_deref(), Some("agt_x"));
    assert_eq!(o.usage.task_id.as_deref(), Some("tsk_y"));
}

#[tokio::test]
async fn output_is_capped_at_the_limit() {
    let e = env().await;
    let mut req = sh("head -c 100000 /dev/zero | tr '\\0' a; echo done >&2");
    req.limits = Limits {
        output_bytes: Some(1000),
        ..Default::default()
    };
    let o = run(&e, req).await;
    assert_eq!(o.stdout.len(), 1000);
    assert!(o.stdout_truncated);
    assert!(!o.stderr_truncated);
    assert_eq!(o.status, Status::Exited);
}

#[tokio::test]
async fn templates_give_runs_their_env_and_limits() {
    let e = env().await;
    e.compute
        .put_template(strata_compute::Template {
            name: "py".into(),
            limits: Limits {
                pids: Some(7),
                ..Default::default()
            },
            env: BTreeMap::from([("FROM_TEMPLATE".into(), "yes".into())]),
            ro_binds: vec![],
            network: Default::default(),
            backend: Default::default(),
            setup: vec![],
        })
        .await
        .unwrap();
    let mut req = sh("echo $FROM_TEMPLATE; grep 'Max processes' /proc/self/limits | awk '{print $3}'");
    req.template = Some("py".into());
    let o = run(&e, req).await;
    assert_eq!(o.stdout, "yes\n7\n", "{o:?}");
}
