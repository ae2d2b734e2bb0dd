//! Starting the sandbox init from the server and following what it reports.
//!
//! The server starts the init with plain `std::process` (no pre-exec hook, so
//! nothing runs between its `fork` and `exec`), giving it the control socket
//! as standard input; everything else happens in the init.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use strata_core::{Error, Result};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::cgroup::Group;
use crate::exec::{Chunk, ExecEvent, Stream};
use crate::init;
use crate::wire::{Report, Spec};

/// Where a command's output goes.
pub(crate) enum Sink {
    /// Kept, up to this many bytes per stream.
    Capture(usize),
    /// Sent as ordered chunks, up to this many bytes per stream.
    Stream(usize, mpsc::Sender<ExecEvent>),
}

/// What a finished command left.
#[derive(Debug, Default)]
pub(crate) struct Finished {
    pub exited: Option<Report>,
    pub exec_failed: Option<String>,
    pub setup_failed: Option<(String, String)>,
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub wall: Duration,
}

fn spawn_init(
    init_program: &Path,
    piped_output: bool,
) -> Result<(tokio::process::Child, tokio::net::UnixStream)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| Error::internal(format!("control socket: {e}")))?;
    let theirs = OwnedFd::from(theirs);
    let mut cmd = tokio::process::Command::new(init_program);
    cmd.arg(init::INIT_ARG)
        .env_clear()
        .stdin(Stdio::from(theirs))
        .stdout(if piped_output {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(if piped_output {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| {
        Error::new(
            strata_core::ErrorCode::SandboxUnavailable,
            format!("cannot start the sandbox init {}: {e}", init_program.display()),
        )
    })?;
    drop(cmd);
    ours.set_nonblocking(true)
        .map_err(|e| Error::internal(format!("control socket: {e}")))?;
    let ours = tokio::net::UnixStream::from_std(ours)
        .map_err(|e| Error::internal(format!("control socket: {e}")))?;
    Ok((child, ours))
}

async fn send_spec(control: &mut tokio::net::UnixStream, spec: &Spec) -> Result<()> {
    let mut line = serde_json::to_vec(spec).map_err(Error::internal)?;
    line.push(b'\n');
    control
        .write_all(&line)
        .await
        .map_err(|e| Error::internal(format!("sending the sandbox spec: {e}")))
}

async fn pump(
    mut r: impl AsyncRead + Unpin,
    cap: usize,
    stream: Option<(Stream, mpsc::Sender<ExecEvent>)>,
) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut sent = 0usize;
    let mut truncated = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let room = cap.saturating_sub(if stream.is_some() { sent } else { kept.len() });
        let take = n.min(room);
        if take < n {
            truncated = true;
        }
        if take == 0 {
            continue; // keep draining so the writer never blocks
        }
        match &stream {
            Some((which, tx)) => {
                sent += take;
                let _ = tx
                    .send(ExecEvent::Output(Chunk {
                        stream: *which,
                        data: buf[..take].to_vec(),
                    }))
                    .await;
            }
            None => kept.extend_from_slice(&buf[..take]),
        }
    }
    (kept, truncated)
}

/// A way to signal a command's main process while it runs (a service's stop).
pub(crate) struct Control {
    /// Told the main process's host pid once it exists.
    pub(crate) started: Option<oneshot::Sender<i32>>,
    /// Signals to send it. A signal that comes before the process exists is
    /// sent once it does; when every sender is gone, it is killed.
    pub(crate) signals: mpsc::UnboundedReceiver<Signal>,
}

/// A started init waiting for its spec.
pub(crate) struct Init {
    child: tokio::process::Child,
    control: tokio::net::UnixStream,
}

/// Starts an init for [`run`] or [`run_controlled`]. Callers start it before
/// they create the command's cgroups, so the init's own start-up (loading,
/// linking) runs while they do; it waits for its spec, and dropping it kills it.
pub(crate) fn start(init_program: &Path) -> Result<Init> {
    let (child, control) = spawn_init(init_program, true)?;
    Ok(Init { child, control })
}

