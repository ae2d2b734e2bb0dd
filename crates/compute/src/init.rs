//! The sandbox init: a small program the server starts to build a sandbox.
//!
//! # Why a separate program
//!
//! The server is a multi-threaded tokio process. Building a sandbox needs a
//! `fork` after which the child calls `unshare`, writes files, mounts, forks
//! again and execs: after a `fork` in a multi-threaded process only
//! async-signal-safe calls are sound, and this sequence allocates. So the
//! server only starts this program with plain `std::process` — no pre-exec
//! hook, the control socket handed over as its standard input — and
//! everything else happens in this freshly exec'd init, which checks that it
//! is single-threaded and where `fork` is therefore ordinary. (Forking from a
//! `spawn_blocking` thread and exec'ing at once was the other option; it
//! would still have to do the namespace work between fork and exec.)
//! The init is either the small `strata-sandbox-init` binary (the cli
//! package builds it beside `strata`) or any binary
//! that calls [`maybe_run_init`] first thing in `main`, before any thread
//! starts (re-exec of self, as the `strata` binary can do).
//!
//! # The process tree of a sandbox
//!
//! ```text
//! H  host side: joins the cgroups, forks C, writes C's uid/gid maps, waits
//! └─ C  unshares user, mount, pid, ipc, uts, cgroup (and net) namespaces;
//!       becomes the namespace's root (host uid `host_root_uid`), forks D,
//!       reports D's host pid, then waits for D (run) or exits (hold)
//!    └─ D  pid 1 of the sandbox: assembles the root on a tmpfs from read-only
//!          binds, /proc, /dev, /tmp and /workspace; pivots into it and makes
//!          it read-only; then either drops to uid 1000 and execs the command
//!          (run) or waits for the server's end of the control socket to
//!          close (hold)
//! ```
//!
//! An exec in a persistent sandbox is a third shape (`Mode::Enter`): the init
//! joins the holder's cgroups and namespaces with `setns`, forks, and the
//! child drops privileges and execs. A pooled sandbox (`Mode::Serve`) is
//! built like a holder, but its pid 1 waits for one command on the control
//! socket and forks it itself: a warm `run` starts no init and joins no
//! namespace or cgroup.
//!
//! Before exec the command's process: has uid/gid 1000 (no capabilities, even
//! in its namespace), `no_new_privs`, the seccomp filters of
//! [`crate::seccomp`], rlimits, and no descriptor but 0–2.

use std::ffi::CString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::resource::{Resource, UsageWho, getrusage, setrlimit};
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, pipe2};

use crate::os;
use crate::wire::{Build, Exec, Mode, Report, Spec, WorkspaceMount};

/// The first argument that makes a binary act as the sandbox init.
pub const INIT_ARG: &str = "--strata-sandbox-init";

/// The uid and gid a command runs as inside its sandbox.
pub const SANDBOX_UID: u32 = 1000;

/// The file name of the crate's small init binary.
pub const INIT_BINARY: &str = "strata-sandbox-init";

/// The argument that makes an init print its build identity and exit.
const BUILD_ARG: &str = "--strata-sandbox-init-build";

/// This build of the crate: a hash of its sources (see `build.rs`).
const BUILD: &str = env!("STRATA_INIT_BUILD");

/// The init for a binary at `exe` that calls [`maybe_run_init`] first: the
/// small [`INIT_BINARY`] when it sits beside `exe` (a workspace build puts
/// both in `target/<profile>/`) and was built from the same sources, else
/// `exe` itself, with a warning saying why. Starting a large binary costs
/// more than the rest of a sandbox's start-up put together (its dynamic
/// relocations: about 1.8 ms for the server binary here, against 0.8 ms for
/// the small init and 0.6 ms for `true`), and every cold run and exec starts
/// one. Runs the small init once to ask its build.
pub fn init_beside(exe: &Path) -> PathBuf {
    let Some(small) = exe.parent().map(|d| d.join(INIT_BINARY)).filter(|p| p.is_file()) else {
        return exe.to_path_buf();
    };
    let theirs = std::process::Command::new(&small)
        .arg(BUILD_ARG)
        .env_clear()
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if theirs.as_deref() == Some(BUILD) {
        return small;
    }
    tracing::warn!(
        init = %small.display(),
        "the sandbox init beside this binary comes from another build; using this binary instead \
         (`cargo build --release` rebuilds both)"
    );
    exe.to_path_buf()
}

