//! The one place this crate calls into the kernel with `unsafe`.
//!
//! Two operations need it, both in the sandbox init program
//! ([`crate::init`]), and nothing else in the crate may:
//!
//! - [`fork`]. The init is a freshly exec'd, single-threaded process (it
//!   checks), so the child of a `fork` there may do anything a normal process
//!   does (allocate, take locks): there is no other thread whose lock it could
//!   inherit held.
//! - [`reap_children_automatically`]: setting `SIGCHLD` to `SIG_IGN`.
//!
//! The server side needs no `unsafe` at all: it starts the init with plain
//! `std::process` (no pre-exec hook), handing it the control socket as its
//! standard input.
#![allow(unsafe_code)]

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
