//! The store itself on both backends: group commit, isolation of failing writes,
//! migrations.

use std::sync::Arc;

use sqlx::Row;
use strata_store::{Backend, Migration, Options, Store};

use super::harness::Harness;

const SCRATCH: &[Migration] = &[Migration {
    layer: "scratch",
    version: 1,
    name: "a table for store tests",
    sqlite: "CREATE TABLE scratch (k TEXT PRIMARY KEY, v BIGINT NOT NULL)",
    postgres: "CREATE TABLE scratch (k TEXT PRIMARY KEY, v BIGINT NOT NULL)",
}];

async fn open(b: Backend, dir: &std::path::Path) -> (Store, String) {
    let url = strata_store::testing::fresh_url(b, dir).await.unwrap();
    (Store::open(Options::new(&url), &[SCRATCH]).await.unwrap(), url)
}

async fn insert(store: &Store, k: String, v: i64) -> Result<(), strata_store::Error> {
    store
        .write(move |c| {
            Box::pin(async move {
                sqlx::query("INSERT INTO scratch (k, v) VALUES ($1, $2)")
                    .bind(&k)
                    .bind(v)
                    .execute(&mut *c)
                    .await?;
                Ok(())
            })
        })
        .await
}

async fn a_failing_write_rolls_back_alone_while_its_batch_commits(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(b, dir.path()).await;
    let store = Arc::new(store);
    // Writes that insert two rows, the second of which collides for odd i: a
    // failing write must leave neither of its rows, the others both.
    let mut tasks = Vec::new();
    for i in 0..200i64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .write(move |c| {
                    Box::pin(async move {
                        sqlx::query("INSERT INTO scratch (k, v) VALUES ($1, $2)")
                            .bind(format!("own-{i}"))
                            .bind(i)
                            .execute(&mut *c)
                            .await?;
                        let second = if i % 2 == 1 {
                            "shared".to_string()
                        } else {
                            format!("own2-{i}")
                        };
                        if i % 2 == 1 {
                            sqlx::query(
                                "INSERT INTO scratch (k, v) VALUES ('shared', 0) ON CONFLICT (k) DO NOTHING",
                            )
                            .execute(&mut *c)
                            .await?;
                        }
                        sqlx::query("INSERT INTO scratch (k, v) VALUES ($1, $2)")
                            .bind(second)
                            .bind(i)
                            .execute(&mut *c)
                            .await?;
                        Ok::<_, strata_store::Error>(())
                    })
                })
                .await
        }));
    }
    let mut failed = 0;
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            assert!(e.is_unique_violation(), "{e}");
            failed += 1;
        }
    }
    assert_eq!(failed, 100);
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM scratch WHERE k LIKE 'own%'")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 200, "each even write commits two rows, each odd write none");
}

async fn a_write_is_visible_to_readers_once_acknowledged(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(b, dir.path()).await;
    for i in 0..50 {
        insert(&store, format!("k{i}"), i).await.unwrap();
        let v: i64 = sqlx::query("SELECT v FROM scratch WHERE k = $1")
            .bind(format!("k{i}"))
            .fetch_one(store.pool())
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, i);
    }
}

async fn a_queued_write_commits_no_later_than_a_write_queued_after_it(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(b, dir.path()).await;
    for round in 0..20i64 {
        // Queue a few writes without waiting for them, then one that is waited
        // for: once it is acknowledged, every earlier one must be readable.
        let mut queued = Vec::new();
        for i in 0..5i64 {
            let k = format!("q{round}-{i}");
            let q = store
                .write_queued(move |c| {
                    Box::pin(async move {
                        sqlx::query("INSERT INTO scratch (k, v) VALUES ($1, $2)")
                            .bind(&k)
                            .bind(i)
                            .execute(&mut *c)
                            .await?;
                        Ok::<_, strata_store::Error>(())
                    })
                })
                .await
                .unwrap();
            queued.push(q);
        }
        insert(&store, format!("after-{round}"), round).await.unwrap();
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM scratch WHERE k LIKE $1")
            .bind(format!("q{round}-%"))
            .fetch_one(store.pool())
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            n, 5,
            "round {round}: a write queued earlier was not committed yet"
        );
        for q in queued {
            q.await.unwrap();
        }
    }
}

async fn reopening_applies_nothing_twice_and_an_edited_migration_is_refused(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, url) = open(b, dir.path()).await;
    insert(&store, "kept".into(), 1).await.unwrap();
    store.close().await;
    let again = Store::open(Options::new(&url), &[SCRATCH]).await.unwrap();
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM scratch")
        .fetch_one(again.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    again.close().await;
    let edited = [Migration {
        sqlite: "CREATE TABLE scratch2 (k TEXT)",
        postgres: "CREATE TABLE scratch2 (k TEXT)",
        ..SCRATCH[0]
    }];
    let err = Store::open(Options::new(&url), &[&edited]).await.unwrap_err();
    assert!(err.to_string().contains("edited after being applied"), "{err}");
}

async fn a_failed_migration_leaves_no_partial_schema(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = strata_store::testing::fresh_url(b, dir.path()).await.unwrap();
    let broken = [Migration {
        layer: "broken",
        version: 1,
        name: "second statement fails",
        sqlite: "CREATE TABLE half (k TEXT); CREATE TABLE half (k TEXT);",
        postgres: "CREATE TABLE half (k TEXT); CREATE TABLE half (k TEXT);",
    }];
    let err = Store::open(Options::new(&url), &[&broken]).await.unwrap_err();
    assert!(err.to_string().contains("broken/1"), "{err}");
    let store = Store::open(Options::new(&url), &[]).await.unwrap();
    let exists = sqlx::query("SELECT COUNT(*) FROM half")
        .fetch_one(store.pool())
        .await;
    assert!(
        exists.is_err(),
        "the first statement of a failed migration was kept"
    );
}

async fn a_panicking_write_is_rolled_back_and_the_writer_keeps_going(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(b, dir.path()).await;
    let panicked: Result<(), strata_store::Error> = store
        .write(|c| {
            Box::pin(async move {
                sqlx::query("INSERT INTO scratch (k, v) VALUES ('doomed', 1)")
                    .execute(&mut *c)
                    .await?;
                panic!("a bug inside a write");
            })
        })
        .await;
    assert!(
        matches!(panicked, Err(strata_store::Error::Closed)),
        "{panicked:?}"
    );
    insert(&store, "after".into(), 2).await.unwrap();
    let keys: Vec<String> = sqlx::query("SELECT k FROM scratch ORDER BY k")
        .fetch_all(store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, vec!["after".to_string()]);
}

async fn the_kernel_store_opens_on_this_backend(b: Backend) {
    let h = Harness::new(b).await;
    h.store().ping().await.unwrap();
    assert_eq!(h.store().backend(), b);
    assert!(!h.url.is_empty());
}

crate::on_both_backends!(
    a_failing_write_rolls_back_alone_while_its_batch_commits,
    a_write_is_visible_to_readers_once_acknowledged,
    a_queued_write_commits_no_later_than_a_write_queued_after_it,
    reopening_applies_nothing_twice_and_an_edited_migration_is_refused,
    a_failed_migration_leaves_no_partial_schema,
    a_panicking_write_is_rolled_back_and_the_writer_keeps_going,
    the_kernel_store_opens_on_this_backend,
);
