//! A build without the `wasm` feature refuses the backend with
//! `backend_unavailable` (run it with `cargo test -p strata-compute`).

use strata_compute::{Backend, Caller, CreateSandbox, RunRequest};
use strata_core::ErrorCode;

use super::harness::env;

#[tokio::test]
async fn wasm_requests_are_backend_unavailable() {
    let e = env().await;
    let req = RunRequest {
        command: vec!["prog.wat".into()],
        backend: Some(Backend::Wasm),
        ..Default::default()
    };
    let err = e.compute.run(req, &Caller::default()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::BackendUnavailable, "{err}");
    let err = e
        .compute
        .create(
            CreateSandbox {
                backend: Some(Backend::Wasm),
                ..Default::default()
            },
            &Caller::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BackendUnavailable, "{err}");
    assert!(e.compute.list().await.unwrap().is_empty());
}
