//! What the server and the sandbox init say to each other over the control socket.
//!
//! The control socket is the init's standard input. The server writes one
//! [`Spec`] as a JSON line; the init's processes answer with [`Report`] lines
//! on the same socket. The init moves the socket off descriptor 0 to a
//! close-on-exec descriptor first thing, so a command can neither forge nor
//! read reports. For a holder the socket is also its lifeline: it waits
//! until the server's end closes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What the init is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Mode {
    /// Build a sandbox, run one command in it as its pid 1, report how it ended.
    Run,
    /// Build a sandbox whose pid 1 waits (for [`Mode::Enter`]) until the
    /// server's end of the control socket closes.
    Hold,
    /// Build a sandbox whose pid 1 waits for one [`Exec`] line on the control
    /// socket, runs it as its child — already inside every namespace and
    /// cgroup, so nothing is joined — reports how it ended, and exits (a
    /// pooled sandbox; the socket closing first ends it unused). Pid 1
    /// installs `filters` (with `no_new_privs`) on itself before it reports
    /// ready, so the command inherits them and the [`Exec`] carries none.
    Serve {
        /// The seccomp filters of every command, installed ahead.
        filters: Vec<Filter>,
    },
    /// Join the namespaces of the holder with this host pid and run one command.
    Enter {
        /// The holder's pid in the host's pid namespace.
        holder: i32,
    },
}

/// Where the sandbox's `/workspace` comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum WorkspaceMount {
    /// A fresh tmpfs of this many bytes inside the sandbox (ephemeral runs).
    Tmpfs {
        /// Its size limit.
        bytes: u64,
    },
    /// A host folder (already a size-limited tmpfs) bound read-write.
    Bind {
        /// The host folder.
        host: PathBuf,
    },
}

/// A file to place in the workspace before the command runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SeedFile {
    /// Relative path, already checked (no `..`, not absolute).
    pub path: String,
    /// Contents.
    pub data: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// How to build the sandbox (for [`Mode::Run`] and [`Mode::Hold`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Build {
    /// Host uid that the sandbox's root maps to.
    pub host_root_uid: u32,
    /// Host uid that the sandbox's user (uid 1000) maps to.
    pub host_user_uid: u32,
    /// An empty host folder the new root is assembled on (inside the new mount
    /// namespace, so the host never sees the mounts).
    pub root_dir: PathBuf,
    /// Host paths bound read-only at the same place inside, when they exist.
    pub ro_binds: Vec<PathBuf>,
    /// The workspace.
    pub workspace: WorkspaceMount,
    /// Size of the private `/tmp`.
    pub tmp_bytes: u64,
    /// Keep the host's network namespace (the `host-egress` grant).
    pub host_network: bool,
    /// Files to seed the workspace with.
    pub files: Vec<SeedFile>,
}

/// One command to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Exec {
    /// Program and arguments; the program is looked up in `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// The whole environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory inside the sandbox.
    pub cwd: String,
    /// Resource limits applied with `setrlimit` just before exec.
    pub rlimits: Rlimits,
    /// Standard input (given to the command as a memory file).
    pub stdin: Vec<u8>,
    /// Files written into `/workspace` as the sandbox user just before exec
    /// (runs in a pooled sandbox; a cold run seeds through [`Build::files`]).
    pub files: Vec<SeedFile>,
    /// The seccomp programs to install, compiled once by the server:
    /// `(code, jt, jf, k)` instructions.
    /// Empty only when the process running it already has them
    /// ([`Mode::Serve`]).
    pub filters: Vec<Filter>,
}

/// One seccomp program as `(code, jt, jf, k)` BPF instructions.
pub(crate) type Filter = Vec<(u16, u8, u8, u32)>;

/// Per-process resource limits.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Rlimits {
    /// Largest file a process may write (`RLIMIT_FSIZE`).
    pub file_bytes: u64,
    /// Open descriptors (`RLIMIT_NOFILE`).
    pub open_files: u64,
    /// Processes of the sandbox user (`RLIMIT_NPROC`, counted per user namespace).
    pub processes: u64,
    /// Address space (`RLIMIT_AS`), a backstop when no memory cgroup exists.
    pub address_space: Option<u64>,
}

/// The whole request to the init.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Spec {
    /// What to do.
    pub mode: Mode,
    /// Files the init writes to before anything else, to join its groups
    /// (v1 `tasks`: `0`; v2 `cgroup.procs`: its pid).
    pub cgroup_join: Vec<PathBuf>,
    /// How to build the sandbox (not used by [`Mode::Enter`]).
    pub build: Option<Build>,
    /// The command (not used by [`Mode::Hold`]; sent later by [`Mode::Serve`]).
    pub exec: Option<Exec>,
}

/// A line the init writes back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Report {
    /// The process that will exec the command (or hold the sandbox) exists;
    /// `pid` is its pid on the host.
    Started {
        /// Host pid.
        pid: i32,
    },
    /// A holder finished building its sandbox and waits.
    Ready,
    /// Building the sandbox failed at `stage`.
    SetupFailed {
        /// Which step.
        stage: String,
        /// The OS error.
        reason: String,
    },
    /// The command could not be executed.
    ExecFailed {
        /// Why, e.g. "nosuchprog: No such file or directory".
        reason: String,
    },
    /// The command ended.
    Exited {
        /// Its exit code, when it exited.
        code: Option<i32>,
        /// The signal that killed it, when one did.
        signal: Option<i32>,
        /// User plus system CPU of it and its waited-for descendants.
        cpu_us: u64,
        /// Largest resident set of it or a descendant, in KiB.
        maxrss_kib: u64,
    },
}
