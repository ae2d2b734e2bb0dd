//! Attacks from inside a sandbox. Each test names the attack and asserts the
//! specific way it fails; where it helps, a control shows the probe works.

use std::io::Read;
use std::net::TcpListener;

use strata_compute::{Caller, Limits, Network, Status};

use super::harness::{env, py, run, sh};

/// Runs Python that calls a raw system call and prints `result errno`.
fn syscall_probe(call: &str) -> String {
    format!(
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nr = {call}\nprint(r, ctypes.get_errno())"
    )
}

#[tokio::test]
async fn attack_read_host_etc_shadow_and_unbound_paths_finds_nothing() {
    let e = env().await;
    let o = run(&e, sh("cat /etc/shadow; ls /root /home /var/lib /work; echo END")).await;
    assert!(o.stderr.contains("/etc/shadow: No such file"), "{o:?}");
    for p in ["/root", "/home", "/var/lib", "/work"] {
        assert!(
            o.stderr.contains(&format!("{p}': No such file")),
            "{p} visible: {o:?}"
        );
    }
    assert_eq!(o.stdout, "END\n");
    // /etc/passwd is the sandbox's own, not the host's.
    let o = run(&e, sh("cat /etc/passwd")).await;
    assert!(
        !o.stdout.contains("postgres") && o.stdout.contains("sandbox:x:1000"),
        "{o:?}"
    );
}

#[tokio::test]
async fn attack_write_outside_workspace_and_tmp_hits_a_read_only_root() {
    let e = env().await;
    let marker = format!("strata-evil-{}", std::process::id());
    let o = run(
        &e,
        sh(&format!(
            "for p in /usr/{marker} /etc/{marker} /{marker} /bin/{marker}; do echo x > $p 2>/dev/null && echo WROTE $p; done; \
             echo ok > /workspace/a && echo ok > /tmp/b && cat /workspace/a /tmp/b; \
             touch /usr/bin/python3 2>&1 | head -c 200"
        )),
    )
    .await;
    assert!(!o.stdout.contains("WROTE"), "{o:?}");
    assert!(o.stdout.starts_with("ok\nok\n"), "{o:?}");
    assert!(o.stdout.contains("cannot touch '/usr/bin/python3'"), "{o:?}");
    assert!(o.stderr.contains("Read-only file system"), "{o:?}");
    for p in [
        format!("/usr/{marker}"),
        format!("/etc/{marker}"),
        format!("/{marker}"),
    ] {
        assert!(!std::path::Path::new(&p).exists(), "{p} appeared on the host");
    }
}

#[tokio::test]
async fn attack_see_or_signal_host_processes_fails() {
    let e = env().await;
    let mut victim = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let pid = victim.id();
    let o = run(
        &e,
        sh(&format!(
            "ls /proc | grep -cE '^[0-9]+$'; kill -9 {pid}; echo kill=$?; kill -9 1; echo kill1=$?"
        )),
    )
    .await;
    let mut lines = o.stdout.lines();
    let visible: u32 = lines.next().unwrap().parse().unwrap();
    assert!(visible <= 4, "the sandbox sees {visible} processes: {o:?}");
    assert!(
        o.stdout.contains("kill=1") || o.stdout.contains("kill=2"),
        "{o:?}"
    );
    assert!(o.stderr.contains("No such process"), "{o:?}");
    assert!(
        victim.try_wait().unwrap().is_none(),
        "the host process was killed"
    );
    victim.kill().unwrap();
    let _ = victim.wait();
}

#[tokio::test]
async fn attack_connect_to_host_loopback_listener_is_unreachable() {
    let e = env().await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let probe = format!(
        "import socket\ns = socket.socket()\ns.settimeout(2)\ntry:\n    s.connect(('127.0.0.1', {port}))\n    s.sendall(b'leak')\n    print('CONNECTED')\nexcept OSError as e:\n    print('refused', e.errno)"
    );
    let o = run(&e, py(&probe)).await;
    // 101 = ENETUNREACH: the sandbox's loopback is down and nothing else exists.
    assert_eq!(o.stdout.trim(), "refused 101", "{o:?}");
    assert!(listener.accept().is_err(), "the host listener got a connection");

    // Control: with the grant, host-egress reaches the same listener.
    let mut req = py(&probe);
    req.network = Network::HostEgress;
    let granted = Caller {
        host_egress_granted: true,
        ..Default::default()
    };
    let o = e.compute.run(req, &granted).await.unwrap();
    assert_eq!(o.stdout.trim(), "CONNECTED", "{o:?}");
    listener.set_nonblocking(false).unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"leak");
}

