//! `sandbox.*` and `template.*`: the compute layer's sandboxes.
//!
//! The compute layer runs processes and commits its own rows, so every
//! mutating syscall here is an [`Action::External`]: the kernel records an
//! intent before the sandbox acts and the outcome and audit entry after.
//!
//! Who may touch what: an operator sees every sandbox; an agent sees, runs in
//! and changes only the sandboxes it created, and sees, forks and deletes
//! only the snapshots it took (another's answer `not_found`, as if they did
//! not exist), and reads only its own usage. `network: host-egress` is granted to operators
//! only for now (an agent asking for it gets `network_not_granted`), until
//! policies can grant it. Every run and exec is attributed to the calling
//! agent and, when given, its `task`; the outcome carries that usage and the
//! kernel hands it to the usage meter.
//!
//! Files travel as JSON: `content` (UTF-8 text) or `content_base64` on the
//! way in, `content_base64` (and `content` when the bytes are UTF-8) on the
//! way out, so the derived JSON routes carry them like any other syscall.
//!
//! `sandbox.exec` streams: an adapter that calls it through
//! [`Kernel::call_streaming`] receives the output as ordered [`Chunk`]s
//! while the command runs, and the usual reply (an outcome whose stdout and
//! stderr are empty) at the end — through the same pipeline, so it is
//! authorized, intended and audited like the plain call.

use std::collections::BTreeMap;

use base64::Engine;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use strata_compute::{
    Backend, Caller, Chunk, Compute, CreateSandbox, ExecEvent, ExecRequest, FileEntry, FileInput, Limits,
    Network, RunOutcome, RunRequest, SandboxInfo, Snapshot, SnapshotPage, Status, Template, UsageFilter,
    UsagePage,
};
use strata_core::{Error, ErrorCode, Id, Principal, Result, Spec, Syscall};
use tokio::sync::mpsc;

pub use strata_compute::{Chunk as OutputChunk, Stream as OutputStream};

use super::{ById, NoParams, Removed};
use crate::{Action, Cx, Handler, Kernel, Reply, Request};

tokio::task_local! {
    /// Where a streaming `sandbox.exec` sends its output (set by `call_streaming`).
    static EXEC_SINK: mpsc::Sender<Chunk>;
}

impl Kernel {
    /// Runs `req` like [`Kernel::call`]; when it is a `sandbox.exec`, the
    /// command's output goes to `sink` as it is written, in order, and the
    /// reply's outcome has empty `stdout` and `stderr`. The sink is closed
    /// when the call ends.
    pub async fn call_streaming(&self, req: Request, sink: mpsc::Sender<Chunk>) -> Result<Reply> {
        EXEC_SINK.scope(sink, self.call(req)).await
    }
}

/// A list of items (sandboxes, templates, files).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Items<T> {
    /// The items.
    pub items: Vec<T>,
}

// The requests repeat the layer's fields (rather than `#[serde(flatten)]`
// them) so that unknown fields are still refused.

/// An ephemeral run.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxRun {
    /// Program and arguments, e.g. `["python3", "-c", "print(1)"]`; for the
    /// wasm backend the module (`/workspace/x.wasm`, a path relative to
    /// `cwd`, e.g. one of `files`; binary or `.wat` text) and its arguments.
    pub command: Vec<String>,
    /// Bytes given on standard input (text).
    #[serde(default)]
    pub stdin: Option<String>,
    /// What runs the command: `process` (Linux namespaces, the default) or
    /// `wasm` (a WASI preview 1 module under wasmtime); default the template's.
    #[serde(default)]
    pub backend: Option<Backend>,
    /// Files placed in `/workspace` first.
    #[serde(default)]
    pub files: Vec<FileInput>,
    /// Wall-clock limit; past it the whole sandbox is killed (`timeout`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Resource limits (over the template's, then the server's defaults).
    #[serde(default)]
    pub limits: Limits,
    /// Extra environment (over `PATH`, `HOME=/workspace`, `LANG`, `TMPDIR`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Network access (`none`, or `host-egress` for operators).
    #[serde(default)]
    pub network: Network,
    /// A template whose limits, env, binds and network this run starts from.
    #[serde(default)]
    pub template: Option<String>,
    /// Working directory (default `/workspace`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// The task the run is for (`tsk_…`), for metering.
    #[serde(default)]
    pub task: Option<String>,
}

