//! What a caller asks a sandbox to run, and what comes back.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use strata_core::{Error, ErrorCode, Result};

use crate::Config;

/// Resource limits a caller may set; unset fields take the service's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory of all the sandbox's processes together, bytes (cgroup), past
    /// which the kernel's OOM killer ends the command (`oom`).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// CPU share in thousandths of a core (1000 = one core).
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    /// Processes and threads at once (cgroup `pids.max`; also `RLIMIT_NPROC`).
    #[serde(default)]
    pub pids: Option<u64>,
    /// Size of `/workspace`, bytes.
    #[serde(default)]
    pub workspace_bytes: Option<u64>,
    /// Size of `/tmp`, bytes.
    #[serde(default)]
    pub tmp_bytes: Option<u64>,
    /// Bytes of stdout and of stderr kept (each); the rest is dropped and the
    /// outcome says it was truncated.
    #[serde(default)]
    pub output_bytes: Option<u64>,
    /// Open file descriptors per process.
    #[serde(default)]
    pub open_files: Option<u64>,
}

/// Limits with every field decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ResolvedLimits {
    /// See [`Limits::memory_bytes`].
    pub memory_bytes: u64,
    /// See [`Limits::cpu_millis`].
    pub cpu_millis: u64,
    /// See [`Limits::pids`].
    pub pids: u64,
    /// See [`Limits::workspace_bytes`].
    pub workspace_bytes: u64,
    /// See [`Limits::tmp_bytes`].
    pub tmp_bytes: u64,
    /// See [`Limits::output_bytes`].
    pub output_bytes: u64,
    /// See [`Limits::open_files`].
    pub open_files: u64,
}

impl ResolvedLimits {
    /// The defaults used when a caller sets nothing.
    pub const DEFAULT: ResolvedLimits = ResolvedLimits {
        memory_bytes: 512 << 20,
        cpu_millis: 1000,
        pids: 128,
        workspace_bytes: 256 << 20,
        tmp_bytes: 64 << 20,
        output_bytes: 1 << 20,
        open_files: 1024,
    };

    /// The most a caller may ask for.
    pub const MAX: ResolvedLimits = ResolvedLimits {
        memory_bytes: 16 << 30,
        cpu_millis: 64_000,
        pids: 16_384,
        workspace_bytes: 64 << 30,
        tmp_bytes: 16 << 30,
        output_bytes: 64 << 20,
        open_files: 65_536,
    };

    /// The least a caller may ask for (below this nothing useful runs).
    pub const MIN: ResolvedLimits = ResolvedLimits {
        memory_bytes: 8 << 20,
        cpu_millis: 10,
        pids: 1,
        workspace_bytes: 64 << 10,
        tmp_bytes: 64 << 10,
        output_bytes: 0,
        open_files: 16,
    };

    /// `asked` over `base`, each field checked against `[MIN, max]`.
    pub fn resolve(base: &ResolvedLimits, asked: &Limits, max: &ResolvedLimits) -> Result<ResolvedLimits> {
        let min = ResolvedLimits::MIN;
        let pick = |name: &str, v: Option<u64>, base: u64, lo: u64, hi: u64| -> Result<u64> {
            let v = v.unwrap_or(base);
            if v < lo || v > hi {
                return Err(Error::new(
                    ErrorCode::InvalidLimits,
                    format!("limits.{name}: {v} is outside {lo}..={hi}"),
                ));
            }
            Ok(v)
        };
        Ok(ResolvedLimits {
            memory_bytes: pick(
                "memory_bytes",
                asked.memory_bytes,
                base.memory_bytes,
                min.memory_bytes,
                max.memory_bytes,
            )?,
            cpu_millis: pick(
                "cpu_millis",
                asked.cpu_millis,
                base.cpu_millis,
                min.cpu_millis,
                max.cpu_millis,
            )?,
            pids: pick("pids", asked.pids, base.pids, min.pids, max.pids)?,
            workspace_bytes: pick(
                "workspace_bytes",
                asked.workspace_bytes,
                base.workspace_bytes,
                min.workspace_bytes,
                max.workspace_bytes,
            )?,
            tmp_bytes: pick(
                "tmp_bytes",
                asked.tmp_bytes,
                base.tmp_bytes,
                min.tmp_bytes,
                max.tmp_bytes,
            )?,
            output_bytes: pick(
                "output_bytes",
                asked.output_bytes,
                base.output_bytes,
                min.output_bytes,
                max.output_bytes,
            )?,
            open_files: pick(
                "open_files",
                asked.open_files,
                base.open_files,
                min.open_files,
                max.open_files,
            )?,
        })
    }
}

