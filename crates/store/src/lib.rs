//! Strata's store: one database, SQLite embedded by default or PostgreSQL to scale out.
//!
//! The store is deliberately small. It opens the database ([`Store::open`]), applies
//! each layer's embedded [`Migration`]s, hands out the read pool, and funnels every
//! write through one **group-commit** writer ([`Store::write`]): concurrent writes
//! are batched into one transaction (one fsync), each inside its own savepoint so a
//! failing write never takes its neighbours down. On PostgreSQL the writer holds a
//! transaction-scoped advisory lock, so writes from several replicas serialise too;
//! that order is what the audit chain and the event log rely on.
//!
//! SQL is written once with `$1`-style parameters, which both backends accept, and
//! portable types (`TEXT`, `BIGINT`, `BOOLEAN`); where the dialects differ a
//! migration carries both texts.

mod checkpoint;
mod commit;
mod conn;
pub mod event;
mod migrate;
mod params;
pub mod testing;

use std::str::FromStr;
use std::time::Duration;

pub use commit::{Follower, Followers, Queued, Tail, TailItem, WriteFuture};
pub use conn::Conn;
pub use migrate::Migration;
pub use params::Params;
pub use sqlx;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Connection, Executor};
use std::sync::Arc;

use tokio::sync::{Notify, mpsc, watch};

/// Set on every SQLite connection of the read pool (which writes only
/// migrations). FULL: a commit is durable once it returns, even across power loss.
pub(crate) const SQLITE_PRAGMAS: &str =
    "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;";

/// Set on the writer's SQLite connection. Its commits do not sync the WAL
/// themselves: the writer syncs it (`fdatasync`) after every commit whose
/// writes must be [`Durability::Synced`], before answering them, which is what
/// FULL would do, and lets a batch of [`Durability::Committed`] writes skip it.
pub(crate) const SQLITE_WRITER_PRAGMAS: &str =
    "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;";

/// When a write is acknowledged, relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Once its batch's commit is on disk (SQLite: the WAL synced; PostgreSQL:
    /// the commit record flushed): the write survives power loss. The default,
    /// and what any write a caller acknowledges needs.
    #[default]
    Synced,
    /// Once its batch has committed, without waiting for the disk: the write is
    /// in the database and survives the process being killed (the WAL is in the
    /// operating system's hands), and reaches the disk with the next synced
    /// commit or at most [`Options::sync_window`] later. Power loss within that
    /// window may lose it. For records of something that changed nothing, such
    /// as the log of a read-only tool call; a batch holding one synced write
    /// syncs all of it.
    Committed,
}

/// The database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite in WAL mode.
    Sqlite,
    /// PostgreSQL, possibly shared by several replicas.
    Postgres,
}

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database reported an error or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration could not be applied, or an applied one was edited.
    #[error("migration {layer}/{version}: {reason}")]
    Migration {
        /// The layer owning the migration.
        layer: String,
        /// Its version.
        version: u32,
        /// Why it failed.
        reason: String,
    },
    /// The URL names no supported database.
    #[error("unsupported database URL '{0}': use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    /// The writer has stopped (the store is shutting down).
    #[error("the store's writer has stopped")]
    Closed,
    /// A row held a value the code cannot read (a corrupted or foreign row).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl Error {
    /// Whether the error is a unique-constraint violation.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Error::Database(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

impl From<Error> for strata_core::Error {
    fn from(e: Error) -> Self {
        use strata_core::ErrorCode;
        match &e {
            Error::Closed
            | Error::Database(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)) => {
                strata_core::Error::new(ErrorCode::Unavailable, e.to_string())
            }
            _ => strata_core::Error::internal(e),
        }
    }
}

/// Store results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Options for [`Store::open`].
#[derive(Debug, Clone)]
pub struct Options {
    /// `sqlite://PATH` or `postgres://…`.
    pub url: String,
    /// Connections in the read pool.
    pub max_connections: u32,
    /// The most writes the writer puts in one transaction.
    pub max_batch: usize,
    /// The longest a batch waits for writes announced to [`Followers`] before
    /// it commits without them.
    pub linger: Duration,
    /// The longest a [`Durability::Committed`] write waits to reach the disk.
    pub sync_window: Duration,
}

