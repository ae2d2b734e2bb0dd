//! The vault: values sealed at rest, never listed, bound to their names.

use sqlx::Row;
use strata_core::ErrorCode;
use strata_store::Backend;
use strata_tools::{NewSecret, SecretValue, Tools};

use super::harness::{Gateway, unique};
use crate::on_both_backends;

async fn secret_values_are_sealed_at_rest_and_never_listed(b: Backend) {
    let g = Gateway::new(b).await;
    let value = unique("vault-value");
    g.secret("GITHUB_TOKEN", &value).await;
    let listed = g.tools.list_secrets().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "GITHUB_TOKEN");
    assert_eq!(listed[0].version, 1);
    assert!(!serde_json::to_string(&listed).unwrap().contains(&value));
    // Nothing in the table holds the value, in clear or hex.
    let rows = sqlx::query("SELECT name, sealed FROM tl_secrets")
        .fetch_all(g.store.pool())
        .await
        .unwrap();
    for r in rows {
        let sealed: String = r.try_get(1).unwrap();
        assert!(!sealed.contains(&value));
        assert!(!sealed.contains(&hex::encode(&value)));
    }
}

async fn replacing_a_secret_bumps_its_version_and_removing_forgets_it(b: Backend) {
    let g = Gateway::new(b).await;
    g.secret("K", "first-value").await;
    g.secret("K", "second-value").await;
    assert_eq!(g.tools.list_secrets().await.unwrap()[0].version, 2);
    g.tools.remove_secret("K").await.unwrap();
    assert!(g.tools.list_secrets().await.unwrap().is_empty());
    let e = g.tools.remove_secret("K").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
}

async fn a_secret_sealed_for_one_name_does_not_open_as_another(b: Backend) {
    let g = Gateway::new(b).await;
    g.secret("A", "value-of-a").await;
    g.secret("B", "value-of-b").await;
    // An attacker with write access to the table swaps the sealed values.
    sqlx::query(
        "UPDATE tl_secrets SET sealed = (SELECT sealed FROM tl_secrets WHERE name = 'A') WHERE name = 'B'",
    )
    .execute(g.store.pool())
    .await
    .unwrap();
    let svc = super::harness::service("value-of-a").await;
    g.connect(super::harness::openapi_connection(
        "svc",
        &svc,
        serde_json::json!({"headers": {"x-api-key": {"secret": "B"}}}),
    ))
    .await;
    let e = g
        .call(
            &strata_tools::Caller::Operator,
            "svc.getItem",
            serde_json::json!({"id": 1}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.error.code, ErrorCode::Internal, "{e}");
    assert_eq!(svc.calls.get(), 0, "nothing was sent with the swapped value");
}

async fn a_vault_opened_with_another_master_key_cannot_read_secrets(b: Backend) {
    let g = Gateway::new(b).await;
    g.secret("API_KEY", "the-real-key").await;
    let svc = super::harness::service("the-real-key").await;
    g.connect(super::harness::openapi_connection(
        "svc",
        &svc,
        serde_json::json!({}),
    ))
    .await;
    let mut config = strata_tools::Config::new(strata_core::MasterKey::generate());
    config.clock = g.clock.clone();
    let other = Tools::open(g.store.clone(), config).await.unwrap();
    let e = other
        .call(
            &strata_tools::Caller::Operator,
            serde_json::from_value(serde_json::json!({"tool": "svc.getItem", "arguments": {"id": 1}}))
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.error.code, ErrorCode::Internal);
    assert_eq!(svc.calls.get(), 0);
    let _ = g.key.clone();
}

async fn bad_secret_names_and_values_are_refused(b: Backend) {
    let g = Gateway::new(b).await;
    for (name, value) in [("", "v"), ("has space", "v"), ("ok", "")] {
        let e = g
            .tools
            .set_secret(NewSecret {
                name: name.into(),
                value: SecretValue::new(value),
                description: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{name:?}");
    }
}

on_both_backends!(
    secret_values_are_sealed_at_rest_and_never_listed,
    replacing_a_secret_bumps_its_version_and_removing_forgets_it,
    a_secret_sealed_for_one_name_does_not_open_as_another,
    a_vault_opened_with_another_master_key_cannot_read_secrets,
    bad_secret_names_and_values_are_refused,
);