/// Runs a command ([`crate::wire::Mode::Run`] or [`crate::wire::Mode::Enter`])
/// to its end or its timeout. On timeout, or once the command's main process
/// has ended, everything left in `kill_group` is killed. Returns as soon as
/// the command's report and output are in; the init process itself may still
/// be tearing the namespaces down — the returned child is reaped by the
/// caller's clean-up.
pub(crate) async fn run(
    init: Init,
    spec: &Spec,
    sink: Sink,
    timeout: Duration,
    kill_group: &Group,
) -> Result<(Finished, tokio::process::Child)> {
    run_controlled(init, spec, sink, timeout, kill_group, None).await
}

/// The next signal `control` asks for; never, without a control. Once its
/// senders are all gone, `SIGKILL` (a dropped handle leaves nothing running).
async fn next_signal(control: &mut Option<Control>) -> Signal {
    let Some(c) = control else {
        return std::future::pending().await;
    };
    match c.signals.recv().await {
        Some(s) => s,
        None => {
            *control = None;
            Signal::SIGKILL
        }
    }
}

/// [`run`], with the main process signalled as `control` asks
/// (`Duration::MAX`: no timeout).
pub(crate) async fn run_controlled(
    init: Init,
    spec: &Spec,
    sink: Sink,
    timeout: Duration,
    kill_group: &Group,
    ctl: Option<Control>,
) -> Result<(Finished, tokio::process::Child)> {
    let started = Instant::now();
    let Init {
        mut child,
        mut control,
    } = init;
    send_spec(&mut control, spec).await?;
    let output = Output {
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
    };
    let fin = follow(control, output, sink, timeout, kill_group, started, ctl).await;
    Ok((fin, child))
}

/// The output pipes of a sandbox's command.
pub(crate) struct Output {
    pub stdout: Option<tokio::process::ChildStdout>,
    pub stderr: Option<tokio::process::ChildStderr>,
}

/// A pooled sandbox ([`crate::wire::Mode::Serve`]) waiting for its command.
pub(crate) struct Served {
    /// The server's end of the control socket.
    pub control: tokio::net::UnixStream,
    /// The pipes its pid 1 holds for the command.
    pub output: Output,
}

/// Starts a pooled sandbox and waits until it is built. Returns the holder's
/// host pid and what [`serve`] needs to run its one command; the sandbox
/// ends when the control socket closes.
pub(crate) async fn build_served(init_program: &Path, spec: &Spec) -> Result<(i32, Served)> {
    let (mut child, mut control) = spawn_init(init_program, true)?;
    send_spec(&mut control, spec).await?;
    let output = Output {
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
    };
    let pid = wait_ready(&mut child, &mut control).await?;
    Ok((pid, Served { control, output }))
}

/// Runs `exec` in a pooled sandbox, like [`run`].
pub(crate) async fn serve(
    served: Served,
    exec: &crate::wire::Exec,
    sink: Sink,
    timeout: Duration,
    kill_group: &Group,
) -> Result<Finished> {
    let started = Instant::now();
    let Served { mut control, output } = served;
    let mut line = serde_json::to_vec(exec).map_err(Error::internal)?;
    line.push(b'\n');
    control
        .write_all(&line)
        .await
        .map_err(|e| Error::internal(format!("sending the command: {e}")))?;
    Ok(follow(control, output, sink, timeout, kill_group, started, None).await)
}

