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
//! is built for it. A call made with another architecture's numbers kills
//! the process.
//!
//! # Why the filter is built here rather than by `seccompiler`
//!
//! When a filter is installed, the kernel runs it for every call number to
//! cache which calls it always allows, so its start-up cost grows with how
//! many instructions a typical call goes through. `seccompiler` emits one
//! comparison chain per listed call, which every allowed call walks to the
//! end: about 300 instructions for this list, 150 µs to install here. This
//! module emits the same rules as one program that finds the call number by
//! binary search (a handful of comparisons per call; about 15 µs), and
//! `seccompiler` only loads it. A test runs the program over every call
//! number and checks each verdict.

use nix::libc;

use crate::wire::Filter;
use seccompiler::{BpfProgram, sock_filter};

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

/// The filters as plain instructions, built once per process.
pub(crate) fn compiled() -> Result<&'static [Filter], String> {
    static COMPILED: std::sync::OnceLock<Result<Vec<Filter>, String>> = std::sync::OnceLock::new();
    COMPILED
        .get_or_init(|| {
            Ok(programs()?
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
        .map(|&(code, jt, jf, k)| sock_filter { code, jt, jf, k })
        .collect()
}

/// What the filter does with one call number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Errno(i32),
    /// `clone`: `EPERM` if its flags ask for a namespace, else allowed.
    CloneFlags,
}

/// The filters to install, in order: one program (see the module's doc).
pub(crate) fn programs() -> Result<Vec<BpfProgram>, String> {
    let mut calls: Vec<(u32, Verdict)> = DENIED
        .iter()
        .map(|(_, nr)| (*nr as u32, Verdict::Errno(libc::EPERM)))
        .collect();
    calls.push((libc::SYS_clone as u32, Verdict::CloneFlags));
    calls.push((libc::SYS_clone3 as u32, Verdict::Errno(libc::ENOSYS)));
    calls.sort_unstable_by_key(|(nr, _)| *nr);
    if calls.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err("a call is listed twice in the seccomp deny list".into());
    }
    Ok(vec![Asm::filter(&calls)?])
}

/// A jump target: an instruction index, known once the program is laid out.
type Label = usize;

/// Emits a BPF program whose jumps name labels, resolved at the end.
#[derive(Default)]
struct Asm {
    code: Vec<(u16, Option<Label>, Option<Label>, u32)>,
    at: Vec<Option<usize>>,
}

const LD_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
/// The low half of the first argument (little-endian).
const ARG0_LOW: u32 = 16;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

