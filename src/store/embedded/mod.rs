//! The embedded durable store: the [`Table`] state machine in memory, every
//! change appended to a write-ahead log of its own and `fdatasync`ed before
//! the call returns.
//!
//! # Files
//! The data directory holds log segments and a snapshot ([`files`]). Each
//! group commit is one checksummed frame ([`frame`]) of entries
//! ([`entry`]): the records that changed, in the versioned formats of
//! [`stored`]. Opening loads the newest snapshot and replays the segments
//! after it; a torn tail (a crash in the middle of a write, never
//! acknowledged) is cut off. [`compact`] folds closed segments into a new
//! snapshot on its own thread. A data directory of the redb-based store
//! before it is imported on first open ([`migrate`]).
//!
//! # Group commit
//! An operation applies its change to the table under the lock and, still
//! under the lock, hands the touched records to the writer thread, so the
//! order on disk is the order of the changes. The writer takes everything that
//! has queued up, appends it as one frame, fdatasyncs once and then answers
//! every waiting call. Concurrent calls therefore share one fsync.
//!
//! An operation that changes nothing still waits for the commits submitted
//! before it (see [`super::local`]): no answer reveals what is not on disk.
//!
//! # Failure, and recovery without a restart
//! If a write fails (a full disk: `ENOSPC`, or `EFBIG` past a file-size
//! limit; any I/O error), the table already holds changes that are not on
//! disk. The store then refuses every call with `Unavailable` (and reports
//! unhealthy) rather than serve state it cannot keep, and every commit
//! already on its way fails too (its changes were made on top of the failed
//! ones). Nothing answered before is lost: it was durable when answered.
//!
//! The store recovers by itself (see [`writer`]): every
//! [`writer::RETRY_FIRST`] to [`writer::RETRY_MAX`] the writer thread checks
//! that the disk takes as many bytes as the failed write needed, where it
//! needed them, and loads the table from the files. The next call (or
//! readiness probe) swaps that table in under the table lock
//! ([`super::local::Persist::check`]), and the store serves again: from the
//! state the disk has, which is everything that was answered. While
//! recovering, the old and the new table are both in memory.

mod compact;
mod entry;
mod files;
mod frame;
mod migrate;
mod stored;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::metrics::histogram::Histogram;

use self::files::{Files, LoadError};
use self::writer::{Msg, Segment};
use super::local::{CommitLog, Durable, Persist, TableStore};
use super::table::{Changes, Table};
use super::StoreError;
use crate::core::queue::QueueRegistry;
use crate::telemetry::metrics::seconds_buckets;

/// A log segment this large is closed and a new one started.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// Why the embedded store could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use data directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("corrupt data in {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot import the redb database {path}: {reason}")]
    Import { path: PathBuf, reason: String },
}

impl From<LoadError> for OpenError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Io { path, source } => OpenError::Io { path, source },
            LoadError::Corrupt { path, why } => OpenError::Corrupt { path, reason: why },
        }
    }
}

/// The [`Table`] in memory, every change made durable in the log by [`Wal`].
pub type EmbeddedStore = TableStore<Wal>;

