//! The store itself on both backends: group commit, isolation of failing writes,
//! migrations.

use std::sync::Arc;

use sqlx::Row;
use strata_store::{Backend, Durability, Migration, Options, Queued, Store};

use super::harness::Harness;

const SCRATCH: &[Migration] = &[
    Migration {
        layer: "scratch",
        version: 1,
        name: "a table for store tests",
        sqlite: "CREATE TABLE scratch (k TEXT PRIMARY KEY, v BIGINT NOT NULL)",
        postgres: "CREATE TABLE scratch (k TEXT PRIMARY KEY, v BIGINT NOT NULL)",
    },
    Migration {
        layer: "scratch",
        version: 2,
        name: "a row of every column type",
        sqlite: "CREATE TABLE typed (k TEXT PRIMARY KEY, i BIGINT, f DOUBLE PRECISION, t TEXT, y BLOB)",
        postgres: "CREATE TABLE typed (k TEXT PRIMARY KEY, i BIGINT, f DOUBLE PRECISION, t TEXT, y BYTEA)",
    },
];

/// One `typed` row as read back: (i, f, t, y).
type Typed = (Option<i64>, Option<f64>, Option<String>, Option<Vec<u8>>);

fn typed(row: &sqlx::any::AnyRow) -> Typed {
    (
        row.try_get("i").unwrap(),
        row.try_get("f").unwrap(),
        row.try_get("t").unwrap(),
        row.try_get("y").unwrap(),
    )
}

async fn open(b: Backend, dir: &std::path::Path) -> (Store, String) {
    open_lingering(b, dir, Options::new("").linger).await
}

/// A store whose batches wait up to `linger` for announced followers.
async fn open_lingering(b: Backend, dir: &std::path::Path, linger: std::time::Duration) -> (Store, String) {
    let url = strata_store::testing::fresh_url(b, dir).await.unwrap();
    let opts = Options {
        linger,
        ..Options::new(&url)
    };
    (Store::open(opts, &[SCRATCH]).await.unwrap(), url)
}

async fn insert(store: &Store, k: String, v: i64) -> Result<(), strata_store::Error> {
    insert_following(store, k, v, None).await
}