/// Runs the sandbox init and exits if this process was started as one;
/// returns otherwise. Call it first thing in `main` of any binary used as
/// [`crate::Config::init_program`] — before any thread starts (so before an
/// async runtime is built): the init forks and joins user namespaces, which
/// is only sound, and only allowed, in a single-threaded process.
pub fn maybe_run_init() {
    if std::env::args_os().nth(1).is_some_and(|a| a == BUILD_ARG) {
        println!("{BUILD}");
        std::process::exit(0);
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == INIT_ARG) {
        if threads() != Some(1) {
            eprintln!(
                "strata-sandbox-init: the process has {:?} threads; call maybe_run_init before starting any",
                threads()
            );
            std::process::exit(2);
        }
        std::process::exit(init_main());
    }
}

fn threads() -> Option<u32> {
    fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

fn init_main() -> i32 {
    // The control socket arrives as standard input. Move it to a
    // close-on-exec descriptor and put /dev/null on 0, so no command ever
    // inherits it.
    let control = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => {
            eprintln!(
                "strata-sandbox-init: no control socket on stdin ({e}); this program is started by Strata"
            );
            return 2;
        }
    };
    close_inherited(control.as_raw_fd());
    match fs::File::open("/dev/null") {
        Ok(null) => {
            if let Err(e) = nix::unistd::dup2_stdin(&null) {
                eprintln!("strata-sandbox-init: replacing stdin: {e}");
                return 2;
            }
        }
        Err(e) => {
            eprintln!("strata-sandbox-init: /dev/null: {e}");
            return 2;
        }
    }
    let spec: Spec = {
        let mut line = String::new();
        let mut reader = BufReader::new(&control);
        if let Err(e) = reader.read_line(&mut line) {
            eprintln!("strata-sandbox-init: reading spec: {e}");
            return 2;
        }
        match serde_json::from_str(&line) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("strata-sandbox-init: bad spec: {e}");
                return 2;
            }
        }
    };
    // Single-threaded here, so joining through `tasks` moves the whole process.
    let me = std::process::id();
    for file in &spec.cgroup_join {
        if let Err(e) = fs::write(file, crate::cgroup::join_value(file, me)) {
            report(
                &control,
                &setup_failed("cgroup", format!("{}: {e}", file.display())),
            );
            return 1;
        }
    }
    match &spec.mode {
        Mode::Run | Mode::Hold | Mode::Serve { .. } => match &spec.build {
            Some(build) => host_side(&spec, build, &control),
            None => {
                report(&control, &setup_failed("spec", "no build section".into()));
                1
            }
        },
        Mode::Enter { holder } => enter(*holder, &spec, &control),
    }
}

/// Closes every descriptor but stdio and the control socket: whatever the
/// server's process held without close-on-exec (a build tool's jobserver
/// pipe, a leaked file) must not reach a sandbox.
fn close_inherited(keep: std::os::fd::RawFd) {
    let open: Vec<std::os::fd::RawFd> = match fs::read_dir("/proc/self/fd") {
        Ok(d) => d
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect(),
        Err(_) => return,
    };
    for fd in open {
        if fd > 2 && fd != keep {
            // The listing's own descriptor is already closed: EBADF, ignored.
            let _ = nix::unistd::close(fd);
        }
    }
}