impl SandboxRun {
    fn split(self) -> (RunRequest, Option<String>) {
        let run = RunRequest {
            command: self.command,
            stdin: self.stdin,
            backend: self.backend,
            files: self.files,
            timeout_ms: self.timeout_ms,
            limits: self.limits,
            env: self.env,
            network: self.network,
            template: self.template,
            cwd: self.cwd,
        };
        (run, self.task)
    }
}

/// A persistent sandbox to create (from a template, or forked from a snapshot).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxCreate {
    /// A template to start from.
    #[serde(default)]
    pub template: Option<String>,
    /// Limits (over the template's, or the snapshot's sandbox's).
    #[serde(default)]
    pub limits: Limits,
    /// Environment of every exec (over the template's).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Network access.
    #[serde(default)]
    pub network: Network,
    /// What runs its commands, for its whole life: `process` or `wasm`
    /// (default the snapshot's sandbox's, else the template's, else `process`).
    #[serde(default)]
    pub backend: Option<Backend>,
    /// Start with the workspace of this snapshot (`snp_…`): a fork.
    #[serde(default)]
    pub from_snapshot: Option<String>,
    /// Stop after this long without an exec or file call.
    #[serde(default)]
    pub idle_stop_ms: Option<i64>,
    /// Delete this long after creation.
    #[serde(default)]
    pub ttl_ms: Option<i64>,
    /// The task it is created for (`tsk_…`).
    #[serde(default)]
    pub task: Option<String>,
}

impl SandboxCreate {
    fn split(self) -> (CreateSandbox, Option<String>) {
        let create = CreateSandbox {
            template: self.template,
            limits: self.limits,
            env: self.env,
            network: self.network,
            backend: self.backend,
            from_snapshot: self.from_snapshot,
            idle_stop_ms: self.idle_stop_ms,
            ttl_ms: self.ttl_ms,
        };
        (create, self.task)
    }
}

/// A command to run in a persistent sandbox.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxExec {
    /// The sandbox (`sbx_…`, from the path).
    pub id: String,
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
    /// The task the exec is for (`tsk_…`), for metering.
    #[serde(default)]
    pub task: Option<String>,
}

impl SandboxExec {
    fn split(self) -> (String, ExecRequest, Option<String>) {
        let exec = ExecRequest {
            command: self.command,
            stdin: self.stdin,
            timeout_ms: self.timeout_ms,
            env: self.env,
            cwd: self.cwd,
        };
        (self.id, exec, self.task)
    }
}

/// A file to write into a sandbox's workspace.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilePut {
    /// The sandbox (from the path).
    pub id: String,
    /// Path under `/workspace` (from the path; no `..`, not absolute, no links).
    pub path: String,
    /// Text contents (exclusive with `content_base64`).
    #[serde(default)]
    pub content: Option<String>,
    /// Binary contents, base64.
    #[serde(default)]
    pub content_base64: Option<String>,
}

/// A file to read from a sandbox's workspace.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// The sandbox (from the path).
    pub id: String,
    /// Path under `/workspace` (from the path).
    pub path: String,
}

/// A workspace folder to list.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileDir {
    /// The sandbox (from the path).
    pub id: String,
    /// The folder under `/workspace` (default: the top).
    #[serde(default)]
    pub dir: Option<String>,
}

/// A file written.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FileWritten {
    /// Its path under `/workspace`.
    pub path: String,
    /// Its size, bytes.
    pub size: u64,
}

/// A file's contents.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FileContent {
    /// Its path under `/workspace`.
    pub path: String,
    /// Its size, bytes.
    pub size: u64,
    /// The bytes, base64.
    pub content_base64: String,
    /// The bytes as text, when they are UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// A template named in the path.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateName {
    /// Its name.
    pub name: String,
}

/// The answer to a template's removal.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TemplateRemoved {
    /// Its name.
    pub name: String,
    /// Always true.
    pub removed: bool,
}

