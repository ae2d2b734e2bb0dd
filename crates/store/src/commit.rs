//! The group-commit writer.
//!
//! One task owns one connection and runs every write. It takes the first waiting
//! job, then everything else already queued (up to `max_batch`), and runs them in
//! one transaction, each between `SAVEPOINT` and `RELEASE`; jobs that arrive while
//! the batch runs join it too, until it is full or nothing more is waiting. A job
//! that fails is rolled back to its savepoint and gets its own error; the others
//! commit. Results are released only after `COMMIT` returns, so nobody sees an
//! acknowledgement for a write that could still be lost.
//!
//! A write that wakes someone who will write next (a submission waking a
//! waiting lease) can announce that follower ([`Followers::expect`]): before
//! committing, the writer waits briefly for announced followers to arrive, so
//! the two commit together (one fsync) instead of one after the other.
//!
//! The writer opens its own connection rather than taking one of the read
//! pool's: readers keep every pooled connection, and the writer's is closed
//! by the writer itself when it stops, never handed back to a pool.
//!
//! **Durability.** A batch is synced to disk before any of its writes is
//! answered if one of them asks for [`Durability::Synced`] (the default). A
//! batch of [`Durability::Committed`] writes only is answered once it has
//! committed: on SQLite the writer's commits do not sync the WAL themselves
//! (`synchronous = NORMAL`) and the writer syncs it after those that need it,
//! so such a batch skips the `fdatasync`; on PostgreSQL it commits with
//! `synchronous_commit = off`. Either way the batch is in the database, safe
//! from a crash of the process, and the next synced commit (every sync covers
//! all that was committed before it) or, at the latest, a sync
//! `sync_window` after it puts it on disk.
//!
//! **Checkpoints.** A thread beside the writer checkpoints SQLite's WAL when a
//! commit leaves it past 1,000 pages, so writes do not wait for a checkpoint's
//! two syncs; the writer checkpoints itself only if steady commits keep the log
//! from starting again until it passes 8,000 (see [`crate::checkpoint`]).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, Connection, Executor};

use crate::Conn;
use crate::checkpoint::{self, Checkpointer};
use std::sync::Arc;

use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::{Backend, Durability, Error};

/// The future a write closure returns; it borrows the writer's connection.
pub type WriteFuture<'c, T, E> = BoxFuture<'c, Result<T, E>>;

/// A row a write leaves for the end of its batch, for the registered [`Tail`].
pub type TailItem = Box<dyn std::any::Any + Send>;

/// Appends what the writes of a batch left behind (see [`crate::Store::set_tail`]),
/// once, just before the batch commits. Items come in the order their writes ran,
/// and only from writes that succeeded.
pub trait Tail: Send + Sync + 'static {
    /// Writes `items` on the writer's connection; an error rolls the whole batch back.
    fn flush<'c>(&'c self, conn: &'c mut Conn, items: Vec<TailItem>) -> BoxFuture<'c, Result<(), Error>>;
}

pub(crate) type TailSlot = Arc<OnceLock<Arc<dyn Tail>>>;

type Finish = Box<dyn FnOnce(Result<(), Error>) + Send>;
type Ran = (bool, Finish, Vec<TailItem>);
type Run = Box<dyn for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Ran> + Send>;

/// One queued write.
pub(crate) struct Job {
    run: Run,
    durability: Durability,
}

/// Writes announced but not yet run, which the writer waits for before a commit
/// (see the module doc). Cheap to clone.
#[derive(Clone, Default)]
pub struct Followers(Arc<FollowersInner>);

#[derive(Default)]
struct FollowersInner {
    expected: AtomicUsize,
    arrived: Notify,
}

/// An announced write: drop it when that write runs (or when it will not come).
#[must_use = "the writer waits for the announced write until this is dropped"]
pub struct Follower(Arc<FollowersInner>);

impl Followers {
    /// Announces a write that is about to be queued.
    pub fn expect(&self) -> Follower {
        self.0.expected.fetch_add(1, Ordering::SeqCst);
        Follower(self.0.clone())
    }

    /// Writes announced and not yet run (or given up).
    pub fn expected(&self) -> usize {
        self.0.expected.load(Ordering::SeqCst)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if self.0.expected.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.arrived.notify_one();
        }
    }
}

