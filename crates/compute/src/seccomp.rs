//! The system calls a sandboxed program may never make.
//!
//! A deny list on top of the namespaces: the program already runs as an
//! unprivileged user inside its own user namespace, so most of these would fail
//! anyway; the filter makes sure they fail even if a kernel bug gave the
//! program capabilities, and closes the ways back to privilege (a new user
//! namespace via `unshare` or `clone`, `setns`, new mount APIs, `ptrace`).
//! Denied calls return `EPERM`; `clone3` returns `ENOSYS` because its flags
//! live in memory the filter cannot inspect, which makes libc fall back to
//! `clone`, whose flags it can. Every call of the x32 ABI (the same calls
//! with bit 30 set in the number) returns `EPERM`: no program in a sandbox
//! is built for it, and one four-instruction filter covering them all keeps
//! the deny list half as long. The kernel evaluates each installed filter for
//! every call number when it is installed (to cache what is always allowed),
//! so a shorter list is a faster sandbox start.

use std::collections::BTreeMap;

use nix::libc;

use crate::wire::Filter;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

/// Calls denied outright.
const DENIED: &[(&str, i64)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("kcmp", libc::SYS_kcmp),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("reboot", libc::SYS_reboot),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("syslog", libc::SYS_syslog),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("vhangup", libc::SYS_vhangup),
    ("personality", libc::SYS_personality),
];

/// Namespace flags `clone` may not carry.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

/// The x32 ABI reaches the same calls with this bit set in the number.
const X32_BIT: u32 = 0x4000_0000;

/// The names of the denied calls (for documentation and tests).
pub fn denied_calls() -> impl Iterator<Item = &'static str> {
    DENIED
        .iter()
        .map(|(n, _)| *n)
        .chain(["clone with namespace flags", "clone3 (ENOSYS)", "every x32 call"])
}

/// The filters as plain instructions, compiled once per process.
pub(crate) fn compiled() -> Result<&'static [Filter], String> {
    static COMPILED: std::sync::OnceLock<Result<Vec<Filter>, String>> = std::sync::OnceLock::new();
    COMPILED
        .get_or_init(|| {
            let progs = programs().map_err(|e| e.to_string())?;
            Ok(progs
                .into_iter()
                .map(|p| p.into_iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect())
                .collect())
        })
        .as_ref()
        .map(|v| v.as_slice())
        .map_err(Clone::clone)
}

/// Turns instructions back into a program for `apply_filter`.
pub(crate) fn program(instructions: &[(u16, u8, u8, u32)]) -> BpfProgram {
    instructions
        .iter()
        .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
        .collect()
}

/// The filters to install, in order: no x32 calls, the `EPERM` deny list
/// (which also kills a process calling with another architecture's
/// numbers), then `clone3` → `ENOSYS`.
pub(crate) fn programs() -> Result<Vec<BpfProgram>, seccompiler::BackendError> {
    let arch = TargetArch::x86_64;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr) in DENIED {
        rules.insert(*nr, Vec::new());
    }
    let mut clone_rules = Vec::new();
    for flag in NAMESPACE_FLAGS {
        let bits = *flag as u64;
        clone_rules.push(SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(bits),
            bits,
        )?])?);
    }
    rules.insert(libc::SYS_clone, clone_rules);
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, Vec::new());
    let no_clone3 = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    Ok(vec![no_x32(), deny.try_into()?, no_clone3.try_into()?])
}

/// `EPERM` for any call number with the x32 bit, whatever the architecture
/// (another architecture's numbers are all below it, and the deny list kills
/// their callers anyway).
fn no_x32() -> BpfProgram {
    use libc::{BPF_ABS, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    use seccompiler::sock_filter;
    let op = |code: u32, jt: u8, jf: u8, k: u32| sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    vec![
        // seccomp_data.nr is its first field.
        op(BPF_LD | BPF_W | BPF_ABS, 0, 0, 0),
        op(BPF_JMP | BPF_JGE | BPF_K, 0, 1, X32_BIT),
        op(
            BPF_RET | BPF_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        op(BPF_RET | BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_x86_64() {
        let progs = programs().expect("the built-in filter is valid");
        assert_eq!(progs.len(), 3);
        assert!(progs.iter().all(|p| !p.is_empty()));
        assert!(denied_calls().any(|c| c == "unshare"));
    }
}
