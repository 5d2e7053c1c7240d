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
//! # Failure
//! If a commit fails, the table already holds changes that are not on disk;
//! the store then refuses every further call with `Unavailable` (and reports
//! unhealthy) rather than serve state it cannot keep. A restart reloads what
//! is durable.

mod stored;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use prometheus_client::metrics::histogram::Histogram;
use redb::{Database, ReadableTable, TableDefinition};

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
const TOTALS: TableDefinition<&str, &[u8]> = TableDefinition::new("queue_totals");
/// Paused queues (the value is unused).
const PAUSED: TableDefinition<&str, u8> = TableDefinition::new("paused");
/// Most changes folded into one transaction.
const MAX_GROUP: usize = 4096;

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

/// One operation's changes on their way to disk.
struct Commit {
    /// Its number in the [`CommitLog`].
    seq: u64,
    changes: Changes,
}

/// The [`Table`] in memory, every change made durable in redb by [`Redb`].
pub type EmbeddedStore = TableStore<Redb>;

/// Group commit into a redb database on a writer thread.
pub struct Redb {
    /// To the writer thread; sent to under the table lock. `None` only in `drop`.
    writer: Option<mpsc::Sender<Commit>>,
    /// Joined on drop, so the database is closed when the store is gone.
    thread: Option<std::thread::JoinHandle<()>>,
    /// Commits submitted and finished; holds the failure once one failed
    /// (the table is then ahead of the disk).
    log: Arc<CommitLog>,
    /// Transactions committed (each one fsync): what group commit saves is
    /// visible as commits per task.
    commits: Arc<AtomicU64>,
    /// How long each commit took (`taskbroker_store_commit_seconds`).
    commit_seconds: Histogram,
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
        let finished = log.clone();
        let commits = Arc::new(AtomicU64::new(0));
        let counter = commits.clone();
        let commit_seconds = seconds_buckets();
        let timer = commit_seconds.clone();
        let thread = std::thread::Builder::new()
            .name("tb-writer".into())
            .spawn(move || write_loop(db, rx, finished, counter, timer))
            .map_err(|source| OpenError::Dir { path: dir.to_owned(), source })?;
        let redb = Redb { writer: Some(writer), thread: Some(thread), log, commits, commit_seconds };
        Ok(TableStore::with(queues, table, redb))
    }
}

impl Persist for Redb {
    const TRACKS_CHANGES: bool = true;

    fn check(&self) -> Result<(), StoreError> {
        self.log.check()
    }

    fn submit(&self, changes: Changes) -> Result<Durable, StoreError> {
        let writer = self.writer.as_ref().ok_or_else(|| unavailable("the store is closing"))?;
        let seq = self.log.submit();
        if writer.send(Commit { seq, changes }).is_err() {
            self.log.finish(seq, Err("the writer thread stopped".into()));
            return Err(unavailable("the writer thread stopped"));
        }
        Ok(self.log.wait(seq))
    }

    fn barrier(&self) -> Result<Option<Durable>, StoreError> {
        self.log.barrier()
    }

    fn healthy(&self) -> bool {
        self.log.healthy()
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

enum LoadError {
    Db(Box<redb::Error>),
    Corrupt(String),
}

fn load(db: &Database, table: &mut Table) -> Result<(), LoadError> {
    let db_err = |e: redb::Error| LoadError::Db(Box::new(e));
    let write = db.begin_write().map_err(|e| db_err(e.into()))?;
    write.open_table(TASKS).map_err(|e| db_err(e.into()))?;
    write.open_table(META).map_err(|e| db_err(e.into()))?;
    write.open_table(TOTALS).map_err(|e| db_err(e.into()))?;
    write.open_table(PAUSED).map_err(|e| db_err(e.into()))?;
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
    Ok(())
}

/// Marks the store failed if the writer thread panics, so no caller waits
/// for a commit that will never finish.
struct FailOnPanic(Arc<CommitLog>);

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.finish(u64::MAX, Err("the writer thread panicked".into()));
        }
    }
}

/// The writer thread: one transaction and one fsync for everything queued.
fn write_loop(
    db: Database,
    rx: mpsc::Receiver<Commit>,
    log: Arc<CommitLog>,
    commits: Arc<AtomicU64>,
    commit_seconds: Histogram,
) {
    let _guard = FailOnPanic(log.clone());
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let outcome = write_group(&db, &group).map_err(|e| e.to_string());
        commit_seconds.observe(started.elapsed().as_secs_f64());
        commits.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "embedded store commit failed; refusing further writes");
        }
        // Commits arrive in sequence order: the last one is the highest.
        let upto = group.last().map_or(0, |c| c.seq);
        log.finish(upto, outcome);
    }
}

fn write_group(db: &Database, group: &[Commit]) -> Result<(), Box<redb::Error>> {
    let txn = db.begin_write().map_err(|e| Box::new(e.into()))?;
    {
        let mut tasks = txn.open_table(TASKS).map_err(|e| Box::new(e.into()))?;
        for commit in group {
            for (task, ready_seq) in &commit.changes.put {
                let value = stored::encode(task, *ready_seq);
                tasks.insert(task.id.0, value.as_slice()).map_err(|e| Box::new(e.into()))?;
            }
            for id in &commit.changes.removed {
                tasks.remove(id.0).map_err(|e| Box::new(e.into()))?;
            }
        }
        let mut totals = txn.open_table(TOTALS).map_err(|e| Box::new(e.into()))?;
        let mut paused = txn.open_table(PAUSED).map_err(|e| Box::new(e.into()))?;
        for commit in group {
            for (queue, t) in &commit.changes.queues {
                match t {
                    Some(t) => totals.insert(queue.as_str(), stored::encode_totals(t).as_slice()),
                    None => totals.remove(queue.as_str()),
                }
                .map_err(|e| Box::new(e.into()))?;
            }
            for (queue, p) in &commit.changes.paused {
                if *p { paused.insert(queue.as_str(), 1) } else { paused.remove(queue.as_str()) }
                    .map_err(|e| Box::new(e.into()))?;
            }
        }
        let next_lease = group.iter().map(|c| c.changes.next_lease).max().unwrap_or(0);
        let mut meta = txn.open_table(META).map_err(|e| Box::new(e.into()))?;
        meta.insert(NEXT_LEASE, next_lease).map_err(|e| Box::new(e.into()))?;
    }
    txn.commit().map_err(|e| Box::new(e.into()))?;
    Ok(())
}