impl Asm {
    fn filter(calls: &[(u32, Verdict)]) -> Result<BpfProgram, String> {
        let mut a = Asm::default();
        let [allow, kill, eperm, enosys, clone] = [(); 5].map(|()| a.label());
        a.op(LD_ABS, None, None, ARCH);
        a.op(JEQ, None, Some(kill), AUDIT_ARCH_X86_64);
        a.op(LD_ABS, None, None, NR);
        a.op(JGE, Some(eperm), None, X32_BIT);
        let target = |v: Verdict| match v {
            Verdict::Errno(e) if e == libc::ENOSYS => enosys,
            Verdict::Errno(_) => eperm,
            Verdict::CloneFlags => clone,
        };
        a.search(calls, &target, allow);
        a.bind(clone);
        let namespaces = NAMESPACE_FLAGS.iter().fold(0u32, |m, f| m | *f as u32);
        a.op(LD_ABS, None, None, ARG0_LOW);
        a.op(JSET, Some(eperm), Some(allow), namespaces);
        a.bind(allow);
        a.op(RET, None, None, libc::SECCOMP_RET_ALLOW);
        a.bind(kill);
        a.op(RET, None, None, libc::SECCOMP_RET_KILL_PROCESS);
        a.bind(eperm);
        a.op(RET, None, None, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32);
        a.bind(enosys);
        a.op(RET, None, None, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        a.finish()
    }

    /// Jumps to the verdict of the number in the accumulator among `calls`
    /// (sorted), or to `otherwise`, by binary search.
    fn search(&mut self, calls: &[(u32, Verdict)], target: &impl Fn(Verdict) -> Label, otherwise: Label) {
        if calls.len() <= 3 {
            for (nr, v) in calls {
                self.op(JEQ, Some(target(*v)), None, *nr);
            }
            self.op(JA, Some(otherwise), None, 0);
            return;
        }
        let (low, high) = calls.split_at(calls.len() / 2);
        let upper = self.label();
        self.op(JGE, Some(upper), None, high[0].0);
        self.search(low, target, otherwise);
        self.bind(upper);
        self.search(high, target, otherwise);
    }

    fn label(&mut self) -> Label {
        self.at.push(None);
        self.at.len() - 1
    }

    fn bind(&mut self, l: Label) {
        self.at[l] = Some(self.code.len());
    }

    /// An instruction; `None` as a jump target means the next instruction.
    fn op(&mut self, code: u16, jt: Option<Label>, jf: Option<Label>, k: u32) {
        self.code.push((code, jt, jf, k));
    }

    fn finish(self) -> Result<BpfProgram, String> {
        let offset = |from: usize, to: Option<Label>| -> Result<usize, String> {
            let Some(l) = to else { return Ok(0) };
            let at = self.at[l].ok_or("a seccomp jump to an unplaced label")?;
            at.checked_sub(from + 1)
                .ok_or_else(|| "a backward seccomp jump".to_string())
        };
        let short = |n: usize| u8::try_from(n).map_err(|_| "a seccomp jump too far".to_string());
        self.code
            .iter()
            .enumerate()
            .map(|(i, &(code, jt, jf, k))| {
                Ok(if code == JA {
                    sock_filter {
                        code,
                        jt: 0,
                        jf: 0,
                        k: offset(i, jt)? as u32,
                    }
                } else {
                    sock_filter {
                        code,
                        jt: short(offset(i, jt)?)?,
                        jf: short(offset(i, jf)?)?,
                        k,
                    }
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a classic BPF program over one `seccomp_data` (the subset of
    /// BPF the filter uses), returning what it returns.
    fn run(prog: &[sock_filter], nr: u32, arch: u32, arg0: u64) -> u32 {
        let word = |off: u32| match off {
            NR => nr,
            ARCH => arch,
            ARG0_LOW => arg0 as u32,
            o => panic!("load of offset {o}"),
        };
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let i = &prog[pc];
            pc += 1;
            let jump = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
            match i.code {
                LD_ABS => acc = word(i.k),
                JEQ => pc += jump(acc == i.k),
                JGE => pc += jump(acc >= i.k),
                JSET => pc += jump(acc & i.k != 0),
                JA => pc += i.k as usize,
                RET => return i.k,
                c => panic!("unexpected instruction {c:#x}"),
            }
        }
    }

    #[test]
    fn every_call_number_gets_the_verdict_of_the_deny_list() {
        let progs = programs().expect("the built-in filter is valid");
        assert_eq!(progs.len(), 1);
        let prog = &progs[0];
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        let x86 = AUDIT_ARCH_X86_64;
        for nr in 0..1024u32 {
            let want = if DENIED.iter().any(|(_, d)| *d as u32 == nr) {
                eperm
            } else if nr == libc::SYS_clone3 as u32 {
                enosys
            } else {
                libc::SECCOMP_RET_ALLOW
            };
            assert_eq!(run(prog, nr, x86, 0), want, "call {nr}");
            assert_eq!(run(prog, nr | X32_BIT, x86, 0), eperm, "x32 call {nr}");
            assert_eq!(
                run(prog, nr, 0x4000_0003, 0),
                libc::SECCOMP_RET_KILL_PROCESS,
                "i386 call {nr}"
            );
        }
        let clone = libc::SYS_clone as u32;
        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(run(prog, clone, x86, thread), libc::SECCOMP_RET_ALLOW);
        for flag in NAMESPACE_FLAGS {
            assert_eq!(
                run(prog, clone, x86, thread | *flag as u64),
                eperm,
                "clone {flag:#x}"
            );
        }
        // Short: a call goes through a handful of comparisons, not the whole list.
        assert!(prog.len() < 2 * DENIED.len() + 20, "{} instructions", prog.len());
        assert!(denied_calls().any(|c| c == "unshare"));
    }
}
