//! SQLite's WAL checkpoints, mostly off the writer's thread.
//!
//! By default SQLite checkpoints in the commit that takes its write-ahead log
//! past 1,000 pages, on the committing connection: the writer would stop to
//! copy pages into the database file and sync both files, and every write
//! queued behind it would wait for those two syncs. Instead the writer's
//! connection reports the log's size after each commit ([`watch`], a WAL hook,
//! which also turns SQLite's own automatic checkpoint off for it), and past
//! [`PAGES`] the writer asks the [`Checkpointer`], a thread with a connection of
//! its own, for a passive checkpoint, which copies and syncs beside the
//! writer's later commits.
//!
//! The log starts again from its beginning at the first commit after a
//! checkpoint has copied all of it. Under a steady stream of commits that
//! moment may never come (each commit adds frames while the checkpoint copies
//! the ones before), so past [`MAX_PAGES`] the writer checkpoints itself, as
//! SQLite would have: by then the checkpointer has copied all but the last few
//! frames, and the log starts again at the next commit. On a laptop's load the
//! log stays under [`MAX_PAGES`] and the writer never waits for a checkpoint.
//!
//! Durability does not change: a checkpoint only copies what is committed (and
//! synced, for the writes that asked) from the log into the database file, and
//! SQLite syncs the log before copying and the file before the log is reused.

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};

use crate::commit::WalCounts;

/// The log size, in pages, past which the writer asks for a checkpoint
/// (SQLite's own default for its automatic one).
pub(crate) const PAGES: i32 = 1000;

/// The log size, in pages (32 MiB), past which the writer checkpoints itself.
pub(crate) const MAX_PAGES: i32 = 8 * PAGES;

thread_local! {
    /// The log's size after the last commit of a watched connection on this thread.
    static LOG_PAGES: Cell<i32> = const { Cell::new(0) };
}

fn note_log_pages(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    LOG_PAGES.set(pages);
    Ok(())
}

/// Has `db` report its log's size after each commit (to [`Checkpointer::committed`]), and
/// stop checkpointing by itself.
pub(crate) fn watch(db: &rusqlite::Connection) {
    db.wal_hook(Some(note_log_pages));
}

/// A thread that checkpoints the database when asked; it ends when dropped.
pub(crate) struct Checkpointer {
    asks: mpsc::SyncSender<()>,
}

impl Checkpointer {
    /// Starts the thread for the database file at `path`. Its connection is
    /// opened at the first request (and again after a failure).
    pub(crate) fn start(path: PathBuf, counts: Arc<WalCounts>) -> std::io::Result<Checkpointer> {
        let (asks, requests) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("strata-checkpoint".into())
            .spawn(move || run(&path, &requests, &counts))?;
        Ok(Checkpointer { asks })
    }

    /// After a commit on the watched connection `db`, on the same thread:
    /// asks for a checkpoint past [`PAGES`], or checkpoints on `db` past
    /// [`MAX_PAGES`].
    pub(crate) fn committed(&self, db: &rusqlite::Connection) {
        let pages = LOG_PAGES.get();
        if pages >= MAX_PAGES {
            match passive(db) {
                Ok((log, copied)) => tracing::debug!(log, copied, "the writer checkpointed a long WAL"),
                Err(e) => tracing::warn!(error = %e, "checkpointing the WAL failed"),
            }
        } else if pages >= PAGES {
            // One request waiting covers everything committed before it runs.
            let _ = self.asks.try_send(());
        }
    }
}

/// A passive checkpoint: copies what no reader still needs, never waits for
/// a lock. Returns the log's size and how much of it is copied, in pages.
fn passive(db: &rusqlite::Connection) -> rusqlite::Result<(i64, i64)> {
    db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get(1)?, row.get(2)?))
    })
}

fn run(path: &std::path::Path, requests: &mpsc::Receiver<()>, counts: &WalCounts) {
    let mut db: Option<rusqlite::Connection> = None;
    while requests.recv().is_ok() {
        let done = match db.take() {
            Some(c) => Ok(c),
            None => open(path),
        }
        .and_then(|c| passive(&c).map(|pages| (c, pages)));
        match done {
            Ok((c, (log, copied))) => {
                tracing::trace!(log, copied, "checkpointed the WAL");
                counts.checkpoints.fetch_add(1, Ordering::Relaxed);
                db = Some(c);
            }
            Err(e) => {
                tracing::warn!(error = %e, "checkpointing the WAL failed; the next request tries again")
            }
        }
    }
}

fn open(path: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
    // NORMAL syncs the log before a checkpoint and the file after it.
    crate::conn::open_lite(path, "PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;")
}
