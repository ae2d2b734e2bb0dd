//! The one place this crate calls into the kernel with `unsafe`.
//!
//! Two operations need it, and nothing else in the crate may:
//!
//! - [`fork`] in the sandbox init program ([`crate::init`]). The init is a
//!   freshly exec'd, single-threaded process, so the child of a `fork` there
//!   may do anything a normal process does (allocate, take locks): there is no
//!   other thread whose lock it could inherit held.
//! - [`give_fds`]: placing the control socket (and the lifeline pipe) at fixed
//!   descriptor numbers in a child started by `std::process::Command`, between
//!   its `fork` and `exec`. The server is multi-threaded (tokio), so that
//!   window allows only async-signal-safe calls: the hook calls `dup2` and
//!   nothing else — no allocation, no lock.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::unistd::ForkResult;

/// Forks the calling process.
///
/// Only the sandbox init calls this, and only while it is single-threaded.
pub(crate) fn fork() -> nix::Result<ForkResult> {
    // SAFETY: the init program never starts a thread (it runs no async runtime
    // and spawns nothing), so at the time of the call exactly one thread
    // exists and the child inherits no lock held by another thread. Both sides
    // continue with ordinary Rust code, which is sound in a single-threaded child.
    unsafe { nix::unistd::fork() }
}

/// Arranges for `fds[i]` to be descriptor `3 + i` in the child `cmd` starts.
///
/// The descriptors stay close-on-exec in this process, so concurrently started
/// unrelated children never inherit them; `dup2` in the child clears the flag on
/// the copy only.
pub(crate) fn give_fds(cmd: &mut tokio::process::Command, fds: &[&OwnedFd]) {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: the closure runs in the child between fork and exec of a
    // multi-threaded parent. It only calls `dup2`, which is async-signal-safe,
    // reads the already-built `raw` vector (no allocation), and returns an
    // io::Error built from errno without allocating (`last_os_error`).
    // Targets 3.. never collide with the sources because the sources are
    // close-on-exec descriptors the parent opened after 0..2; if a source is
    // itself 3 or 4, `dup2(fd, fd)` is a no-op that leaves the flag set, so a
    // first pass moves every source above the targets.
    unsafe {
        cmd.pre_exec(move || {
            let base: RawFd = 100;
            for (i, fd) in raw.iter().enumerate() {
                if nix::libc::dup2(*fd, base + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for i in 0..raw.len() {
                if nix::libc::dup2(base + i as RawFd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                nix::libc::close(base + i as RawFd);
            }
            Ok(())
        });
    }
}

/// Takes ownership of descriptor `fd`, inherited from the process that
/// started the init.
///
/// Returns `None` when `fd` is not open.
pub(crate) fn inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    use std::os::fd::{BorrowedFd, FromRawFd};
    nix::fcntl::fcntl(
        // SAFETY: the descriptor is only borrowed for this fcntl(F_GETFD) call,
        // which checks whether it is open at all.
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .ok()?;
    // SAFETY: the init calls this once per inherited descriptor number at
    // start-up, before it opens anything itself, so no other owner of `fd`
    // exists in this process.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes the kernel reap this process's children as they exit (`SIGCHLD` ignored).
///
/// The holder of a persistent sandbox is its pid 1: orphans of every exec
/// re-parent to it, and it has nothing to learn from their exit.
pub(crate) fn reap_children_automatically() -> nix::Result<()> {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: installing SIG_IGN runs no handler code, so no async-signal-safety
    // question arises; the holder is single-threaded.
    unsafe { signal(Signal::SIGCHLD, SigHandler::SigIgn) }.map(drop)
}