/// Keys the PostgreSQL advisory lock that serialises writers across replicas.
const WRITER_LOCK: i64 = 0x5354_5241_5441;

pub(crate) fn start(
    opts: &crate::Options,
    connect: AnyConnectOptions,
    backend: Backend,
    stop: Arc<Notify>,
    tail: TailSlot,
    followers: Followers,
    counts: Arc<WalCounts>,
) -> Result<(mpsc::Sender<Job>, watch::Receiver<u64>), Error> {
    let (tx, rx) = mpsc::channel(4096);
    let (committed_tx, committed_rx) = watch::channel(0);
    let (wal, checkpointer) = match backend {
        Backend::Sqlite => {
            let file = sqlx::sqlite::SqliteConnectOptions::from_str(&opts.url)?;
            let mut path = file.get_filename().as_os_str().to_os_string();
            path.push("-wal");
            let checkpointer = Checkpointer::start(file.get_filename().to_path_buf(), counts.clone())
                .map_err(sqlx::Error::Io)?;
            (Some(PathBuf::from(path)), Some(checkpointer))
        }
        Backend::Postgres => (None, None),
    };
    let w = Writer {
        url: opts.url.clone(),
        connect,
        backend,
        max_batch: opts.max_batch.max(1),
        linger: opts.linger,
        sync_window: opts.sync_window,
        wal,
        counts,
        checkpointer,
        tail,
        followers,
    };
    // The writer runs on a thread of its own, so that a busy server (HTTP, JSON,
    // hashing on every worker) does not delay it between statements: every write
    // waits for it, and each of its round trips would queue behind that work.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(sqlx::Error::Io)?;
    let run = w.run(rx, committed_tx, stop);
    std::thread::Builder::new()
        .name("strata-writer".into())
        .spawn(move || rt.block_on(run))
        .map_err(sqlx::Error::Io)?;
    Ok((tx, committed_rx))
}

/// A write in the writer's queue; resolves once its batch has committed.
pub struct Queued<T, E>(oneshot::Receiver<Result<T, E>>);

impl<T, E: From<Error>> std::future::Future for Queued<T, E> {
    type Output = Result<T, E>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(E::from(Error::Closed))))
    }
}

/// Puts a write in the writer's queue, returning once it is there.
pub(crate) async fn enqueue<T, E, F>(
    jobs: &mpsc::Sender<Job>,
    durability: Durability,
    f: F,
) -> Result<Queued<T, E>, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
    F: for<'c> FnOnce(&'c mut Conn) -> WriteFuture<'c, (T, Vec<TailItem>), E> + Send + 'static,
{
    let (tx, rx) = oneshot::channel::<Result<T, E>>();
    let run: Run = Box::new(move |conn: &mut Conn| {
        Box::pin(async move {
            let (out, tail) = match f(conn).await {
                Ok((out, tail)) => (Ok(out), tail),
                Err(e) => (Err(e), Vec::new()),
            };
            let ok = out.is_ok();
            let finish: Finish = Box::new(move |commit: Result<(), Error>| {
                let reply = match (commit, out) {
                    (Ok(()), out) => out,
                    (Err(_), Err(e)) => Err(e),
                    (Err(e), Ok(_)) => Err(E::from(e)),
                };
                let _ = tx.send(reply);
            });
            (ok, finish, tail)
        })
    });
    jobs.send(Job { run, durability })
        .await
        .map_err(|_| E::from(Error::Closed))?;
    Ok(Queued(rx))
}

/// What has been done to SQLite's WAL (all 0 on PostgreSQL).
#[derive(Debug, Default)]
pub(crate) struct WalCounts {
    /// Syncs completed, by the writer or behind it.
    pub(crate) syncs: AtomicU64,
    /// Checkpoints completed by the [`Checkpointer`].
    pub(crate) checkpoints: AtomicU64,
}