/// Group commit into a write-ahead log on a writer thread.
pub struct Wal {
    /// To the writer thread; sent to under the table lock. `None` only in `drop`.
    writer: Option<mpsc::Sender<Msg>>,
    /// Joined on drop, so every queued commit is written before the store is gone.
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Commits on their way; holds the outage while a failed commit is not
    /// recovered from (the table is then ahead of the disk).
    log: Arc<CommitLog>,
    /// Frames written (each one fdatasync): what group commit saves is
    /// visible as commits per task.
    commits: Arc<AtomicU64>,
    /// How long each commit took (`taskbroker_store_commit_seconds`).
    commit_seconds: Histogram,
    /// The table as the disk has it, loaded by the writer thread after a
    /// failed commit once the disk takes writes again; swapped in by the
    /// next call.
    recovered: Arc<Mutex<Option<Table>>>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` and loads every task.
    pub fn open(dir: &Path, queues: impl Into<QueueRegistry>) -> Result<Self, OpenError> {
        Self::open_with(dir, queues, SEGMENT_BYTES)
    }

    /// [`EmbeddedStore::open`] with log segments of `segment_bytes`.
    pub fn open_with(
        dir: &Path,
        queues: impl Into<QueueRegistry>,
        segment_bytes: u64,
    ) -> Result<Self, OpenError> {
        let queues = queues.into();
        let dir_err = |source| OpenError::Dir { path: dir.to_owned(), source };
        let files = Arc::new(Files::open(dir)?);
        migrate::import_redb(&files)?;
        let started = std::time::Instant::now();
        let loaded = files.load()?;
        let mut table = Self::table_for(&queues);
        let folded = loaded.fold()?;
        folded.load_into(&mut table).map_err(|reason| OpenError::Corrupt { path: dir.to_owned(), reason })?;
        drop(folded);
        files.remove_stale(loaded.snapshot.0).map_err(dir_err)?;
        let (closed, current) = match loaded.segments.split_last() {
            Some((&(n, len), closed)) if len < segment_bytes => (closed.to_vec(), Some((n, len))),
            _ => (loaded.segments.clone(), None),
        };
        let segment = match current {
            Some((number, len)) => {
                let file = files.open_segment(number).map_err(dir_err)?;
                let size = file.metadata().map_err(dir_err)?.len();
                Segment::new(number, file, len, size)
            }
            None => {
                let number = closed.last().map_or(loaded.snapshot.0, |(n, _)| *n) + 1;
                Segment::new(number, files.create_segment(number).map_err(dir_err)?, 0, 0)
            }
        };
        tracing::info!(
            path = %dir.display(),
            tasks = table.len(),
            segments = loaded.segments.len(),
            took = ?started.elapsed(),
            "embedded store opened"
        );
        let snapshot = loaded.snapshot;
        drop(loaded);
        let (writer, rx) = mpsc::channel();
        let (closed_tx, closed_rx) = mpsc::channel();
        let log = CommitLog::new("embedded store");
        let commits = Arc::new(AtomicU64::new(0));
        let recovered = Arc::new(Mutex::new(None));
        let commit_seconds = seconds_buckets();
        let compactor = compact::Compactor {
            files: files.clone(),
            closed: closed_rx,
            snapshot,
            pending: closed,
            min_bytes: segment_bytes,
        }
        .spawn()
        .map_err(dir_err)?;
        let writer_thread = writer::Writer {
            rx,
            log: log.clone(),
            commits: commits.clone(),
            files,
            segment_bytes,
            closed: closed_tx,
            queues: queues.clone(),
            recovered: recovered.clone(),
            commit_seconds: commit_seconds.clone(),
        }
        .spawn(segment)
        .map_err(dir_err)?;
        let wal = Wal {
            writer: Some(writer),
            threads: vec![writer_thread, compactor],
            log,
            commits,
            recovered,
            commit_seconds,
        };
        Ok(TableStore::with(queues, table, wal))
    }
}

impl Persist for Wal {
    const TRACKS_CHANGES: bool = true;

    fn check(&self, table: &mut Table) -> Result<(), StoreError> {
        if self.log.healthy() {
            return Ok(());
        }
        let Some(fresh) = lock(&self.recovered).take() else { return self.log.check() };
        let stale = std::mem::replace(table, fresh);
        table.carry_over(&stale);
        // After the swap in the writer's queue: every commit before it was
        // made on the stale table and fails; every one after it is written.
        let writer = self.writer.as_ref().ok_or_else(|| unavailable("the store is closing"))?;
        writer.send(Msg::Resume).map_err(|_| unavailable("the writer thread stopped"))?;
        self.log.resume();
        tracing::info!(tasks = table.len(), "embedded store recovered: serving again from what is on disk");
        Ok(())
    }

    fn submit(&self, changes: Changes) -> Result<Durable, StoreError> {
        self.send(changes, true)
    }

    /// A frame of only such changes is written without an fsync; the next
    /// synced frame (or the next segment) makes it durable.
    fn submit_unsynced(&self, changes: Changes) -> Result<(), StoreError> {
        self.send(changes, false).map(drop)
    }

    fn barrier(&self) -> Result<Option<Durable>, StoreError> {
        self.log.barrier()
    }

    fn commits(&self) -> Option<u64> {
        Some(self.commits.load(Ordering::Relaxed))
    }

    fn commit_seconds(&self) -> Option<Histogram> {
        Some(self.commit_seconds.clone())
    }
}

impl Wal {
    fn send(&self, changes: Changes, sync: bool) -> Result<Durable, StoreError> {
        let writer = self.writer.as_ref().ok_or_else(|| unavailable("the store is closing"))?;
        let (outcome, durable) = self.log.submit();
        if writer.send(Msg::Commit(writer::Commit { changes, outcome, sync })).is_err() {
            self.log.fail("the writer thread stopped".into());
            return Err(unavailable("the writer thread stopped"));
        }
        Ok(durable)
    }
}

impl Drop for Wal {
    /// Lets the writer finish what is queued (the compactor then ends too).
    fn drop(&mut self) {
        drop(self.writer.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn unavailable(why: &str) -> StoreError {
    StoreError::Unavailable(format!("embedded store: {why}"))
}

/// Locks `m`, whatever a panic left in it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