/// Who the compute layer sees: usage goes to the agent (none for an operator)
/// and the task; only operators are granted `host-egress`.
fn caller(cx: &Cx, task: Option<String>) -> Result<Caller> {
    if let Some(t) = &task
        && Id::parse("tsk", t).is_err()
    {
        return Err(Error::invalid("task", format!("'{t}' is not a task id")));
    }
    Ok(match &cx.principal {
        Principal::Admin { .. } => Caller {
            agent_id: None,
            task_id: task,
            host_egress_granted: true,
        },
        Principal::Agent { agent_id, .. } => Caller {
            agent_id: Some(agent_id.clone()),
            task_id: task,
            host_egress_granted: false,
        },
    })
}

/// The sandbox `id`, if the caller may use it: an agent only its own.
async fn owned(compute: &Compute, cx: &Cx, id: &str) -> Result<SandboxInfo> {
    let info = compute.get(id).await?;
    match &cx.principal {
        Principal::Agent { agent_id, .. } if info.owner_agent.as_deref() != Some(agent_id) => {
            Err(Error::not_found("sandbox", id))
        }
        _ => Ok(info),
    }
}

/// The snapshot `id`, if the caller may use it: an agent only those it took.
async fn owned_snapshot(compute: &Compute, cx: &Cx, id: &str) -> Result<Snapshot> {
    let snap = compute.get_snapshot(id).await?;
    match &cx.principal {
        Principal::Agent { agent_id, .. } if snap.owner_agent.as_deref() != Some(agent_id) => {
            Err(Error::not_found("snapshot", id))
        }
        _ => Ok(snap),
    }
}

/// The agent whose things the caller is limited to (none: an operator).
fn own_agent(cx: &Cx) -> Option<&str> {
    match &cx.principal {
        Principal::Agent { agent_id, .. } => Some(agent_id),
        Principal::Admin { .. } => None,
    }
}

/// A command that could not start is the caller's mistake: `exec_failed`.
fn started(o: RunOutcome) -> Result<RunOutcome> {
    if o.status == Status::ExecFailed {
        let why = o.error.as_deref().unwrap_or("the program could not be started");
        return Err(Error::new(ErrorCode::ExecFailed, why.to_string()));
    }
    Ok(o)
}

/// `sandbox.run`
pub struct RunSandbox;

impl Syscall for RunSandbox {
    type Request = SandboxRun;
    type Response = RunOutcome;
    const SPEC: Spec = spec!(
        "sandbox.run",
        "Run one command in a fresh sandbox (namespaces, read-only root, private /tmp and /workspace, seccomp, limits, no network; or, with `backend: wasm`, a WASI module under wasmtime that sees only /workspace) that is torn down afterwards; returns stdout, stderr, the exit code and usage.",
        "sandbox",
        External,
        Principal,
        Post,
        "/v1/sandboxes/run",
        200
    );
}

impl Handler for RunSandbox {
    async fn handle(k: &Kernel, cx: &Cx, req: SandboxRun) -> Result<Action<RunOutcome>> {
        let compute = k.compute()?.clone();
        let (run, task) = req.split();
        let caller = caller(cx, task)?;
        let (k, principal) = (k.clone(), cx.principal.clone());
        Ok(Action::external("sandbox", async move {
            let out = compute.run(run, &caller).await?;
            k.meter_sandbox(&principal, &out.usage);
            started(out)
        }))
    }
}

/// `sandbox.create`
pub struct CreateSandboxCall;

impl Syscall for CreateSandboxCall {
    type Request = SandboxCreate;
    type Response = SandboxInfo;
    const SPEC: Spec = spec!(
        "sandbox.create",
        "Create and start a persistent sandbox whose /workspace survives execs and stop/start; from a template, or forked from a snapshot (`from_snapshot`).",
        "sandbox",
        External,
        Principal,
        Post,
        "/v1/sandboxes",
        201
    );
}

impl Handler for CreateSandboxCall {
    async fn handle(k: &Kernel, cx: &Cx, req: SandboxCreate) -> Result<Action<SandboxInfo>> {
        let compute = k.compute()?.clone();
        let (create, task) = req.split();
        let caller = caller(cx, task)?;
        if let Some(s) = &create.from_snapshot {
            owned_snapshot(&compute, cx, s).await?;
        }
        Ok(Action::external("sandbox", async move {
            compute.create(create, &caller).await
        }))
    }
}

/// `sandbox.list`
pub struct ListSandboxes;