/// Network access of a sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Network {
    /// An empty network namespace: no interface is up, nothing is reachable,
    /// not even the host's loopback (the default).
    #[default]
    None,
    /// The host's network namespace, including its loopback. Honoured only
    /// when the caller holds the grant ([`Caller::host_egress_granted`]).
    HostEgress,
}

/// What runs a sandbox's commands.
///
/// `process` (the default) runs Linux programs in namespaces with seccomp and
/// cgroups; `wasm` runs WASI preview 1 command modules (binary `.wasm` or
/// `.wat` text) under wasmtime, with `/workspace` as the only directory they
/// can reach and no network at all. A persistent sandbox keeps the backend it
/// was created with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Linux processes: namespaces, seccomp, cgroups (the default).
    #[default]
    Process,
    /// WASI modules under wasmtime; `command[0]` names the module in `/workspace`.
    Wasm,
}

impl Backend {
    /// The stable name (`process`, `wasm`), as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Process => "process",
            Backend::Wasm => "wasm",
        }
    }

    /// The backend with this stable name.
    pub fn parse(s: &str) -> Option<Backend> {
        match s {
            "process" => Some(Backend::Process),
            "wasm" => Some(Backend::Wasm),
            _ => None,
        }
    }

    /// Whether this build can run it (`wasm` needs the `wasm` Cargo feature);
    /// `backend_unavailable` when it cannot.
    pub fn check_available(self) -> Result<Backend> {
        match self {
            Backend::Wasm if !cfg!(feature = "wasm") => Err(wasm_unavailable()),
            b => Ok(b),
        }
    }
}

/// A file placed in `/workspace` before the command runs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileInput {
    /// Path relative to `/workspace` (no `..`, not absolute).
    pub path: String,
    /// Text contents (exclusive with `content_base64`).
    #[serde(default)]
    pub content: Option<String>,
    /// Binary contents, base64.
    #[serde(default)]
    pub content_base64: Option<String>,
    /// Permission bits (default 0644; 0755 for a script).
    #[serde(default)]
    pub mode: Option<u32>,
}

impl FileInput {
    pub(crate) fn bytes(&self) -> Result<Vec<u8>> {
        use base64::Engine;
        match (&self.content, &self.content_base64) {
            (Some(t), None) => Ok(t.clone().into_bytes()),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| Error::invalid("files.content_base64", e)),
            (None, None) => Ok(Vec::new()),
            (Some(_), Some(_)) => Err(Error::invalid(
                "files",
                format!("'{}' has both content and content_base64", self.path),
            )),
        }
    }
}

/// An ephemeral run: build a sandbox, run one command, tear it down.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Program and arguments, e.g. `["python3", "-c", "print(1)"]`; for the
    /// wasm backend `command[0]` is the module (`/workspace/x.wasm`, or a path
    /// relative to `cwd`, e.g. one of `files`) and the rest its arguments.
    pub command: Vec<String>,
    /// Bytes given on standard input (text).
    #[serde(default)]
    pub stdin: Option<String>,
    /// What runs the command (default: the template's, else `process`).
    #[serde(default)]
    pub backend: Option<Backend>,
    /// Files placed in `/workspace` first.
    #[serde(default)]
    pub files: Vec<FileInput>,
    /// Wall-clock limit; past it the whole sandbox is killed (`timeout`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Extra environment (over `PATH`, `HOME=/workspace`, `LANG`, `TMPDIR`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Network access.
    #[serde(default)]
    pub network: Network,
    /// A template whose limits, env, binds and network this run starts from.
    #[serde(default)]
    pub template: Option<String>,
    /// Working directory (default `/workspace`).
    #[serde(default)]
    pub cwd: Option<String>,
}

/// One command in a persistent sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Bytes given on standard input (text).
    #[serde(default)]
    pub stdin: Option<String>,
    /// Wall-clock limit; past it this exec's processes are killed (`timeout`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Extra environment over the sandbox's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/workspace`).
    #[serde(default)]
    pub cwd: Option<String>,
}

/// Who a run is for and what it was granted; filled in by the kernel.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Caller {
    /// The agent the usage is attributed to.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The task the usage is attributed to.
    #[serde(default)]
    pub task_id: Option<String>,
    /// Whether policy grants `host-egress` networking.
    #[serde(default)]
    pub host_egress_granted: bool,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// It exited by itself (any exit code).
    Exited,
    /// It ran past its timeout and was killed.
    Timeout,
    /// The memory limit was reached and the kernel killed it (wasm: a
    /// `memory.grow` past the limit, which traps).
    Oom,
    /// A signal ended it (wasm: a trap, e.g. `unreachable`; see `error`).
    Killed,
    /// It could not be started (no such program, not executable, …); see `error`.
    ExecFailed,
}