struct Writer {
    /// The store's URL (the SQLite writer opens the file it names).
    url: String,
    connect: AnyConnectOptions,
    backend: Backend,
    max_batch: usize,
    /// The longest a batch waits for announced followers before it commits anyway.
    linger: Duration,
    /// The longest a commit of [`Durability::Committed`] writes waits for a sync.
    sync_window: Duration,
    /// SQLite's write-ahead log, which the writer syncs itself; `None` on PostgreSQL.
    wal: Option<PathBuf>,
    /// What was done to the WAL, for [`crate::Store::wal_syncs`] and
    /// [`crate::Store::wal_checkpoints`].
    counts: Arc<WalCounts>,
    /// Checkpoints SQLite's WAL beside the writer; `None` on PostgreSQL.
    checkpointer: Option<Checkpointer>,
    tail: TailSlot,
    followers: Followers,
}

impl Writer {
    /// Opens the writer's own connection.
    async fn open(&self) -> Result<Conn, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => {
                let file = sqlx::sqlite::SqliteConnectOptions::from_str(&self.url)?;
                let conn = Conn::open_sqlite(file.get_filename(), crate::SQLITE_WRITER_PRAGMAS)?;
                if let Conn::Lite(db) = &conn {
                    checkpoint::watch(db);
                }
                Ok(conn)
            }
            Backend::Postgres => Ok(Conn::Any(AnyConnection::connect_with(&self.connect).await?)),
        }
    }

    async fn run(self, mut rx: mpsc::Receiver<Job>, committed: watch::Sender<u64>, stop: Arc<Notify>) {
        let max_batch = self.max_batch;
        let mut conn: Option<Conn> = None;
        let mut wal = Wal::new(self.wal.clone(), self.counts.clone());
        let mut batch = Vec::with_capacity(max_batch);
        loop {
            // A batch in progress always finishes; the stop signal is seen between batches.
            let due = wal.due(self.sync_window);
            let n = tokio::select! {
                biased;
                n = rx.recv_many(&mut batch, max_batch) => n,
                _ = stop.notified() => 0,
                _ = sleep_until(due) => {
                    wal.sync_behind();
                    continue;
                }
            };
            if n == 0 {
                if wal.unsynced()
                    && let Err(e) = wal.sync()
                {
                    tracing::error!(error = %e, "syncing the WAL before stopping failed");
                }
                if let Some(c) = conn.take() {
                    close(c).await;
                }
                break;
            }
            let c = match conn.take() {
                Some(c) => c,
                None => match self.open().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "writer cannot get a connection");
                        fail_all(batch.drain(..), &e.to_string());
                        continue;
                    }
                },
            };
            let mut c = c;
            let ran = match self.run_batch(&mut c, batch.drain(..).collect(), &mut rx).await {
                Ok((finishes, true)) => match wal.sync() {
                    Ok(()) => Ok(finishes),
                    Err(e) => Err((Error::Database(sqlx::Error::Io(e)), finishes)),
                },
                Ok((finishes, false)) => {
                    // Under a steady stream of such batches the writer is never
                    // idle long enough for the timer above: sync behind them.
                    wal.committed_unsynced();
                    if wal.overdue(self.sync_window) {
                        wal.sync_behind();
                    }
                    Ok(finishes)
                }
                Err(failed) => Err(failed),
            };
            match ran {
                Ok(finishes) => {
                    // Counted before anyone is answered: a writer who has its
                    // answer sees its batch in the count.
                    committed.send_modify(|n| *n += 1);
                    for f in finishes {
                        f(Ok(()));
                    }
                    // After the answers: a checkpoint the writer makes itself
                    // delays only the writes queued behind it.
                    if let (Some(cp), Conn::Lite(db)) = (&self.checkpointer, &c) {
                        cp.committed(db);
                    }
                    conn = Some(c);
                }
                Err((e, finishes)) => {
                    tracing::error!(error = %e, "write batch failed; its writes are rolled back");
                    let msg = e.to_string();
                    for f in finishes {
                        f(Err(Error::Database(sqlx::Error::Protocol(msg.clone()))));
                    }
                    // Close the connection: its state is unknown after a failed batch.
                    close(c).await;
                    wal.closed();
                }
            }
        }
    }
}

/// Sleeps until `t`, or forever without one.
async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// SQLite's write-ahead log as the writer syncs it (see the module doc). On
/// PostgreSQL there is none and every method does nothing.
struct Wal {
    path: Option<PathBuf>,
    /// Syncs completed.
    counts: Arc<WalCounts>,
    /// Opened after a commit on the writer's current connection, which keeps the
    /// file in place (SQLite deletes it only when its last connection closes).
    file: Option<Arc<std::fs::File>>,
    /// When the first commit not yet synced returned.
    unsynced_since: Option<tokio::time::Instant>,
}