impl Syscall for ListSandboxes {
    type Request = NoParams;
    type Response = Items<SandboxInfo>;
    const SPEC: Spec = spec!(
        "sandbox.list",
        "List persistent sandboxes, oldest first (an agent: those it created).",
        "sandbox",
        Read,
        Principal,
        Get,
        "/v1/sandboxes",
        200
    );
}

impl Handler for ListSandboxes {
    async fn handle(k: &Kernel, cx: &Cx, _req: NoParams) -> Result<Action<Items<SandboxInfo>>> {
        let mut items = k.compute()?.list().await?;
        if let Principal::Agent { agent_id, .. } = &cx.principal {
            items.retain(|s| s.owner_agent.as_deref() == Some(agent_id));
        }
        Ok(Action::Done(Items { items }))
    }
}

/// `sandbox.get`
pub struct GetSandbox;

impl Syscall for GetSandbox {
    type Request = ById;
    type Response = SandboxInfo;
    const SPEC: Spec = spec!(
        "sandbox.get",
        "Get one persistent sandbox: state, limits, network, owner, last use and expiry.",
        "sandbox",
        Read,
        Principal,
        Get,
        "/v1/sandboxes/{id}",
        200
    );
}

impl Handler for GetSandbox {
    async fn handle(k: &Kernel, cx: &Cx, req: ById) -> Result<Action<SandboxInfo>> {
        Ok(Action::Done(owned(k.compute()?, cx, &req.id).await?))
    }
}

/// `sandbox.exec`
pub struct ExecSandbox;

impl Syscall for ExecSandbox {
    type Request = SandboxExec;
    type Response = RunOutcome;
    const SPEC: Spec = spec!(
        "sandbox.exec",
        "Run a command in a running persistent sandbox and wait for it; with `Accept: text/event-stream` its stdout and stderr stream as events, then its exit.",
        "sandbox",
        External,
        Principal,
        Post,
        "/v1/sandboxes/{id}/exec",
        200
    );
}

impl Handler for ExecSandbox {
    async fn handle(k: &Kernel, cx: &Cx, req: SandboxExec) -> Result<Action<RunOutcome>> {
        let compute = k.compute()?.clone();
        let (id, exec, task) = req.split();
        owned(&compute, cx, &id).await?;
        let caller = caller(cx, task)?;
        let sink = EXEC_SINK.try_with(Clone::clone).ok();
        let (k, principal) = (k.clone(), cx.principal.clone());
        Ok(Action::external(id.clone(), async move {
            let out = match sink {
                None => compute.exec(&id, exec, &caller).await?,
                Some(sink) => {
                    let mut events = compute.exec_stream(&id, exec, &caller).await?;
                    let mut done = None;
                    while let Some(ev) = events.recv().await {
                        match ev {
                            // A caller that went away stops reading; the command still ends.
                            ExecEvent::Output(c) => {
                                let _ = sink.send(c).await;
                            }
                            ExecEvent::Done(o) => done = Some(o),
                        }
                    }
                    done.ok_or_else(|| {
                        Error::new(
                            ErrorCode::SandboxUnavailable,
                            format!("the exec in sandbox '{id}' ended without an outcome"),
                        )
                    })?
                }
            };
            k.meter_sandbox(&principal, &out.usage);
            started(out)
        }))
    }
}

/// `sandbox.files.put`
pub struct PutFile;

impl Syscall for PutFile {
    type Request = FilePut;
    type Response = FileWritten;
    const SPEC: Spec = spec!(
        "sandbox.files.put",
        "Write a file into a sandbox's /workspace (text `content` or `content_base64`; parent folders are created; links are never followed).",
        "sandbox",
        External,
        Principal,
        Put,
        "/v1/sandboxes/{id}/files/{*path}",
        200
    );
}

impl Handler for PutFile {
    async fn handle(k: &Kernel, cx: &Cx, req: FilePut) -> Result<Action<FileWritten>> {
        let compute = k.compute()?.clone();
        let data = match (req.content, req.content_base64) {
            (Some(t), None) => t.into_bytes(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| Error::invalid("content_base64", e))?,
            (None, None) => Vec::new(),
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "content",
                    "give content or content_base64, not both",
                ));
            }
        };
        owned(&compute, cx, &req.id).await?;
        let (id, path) = (req.id, req.path);
        Ok(Action::external(id.clone(), async move {
            let size = data.len() as u64;
            compute.put_file(&id, &path, data).await?;
            Ok(FileWritten { path, size })
        }))
    }
}

