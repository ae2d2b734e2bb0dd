//! The `wasm` backend: WASI preview 1 command modules under wasmtime.
//!
//! A request with `backend: "wasm"` runs `command[0]` — a module in the
//! workspace (`/workspace/x.wasm`, or a path relative to `cwd`, e.g. one of
//! the run's `files`), binary or `.wat` text — with the rest of `command` as
//! its arguments, the same environment, stdin and output caps as a process,
//! and its `_start` export as the entry point. The exit code is the one it
//! gives `proc_exit` (0 when `_start` returns).
//!
//! What a module can reach is what WASI hands it, nothing more: the
//! workspace, preopened read-write as `/workspace` (a size-limited tmpfs, as
//! for processes; `..` and links cannot leave it), its stdin and output
//! pipes, the clocks and random numbers. No other host path, no sockets, no
//! network — a template's `ro_binds` and `host-egress` do not apply.
//!
//! Limits come from the resolved [`crate::ResolvedLimits`]: `memory_bytes`
//! caps the module's linear memories together (a `memory.grow` past it
//! traps: `oom`), `workspace_bytes` the workspace, `output_bytes` each
//! output stream, and `timeout_ms` the run (`timeout`). `cpu_millis`,
//! `pids`, `open_files` and `tmp_bytes` have no meaning for a module.
//!
//! One [`wasmtime::Engine`] serves the whole service, with epoch
//! interruption: a thread advances its epoch every 10 ms, and a running
//! module yields to its executor at each tick, so a timeout ends even a
//! module that never calls the host, and a module asleep in a host call is
//! dropped just the same. Each run compiles its module (Cranelift) and runs
//! it on a blocking thread of its own, never on the runtime's workers.
//!
//! Usage is metered like a process's: wall time from request to end; CPU
//! time as the CPU time of the thread that read, compiled and ran the module
//! (`RUSAGE_THREAD`) — WASI's file operations run on tokio's blocking pool
//! and are not in it, so it undercounts a module that mostly does file I/O;
//! peak memory as the largest total of linear memory the module reached (the
//! engine's own code and stacks are not counted).
//!
//! A module that cannot be started — missing, not WebAssembly, no `_start`,
//! imports that WASI preview 1 does not provide — ends `exec_failed` with
//! the reason, which the kernel answers as the `exec_failed` problem. A trap
//! (`unreachable`, an out-of-bounds access) ends it `killed` with the trap in
//! `error`. Without the crate's `wasm` feature, asking for the backend is
//! `backend_unavailable`.

use std::path::Path;

/// Removes the workspaces of ephemeral wasm runs a previous process left.
pub(crate) fn remove_stale_runs(runs: &Path) {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return;
    };
    for e in entries.flatten() {
        remove_run(&e.path());
    }
}