/// Resources one run or exec used, attributed to its caller (for the ledger).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    /// Wall-clock time from request to end, ms.
    pub wall_ms: u64,
    /// CPU time of all its processes, ms (cgroup `cpuacct`, else rusage; wasm:
    /// the CPU time of the thread that compiled and ran the module).
    pub cpu_ms: u64,
    /// Peak memory, bytes (cgroup `memory.max_usage_in_bytes`, else max RSS;
    /// wasm: the largest linear memory the module reached).
    pub peak_memory_bytes: u64,
    /// The sandbox, for execs in a persistent one.
    pub sandbox_id: Option<String>,
    /// The agent charged.
    pub agent_id: Option<String>,
    /// The task charged.
    pub task_id: Option<String>,
}

/// The result of a run or an exec.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunOutcome {
    /// How it ended.
    pub status: Status,
    /// The exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal number that ended it, if any.
    pub signal: Option<i32>,
    /// Standard output (lossy UTF-8), at most `limits.output_bytes`.
    pub stdout: String,
    /// Standard error (lossy UTF-8), at most `limits.output_bytes`.
    pub stderr: String,
    /// Whether stdout was cut at the limit.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the limit.
    pub stderr_truncated: bool,
    /// Why it could not start (`exec_failed`), or the trap that ended a wasm
    /// module (`killed`).
    pub error: Option<String>,
    /// What it used.
    pub usage: Usage,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A piece of output, in the order the sandbox wrote it (per stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Chunk {
    /// Its stream.
    pub stream: Stream,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// An event of a streamed exec.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    /// Output.
    Output(Chunk),
    /// The end (its stdout and stderr fields are empty: the output came as chunks).
    Done(RunOutcome),
}

/// `backend_unavailable` for `wasm` in a build without the `wasm` feature.
pub(crate) fn wasm_unavailable() -> Error {
    Error::new(
        ErrorCode::BackendUnavailable,
        "backend: this server was built without the wasm backend (the `wasm` Cargo feature of strata-compute)",
    )
}

/// The refusal of a network for the wasm backend, which has none.
pub(crate) fn no_wasm_network() -> Error {
    Error::invalid(
        "network",
        "the wasm backend has no network; host-egress is for the process backend",
    )
}

/// Checks a command line.
pub(crate) fn check_command(command: &[String]) -> Result<()> {
    let Some(program) = command.first() else {
        return Err(Error::new(
            ErrorCode::InvalidCommand,
            "command: must name a program",
        ));
    };
    if program.is_empty() {
        return Err(Error::new(
            ErrorCode::InvalidCommand,
            "command[0]: must not be empty",
        ));
    }
    if command.len() > 4096 || command.iter().map(String::len).sum::<usize>() > 1 << 20 {
        return Err(Error::new(
            ErrorCode::InvalidCommand,
            "command: at most 4096 arguments and 1 MiB",
        ));
    }
    if command.iter().any(|a| a.contains('\0')) {
        return Err(Error::new(
            ErrorCode::InvalidCommand,
            "command: arguments may not contain NUL",
        ));
    }
    Ok(())
}

/// Builds the environment: defaults, then `layers` in order.
pub(crate) fn environment<'a>(
    layers: impl IntoIterator<Item = &'a BTreeMap<String, String>>,
) -> Result<Vec<String>> {
    let mut env: BTreeMap<String, String> = [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("HOME", "/workspace"),
        ("LANG", "C.UTF-8"),
        ("TMPDIR", "/tmp"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for layer in layers {
        for (k, v) in layer {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(Error::invalid("env", format!("'{k}' is not a valid variable")));
            }
            env.insert(k.clone(), v.clone());
        }
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// Checks a working directory.
pub(crate) fn check_cwd(cwd: Option<&str>) -> Result<String> {
    let cwd = cwd.unwrap_or("/workspace");
    if !cwd.starts_with('/') || cwd.contains('\0') || cwd.len() > 4096 {
        return Err(Error::invalid("cwd", "must be an absolute path"));
    }
    Ok(cwd.to_string())
}

/// Checks a timeout against the service's maximum.
pub(crate) fn check_timeout(config: &Config, timeout_ms: Option<u64>) -> Result<u64> {
    let t = timeout_ms.unwrap_or(config.default_timeout_ms);
    if t == 0 || t > config.max_timeout_ms {
        return Err(Error::new(
            ErrorCode::InvalidLimits,
            format!("timeout_ms: {t} is outside 1..={}", config.max_timeout_ms),
        ));
    }
    Ok(t)
}