/// Collects a command's reports and output until it ends or times out,
/// signalling its main process as `ctl` asks.
async fn follow(
    control: tokio::net::UnixStream,
    output: Output,
    sink: Sink,
    timeout: Duration,
    kill_group: &Group,
    started: Instant,
    mut ctl: Option<Control>,
) -> Finished {
    let (cap, tx) = match sink {
        Sink::Capture(c) => (c, None),
        Sink::Stream(c, tx) => (c, Some(tx)),
    };
    let out = output
        .stdout
        .map(|r| tokio::spawn(pump(r, cap, tx.clone().map(|t| (Stream::Stdout, t)))));
    let err = output
        .stderr
        .map(|r| tokio::spawn(pump(r, cap, tx.map(|t| (Stream::Stderr, t)))));

    let mut fin = Finished::default();
    let mut lines = BufReader::new(control).lines();
    let mut main_pid: Option<i32> = None;
    let mut early: Option<Signal> = None;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break };
                match serde_json::from_str::<Report>(&line) {
                    Ok(Report::Started { pid }) => {
                        main_pid = Some(pid);
                        if let Some(tx) = ctl.as_mut().and_then(|c| c.started.take()) {
                            let _ = tx.send(pid);
                        }
                        if let Some(sig) = early.take() {
                            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
                        }
                    }
                    Ok(Report::ExecFailed { reason }) => fin.exec_failed = Some(reason),
                    Ok(Report::SetupFailed { stage, reason }) => fin.setup_failed = Some((stage, reason)),
                    Ok(r @ Report::Exited { .. }) => {
                        fin.exited = Some(r);
                        break;
                    }
                    Ok(Report::Ready) => {}
                    Err(e) => tracing::warn!(%e, line, "unreadable report from the sandbox init"),
                }
            }
            sig = next_signal(&mut ctl) => match main_pid {
                Some(pid) => {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
                }
                // SIGKILL wins over an earlier SIGTERM.
                None if early != Some(Signal::SIGKILL) => early = Some(sig),
                None => {}
            },
            () = &mut deadline => {
                fin.timed_out = true;
                if let Some(pid) = main_pid {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
                kill_group.kill();
                // Collect the final report (the killed command's status).
                if let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await
                    && let Ok(r @ Report::Exited { .. }) = serde_json::from_str::<Report>(&line)
                {
                    fin.exited = Some(r);
                }
                break;
            }
        }
    }
    fin.wall = started.elapsed();
    // Leftovers (background processes of an exec) go with the main process.
    kill_group.kill();
    let grace = Duration::from_secs(5);
    if let Some(t) = out
        && let Ok(Ok((b, tr))) = tokio::time::timeout(grace, t).await
    {
        fin.stdout = b;
        fin.stdout_truncated = tr;
    }
    if let Some(t) = err
        && let Ok(Ok((b, tr))) = tokio::time::timeout(grace, t).await
    {
        fin.stderr = b;
        fin.stderr_truncated = tr;
    }
    fin
}

/// Starts a holder ([`crate::wire::Mode::Hold`]) and waits until its sandbox
/// is built. Returns the holder's host pid and the server's end of its
/// control socket: the holder lives until that end closes.
pub(crate) async fn hold(init_program: &Path, spec: &Spec) -> Result<(i32, OwnedFd)> {
    let (mut child, mut control) = spawn_init(init_program, false)?;
    send_spec(&mut control, spec).await?;
    let pid = wait_ready(&mut child, &mut control).await?;
    let fd = control
        .into_std()
        .map_err(|e| Error::internal(format!("control socket: {e}")))?;
    Ok((pid, OwnedFd::from(fd)))
}

/// Waits for a holder's `Ready` (the host-side process exits once it is
/// built) and returns the holder's host pid.
async fn wait_ready(child: &mut tokio::process::Child, control: &mut tokio::net::UnixStream) -> Result<i32> {
    let mut reader = BufReader::new(control);
    let mut pid = None;
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        let mut line = String::new();
        // `Started` comes from the namespace side and `Ready` from the
        // sandbox's pid 1: two processes, so either may come first.
        let mut ready = false;
        loop {
            if ready && pid.is_some() {
                return Ok(());
            }
            line.clear();
            if !matches!(reader.read_line(&mut line).await, Ok(n) if n > 0) {
                break;
            }
            match serde_json::from_str::<Report>(&line) {
                Ok(Report::Started { pid: p }) => pid = Some(p),
                Ok(Report::Ready) => ready = true,
                Ok(Report::SetupFailed { stage, reason }) => {
                    return Err(Error::new(
                        strata_core::ErrorCode::SandboxUnavailable,
                        format!("sandbox setup failed at {stage}: {reason}"),
                    ));
                }
                _ => {}
            }
        }
        Err(Error::new(
            strata_core::ErrorCode::SandboxUnavailable,
            "the sandbox init ended before the sandbox was ready",
        ))
    })
    .await
    .unwrap_or_else(|_| Err(Error::internal("the sandbox init did not get ready within 10 s")));
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    outcome?;
    pid.ok_or_else(|| Error::internal("the holder did not report its pid"))
}
