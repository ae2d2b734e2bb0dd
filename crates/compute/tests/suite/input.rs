//! Bad input gets a typed error with its code, never a panic or a run.

use strata_compute::{Caller, FileInput, Limits, Network};
use strata_core::ErrorCode;

use super::harness::{cmd, env, sh};

#[tokio::test]
async fn empty_command_is_invalid_command() {
    let e = env().await;
    for c in [vec![], vec![""]] {
        let err = e.compute.run(cmd(&c), &Caller::default()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidCommand, "{c:?}");
    }
}

#[tokio::test]
async fn absurd_limits_and_timeouts_are_invalid_limits() {
    let e = env().await;
    let cases = [
        Limits {
            memory_bytes: Some(1),
            ..Default::default()
        },
        Limits {
            memory_bytes: Some(u64::MAX),
            ..Default::default()
        },
        Limits {
            pids: Some(0),
            ..Default::default()
        },
        Limits {
            cpu_millis: Some(10_000_000),
            ..Default::default()
        },
        Limits {
            workspace_bytes: Some(1 << 50),
            ..Default::default()
        },
    ];
    for l in cases {
        let mut req = sh("true");
        req.limits = l.clone();
        let err = e.compute.run(req, &Caller::default()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidLimits, "{l:?}");
    }
    for t in [0, u64::MAX] {
        let mut req = sh("true");
        req.timeout_ms = Some(t);
        assert_eq!(
            e.compute.run(req, &Caller::default()).await.unwrap_err().code,
            ErrorCode::InvalidLimits
        );
    }
}

#[tokio::test]
async fn files_too_large_or_escaping_are_refused() {
    let e = env().await;
    let mut req = sh("true");
    req.files = vec![FileInput {
        path: "big".into(),
        content: Some("x".repeat(17 << 20)),
        content_base64: None,
        mode: None,
    }];
    assert_eq!(
        e.compute.run(req, &Caller::default()).await.unwrap_err().code,
        ErrorCode::FileTooLarge
    );
    for p in ["../escape", "/etc/passwd", "a/../../b"] {
        let mut req = sh("true");
        req.files = vec![FileInput {
            path: p.into(),
            content: Some("x".into()),
            content_base64: None,
            mode: None,
        }];
        assert_eq!(
            e.compute.run(req, &Caller::default()).await.unwrap_err().code,
            ErrorCode::InvalidPath,
            "{p}"
        );
    }
}

#[tokio::test]
async fn a_file_that_is_also_a_folder_is_refused_before_any_setup() {
    let e = env().await;
    let mut req = sh("true");
    req.files = ["a", "a/b"]
        .iter()
        .map(|p| FileInput {
            path: p.to_string(),
            content: Some("x".into()),
            content_base64: None,
            mode: None,
        })
        .collect();
    let err = e.compute.run(req, &Caller::default()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidRequest, "{err}");
    assert_eq!(e.compute.cgroup_count(), 0);
}

#[tokio::test]
async fn host_egress_without_a_grant_is_refused() {
    let e = env().await;
    let mut req = sh("true");
    req.network = Network::HostEgress;
    let err = e.compute.run(req, &Caller::default()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NetworkNotGranted);
}

#[tokio::test]
async fn unknown_template_is_unknown_template() {
    let e = env().await;
    let mut req = sh("true");
    req.template = Some("nope".into());
    let err = e.compute.run(req, &Caller::default()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownTemplate);
}

#[tokio::test]
async fn templates_may_not_bind_host_secrets() {
    let e = env().await;
    for bind in ["/etc", "/etc/shadow", "/proc", "/root", "relative", "/usr/../etc"] {
        let t = strata_compute::Template {
            name: "bad".into(),
            limits: Default::default(),
            env: Default::default(),
            ro_binds: vec![bind.into()],
            network: Default::default(),
            backend: Default::default(),
            setup: vec![],
        };
        let err = e.compute.put_template(t).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest, "{bind}");
    }
}