/// Points this process's stdout and stderr at /dev/null once the command's
/// process exists: the server sees end-of-output as soon as the command and
/// its children are done, not when the init's processes have also exited
/// (which waits for the namespaces to be torn down).
fn release_output() {
    if let Ok(null) = fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

fn report(control: &UnixStream, r: &Report) {
    if let Ok(mut line) = serde_json::to_vec(r) {
        line.push(b'\n');
        let _ = (&*control).write_all(&line);
    }
}

fn setup_failed(stage: &str, reason: String) -> Report {
    Report::SetupFailed {
        stage: stage.into(),
        reason,
    }
}

/// H: fork C, give it its uid/gid maps, wait for it.
fn host_side(spec: &Spec, build: &Build, control: &UnixStream) -> i32 {
    let pipes = pipe2(OFlag::O_CLOEXEC).and_then(|a| pipe2(OFlag::O_CLOEXEC).map(|b| (a, b)));
    let ((ready_r, ready_w), (go_r, go_w)) = match pipes {
        Ok(p) => p,
        Err(e) => {
            report(control, &setup_failed("pipe", e.to_string()));
            return 1;
        }
    };
    match os::fork() {
        Err(e) => {
            report(control, &setup_failed("fork", e.to_string()));
            1
        }
        Ok(ForkResult::Child) => {
            drop(ready_r);
            drop(go_w);
            std::process::exit(namespace_side(spec, build, control, ready_w, go_r));
        }
        Ok(ForkResult::Parent { child }) => {
            release_output();
            drop(ready_w);
            drop(go_r);
            let mut byte = [0u8; 1];
            if !matches!(fs::File::from(ready_r).read(&mut byte), Ok(1)) {
                let _ = waitpid(child, None);
                return 1;
            }
            let maps = format!(
                "0 {} 1\n{SANDBOX_UID} {} 1\n",
                build.host_root_uid, build.host_user_uid
            );
            let written = fs::write(format!("/proc/{child}/uid_map"), &maps)
                .and_then(|()| fs::write(format!("/proc/{child}/gid_map"), &maps));
            if let Err(e) = written {
                report(control, &setup_failed("id_map", e.to_string()));
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = waitpid(child, None);
                return 1;
            }
            let _ = fs::File::from(go_w).write_all(b"g");
            if matches!(spec.mode, Mode::Run) {
                wait_for_server_to_close(control);
                kill_groups(&spec.cgroup_join);
            }
            let _ = waitpid(child, None);
            0
        }
    }
}

/// Blocks until the server's end of the control socket closes: it closes it
/// once it has a run's outcome, or it died. Nothing else is written there
/// after the spec.
fn wait_for_server_to_close(control: &UnixStream) {
    let mut buf = [0u8; 64];
    loop {
        match (&*control).read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// A cold run's H, once its server is done with it: kills whatever is left in
/// the run's cgroups (itself aside), so that a run never outlives a server
/// killed without the chance to tear it down. After a normal run nothing is
/// left but C on its way out.
fn kill_groups(join_files: &[PathBuf]) {
    let me = Some(std::process::id());
    for _ in 0..100 {
        if !crate::cgroup::kill_listed(join_files.iter().filter_map(|f| f.parent()), me) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// C: unshare, become the namespace's root, fork the sandbox's pid 1.
fn namespace_side(spec: &Spec, build: &Build, control: &UnixStream, ready_w: OwnedFd, go_r: OwnedFd) -> i32 {
    let mut flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    if !build.host_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if let Err(e) = unshare(flags) {
        report(control, &setup_failed("unshare", e.to_string()));
        return 1;
    }
    if fs::File::from(ready_w).write_all(b"u").is_err() {
        return 1;
    }
    let mut byte = [0u8; 1];
    if !matches!(fs::File::from(go_r).read(&mut byte), Ok(1)) {
        return 1;
    }
    if let Err(e) = become_root() {
        report(control, &setup_failed("setresuid", e.to_string()));
        return 1;
    }
    match os::fork() {
        Err(e) => {
            report(control, &setup_failed("fork", e.to_string()));
            1
        }
        Ok(ForkResult::Child) => std::process::exit(sandbox_pid1(spec, build, control)),
        Ok(ForkResult::Parent { child }) => {
            release_output();
            report(control, &Report::Started { pid: child.as_raw() });
            if matches!(spec.mode, Mode::Hold | Mode::Serve { .. }) {
                return 0;
            }
            report(control, &wait_report(child));
            0
        }
    }
}

fn become_root() -> nix::Result<()> {
    nix::unistd::setgroups(&[])?;
    let (u, g) = (Uid::from_raw(0), Gid::from_raw(0));
    nix::unistd::setresgid(g, g, g)?;
    nix::unistd::setresuid(u, u, u)
}

fn wait_report(child: Pid) -> Report {
    let (code, signal) = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, c)) => break (Some(c), None),
            Ok(WaitStatus::Signaled(_, s, _)) => break (None, Some(s as i32)),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break (None, None),
        }
    };
    let (cpu_us, maxrss_kib) = match getrusage(UsageWho::RUSAGE_CHILDREN) {
        Ok(u) => {
            let us = |t: nix::sys::time::TimeVal| {
                (t.tv_sec().max(0) as u64) * 1_000_000 + t.tv_usec().max(0) as u64
            };
            (us(u.user_time()) + us(u.system_time()), u.max_rss().max(0) as u64)
        }
        Err(_) => (0, 0),
    };
    Report::Exited {
        code,
        signal,
        cpu_us,
        maxrss_kib,
    }
}

/// D: pid 1 of the new namespaces.
fn sandbox_pid1(spec: &Spec, build: &Build, control: &UnixStream) -> i32 {
    if let Err((stage, e)) = assemble_root(build) {
        report(control, &setup_failed(stage, e));
        return 1;
    }
    match &spec.mode {
        Mode::Hold => {
            if let Err(e) = os::reap_children_automatically() {
                report(control, &setup_failed("sigchld", e.to_string()));
                return 1;
            }
            report(control, &Report::Ready);
            // The server writes nothing more; read returns 0 when its end
            // closes (the sandbox stopped, or the server died), and the
            // sandbox ends with this process.
            let mut buf = [0u8; 64];
            while matches!((&*control).read(&mut buf), Ok(n) if n > 0) {}
            0
        }
        Mode::Serve { filters } => serve(filters, control),
        _ => match &spec.exec {
            Some(exec) => exec_command(exec, false, control),
            None => {
                report(control, &setup_failed("spec", "no command".into()));
                1
            }
        },
    }
}

/// A pooled sandbox's pid 1: install the command's seccomp filters, report
/// ready, wait for the command, run it as a child, report how it ended. The
/// sandbox ends when this returns. Installing a filter costs about half a
/// millisecond (the kernel evaluates it for every call number to build its
/// cache), which a warm run no longer waits for; nothing pid 1 does after it
/// is a denied call.
fn serve(filters: &[crate::wire::Filter], control: &UnixStream) -> i32 {
    if let Err(reason) = install_filters(filters) {
        report(control, &setup_failed("seccomp", reason));
        return 1;
    }
    report(control, &Report::Ready);
    let mut line = String::new();
    match BufReader::new(control).read_line(&mut line) {
        Ok(0) => return 0, // retired unused
        Ok(_) => {}
        Err(e) => {
            report(control, &setup_failed("spec", e.to_string()));
            return 1;
        }
    }
    let exec: Exec = match serde_json::from_str(&line) {
        Ok(e) => e,
        Err(e) => {
            report(control, &setup_failed("spec", format!("bad command: {e}")));
            return 1;
        }
    };
    match os::fork() {
        Err(e) => {
            report(control, &setup_failed("fork", e.to_string()));
            1
        }
        Ok(ForkResult::Child) => exec_command(&exec, true, control),
        Ok(ForkResult::Parent { child }) => {
            release_output();
            // A thread reports how the command ended (nothing forks from here
            // on, so a second thread is sound), while this one waits for the
            // server's end of the socket to close: after it has that report,
            // or because it died. Returning ends pid 1, and with it every
            // process of the sandbox.
            let reporter = control
                .try_clone()
                .map(|c| std::thread::spawn(move || report(&c, &wait_report(child))));
            if reporter.is_err() {
                report(control, &wait_report(child));
                return 0;
            }
            wait_for_server_to_close(control);
            0
        }
    }
}

type Step<T = ()> = Result<T, (&'static str, String)>;

fn at<T>(stage: &'static str, what: &Path, r: Result<T, impl std::fmt::Display>) -> Step<T> {
    r.map_err(|e| (stage, format!("{}: {e}", what.display())))
}

fn assemble_root(b: &Build) -> Step {
    let _ = nix::unistd::sethostname("sandbox");
    let none: Option<&str> = None;
    at(
        "mount_private",
        Path::new("/"),
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none),
    )?;
    let root = b.root_dir.as_path();
    at(
        "mount_root",
        root,
        mount(
            Some("tmpfs"),
            root,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("size=1m,mode=0755"),
        ),
    )?;
    // Binds under the sandbox's own /tmp or /workspace go in once those are
    // mounted, or the mounts would hide them.
    let private = |p: &Path| p.starts_with("/tmp") || p.starts_with("/workspace");
    for host in b.ro_binds.iter().filter(|p| !private(p)) {
        bind_read_only(host, &inside(root, host))?;
    }
    // A minimal /etc of our own; real files from the host are in ro_binds.
    let etc = root.join("etc");
    at("etc", &etc, fs::create_dir_all(&etc))?;
    let passwd = format!(
        "root:x:0:0:root:/root:/bin/sh\nsandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:/workspace:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    );
    let group = format!("root:x:0:\nsandbox:x:{SANDBOX_UID}:\nnogroup:x:65534:\n");
    for (name, text) in [
        ("passwd", passwd.as_str()),
        ("group", group.as_str()),
        ("hosts", "127.0.0.1 localhost sandbox\n::1 localhost\n"),
        ("hostname", "sandbox\n"),
    ] {
        let p = etc.join(name);
        at("etc", &p, fs::write(&p, text))?;
    }
    if !etc.join("resolv.conf").exists() {
        let p = etc.join("resolv.conf");
        at("etc", &p, fs::write(&p, ""))?;
    }
    // /dev: a few character devices bound from the host, and the fd links.
    let dev = root.join("dev");
    at("dev", &dev, fs::create_dir_all(&dev))?;
    for name in ["null", "zero", "full", "random", "urandom"] {
        let target = dev.join(name);
        at("dev", &target, fs::write(&target, ""))?;
        let host = Path::new("/dev").join(name);
        at(
            "dev",
            &host,
            mount(Some(&host), &target, none, MsFlags::MS_BIND, none),
        )?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let p = dev.join(link);
        at("dev", &p, std::os::unix::fs::symlink(to, &p))?;
    }
    let proc_dir = root.join("proc");
    at("proc", &proc_dir, fs::create_dir_all(&proc_dir))?;
    at(
        "proc",
        &proc_dir,
        mount(
            Some("proc"),
            &proc_dir,
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            none,
        ),
    )?;
    let tmp = root.join("tmp");
    at("tmp", &tmp, fs::create_dir_all(&tmp))?;
    at(
        "tmp",
        &tmp,
        mount(
            Some("tmpfs"),
            &tmp,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={},mode=1777", b.tmp_bytes).as_str()),
        ),
    )?;
    let ws = root.join("workspace");
    at("workspace", &ws, fs::create_dir_all(&ws))?;
    match &b.workspace {
        WorkspaceMount::Tmpfs { bytes } => at(
            "workspace",
            &ws,
            mount(
                Some("tmpfs"),
                &ws,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(format!("size={bytes},mode=0755,uid={SANDBOX_UID},gid={SANDBOX_UID}").as_str()),
            ),
        )?,
        WorkspaceMount::Bind { host } => at(
            "workspace",
            host,
            mount(Some(host.as_path()), &ws, none, MsFlags::MS_BIND, none),
        )?,
    }
    let owner = Some(Uid::from_raw(SANDBOX_UID));
    let group = Some(Gid::from_raw(SANDBOX_UID));
    for f in &b.files {
        let p = ws.join(&f.path);
        if let Some(parent) = p.parent() {
            at("files", parent, fs::create_dir_all(parent))?;
            let mut d = parent;
            while d.starts_with(&ws) && d != ws {
                let _ = nix::unistd::chown(d, owner, group);
                match d.parent() {
                    Some(up) => d = up,
                    None => break,
                }
            }
        }
        at("files", &p, fs::write(&p, &f.data))?;
        at("files", &p, nix::unistd::chown(&p, owner, group))?;
        at(
            "files",
            &p,
            fs::set_permissions(&p, fs::Permissions::from_mode(f.mode & 0o777)),
        )?;
    }
    for host in b.ro_binds.iter().filter(|p| private(p)) {
        bind_read_only(host, &inside(root, host))?;
    }
    at("pivot_root", root, nix::unistd::chdir(root))?;
    at("pivot_root", root, nix::unistd::pivot_root(".", "."))?;
    at("pivot_root", root, umount2(".", MntFlags::MNT_DETACH))?;
    at("pivot_root", root, nix::unistd::chdir("/"))?;
    at(
        "root_read_only",
        Path::new("/"),
        mount(
            none,
            "/",
            none,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            none,
        ),
    )?;
    Ok(())
}

fn inside(root: &Path, host: &Path) -> PathBuf {
    root.join(host.strip_prefix("/").unwrap_or(host))
}

/// Recreates a symlink, or binds a folder or file read-only, keeping the
/// flags the host mount has (a user namespace may not clear them).
fn bind_read_only(host: &Path, target: &Path) -> Step {
    let Ok(meta) = fs::symlink_metadata(host) else {
        return Ok(()); // absent on this host: nothing to bind
    };
    if let Some(parent) = target.parent() {
        at("bind", parent, fs::create_dir_all(parent))?;
    }
    if meta.file_type().is_symlink() {
        let to = at("bind", host, fs::read_link(host))?;
        return at("bind", target, std::os::unix::fs::symlink(to, target));
    }
    if meta.is_dir() {
        at("bind", target, fs::create_dir_all(target))?;
    } else {
        at("bind", target, fs::write(target, ""))?;
    }
    let none: Option<&str> = None;
    at(
        "bind",
        host,
        mount(Some(host), target, none, MsFlags::MS_BIND | MsFlags::MS_REC, none),
    )?;
    let kept = at("bind", host, statvfs(host))?.flags();
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID;
    for (fs_flag, ms_flag) in [
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if kept.contains(fs_flag) {
            flags |= ms_flag;
        }
    }
    at("bind_read_only", target, mount(none, target, none, flags, none))
}

/// E: join a holder's namespaces and run one command there.
fn enter(holder: i32, spec: &Spec, control: &UnixStream) -> i32 {
    let Some(exec) = &spec.exec else {
        report(control, &setup_failed("spec", "no command".into()));
        return 1;
    };
    // Open every namespace first: after joining the mount namespace, /proc is the sandbox's.
    let kinds = [
        ("user", CloneFlags::CLONE_NEWUSER),
        ("mnt", CloneFlags::CLONE_NEWNS),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("pid", CloneFlags::CLONE_NEWPID),
    ];
    let mut opened = Vec::new();
    for (name, flag) in kinds {
        let theirs = format!("/proc/{holder}/ns/{name}");
        let same = match (
            fs::metadata(&theirs),
            fs::metadata(format!("/proc/self/ns/{name}")),
        ) {
            (Ok(a), Ok(b)) => {
                std::os::unix::fs::MetadataExt::ino(&a) == std::os::unix::fs::MetadataExt::ino(&b)
            }
            _ => false,
        };
        if same {
            continue; // e.g. the host network of a host-egress sandbox
        }
        match fs::File::open(&theirs) {
            Ok(f) => opened.push((name, flag, f)),
            Err(e) => {
                report(control, &setup_failed("setns", format!("{theirs}: {e}")));
                return 1;
            }
        }
    }
    for (name, flag, f) in &opened {
        if let Err(e) = setns(f.as_fd(), *flag) {
            report(control, &setup_failed("setns", format!("{name}: {e}")));
            return 1;
        }
    }
    drop(opened);
    if let Err(e) = become_root() {
        report(control, &setup_failed("setresuid", e.to_string()));
        return 1;
    }
    match os::fork() {
        Err(e) => {
            report(control, &setup_failed("fork", e.to_string()));
            1
        }
        Ok(ForkResult::Child) => exec_command(exec, false, control),
        Ok(ForkResult::Parent { child }) => {
            release_output();
            report(control, &Report::Started { pid: child.as_raw() });
            report(control, &wait_report(child));
            0
        }
    }
}

/// `no_new_privs`, then `filters` in order.
fn install_filters(filters: &[crate::wire::Filter]) -> Result<(), String> {
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    if filters.is_empty() {
        return Err("no filter given".into());
    }
    for f in filters {
        seccompiler::apply_filter(&crate::seccomp::program(f)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Drops to the sandbox user, applies rlimits and seccomp (unless `filtered`:
/// this process already has the filters, [`Mode::Serve`]), and execs.
/// Returns only with the exit code of a failure (already reported).
fn exec_command(exec: &Exec, filtered: bool, control: &UnixStream) -> i32 {
    let fail = |reason: String| {
        report(control, &Report::ExecFailed { reason });
        127
    };
    let _ = fcntl(control.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    if !exec.stdin.is_empty() {
        // A memory file rather than a pipe: nobody has to feed it while the command runs.
        let given = nix::sys::memfd::memfd_create("stdin", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map(fs::File::from)
            .and_then(|mut f| {
                f.write_all(&exec.stdin)
                    .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(5)))?;
                nix::unistd::lseek(&f, 0, nix::unistd::Whence::SeekSet)?;
                nix::unistd::dup2_stdin(&f)
            });
        if let Err(e) = given {
            return fail(format!("stdin: {e}"));
        }
    }
    let id = (Uid::from_raw(SANDBOX_UID), Gid::from_raw(SANDBOX_UID));
    let dropped = nix::unistd::setgroups(&[id.1])
        .and_then(|()| nix::unistd::setresgid(id.1, id.1, id.1))
        .and_then(|()| nix::unistd::setresuid(id.0, id.0, id.0));
    if let Err(e) = dropped {
        return fail(format!("dropping privileges: {e}"));
    }
    for f in &exec.files {
        let p = Path::new("/workspace").join(&f.path);
        let written = p
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::write(&p, &f.data))
            .and_then(|()| fs::set_permissions(&p, fs::Permissions::from_mode(f.mode & 0o777)));
        if let Err(e) = written {
            report(control, &setup_failed("files", format!("{}: {e}", p.display())));
            return 1;
        }
    }
    if let Err(e) = nix::unistd::chdir(exec.cwd.as_str()) {
        return fail(format!("working directory {}: {e}", exec.cwd));
    }
    let r = &exec.rlimits;
    let mut limits = vec![
        (Resource::RLIMIT_FSIZE, r.file_bytes),
        (Resource::RLIMIT_NOFILE, r.open_files),
        (Resource::RLIMIT_NPROC, r.processes),
        (Resource::RLIMIT_CORE, 0),
    ];
    if let Some(a) = r.address_space {
        limits.push((Resource::RLIMIT_AS, a));
    }
    for (res, v) in limits {
        if let Err(e) = setrlimit(res, v, v) {
            return fail(format!("setrlimit {res:?}: {e}"));
        }
    }
    let Some(program) = exec.argv.first() else {
        return fail("empty command".into());
    };
    let path = match resolve_program(program, &exec.env) {
        Ok(p) => p,
        Err(reason) => return fail(reason),
    };
    let to_c = |s: &str| CString::new(s).map_err(|_| format!("'{s}' contains a NUL byte"));
    let argv: Result<Vec<CString>, String> = exec.argv.iter().map(|a| to_c(a)).collect();
    let env: Result<Vec<CString>, String> = exec.env.iter().map(|a| to_c(a)).collect();
    let (argv, env, cpath) = match (argv, env, to_c(&path)) {
        (Ok(a), Ok(e), Ok(p)) => (a, e, p),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return fail(r),
    };
    if !filtered && let Err(e) = install_filters(&exec.filters) {
        return fail(format!("seccomp: {e}"));
    }
    let err = match nix::unistd::execve(&cpath, &argv, &env) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    fail(format!("{program}: {}", err.desc()))
}

/// Finds `program` the way a shell would: as given when it has a `/`, else in
/// the `PATH` of the command's environment.
fn resolve_program(program: &str, env: &[String]) -> Result<String, String> {
    if program.contains('/') {
        return Ok(program.to_string());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = format!("{dir}/{program}");
        if nix::unistd::access(candidate.as_str(), nix::unistd::AccessFlags::X_OK).is_ok()
            && fs::metadata(&candidate).is_ok_and(|m| m.is_file())
        {
            return Ok(candidate);
        }
    }
    Err(format!("{program}: command not found in PATH ({path})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_init_beside_is_used_only_when_it_comes_from_the_same_build() {
        let dir = std::env::temp_dir().join(format!("strata-init-beside-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let exe = dir.join("strata");
        assert_eq!(init_beside(&exe), exe, "no small init: the binary itself");
        let small = dir.join(INIT_BINARY);
        for (prints, want) in [(BUILD, &small), ("0123456789abcdef", &exe)] {
            fs::write(&small, format!("#!/bin/sh\necho {prints}\n")).expect("write a fake init");
            fs::set_permissions(&small, fs::Permissions::from_mode(0o755)).expect("chmod");
            assert_eq!(&init_beside(&exe), want, "an init printing {prints}");
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