impl Wal {
    fn new(path: Option<PathBuf>, counts: Arc<WalCounts>) -> Wal {
        Wal {
            path,
            counts,
            file: None,
            unsynced_since: None,
        }
    }

    fn file(&mut self) -> std::io::Result<Option<Arc<std::fs::File>>> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        if self.file.is_none() {
            self.file = Some(Arc::new(std::fs::File::open(path)?));
        }
        Ok(self.file.clone())
    }

    /// Syncs the log: everything committed so far is on disk when this returns.
    /// Called after a commit on the writer's connection, so the file exists.
    fn sync(&mut self) -> std::io::Result<()> {
        if let Some(f) = self.file()? {
            f.sync_data()?;
            self.counts.syncs.fetch_add(1, Ordering::Relaxed);
        }
        self.unsynced_since = None;
        Ok(())
    }

    /// Starts a sync of what is committed without waiting for it: nobody's
    /// answer depends on it (see [`Durability::Committed`]).
    fn sync_behind(&mut self) {
        self.unsynced_since = None;
        match self.file() {
            Ok(Some(f)) => {
                let counts = self.counts.clone();
                tokio::task::spawn_blocking(move || match f.sync_data() {
                    Ok(()) => {
                        counts.syncs.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::error!(error = %e, "syncing the WAL failed"),
                });
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "opening the WAL to sync it failed"),
        }
    }

    fn committed_unsynced(&mut self) {
        if self.path.is_some() {
            self.unsynced_since.get_or_insert_with(tokio::time::Instant::now);
        }
    }

    /// When what is committed but not synced must be synced.
    fn due(&self, window: Duration) -> Option<tokio::time::Instant> {
        self.unsynced_since.map(|t| t + window)
    }

    /// Whether something committed is not synced yet.
    fn unsynced(&self) -> bool {
        self.unsynced_since.is_some()
    }

    /// Whether something committed has waited for its sync for `window` already.
    fn overdue(&self, window: Duration) -> bool {
        self.due(window).is_some_and(|t| t <= tokio::time::Instant::now())
    }

    /// The writer's connection closed: the file may go with it.
    fn closed(&mut self) {
        self.file = None;
    }
}

/// Closes the writer's connection, waiting at most a few seconds.
async fn close(c: Conn) {
    match tokio::time::timeout(std::time::Duration::from_secs(5), c.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "closing the writer's connection failed"),
        Err(_) => tracing::warn!("closing the writer's connection timed out"),
    }
}

/// Answers jobs that never ran: dropping a job drops its reply channel, which its
/// caller sees as [`Error::Closed`] (served as `unavailable`).
fn fail_all(jobs: impl Iterator<Item = Job>, why: &str) {
    let n = jobs.count();
    tracing::warn!(reason = why, jobs = n, "writes refused before they ran");
}

/// Runs transaction control. On SQLite each statement runs on its own, so that
/// each is a cached prepared statement; on PostgreSQL one round trip carries them all.
async fn exec(conn: &mut Conn, sql: &'static str) -> Result<(), Error> {
    if conn.backend() == Backend::Sqlite {
        for one in sql.split("; ") {
            sqlx::raw_sql(one).execute(&mut *conn).await?;
        }
    } else {
        sqlx::raw_sql(sql).execute(&mut *conn).await?;
    }
    Ok(())
}

impl Writer {
    /// While announced followers have not run, waits (until `until`) for the
    /// next queued write, which may be one of them.
    async fn await_follower(
        &self,
        rx: &mut mpsc::Receiver<Job>,
        until: &tokio::time::Instant,
    ) -> Option<Job> {
        loop {
            let arrived = self.followers.0.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self.followers.expected() == 0 {
                return None;
            }
            tokio::select! {
                biased;
                job = rx.recv() => return job,
                _ = arrived => {}
                _ = tokio::time::sleep_until(*until) => return None,
            }
        }
    }