/// `sandbox.files.get`
pub struct GetFile;

impl Syscall for GetFile {
    type Request = FileRef;
    type Response = FileContent;
    const SPEC: Spec = spec!(
        "sandbox.files.get",
        "Read a file from a sandbox's /workspace (running or stopped), as base64 and, when it is UTF-8, as text.",
        "sandbox",
        Read,
        Principal,
        Get,
        "/v1/sandboxes/{id}/files/{*path}",
        200
    );
}

impl Handler for GetFile {
    async fn handle(k: &Kernel, cx: &Cx, req: FileRef) -> Result<Action<FileContent>> {
        let compute = k.compute()?;
        owned(compute, cx, &req.id).await?;
        let data = compute.get_file(&req.id, &req.path).await?;
        Ok(Action::Done(FileContent {
            path: req.path,
            size: data.len() as u64,
            content_base64: base64::engine::general_purpose::STANDARD.encode(&data),
            content: String::from_utf8(data).ok(),
        }))
    }
}

/// `sandbox.files.list`
pub struct ListFiles;

impl Syscall for ListFiles {
    type Request = FileDir;
    type Response = Items<FileEntry>;
    const SPEC: Spec = spec!(
        "sandbox.files.list",
        "List a folder of a sandbox's /workspace (`dir`, default the top): names, kinds and sizes.",
        "sandbox",
        Read,
        Principal,
        Get,
        "/v1/sandboxes/{id}/files",
        200
    );
}

impl Handler for ListFiles {
    async fn handle(k: &Kernel, cx: &Cx, req: FileDir) -> Result<Action<Items<FileEntry>>> {
        let compute = k.compute()?;
        owned(compute, cx, &req.id).await?;
        let items = compute.list_files(&req.id, req.dir.as_deref()).await?;
        Ok(Action::Done(Items { items }))
    }
}

/// `sandbox.stop`
pub struct StopSandbox;

impl Syscall for StopSandbox {
    type Request = ById;
    type Response = SandboxInfo;
    const SPEC: Spec = spec!(
        "sandbox.stop",
        "Stop a persistent sandbox: its processes end and its workspace is saved to disk.",
        "sandbox",
        External,
        Principal,
        Post,
        "/v1/sandboxes/{id}/stop",
        200
    );
}

impl Handler for StopSandbox {
    async fn handle(k: &Kernel, cx: &Cx, req: ById) -> Result<Action<SandboxInfo>> {
        let compute = k.compute()?.clone();
        owned(&compute, cx, &req.id).await?;
        Ok(Action::external(req.id.clone(), async move {
            compute.stop(&req.id).await
        }))
    }
}

/// `sandbox.start`
pub struct StartSandbox;

impl Syscall for StartSandbox {
    type Request = ById;
    type Response = SandboxInfo;
    const SPEC: Spec = spec!(
        "sandbox.start",
        "Start a stopped sandbox with its saved workspace restored.",
        "sandbox",
        External,
        Principal,
        Post,
        "/v1/sandboxes/{id}/start",
        200
    );
}

impl Handler for StartSandbox {
    async fn handle(k: &Kernel, cx: &Cx, req: ById) -> Result<Action<SandboxInfo>> {
        let compute = k.compute()?.clone();
        owned(&compute, cx, &req.id).await?;
        Ok(Action::external(req.id.clone(), async move {
            compute.start(&req.id).await
        }))
    }
}

/// `sandbox.snapshot`
pub struct SnapshotSandbox;

impl Syscall for SnapshotSandbox {
    type Request = ById;
    type Response = Snapshot;
    const SPEC: Spec = spec!(
        "sandbox.snapshot",
        "Save a copy of a sandbox's workspace as a snapshot (`snp_…`), which `sandbox.create` can fork with `from_snapshot`.",
        "sandbox",
        External,
        Principal,
        Post,
        "/v1/sandboxes/{id}/snapshot",
        201
    );
}

