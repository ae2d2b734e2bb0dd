//! Ephemeral runs: what a command sees and what comes back.

use strata_compute::{Caller, FileInput, Status};

use super::harness::{cmd, env, py, run, sh};

#[tokio::test]
async fn echo_returns_stdout_and_exit_code() {
    let e = env().await;
    let o = run(&e, sh("echo hello; echo oops >&2; exit 3")).await;
    assert_eq!(o.status, Status::Exited, "{o:?}");
    assert_eq!(o.exit_code, Some(3));
    assert_eq!(o.stdout, "hello\n");
    assert_eq!(o.stderr, "oops\n");
}