#[tokio::test]
async fn attack_mount_inside_is_denied() {
    let e = env().await;
    let o = run(
        &e,
        py(&syscall_probe("libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)")),
    )
    .await;
    assert_eq!(o.stdout.trim(), "-1 1", "mount must fail with EPERM: {o:?}");
    let o = run(&e, sh("mount -t tmpfs none /workspace 2>&1; echo rc=$?")).await;
    assert!(!o.stdout.contains("rc=0"), "{o:?}");
    let o = run(&e, py(&syscall_probe("libc.umount2(b'/proc', 2)"))).await;
    assert_eq!(o.stdout.trim(), "-1 1", "umount must fail with EPERM: {o:?}");
}

#[tokio::test]
async fn attack_ptrace_is_denied() {
    let e = env().await;
    // PTRACE_TRACEME (0) and PTRACE_ATTACH (16) to pid 1.
    let o = run(
        &e,
        py(&syscall_probe(
            "(libc.ptrace(0, 0, 0, 0), libc.ptrace(16, 1, 0, 0))",
        )),
    )
    .await;
    assert_eq!(o.stdout.trim(), "(-1, -1) 1", "{o:?}");
}

#[tokio::test]
async fn attack_through_the_x32_abi_is_denied() {
    let e = env().await;
    // The x32 numbers of getpid (39) and unshare (272): bit 30 set. Without
    // the filter a kernel with x32 support would run them; here both are EPERM.
    let o = run(
        &e,
        py(&syscall_probe(
            "(libc.syscall(0x40000000 | 39), libc.syscall(0x40000000 | 272, 0x10000000))",
        )),
    )
    .await;
    assert_eq!(o.stdout.trim(), "(-1, -1) 1", "{o:?}");
    // The native call still works.
    let o = run(&e, py(&syscall_probe("libc.syscall(39) > 0"))).await;
    assert_eq!(o.stdout.trim(), "True 0", "{o:?}");
}

#[tokio::test]
async fn attack_unshare_or_setns_to_regain_privileges_is_denied() {
    let e = env().await;
    // CLONE_NEWUSER = 0x10000000, CLONE_NEWNS = 0x20000
    let o = run(
        &e,
        py(&syscall_probe(
            "(libc.unshare(0x10000000), libc.unshare(0x20000))",
        )),
    )
    .await;
    assert_eq!(o.stdout.trim(), "(-1, -1) 1", "{o:?}");
    let o = run(&e, sh("unshare -Ur id 2>&1; echo rc=$?")).await;
    assert!(
        o.stdout.contains("Operation not permitted") && !o.stdout.contains("rc=0"),
        "{o:?}"
    );
    let o = run(
        &e,
        py(&syscall_probe(
            "libc.setns(__import__('os').open('/proc/1/ns/mnt', 0), 0)",
        )),
    )
    .await;
    assert!(
        o.stdout.contains("Permission denied")
            || o.stdout.trim().ends_with(" 1")
            || o.stdout.trim().ends_with(" 13"),
        "{o:?}"
    );
    // The command has no capabilities at all, even in its own namespace.
    let o = run(&e, sh("grep CapEff /proc/self/status; id -u")).await;
    assert_eq!(o.stdout, "CapEff:\t0000000000000000\n1000\n", "{o:?}");
}

#[tokio::test]
async fn attack_kernel_interfaces_keyring_bpf_and_modules_are_denied() {
    let e = env().await;
    // add_key (248), bpf (321), init_module (175), kexec_load (246), reboot (169)
    let o = run(
        &e,
        py(&syscall_probe(
            "[libc.syscall(n, 0, 0, 0, 0, 0) for n in (248, 321, 175, 246, 169)]",
        )),
    )
    .await;
    assert_eq!(o.stdout.trim(), "[-1, -1, -1, -1, -1] 1", "{o:?}");
}