impl Handler for SnapshotSandbox {
    async fn handle(k: &Kernel, cx: &Cx, req: ById) -> Result<Action<Snapshot>> {
        let compute = k.compute()?.clone();
        owned(&compute, cx, &req.id).await?;
        let caller = caller(cx, None)?;
        Ok(Action::external(req.id.clone(), async move {
            compute.snapshot(&req.id, &caller).await
        }))
    }
}

/// `sandbox.delete`
pub struct DeleteSandbox;

impl Syscall for DeleteSandbox {
    type Request = ById;
    type Response = Removed;
    const SPEC: Spec = spec!(
        "sandbox.delete",
        "Delete a persistent sandbox: its processes end and its workspace is removed (its snapshots stay).",
        "sandbox",
        External,
        Principal,
        Delete,
        "/v1/sandboxes/{id}",
        200
    );
}

impl Handler for DeleteSandbox {
    async fn handle(k: &Kernel, cx: &Cx, req: ById) -> Result<Action<Removed>> {
        let compute = k.compute()?.clone();
        owned(&compute, cx, &req.id).await?;
        Ok(Action::external(req.id.clone(), async move {
            compute.delete(&req.id).await?;
            Ok(Removed {
                id: req.id,
                removed: true,
            })
        }))
    }
}

/// Which snapshots to list.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotFilter {
    /// Only those taken from this sandbox (`sbx_…`).
    #[serde(default)]
    pub sandbox: Option<String>,
    /// Return snapshots after this id (the `next` of the previous page).
    #[serde(default)]
    pub after: Option<String>,
    /// Page size, 1–500 (default 50).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `sandbox.snapshot_list`
pub struct ListSnapshots;

impl Syscall for ListSnapshots {
    type Request = SnapshotFilter;
    type Response = SnapshotPage;
    const SPEC: Spec = spec!(
        "sandbox.snapshot_list",
        "List snapshots, oldest first, a page at a time, optionally only those of one sandbox (an agent: those it took).",
        "snapshot",
        Read,
        Principal,
        Get,
        "/v1/snapshots",
        200
    );
}

impl Handler for ListSnapshots {
    async fn handle(k: &Kernel, cx: &Cx, req: SnapshotFilter) -> Result<Action<SnapshotPage>> {
        let page = k
            .compute()?
            .list_snapshots(
                own_agent(cx),
                req.sandbox.as_deref(),
                req.after.as_deref(),
                req.limit.unwrap_or(50),
            )
            .await?;
        Ok(Action::Done(page))
    }
}

/// `sandbox.snapshot_delete`
pub struct DeleteSnapshot;

impl Syscall for DeleteSnapshot {
    type Request = ById;
    type Response = Removed;
    const SPEC: Spec = spec!(
        "sandbox.snapshot_delete",
        "Delete a snapshot and its files (sandboxes forked from it keep their workspaces).",
        "snapshot",
        External,
        Principal,
        Delete,
        "/v1/snapshots/{id}",
        200
    );
}

impl Handler for DeleteSnapshot {
    async fn handle(k: &Kernel, cx: &Cx, req: ById) -> Result<Action<Removed>> {
        let compute = k.compute()?.clone();
        owned_snapshot(&compute, cx, &req.id).await?;
        Ok(Action::external(req.id.clone(), async move {
            compute.delete_snapshot(&req.id).await?;
            Ok(Removed {
                id: req.id,
                removed: true,
            })
        }))
    }
}

/// Which usage records to read.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Only this agent's (an agent: only its own, whatever this says).
    #[serde(default)]
    pub agent: Option<String>,
    /// Only this task's (`tsk_…`).
    #[serde(default)]
    pub task: Option<String>,
    /// Only this sandbox's (`sbx_…`).
    #[serde(default)]
    pub sandbox: Option<String>,
    /// Return records after this id (the `next` of the previous page).
    #[serde(default)]
    pub after: Option<String>,
    /// Page size, 1–500 (default 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `sandbox.usage`
pub struct SandboxUsage;

impl Syscall for SandboxUsage {
    type Request = UsageQuery;
    type Response = UsagePage;
    const SPEC: Spec = spec!(
        "sandbox.usage",
        "List what sandbox runs and execs used (wall and CPU ms, peak memory, agent, task, sandbox), oldest first, a page at a time, with totals over every match (an agent: its own).",
        "sandbox",
        Read,
        Principal,
        Get,
        "/v1/sandbox-usage",
        200
    );
}