    async fn run_batch(
        &self,
        conn: &mut Conn,
        jobs: VecDeque<Job>,
        rx: &mut mpsc::Receiver<Job>,
    ) -> Result<(Vec<Finish>, bool), (Error, Vec<Finish>)> {
        let backend = self.backend;
        let mut finishes = Vec::new();
        // Whether the batch must reach the disk before its writes are answered.
        let mut sync = false;
        // On PostgreSQL every statement costs a round trip to the server, so
        // transaction control is folded into as few calls as possible: one before
        // the first write, one between writes, one at the end (on SQLite they are
        // direct calls; see `exec`). What every write appends to the logs is
        // written once for the batch.
        let begin = match backend {
            // IMMEDIATE takes the write lock now rather than at the first write.
            Backend::Sqlite => "BEGIN IMMEDIATE; SAVEPOINT w",
            Backend::Postgres => "BEGIN",
        };
        if let Err(e) = exec(conn, begin).await {
            return Err((e, finishes));
        }
        if backend == Backend::Postgres {
            // Replicas serialise their batches; the audit chain depends on it.
            let lock = sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(WRITER_LOCK);
            let locked = match (&mut *conn).execute(lock).await {
                Ok(_) => exec(conn, "SAVEPOINT w").await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = locked {
                let _ = exec(conn, "ROLLBACK").await;
                return Err((e, finishes));
            }
        }
        let mut pending = jobs;
        let mut taken = pending.len();
        let mut tail = Vec::new();
        let mut linger_until = None;
        while let Some(Job { run, durability }) = pending.pop_front() {
            sync |= durability == Durability::Synced;
            // A panicking write is a bug, but it must not take the writer (and with it
            // every later write) down: roll it back; its caller sees `Closed`.
            let ok = match AssertUnwindSafe(run(conn)).catch_unwind().await {
                Ok((ok, finish, items)) => {
                    finishes.push(finish);
                    if ok {
                        tail.extend(items);
                    }
                    ok
                }
                Err(_) => {
                    tracing::error!("a write panicked; its changes are rolled back");
                    false
                }
            };
            let end = match (ok, pending.is_empty()) {
                (true, false) => "RELEASE SAVEPOINT w; SAVEPOINT w",
                (false, false) => "ROLLBACK TO SAVEPOINT w; RELEASE SAVEPOINT w; SAVEPOINT w",
                (true, true) => "RELEASE SAVEPOINT w",
                (false, true) => "ROLLBACK TO SAVEPOINT w; RELEASE SAVEPOINT w",
            };
            let mut ended = exec(conn, end).await;
            // Writes queued meanwhile (often ones the batch's own writes woke, such
            // as a lease for a task just submitted) join the batch rather than wait
            // a whole commit for the next one.
            if ended.is_ok() && pending.is_empty() {
                while taken < self.max_batch
                    && let Ok(job) = rx.try_recv()
                {
                    pending.push_back(job);
                    taken += 1;
                }
                if pending.is_empty()
                    && taken < self.max_batch
                    && let Some(job) = self
                        .await_follower(
                            rx,
                            linger_until.get_or_insert_with(|| tokio::time::Instant::now() + self.linger),
                        )
                        .await
                {
                    pending.push_back(job);
                    taken += 1;
                }
                if !pending.is_empty() {
                    ended = exec(conn, "SAVEPOINT w").await;
                }
            }
            if let Err(e) = ended {
                let _ = exec(conn, "ROLLBACK").await;
                return Err((e, finishes));
            }
        }
        let flushed = if tail.is_empty() {
            Ok(())
        } else {
            match self.tail.get() {
                Some(t) => t.flush(conn, tail).await,
                None => Err(Error::Corrupt(
                    "a write left log rows but no tail is registered to write them".into(),
                )),
            }
        };
        // On SQLite the caller syncs the WAL after the commit when `sync` says so.
        let commit = match (backend, sync) {
            (Backend::Postgres, false) => "SET LOCAL synchronous_commit = off; COMMIT",
            _ => "COMMIT",
        };
        if let Err(e) = match flushed {
            Ok(()) => exec(conn, commit).await,
            Err(e) => Err(e),
        } {
            let _ = exec(conn, "ROLLBACK").await;
            return Err((e, finishes));
        }
        Ok((finishes, sync && backend == Backend::Sqlite))
    }
}
