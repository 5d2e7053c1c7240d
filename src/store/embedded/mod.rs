//! The embedded durable store: the [`Table`] state machine in memory, every
//! change persisted to a redb database before the call returns.
//!
//! # Group commit
//! An operation applies its change to the table under the lock and, still
//! under the lock, hands the touched records to the writer thread, so the
//! order on disk is the order of the changes. The writer takes everything that
//! has queued up, writes it in one redb transaction, fsyncs once and then
//! answers every waiting call. Concurrent calls therefore share one fsync.
//!
//! An operation that changes nothing still waits for the commits submitted
//! before it (see [`super::local`]): no answer reveals what is not on disk.
//!
//! # Failure, and recovery without a restart
//! If a commit fails (a full disk: `ENOSPC`, or `EFBIG` past a file-size
//! limit; any I/O error), the table already holds changes that are not on
//! disk. The store then refuses every call with `Unavailable` (and reports
//! unhealthy) rather than serve state it cannot keep, and every commit
//! already on its way fails too (its changes were made on top of the failed
//! ones). Nothing answered before is lost: it was durable when answered.
//!
//! The store recovers by itself (see [`writer`]): redb cannot be used after
//! an I/O error, so the writer thread drops the database and, every
//! [`writer::RETRY_FIRST`] to [`writer::RETRY_MAX`], reopens it (redb
//! repairs it to its last commit), checks that the disk takes as many bytes
//! as the failed commit needed (a scratch record, written then removed), and
//! loads the table from it. The next call (or readiness probe) swaps that
//! table in under the table lock ([`super::local::Persist::check`]), and the
//! store serves again: from the state the disk has, which is everything that
//! was answered. While recovering, the old and the new table are both in
//! memory.

mod stored;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::metrics::histogram::Histogram;
use redb::{Database, ReadableTable, TableDefinition};

use self::writer::Msg;
use super::local::{CommitLog, Durable, Persist, TableStore};
use super::table::{Changes, Table};
use super::StoreError;
use crate::core::queue::QueueRegistry;
use crate::core::task::TaskId;
use crate::telemetry::metrics::seconds_buckets;

/// Task records by id; the value is a [`stored`] record (format byte first).
const TASKS: TableDefinition<u128, &[u8]> = TableDefinition::new("tasks");
/// Broker-wide counters; `next_lease` keeps lease ids unique across restarts.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_LEASE: &str = "next_lease";
/// Each queue's totals while it holds tasks (a [`stored`] totals record).
pub(super) const TOTALS: TableDefinition<&str, &[u8]> = TableDefinition::new("queue_totals");
/// Paused queues (the value is unused).
pub(super) const PAUSED: TableDefinition<&str, u8> = TableDefinition::new("paused");
/// Schedules by name (a [`crate::store::schedule_record`]).
pub(super) const SCHEDULES: TableDefinition<&str, &[u8]> = TableDefinition::new("schedules");

/// Why the embedded store could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cannot open database {path}: {source}")]
    Db { path: PathBuf, source: Box<redb::Error> },
    #[error("corrupt task record in {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// The [`Table`] in memory, every change made durable in redb by [`Redb`].
pub type EmbeddedStore = TableStore<Redb>;

/// Group commit into a redb database on a writer thread.
pub struct Redb {
    /// To the writer thread; sent to under the table lock. `None` only in `drop`.
    writer: Option<mpsc::Sender<Msg>>,
    /// Joined on drop, so the database is closed when the store is gone.
    thread: Option<std::thread::JoinHandle<()>>,
    /// Commits on their way; holds the outage while a failed commit is not
    /// recovered from (the table is then ahead of the disk).
    log: Arc<CommitLog>,
    /// Transactions committed (each one fsync): what group commit saves is
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
    /// Opens (or creates) the database in `dir` and loads every task.
    pub fn open(dir: &Path, queues: impl Into<QueueRegistry>) -> Result<Self, OpenError> {
        let queues = queues.into();
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Dir { path: dir.to_owned(), source })?;
        let path = dir.join("tasks.redb");
        let db_err = |e: redb::Error| OpenError::Db { path: path.clone(), source: Box::new(e) };
        let db = Database::create(&path).map_err(|e| db_err(e.into()))?;
        let mut table = Self::table_for(&queues);
        load(&db, &mut table).map_err(|e| match e {
            LoadError::Db(e) => db_err(*e),
            LoadError::Corrupt(reason) => OpenError::Corrupt { path: path.clone(), reason },
        })?;
        tracing::info!(path = %path.display(), tasks = table.len(), "embedded store opened");
        let (writer, rx) = mpsc::channel();
        let log = CommitLog::new("embedded store");
        let commits = Arc::new(AtomicU64::new(0));
        let recovered = Arc::new(Mutex::new(None));
        let commit_seconds = seconds_buckets();
        let thread = writer::Writer {
            rx,
            log: log.clone(),
            commits: commits.clone(),
            path: path.clone(),
            queues: queues.clone(),
            recovered: recovered.clone(),
            commit_seconds: commit_seconds.clone(),
        }
        .spawn(db)
        .map_err(|source| OpenError::Dir { path: dir.to_owned(), source })?;
        let redb =
            Redb { writer: Some(writer), thread: Some(thread), log, commits, recovered, commit_seconds };
        Ok(TableStore::with(queues, table, redb))
    }
}