/// Inserts `k` in the writer, dropping `follower` first (the write it announced has come).
async fn insert_following(
    store: &Store,
    k: String,
    v: i64,
    follower: Option<strata_store::Follower>,
) -> Result<(), strata_store::Error> {
    store
        .write(move |c| {
            Box::pin(async move {
                drop(follower);
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
            let q = queue_insert(&store, Durability::Synced, &format!("q{round}-{i}"), i).await;
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

/// Writes run on the writer's own connection (on SQLite not sqlx's, see
/// `strata_store::Conn`): what a write stores and reads back inside its
/// transaction must be what the read pool sees, for every column type, with a
/// numbered parameter used twice, NULLs, rows-affected counts, and a unique
/// violation reported as one.
async fn the_writers_connection_reads_and_writes_every_type_as_the_pool_does(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(b, dir.path()).await;
    let full: Typed = (
        Some(-9_007_199_254_740_993),
        Some(2.5e-7),
        Some("héllo ☃ 'quoted'".to_string()),
        Some(vec![0, 255, 10, 13]),
    );
    let empty: Typed = (None, None, None, None);
    for (k, row) in [("full", full.clone()), ("empty", empty.clone())] {
        let key = k.to_string();
        let back = store
            .write(move |c| {
                Box::pin(async move {
                    let (i, f, t, y) = row;
                    sqlx::query("INSERT INTO typed (k, i, f, t, y) VALUES ($1, $2, $3, $4, $5)")
                        .bind(&key)
                        .bind(i)
                        .bind(f)
                        .bind(t)
                        .bind(y)
                        .execute(&mut *c)
                        .await?;
                    let r = sqlx::query("SELECT i, f, t, y FROM typed WHERE k = $1 AND $1 = k")
                        .bind(&key)
                        .fetch_one(&mut *c)
                        .await?;
                    Ok::<_, strata_store::Error>(typed(&r))
                })
            })
            .await
            .unwrap();
        let read = sqlx::query("SELECT i, f, t, y FROM typed WHERE k = $1")
            .bind(k)
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(back, typed(&read), "the writer and the pool disagree on '{k}'");
    }
    let read = sqlx::query("SELECT i, f, t, y FROM typed WHERE k = 'full'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(typed(&read), full);

    let (updated, missing) = store
        .write(move |c| {
            Box::pin(async move {
                let updated = sqlx::query("UPDATE typed SET t = $1 WHERE k IN ('full', 'empty')")
                    .bind("x")
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                let missing = sqlx::query("SELECT k FROM typed WHERE k = $1")
                    .bind("nobody")
                    .fetch_optional(&mut *c)
                    .await?
                    .is_none();
                Ok::<_, strata_store::Error>((updated, missing))
            })
        })
        .await
        .unwrap();
    assert_eq!(updated, 2);
    assert!(missing);
    let dup = store
        .write(move |c| {
            Box::pin(async move {
                sqlx::query("INSERT INTO typed (k) VALUES ($1)")
                    .bind("full")
                    .execute(&mut *c)
                    .await?;
                Ok::<_, strata_store::Error>(())
            })
        })
        .await
        .unwrap_err();
    assert!(
        dup.is_unique_violation(),
        "a duplicate key must be reported as a unique violation: {dup}"
    );
}

async fn an_announced_follower_commits_in_its_announcers_batch(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    // A long linger, so a slow test machine cannot make the follower miss it.
    let (store, _) = open_lingering(b, dir.path(), std::time::Duration::from_secs(10)).await;
    let commits = store.commits();
    for round in 0..5 {
        // The first write announces a second, which is queued only once the
        // first has run (as a woken lease is): both commit in one batch.
        let (ran_tx, ran_rx) = tokio::sync::oneshot::channel();
        let followers = store.followers().clone();
        let before = *commits.borrow();
        let first = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write(move |c| {
                        Box::pin(async move {
                            let follower = followers.expect();
                            sqlx::query("INSERT INTO scratch (k, v) VALUES ($1, 1)")
                                .bind(format!("lead-{round}"))
                                .execute(&mut *c)
                                .await?;
                            let _ = ran_tx.send(follower);
                            Ok::<_, strata_store::Error>(())
                        })
                    })
                    .await
            })
        };
        let follower = ran_rx.await.unwrap();
        // Later than the writer would reach its commit on its own.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        insert_following(&store, format!("follow-{round}"), 0, Some(follower))
            .await
            .unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(
            *commits.borrow() - before,
            1,
            "round {round}: the announced write committed in a batch of its own"
        );
    }
}

async fn a_follower_that_never_comes_delays_a_commit_only_briefly(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open_lingering(b, dir.path(), std::time::Duration::from_millis(50)).await;
    // An announcement held for a long time (its write never queued) must not
    // hold the announcing write's acknowledgement for longer than the linger.
    let held = store.followers().expect();
    let started = std::time::Instant::now();
    let done = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        insert_following(&store, "alone".into(), 0, None),
    )
    .await;
    assert!(
        matches!(done, Ok(Ok(()))),
        "a write waited on an announced follower for {:?}",
        started.elapsed()
    );
    drop(held);
    // Nothing is announced any more: writes go on at once.
    insert_following(&store, "after".into(), 0, None).await.unwrap();
}

/// Queues an insert into `scratch`, acknowledged as `durability` says.
async fn queue_insert(
    store: &Store,
    durability: Durability,
    k: &str,
    v: i64,
) -> Queued<(), strata_store::Error> {
    let k = k.to_string();
    store
        .write_queued_as(durability, move |c| {
            Box::pin(async move {
                sqlx::query("INSERT INTO scratch (k, v) VALUES ($1, $2)")
                    .bind(&k)
                    .bind(v)
                    .execute(&mut *c)
                    .await?;
                Ok::<_, strata_store::Error>(())
            })
        })
        .await
        .unwrap()
}

/// Inserts `k` as a write acknowledged as `durability` says.
async fn insert_as(store: &Store, durability: Durability, k: &str, v: i64) {
    queue_insert(store, durability, k, v).await.await.unwrap();
}

async fn read(store: &Store, k: &str) -> Option<i64> {
    sqlx::query("SELECT v FROM scratch WHERE k = $1")
        .bind(k)
        .fetch_optional(store.pool())
        .await
        .unwrap()
        .map(|r| r.get(0))
}

async fn a_committed_write_is_answered_before_the_disk_and_synced_within_the_window(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = strata_store::testing::fresh_url(b, dir.path()).await.unwrap();
    let window = std::time::Duration::from_millis(300);
    let opts = Options {
        sync_window: window,
        ..Options::new(&url)
    };
    let store = Store::open(opts, &[SCRATCH]).await.unwrap();

    // A synced write (the default) is on disk before it is answered.
    let before = store.wal_syncs();
    insert_as(&store, Durability::Synced, "synced", 1).await;
    if b == Backend::Sqlite {
        assert_eq!(
            store.wal_syncs(),
            before + 1,
            "a synced write was answered before its sync"
        );
    }

    // A committed write is answered at its commit: readable, not yet synced.
    let before = store.wal_syncs();
    let answered = std::time::Instant::now();
    insert_as(&store, Durability::Committed, "committed", 2).await;
    assert_eq!(read(&store, "committed").await, Some(2));
    if b == Backend::Sqlite {
        assert_eq!(store.wal_syncs(), before, "a committed write waited for a sync");
        // ...and the writer syncs it once the window has passed, idle as it is.
        while store.wal_syncs() == before {
            assert!(
                answered.elapsed() < window * 10,
                "a committed write was not synced within {:?}",
                answered.elapsed()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            answered.elapsed() >= window / 2,
            "synced after {:?}, before its window",
            answered.elapsed()
        );

        // A synced write syncs what committed writes left before it, at once.
        insert_as(&store, Durability::Committed, "committed-2", 3).await;
        let before = store.wal_syncs();
        insert_as(&store, Durability::Synced, "synced-2", 4).await;
        assert_eq!(store.wal_syncs(), before + 1);
    } else {
        assert_eq!(store.wal_syncs(), 0, "PostgreSQL syncs its own log");
    }

    // Closing the store loses none of it.
    insert_as(&store, Durability::Committed, "last", 5).await;
    store.close().await;
    let again = Store::open(Options::new(&url), &[SCRATCH]).await.unwrap();
    for (k, v) in [("synced", 1), ("committed", 2), ("last", 5)] {
        assert_eq!(read(&again, k).await, Some(v), "{k} was lost");
    }
}

/// SQLite's WAL is checkpointed beside the writer, and it stays bounded under
/// steady writes that leave the log no quiet moment to start again: without
/// checkpoints these would take it past 100 MB; the writer checkpoints itself
/// once it passes 8,000 pages (about 33 MB). Nothing committed is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_checkpoints_run_beside_the_writer_and_keep_the_wal_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (store, url) = open(Backend::Sqlite, dir.path()).await;
    // `fresh_url` puts SQLite's file in `dir`, as `strata.db`.
    let wal = dir.path().join("strata.db-wal");
    // Each write its own commit, about four pages of log each (the row's page
    // and its 2 KiB value spilling over, the key's index).
    let value = "v".repeat(2048);
    for i in 0..6000 {
        let (k, value) = (format!("k{i:05}"), value.clone());
        store
            .write_queued_as(Durability::Committed, move |c| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO typed (k, t) VALUES ($1, $2)")
                        .bind(&k)
                        .bind(&value)
                        .execute(&mut *c)
                        .await?;
                    Ok::<_, strata_store::Error>(())
                })
            })
            .await
            .unwrap()
            .await
            .unwrap();
    }
    assert!(store.wal_checkpoints() > 0, "no checkpoint ran beside the writer");
    let size = std::fs::metadata(&wal).unwrap().len();
    assert!(
        size < 48 * 1024 * 1024,
        "the WAL grew to {size} bytes: it never started again"
    );
    let rows: i64 = sqlx::query("SELECT COUNT(*) FROM typed")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 6000);
    store.close().await;
    let again = Store::open(Options::new(&url), &[SCRATCH]).await.unwrap();
    let rows: i64 = sqlx::query("SELECT COUNT(*) FROM typed")
        .fetch_one(again.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 6000, "writes were lost across a checkpoint and a reopen");
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
    the_writers_connection_reads_and_writes_every_type_as_the_pool_does,
    an_announced_follower_commits_in_its_announcers_batch,
    a_follower_that_never_comes_delays_a_commit_only_briefly,
    the_kernel_store_opens_on_this_backend,
    a_committed_write_is_answered_before_the_disk_and_synced_within_the_window,
);