#[tokio::test]
async fn attack_fork_bomb_is_contained_by_the_pids_limit() {
    let e = env().await;
    let mut req = py(
        "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(30)\n            os._exit(0)\n        n += 1\nexcept OSError as e:\n    print(n, e.errno)",
    );
    req.limits = Limits {
        pids: Some(32),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let o = run(&e, req).await;
    let mut parts = o.stdout.split_whitespace();
    let forked: u32 = parts.next().unwrap().parse().unwrap();
    assert!(forked < 32, "forked {forked}: {o:?}");
    assert_eq!(parts.next(), Some("11"), "EAGAIN expected: {o:?}");
    // The sleeping children die with the sandbox rather than holding the run open.
    assert!(started.elapsed().as_secs() < 10);
    // A classic shell bomb ends at the timeout, and the host still forks fine.
    let mut bomb = sh("b() { b | b & }; b; sleep 5");
    bomb.limits.pids = Some(64);
    bomb.timeout_ms = Some(2000);
    let o = run(&e, bomb).await;
    assert!(matches!(o.status, Status::Timeout | Status::Exited), "{o:?}");
    assert!(std::process::Command::new("true").status().unwrap().success());
    assert_eq!(host_processes_of_uid(e.user_uid), 0, "bomb processes survived");
}

pub(crate) fn host_processes_of_uid(uid: u32) -> usize {
    // A killed process may take a moment to leave the process table.
    for _ in 0..100 {
        if list_uid(uid).is_empty() {
            return 0;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let left = list_uid(uid);
    eprintln!("left: {left:?}");
    left.len()
}

fn list_uid(uid: u32) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|d| {
            d.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter(|d| {
            std::fs::read_to_string(d.path().join("status"))
                .map(|s| {
                    s.lines().any(|l| {
                        l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid.to_string())
                    })
                })
                .unwrap_or(false)
        })
        .map(|d| {
            std::fs::read_to_string(d.path().join("status"))
                .unwrap_or_default()
                .lines()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[tokio::test]
async fn attack_allocate_past_the_memory_limit_is_reported_as_oom() {
    let e = env().await;
    let mut req = py("b = bytearray(400 << 20)\nprint('allocated', len(b))");
    req.limits = Limits {
        memory_bytes: Some(64 << 20),
        ..Default::default()
    };
    let o = run(&e, req).await;
    assert_eq!(o.status, Status::Oom, "{o:?}");
    assert!(!o.stdout.contains("allocated"));
    assert_eq!(o.signal, Some(9));
}

#[tokio::test]
async fn attack_run_past_the_timeout_is_killed_and_reported_as_timeout() {
    let e = env().await;
    let mut req = sh("sleep 100 & sleep 100");
    req.timeout_ms = Some(300);
    let started = std::time::Instant::now();
    let o = run(&e, req).await;
    assert_eq!(o.status, Status::Timeout, "{o:?}");
    assert!(started.elapsed().as_secs() < 5, "took {:?}", started.elapsed());
    assert!(o.usage.wall_ms >= 300);
    assert_eq!(
        host_processes_of_uid(e.user_uid),
        0,
        "the background sleep survived"
    );
}

#[tokio::test]
async fn attack_fill_the_workspace_past_its_quota_fails() {
    let e = env().await;
    let mut req =
        sh("head -c 3000000 /dev/zero > /workspace/big; echo rc=$?; ls -l /workspace/big | awk '{print $5}'");
    req.limits = Limits {
        workspace_bytes: Some(1 << 20),
        ..Default::default()
    };
    let o = run(&e, req).await;
    assert!(
        o.stderr.contains("No space left on device") || o.stderr.contains("File too large"),
        "{o:?}"
    );
    assert!(!o.stdout.contains("rc=0"), "{o:?}");
    let size: u64 = o.stdout.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(size <= 1 << 20, "wrote {size} bytes");
    // /tmp has its own quota too.
    let mut req = sh("head -c 3000000 /dev/zero > /tmp/big; echo rc=$?");
    req.limits.tmp_bytes = Some(1 << 20);
    let o = run(&e, req).await;
    assert!(!o.stdout.contains("rc=0"), "{o:?}");
}

#[tokio::test]
async fn attack_forge_reports_through_the_control_socket_finds_no_socket() {
    let e = env().await;
    // Every descriptor the command was started with: only its stdio.
    let o = run(
        &e,
        py("import os\nfor f in sorted(os.listdir('/proc/1/fd')):\n    print(f, os.readlink('/proc/1/fd/' + f))"),
    )
    .await;
    assert!(
        !o.stdout.contains("socket:"),
        "a socket leaked into the sandbox: {o:?}"
    );
    let fds: Vec<&str> = o.stdout.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert!(fds.iter().all(|f| ["0", "1", "2", "3"].contains(f)), "{o:?}");
    // Printing a fake report on stdout stays output.
    let o = run(
        &e,
        sh(r#"echo '{"event":"exited","code":0,"signal":null,"cpu_us":0,"maxrss_kib":0}'; exit 5"#),
    )
    .await;
    assert_eq!(o.exit_code, Some(5));
}