impl Options {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Options {
        Options {
            url: url.into(),
            max_connections: 8,
            max_batch: 256,
            linger: Duration::from_millis(1),
            sync_window: Duration::from_millis(10),
        }
    }
}

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    writes: mpsc::Sender<commit::Job>,
    committed: watch::Receiver<u64>,
    stop: Arc<Notify>,
    tail: commit::TailSlot,
    followers: Followers,
    wal: Arc<commit::WalCounts>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `opts.url`, applies `migrations`
    /// in order and starts the writer.
    pub async fn open(opts: Options, migrations: &[&[Migration]]) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = backend_of(&opts.url)?;
        let mut connect = AnyConnectOptions::from_str(&opts.url)?;
        connect = connect.log_statements(tracing::log::LevelFilter::Trace);
        if backend == Backend::Sqlite {
            // WAL is persistent in the file; set it once before the pool opens.
            let mut c = sqlx::AnyConnection::connect_with(&connect).await?;
            c.execute("PRAGMA journal_mode = WAL").await?;
        }
        let writer_connect = connect.clone();
        let pool = AnyPoolOptions::new()
            .max_connections(opts.max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(SQLITE_PRAGMAS).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(connect)
            .await?;
        let mut sets = vec![migrate::STORE];
        sets.extend_from_slice(migrations);
        migrate::run(&pool, backend, &sets).await?;
        let stop = Arc::new(Notify::new());
        let tail = commit::TailSlot::default();
        let followers = Followers::default();
        let wal = Arc::<commit::WalCounts>::default();
        let (writes, committed) = commit::start(
            &opts,
            writer_connect,
            backend,
            stop.clone(),
            tail.clone(),
            followers.clone(),
            Arc::clone(&wal),
        )?;
        Ok(Store {
            pool,
            backend,
            writes,
            committed,
            stop,
            tail,
            followers,
            wal,
        })
    }

    /// The read pool. Writes go through [`Store::write`].
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs `f` inside the writer's current transaction and returns its result once
    /// that transaction has committed. If `f` fails, only its own changes are rolled
    /// back. `f` must only run SQL: it holds the single writer while it runs.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<Error> + Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> WriteFuture<'c, T, E> + Send + 'static,
    {
        self.write_queued(f).await?.await
    }

    /// Like [`Store::write`], but returns as soon as the write is queued; the
    /// [`Queued`] it gives resolves once the write's batch has committed.
    ///
    /// The writer takes writes in the order they were queued, so any write
    /// queued after this one commits in the same batch or a later one. A caller
    /// that acknowledges only after a later write of its own has committed thus
    /// never acknowledges before this one is durable — which is how a sandbox
    /// run's usage record rides on the kernel's outcome write instead of
    /// costing a commit of its own before the reply.
    pub async fn write_queued<T, E, F>(&self, f: F) -> Result<Queued<T, E>, E>
    where
        T: Send + 'static,
        E: From<Error> + Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> WriteFuture<'c, T, E> + Send + 'static,
    {
        self.write_queued_as(Durability::Synced, f).await
    }

    /// Like [`Store::write_queued`], acknowledged as `durability` says.
    pub async fn write_queued_as<T, E, F>(&self, durability: Durability, f: F) -> Result<Queued<T, E>, E>
    where
        T: Send + 'static,
        E: From<Error> + Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> WriteFuture<'c, T, E> + Send + 'static,
    {
        commit::enqueue(&self.writes, durability, move |c| {
            Box::pin(async move { f(c).await.map(|out| (out, Vec::new())) })
        })
        .await
    }

    /// Like [`Store::write`], but `f` also returns rows for the batch's [`Tail`]
    /// (audit entries and events), written once for the whole batch just before
    /// it commits. Kept only if `f` succeeds.
    pub async fn write_logged<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<Error> + Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> WriteFuture<'c, (T, Vec<TailItem>), E> + Send + 'static,
    {
        self.write_logged_as(Durability::Synced, f).await
    }

    /// Like [`Store::write_logged`], acknowledged as `durability` says.
    pub async fn write_logged_as<T, E, F>(&self, durability: Durability, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<Error> + Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> WriteFuture<'c, (T, Vec<TailItem>), E> + Send + 'static,
    {
        commit::enqueue(&self.writes, durability, f).await?.await
    }

    /// Registers what writes the rows left by [`Store::write_logged`]. The first
    /// registration wins; returns whether this one did.
    pub fn set_tail(&self, tail: Arc<dyn Tail>) -> bool {
        self.tail.set(tail).is_ok()
    }

    /// Where a write announces the write it is about to cause (see
    /// [`Followers`]), so that both commit in one batch.
    pub fn followers(&self) -> &Followers {
        &self.followers
    }

    /// How many times the writer has synced SQLite's WAL to disk (always 0 on
    /// PostgreSQL, which syncs its own log).
    pub fn wal_syncs(&self) -> u64 {
        self.wal.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many checkpoints of SQLite's WAL have run beside the writer (always
    /// 0 on PostgreSQL).
    pub fn wal_checkpoints(&self) -> u64 {
        self.wal.checkpoints.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A receiver that changes after every commit (for tailing the event log).
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Stops the writer after its current batch (later writes fail with
    /// [`Error::Closed`]) and closes the pool, checkpointing SQLite's WAL.
    pub async fn close(&self) {
        self.stop.notify_one();
        self.pool.close().await;
    }
}

fn backend_of(url: &str) -> Result<Backend> {
    if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else {
        Err(Error::UnsupportedUrl(url.to_string()))
    }
}

/// The SQLite URL for the database file inside `data_dir`.
pub fn sqlite_url(data_dir: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join("strata.db").display())
}