impl Handler for SandboxUsage {
    async fn handle(k: &Kernel, cx: &Cx, req: UsageQuery) -> Result<Action<UsagePage>> {
        for (field, prefix, value) in [
            ("agent", "agt", &req.agent),
            ("task", "tsk", &req.task),
            ("sandbox", "sbx", &req.sandbox),
        ] {
            if let Some(v) = value
                && Id::parse(prefix, v).is_err()
            {
                return Err(Error::invalid(field, format!("'{v}' is not a {prefix}_… id")));
            }
        }
        let compute = k.compute()?;
        let limit = req.limit.unwrap_or(100);
        let agent = match (own_agent(cx), req.agent) {
            (None, asked) => asked,
            (Some(me), None) => Some(me.to_string()),
            (Some(me), Some(asked)) if asked == me => Some(asked),
            // Another agent's usage: as if there were none.
            (Some(_), Some(_)) => {
                let nobody = UsageFilter {
                    agent: Some(String::new()),
                    ..Default::default()
                };
                return Ok(Action::Done(compute.usage(&nobody, None, limit).await?));
            }
        };
        let filter = UsageFilter {
            agent,
            task: req.task,
            sandbox: req.sandbox,
        };
        let page = compute.usage(&filter, req.after.as_deref(), limit).await?;
        Ok(Action::Done(page))
    }
}

/// `template.set`
pub struct SetTemplate;

impl Syscall for SetTemplate {
    type Request = Template;
    type Response = Template;
    const SPEC: Spec = spec!(
        "template.set",
        "Create or replace a sandbox template: limits, env, extra read-only binds, network and setup commands that runs and sandboxes start from by name.",
        "template",
        External,
        Admin,
        Put,
        "/v1/templates/{name}",
        200
    );
}

impl Handler for SetTemplate {
    async fn handle(k: &Kernel, _cx: &Cx, req: Template) -> Result<Action<Template>> {
        let compute = k.compute()?.clone();
        req.check()?;
        Ok(Action::external(req.name.clone(), async move {
            compute.put_template(req).await
        }))
    }
}

/// `template.list`
pub struct ListTemplates;

impl Syscall for ListTemplates {
    type Request = NoParams;
    type Response = Items<Template>;
    const SPEC: Spec = spec!(
        "template.list",
        "List the sandbox templates.",
        "template",
        Read,
        Principal,
        Get,
        "/v1/templates",
        200
    );
}

impl Handler for ListTemplates {
    async fn handle(k: &Kernel, _cx: &Cx, _req: NoParams) -> Result<Action<Items<Template>>> {
        Ok(Action::Done(Items {
            items: k.compute()?.templates().await?,
        }))
    }
}

/// `template.get`
pub struct GetTemplate;

impl Syscall for GetTemplate {
    type Request = TemplateName;
    type Response = Template;
    const SPEC: Spec = spec!(
        "template.get",
        "Get one sandbox template.",
        "template",
        Read,
        Principal,
        Get,
        "/v1/templates/{name}",
        200
    );
}

impl Handler for GetTemplate {
    async fn handle(k: &Kernel, _cx: &Cx, req: TemplateName) -> Result<Action<Template>> {
        Ok(Action::Done(k.compute()?.template(&req.name).await?))
    }
}

/// `template.delete`
pub struct DeleteTemplate;

impl Syscall for DeleteTemplate {
    type Request = TemplateName;
    type Response = TemplateRemoved;
    const SPEC: Spec = spec!(
        "template.delete",
        "Delete a sandbox template (sandboxes made from it keep their configuration).",
        "template",
        External,
        Admin,
        Delete,
        "/v1/templates/{name}",
        200
    );
}

impl Handler for DeleteTemplate {
    async fn handle(k: &Kernel, _cx: &Cx, req: TemplateName) -> Result<Action<TemplateRemoved>> {
        let compute = k.compute()?.clone();
        compute.template(&req.name).await?;
        Ok(Action::external(req.name.clone(), async move {
            compute.delete_template(&req.name).await?;
            Ok(TemplateRemoved {
                name: req.name,
                removed: true,
            })
        }))
    }
}
