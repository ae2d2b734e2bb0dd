//! Leadership on both backends: of two servers sharing one database, only the
//! one holding the `reconciler` claim runs managed agents, and the claim passes
//! only when its holder gives it up or lets it expire.

use std::time::Duration;

use serde_json::json;
use strata_core::MasterKey;
use strata_kernel::{Config, Kernel};
use strata_orchestrator::leader;
use strata_store::{Backend, Options, Store};

use super::harness::Harness;

async fn claim(h: &Harness, holder: &'static str, now: i64) -> String {
    h.kernel
        .store()
        .write(move |c| {
            Box::pin(async move {
                leader::claim(c, "test", holder, now, 5_000)
                    .await
                    .map(|c| c.holder)
            })
        })
        .await
        .unwrap()
}

async fn a_claim_passes_to_another_server_only_once_it_expires_or_is_released(b: Backend) {
    let h = Harness::new(b).await;
    let t = 1_000_000;
    assert_eq!(claim(&h, "a", t).await, "a");
    assert_eq!(claim(&h, "b", t + 1_000).await, "a", "taken while live");
    // A renewal extends the claim past its first expiry.
    assert_eq!(claim(&h, "a", t + 4_000).await, "a");
    assert_eq!(
        claim(&h, "b", t + 6_000).await,
        "a",
        "taken before the renewed claim expired"
    );
    assert_eq!(claim(&h, "b", t + 9_000).await, "b", "an expired claim is free");
    assert_eq!(claim(&h, "a", t + 9_500).await, "b");
    h.kernel
        .store()
        .write(|c| Box::pin(async move { leader::release(c, "test", "a").await }))
        .await
        .unwrap();
    assert_eq!(
        claim(&h, "a", t + 9_600).await,
        "b",
        "released by a server that does not hold it"
    );
    h.kernel
        .store()
        .write(|c| Box::pin(async move { leader::release(c, "test", "b").await }))
        .await
        .unwrap();
    assert_eq!(
        claim(&h, "a", t + 9_700).await,
        "a",
        "a released claim is free at once"
    );
}

/// The pids running deployment `name` on `k`'s reconciler.
fn pids(k: &Kernel, name: &str) -> Vec<u32> {
    k.fleet()
        .status(k, name)
        .map(|s| s.replicas.iter().filter_map(|r| r.pid).collect())
        .unwrap_or_default()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn only_the_leading_server_runs_managed_agents_and_another_takes_over(b: Backend) {
    let h = Harness::new(b).await;
    let store = Store::open(Options::new(&h.url), strata_kernel::MIGRATIONS)
        .await
        .unwrap();
    let mut config = Config::new(MasterKey::generate());
    config.clock = h.clock.clone();
    let other = Kernel::new(store, config).await.unwrap();
    // These kernels have no sandboxes: the replicas run as plain processes.
    h.call(
        &h.admin,
        "fleet.apply",
        json!({"name": "sleeper", "command": "sleep", "args": ["30"], "replicas": 2, "sandbox": false}),
    )
    .await
    .unwrap();
    let first = h.kernel.spawn_reconciler("http://127.0.0.1:9".into());
    wait_for("the first server to start both replicas", || {
        pids(&h.kernel, "sleeper").len() == 2
    })
    .await;
    let second = other.spawn_reconciler("http://127.0.0.1:9".into());
    // A few ticks of the second reconciler: it must start nothing.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!other.fleet().is_leading());
    assert!(pids(&other, "sleeper").is_empty());
    assert_eq!(pids(&h.kernel, "sleeper").len(), 2);

    // The leader shuts down: it stops its replicas and gives up the claim, and
    // the other server starts them without waiting for the claim to expire.
    let old = pids(&h.kernel, "sleeper");
    h.kernel.stop_fleet().await;
    first.await.unwrap();
    for pid in &old {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), None).is_ok();
        assert!(!alive, "replica {pid} outlived its server's leadership");
    }
    wait_for("the second server to take over", || {
        pids(&other, "sleeper").len() == 2
    })
    .await;
    assert!(other.fleet().is_leading());
    other.stop_fleet().await;
    second.await.unwrap();
}

crate::on_both_backends!(
    a_claim_passes_to_another_server_only_once_it_expires_or_is_released,
    only_the_leading_server_runs_managed_agents_and_another_takes_over,
);