/// Unmounts and removes one ephemeral run's workspace.
fn remove_run(ws: &Path) {
    let _ = nix::mount::umount2(ws, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(ws);
}

#[cfg(not(feature = "wasm"))]
mod stub {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use strata_core::Result;

    use crate::exec::{self, Caller, ExecRequest, ResolvedLimits, RunOutcome, RunRequest};
    use crate::launch::Sink;
    use crate::{Compute, Template};

    // Never reached: every entry point checks the backend first. They answer
    // `backend_unavailable` all the same.
    impl Compute {
        pub(crate) async fn run_wasm(
            &self,
            _req: RunRequest,
            _template: Option<Template>,
            _caller: &Caller,
        ) -> Result<RunOutcome> {
            Err(exec::wasm_unavailable())
        }

        #[allow(clippy::too_many_arguments)]
        pub(crate) async fn exec_wasm(
            &self,
            _sandbox_id: Option<&str>,
            _limits: &ResolvedLimits,
            _base_env: &BTreeMap<String, String>,
            _ws: PathBuf,
            _req: ExecRequest,
            _caller: &Caller,
            _sink: Sink,
        ) -> Result<RunOutcome> {
            Err(exec::wasm_unavailable())
        }
    }
}

#[cfg(feature = "wasm")]
pub(crate) use engine::Runtime;

#[cfg(feature = "wasm")]
mod engine {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};
    use std::time::{Duration, Instant};

    use strata_core::{Error, ErrorCode, Id, Result};
    use tokio::sync::mpsc;
    use wasmtime::{
        Engine, ExternType, Linker, Module, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder,
    };
    use wasmtime_wasi::p1::WasiP1Ctx;
    use wasmtime_wasi::p2::pipe::MemoryInputPipe;
    use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
    use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

    use crate::exec::{
        self, Caller, Chunk, ExecEvent, ExecRequest, Network, ResolvedLimits, RunOutcome, RunRequest, Status,
        Stream, Usage,
    };
    use crate::launch::Sink;
    use crate::{Compute, Template, workspace};

    /// How often the engine's epoch advances: the granularity of timeouts.
    const TICK: Duration = Duration::from_millis(10);

    /// Where the workspace appears inside a module.
    const GUEST_WORKSPACE: &str = "/workspace";

    /// The service's engine and the WASI imports, shared by every run.
    pub(crate) struct Runtime {
        engine: Engine,
        linker: Linker<State>,
    }

    impl Runtime {
        /// The engine (epoch interruption on) and its ticker thread, which
        /// ends when the engine is dropped.
        pub(crate) fn new() -> Result<Runtime> {
            let mut config = wasmtime::Config::new();
            config.epoch_interruption(true);
            let engine = Engine::new(&config)
                .map_err(|e| Error::new(ErrorCode::SandboxUnavailable, format!("the wasm engine: {e}")))?;
            let weak = engine.weak();
            std::thread::Builder::new()
                .name("strata-wasm-epoch".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(TICK);
                        match weak.upgrade() {
                            Some(e) => e.increment_epoch(),
                            None => return,
                        }
                    }
                })
                .map_err(|e| Error::internal(format!("the wasm epoch thread: {e}")))?;
            let mut linker: Linker<State> = Linker::new(&engine);
            wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut State| &mut s.wasi)
                .map_err(|e| Error::internal(format!("the WASI imports: {e}")))?;
            Ok(Runtime { engine, linker })
        }
    }

    /// A store's data: the module's WASI context and its memory meter.
    pub(crate) struct State {
        wasi: WasiP1Ctx,
        meter: Meter,
    }

    /// Caps linear memory (all of a module's memories together) and keeps
    /// its peak; tables and instances are bounded by [`StoreLimits`].
    struct Meter {
        limits: StoreLimits,
        cap: usize,
        total: usize,
        peak: usize,
        /// A growth past `cap` was refused (the module trapped: `oom`).
        over: bool,
    }

    impl Meter {
        fn new(cap: u64) -> Meter {
            let cap = usize::try_from(cap).unwrap_or(usize::MAX);
            Meter {
                limits: StoreLimitsBuilder::new()
                    .memory_size(cap)
                    .table_elements(1 << 20)
                    .instances(16)
                    .tables(64)
                    .memories(16)
                    .trap_on_grow_failure(true)
                    .build(),
                cap,
                total: 0,
                peak: 0,
                over: false,
            }
        }
    }

    impl ResourceLimiter for Meter {
        fn memory_growing(
            &mut self,
            current: usize,
            desired: usize,
            maximum: Option<usize>,
        ) -> wasmtime::Result<bool> {
            let total = self.total.saturating_sub(current).saturating_add(desired);
            if total > self.cap {
                self.over = true;
                wasmtime::bail!("the memory limit of {} bytes is reached", self.cap);
            }
            if !self.limits.memory_growing(current, desired, maximum)? {
                return Ok(false);
            }
            self.total = total;
            self.peak = self.peak.max(total);
            Ok(true)
        }

        fn table_growing(
            &mut self,
            current: usize,
            desired: usize,
            maximum: Option<usize>,
        ) -> wasmtime::Result<bool> {
            self.limits.table_growing(current, desired, maximum)
        }

        fn instances(&self) -> usize {
            self.limits.instances()
        }

        fn tables(&self) -> usize {
            self.limits.tables()
        }

        fn memories(&self) -> usize {
            self.limits.memories()
        }
    }

    /// What one output stream kept or sent.
    #[derive(Default)]
    struct Captured {
        kept: Vec<u8>,
        count: usize,
        truncated: bool,
    }

    /// A module's stdout or stderr: keeps (or forwards as chunks) up to
    /// `cap` bytes and drops the rest, accepting every write so the module
    /// never blocks or fails on output, as a process's pipe is drained.
    #[derive(Clone)]
    struct Output {
        stream: Stream,
        cap: usize,
        captured: Arc<Mutex<Captured>>,
        /// For a streamed exec: one channel for both streams, so chunks
        /// arrive in the order the module wrote them.
        chunks: Option<mpsc::UnboundedSender<Chunk>>,
    }

    impl Output {
        fn new(stream: Stream, cap: usize, chunks: Option<mpsc::UnboundedSender<Chunk>>) -> Output {
            Output {
                stream,
                cap,
                captured: Arc::default(),
                chunks,
            }
        }

        fn take(&self, data: &[u8]) {
            let mut c = self.captured.lock().unwrap_or_else(|p| p.into_inner());
            let n = data.len().min(self.cap.saturating_sub(c.count));
            if n < data.len() {
                c.truncated = true;
            }
            if n == 0 {
                return;
            }
            c.count += n;
            match &self.chunks {
                Some(tx) => {
                    let _ = tx.send(Chunk {
                        stream: self.stream,
                        data: data[..n].to_vec(),
                    });
                }
                None => c.kept.extend_from_slice(&data[..n]),
            }
        }

        fn finish(&self) -> (Vec<u8>, bool) {
            let mut c = self.captured.lock().unwrap_or_else(|p| p.into_inner());
            (std::mem::take(&mut c.kept), c.truncated)
        }
    }

    #[wasmtime_wasi::async_trait]
    impl Pollable for Output {
        async fn ready(&mut self) {}
    }

    impl OutputStream for Output {
        fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
            self.take(&bytes);
            Ok(())
        }

        fn flush(&mut self) -> StreamResult<()> {
            Ok(())
        }

        fn check_write(&mut self) -> StreamResult<usize> {
            Ok(1 << 20)
        }
    }

    impl tokio::io::AsyncWrite for Output {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.take(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl wasmtime_wasi::cli::IsTerminal for Output {
        fn is_terminal(&self) -> bool {
            false
        }
    }

    impl wasmtime_wasi::cli::StdoutStream for Output {
        fn p2_stream(&self) -> Box<dyn OutputStream> {
            Box::new(self.clone())
        }

        fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
            Box::new(self.clone())
        }
    }

    /// One module run, prepared on the async side.
    struct Job {
        engine: Engine,
        linker: Linker<State>,
        ws: PathBuf,
        /// The module, relative to the workspace.
        module: PathBuf,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        stdin: Vec<u8>,
        memory_bytes: u64,
        max_module_bytes: u64,
        timeout: Duration,
        stdout: Output,
        stderr: Output,
    }

    /// How a module run ended.
    struct Ran {
        status: Status,
        exit_code: Option<i32>,
        error: Option<String>,
        cpu: Duration,
        peak_memory: u64,
    }

    impl Ran {
        fn failed(why: String) -> Ran {
            Ran {
                status: Status::ExecFailed,
                exit_code: None,
                error: Some(why),
                cpu: Duration::ZERO,
                peak_memory: 0,
            }
        }
    }

    /// User plus system CPU time of the calling thread.
    fn thread_cpu() -> Duration {
        use nix::sys::resource::{UsageWho, getrusage};
        match getrusage(UsageWho::RUSAGE_THREAD) {
            Ok(u) => {
                let us = |t: nix::sys::time::TimeVal| {
                    Duration::from_secs(t.tv_sec().max(0) as u64)
                        + Duration::from_micros(t.tv_usec().max(0) as u64)
                };
                us(u.user_time()) + us(u.system_time())
            }
            Err(_) => Duration::ZERO,
        }
    }

    /// Where the run stands when the async part ends.
    enum Step {
        NotInstantiated(wasmtime::Error),
        Ran(wasmtime::Result<()>),
    }

    /// Reads, compiles and runs the module on this (blocking) thread,
    /// driving the async calls with `handle`.
    fn execute(job: Job, handle: &tokio::runtime::Handle) -> Result<Ran> {
        let cpu_before = thread_cpu();
        let name = Path::new(GUEST_WORKSPACE).join(&job.module).display().to_string();
        let bytes = match workspace::read(&job.ws, &job.module, job.max_module_bytes) {
            Ok(b) => b,
            Err(e) if e.code == ErrorCode::NotFound => {
                return Ok(Ran::failed(format!("{name}: no such module in the workspace")));
            }
            Err(e) => return Ok(Ran::failed(format!("{name}: cannot be read: {}", e.detail))),
        };
        let module = match Module::new(&job.engine, &bytes) {
            Ok(m) => m,
            Err(e) => {
                return Ok(Ran::failed(format!(
                    "{name}: not a valid WebAssembly module (binary or .wat text): {e:#}"
                )));
            }
        };
        match module.get_export("_start") {
            Some(ExternType::Func(f)) if f.params().len() == 0 && f.results().len() == 0 => {}
            Some(_) => {
                return Ok(Ran::failed(format!(
                    "{name}: its _start export is not a function without parameters or results"
                )));
            }
            None => {
                return Ok(Ran::failed(format!(
                    "{name}: exports no _start function, so it is not a WASI command"
                )));
            }
        }

        let mut wasi = WasiCtxBuilder::new();
        wasi.args(&job.argv)
            .envs(&job.env)
            .stdin(MemoryInputPipe::new(job.stdin))
            .stdout(job.stdout)
            .stderr(job.stderr)
            // Not `allow_blocking_current_thread`: with it a sleep in
            // `poll_oneoff` blocks the thread, out of the timeout's reach.
            .allow_blocking_current_thread(false)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        wasi.preopened_dir(&job.ws, GUEST_WORKSPACE, FsPerms::ReadWrite)
            .map_err(|e| Error::internal(format!("opening the workspace for the module: {e}")))?;
        let state = State {
            wasi: wasi.build_p1(),
            meter: Meter::new(job.memory_bytes),
        };
        let mut store = Store::new(&job.engine, state);
        store.limiter(|s| &mut s.meter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);

        let linker = job.linker;
        let run = async {
            let instance = match linker.instantiate_async(&mut store, &module).await {
                Ok(i) => i,
                Err(e) => return Step::NotInstantiated(e),
            };
            let start = match instance.get_typed_func::<(), ()>(&mut store, "_start") {
                Ok(f) => f,
                Err(e) => return Step::NotInstantiated(e),
            };
            Step::Ran(start.call_async(&mut store, ()).await)
        };
        let ended = handle.block_on(async { tokio::time::timeout(job.timeout, run).await });
        let meter = &store.data().meter;
        let (over, peak) = (meter.over, meter.peak as u64);
        let (status, exit_code, error) = match ended {
            Err(_) => (Status::Timeout, None, None),
            Ok(Step::NotInstantiated(_)) if over => (
                Status::Oom,
                None,
                Some("its initial memory is over the memory limit".to_string()),
            ),
            Ok(Step::NotInstantiated(e)) => (
                Status::ExecFailed,
                None,
                Some(format!("{name}: cannot be instantiated: {e:#}")),
            ),
            Ok(Step::Ran(Ok(()))) => (Status::Exited, Some(0), None),
            Ok(Step::Ran(Err(e))) => match e.downcast_ref::<I32Exit>() {
                Some(exit) => (Status::Exited, Some(exit.0), None),
                None if over => (Status::Oom, None, Some(format!("{e:#}"))),
                None => {
                    let why = match e.downcast_ref::<wasmtime::Trap>() {
                        Some(t) => t.to_string(),
                        None => format!("{e:#}"),
                    };
                    (Status::Killed, None, Some(why))
                }
            },
        };
        drop(store);
        Ok(Ran {
            status,
            exit_code,
            error,
            cpu: thread_cpu().saturating_sub(cpu_before),
            peak_memory: peak,
        })
    }

    /// The module `command[0]` names, relative to the workspace: an absolute
    /// path under `/workspace`, or a path relative to `cwd`.
    fn module_path(program: &str, cwd: &str) -> std::result::Result<PathBuf, String> {
        let outside = || format!("{program}: a wasm module must be a file inside {GUEST_WORKSPACE}");
        let joined = if program.starts_with('/') {
            PathBuf::from(program)
        } else {
            Path::new(cwd).join(program)
        };
        let rel = joined.strip_prefix(GUEST_WORKSPACE).map_err(|_| outside())?;
        workspace::check_path(&rel.to_string_lossy()).map_err(|_| outside())
    }

    impl Compute {
        /// An ephemeral wasm run: a fresh workspace (a tmpfs of
        /// `workspace_bytes`) with the run's files, one module run, and the
        /// workspace removed.
        pub(crate) async fn run_wasm(
            &self,
            req: RunRequest,
            template: Option<Template>,
            caller: &Caller,
        ) -> Result<RunOutcome> {
            let cfg = self.config().clone();
            let (limits, network) = self.over_template(template.as_ref(), &req.limits, req.network)?;
            if network != Network::None {
                return Err(exec::no_wasm_network());
            }
            exec::check_command(&req.command)?;
            exec::check_timeout(&cfg, req.timeout_ms)?;
            let base_env = template.map(|t| t.env).unwrap_or_default();
            exec::environment([&base_env, &req.env])?;
            let files = self.seed_files(&req.files, limits.workspace_bytes)?;
            let ws = cfg.data_dir.join("runs").join(Id::new("run").to_string());
            let owner = (cfg.host_user_uid, cfg.host_user_uid);
            let prepared = {
                let ws = ws.clone();
                tokio::task::spawn_blocking(move || -> Result<()> {
                    std::fs::create_dir_all(&ws)
                        .and_then(|()| crate::sandbox::mount_workspace(&ws, limits.workspace_bytes, owner.0))
                        .map_err(|e| {
                            Error::new(
                                ErrorCode::SandboxUnavailable,
                                format!("mounting the workspace: {e}"),
                            )
                        })?;
                    for f in files {
                        workspace::write(&ws, Path::new(&f.path), &f.data, f.mode, owner)?;
                    }
                    Ok(())
                })
                .await
                .map_err(Error::internal)
                .and_then(|r| r)
            };
            let out = match prepared {
                Ok(()) => {
                    let exec = ExecRequest {
                        command: req.command,
                        stdin: req.stdin,
                        timeout_ms: req.timeout_ms,
                        env: req.env,
                        cwd: req.cwd,
                    };
                    let sink = Sink::Capture(limits.output_bytes as usize);
                    self.exec_wasm(None, &limits, &base_env, ws.clone(), exec, caller, sink)
                        .await
                }
                Err(e) => Err(e),
            };
            let _ = tokio::task::spawn_blocking(move || super::remove_run(&ws)).await;
            out
        }

        /// Runs one module with `ws` as its `/workspace`.
        #[allow(clippy::too_many_arguments)]
        pub(crate) async fn exec_wasm(
            &self,
            sandbox_id: Option<&str>,
            limits: &ResolvedLimits,
            base_env: &BTreeMap<String, String>,
            ws: PathBuf,
            req: ExecRequest,
            caller: &Caller,
            sink: Sink,
        ) -> Result<RunOutcome> {
            let started = Instant::now();
            exec::check_command(&req.command)?;
            let timeout = exec::check_timeout(self.config(), req.timeout_ms)?;
            let env = exec::environment([base_env, &req.env])?;
            let cwd = exec::check_cwd(req.cwd.as_deref())?;
            if cwd != GUEST_WORKSPACE && !cwd.starts_with("/workspace/") {
                return Err(Error::invalid(
                    "cwd",
                    "a wasm module sees only /workspace; cwd must be inside it",
                ));
            }
            let (cap, stream) = match sink {
                Sink::Capture(cap) => (cap, None),
                Sink::Stream(cap, tx) => (cap, Some(tx)),
            };
            // Chunks go through an unbounded channel (the module's thread must
            // not wait on the runtime) to a task that forwards them in order;
            // at most `cap` bytes per stream are ever sent.
            let (chunks, forwarder) = match stream {
                Some(tx) => {
                    let (ctx, mut crx) = mpsc::unbounded_channel::<Chunk>();
                    let forwarder = tokio::spawn(async move {
                        while let Some(c) = crx.recv().await {
                            let _ = tx.send(ExecEvent::Output(c)).await;
                        }
                    });
                    (Some(ctx), Some(forwarder))
                }
                None => (None, None),
            };
            let mut stdout = Output::new(Stream::Stdout, cap, chunks.clone());
            let mut stderr = Output::new(Stream::Stderr, cap, chunks);
            let ran = match module_path(&req.command[0], &cwd) {
                Err(why) => Ok(Ran::failed(why)),
                Ok(module) => {
                    let job = Job {
                        engine: self.inner.wasm.engine.clone(),
                        linker: self.inner.wasm.linker.clone(),
                        ws,
                        module,
                        argv: req.command.clone(),
                        env: env
                            .iter()
                            .filter_map(|kv| kv.split_once('='))
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        stdin: req.stdin.map(String::into_bytes).unwrap_or_default(),
                        memory_bytes: limits.memory_bytes,
                        max_module_bytes: limits.workspace_bytes,
                        timeout: Duration::from_millis(timeout),
                        stdout: stdout.clone(),
                        stderr: stderr.clone(),
                    };
                    let handle = tokio::runtime::Handle::current();
                    tokio::task::spawn_blocking(move || execute(job, &handle))
                        .await
                        .map_err(Error::internal)
                        .and_then(|r| r)
                }
            };
            // The job (and its clones of the chunk sender) are gone: the
            // forwarder ends once it has sent everything.
            stdout.chunks = None;
            stderr.chunks = None;
            if let Some(f) = forwarder {
                let _ = f.await;
            }
            let ran = ran?;
            let (out, out_truncated) = stdout.finish();
            let (err, err_truncated) = stderr.finish();
            Ok(RunOutcome {
                status: ran.status,
                exit_code: ran.exit_code,
                signal: None,
                stdout: String::from_utf8_lossy(&out).into_owned(),
                stderr: String::from_utf8_lossy(&err).into_owned(),
                stdout_truncated: out_truncated,
                stderr_truncated: err_truncated,
                error: ran.error,
                usage: Usage {
                    wall_ms: started.elapsed().as_millis() as u64,
                    cpu_ms: ran.cpu.as_millis() as u64,
                    peak_memory_bytes: ran.peak_memory,
                    sandbox_id: sandbox_id.map(str::to_string),
                    agent_id: caller.agent_id.clone(),
                    task_id: caller.task_id.clone(),
                },
            })
        }
    }
}