impl Persist for Redb {
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
        let writer = self.writer.as_ref().ok_or_else(|| unavailable("the store is closing"))?;
        let (outcome, durable) = self.log.submit();
        if writer.send(Msg::Commit(writer::Commit { changes, outcome })).is_err() {
            self.log.fail("the writer thread stopped".into());
            return Err(unavailable("the writer thread stopped"));
        }
        Ok(durable)
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

impl Drop for Redb {
    /// Lets the writer finish what is queued, then closes the database.
    fn drop(&mut self) {
        drop(self.writer.take());
        if let Some(thread) = self.thread.take() {
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

#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error(transparent)]
    Db(Box<redb::Error>),
    #[error("corrupt task record: {0}")]
    Corrupt(String),
}

fn load(db: &Database, table: &mut Table) -> Result<(), LoadError> {
    let db_err = |e: redb::Error| LoadError::Db(Box::new(e));
    let write = db.begin_write().map_err(|e| db_err(e.into()))?;
    write.open_table(TASKS).map_err(|e| db_err(e.into()))?;
    write.open_table(META).map_err(|e| db_err(e.into()))?;
    write.open_table(TOTALS).map_err(|e| db_err(e.into()))?;
    write.open_table(PAUSED).map_err(|e| db_err(e.into()))?;
    write.open_table(SCHEDULES).map_err(|e| db_err(e.into()))?;
    write.commit().map_err(|e| db_err(e.into()))?;
    let read = db.begin_read().map_err(|e| db_err(e.into()))?;
    let meta = read.open_table(META).map_err(|e| db_err(e.into()))?;
    if let Some(next) = meta.get(NEXT_LEASE).map_err(|e| db_err(e.into()))? {
        table.restore_lease_counter(next.value());
    }
    let tasks = read.open_table(TASKS).map_err(|e| db_err(e.into()))?;
    for entry in tasks.iter().map_err(|e| db_err(e.into()))? {
        let (key, value) = entry.map_err(|e| db_err(e.into()))?;
        let stored = stored::decode(value.value())
            .map_err(|reason| LoadError::Corrupt(format!("task {}: {reason}", TaskId(key.value()))))?;
        table.restore(stored.task, stored.ready_seq);
    }
    let totals = read.open_table(TOTALS).map_err(|e| db_err(e.into()))?;
    for entry in totals.iter().map_err(|e| db_err(e.into()))? {
        let (queue, value) = entry.map_err(|e| db_err(e.into()))?;
        let totals = stored::decode_totals(value.value())
            .map_err(|reason| LoadError::Corrupt(format!("totals of queue {}: {reason}", queue.value())))?;
        table.restore_totals(queue.value(), totals);
    }
    let paused = read.open_table(PAUSED).map_err(|e| db_err(e.into()))?;
    for entry in paused.iter().map_err(|e| db_err(e.into()))? {
        let (queue, _) = entry.map_err(|e| db_err(e.into()))?;
        table.set_paused(queue.value(), true);
    }
    let schedules = read.open_table(SCHEDULES).map_err(|e| db_err(e.into()))?;
    for entry in schedules.iter().map_err(|e| db_err(e.into()))? {
        let (name, value) = entry.map_err(|e| db_err(e.into()))?;
        let stored = crate::store::schedule_record::decode(name.value(), value.value())
            .map_err(|reason| LoadError::Corrupt(format!("schedule {}: {reason}", name.value())))?;
        table.restore_schedule(stored);
    }
    Ok(())
}
