//! The writer thread: group commit while the disk takes writes, and the way
//! back after a commit failed (see the module docs of [`super`]).
//!
//! It owns the redb [`Database`]. While healthy it takes everything queued,
//! writes it in one transaction and answers each commit. After a failure it
//! fails every commit that arrives (they were made on top of the failed
//! one), and tries to get a usable database back: reopen, probe for space,
//! load the table. The store swaps that table in and sends [`Msg::Resume`],
//! after which commits are written again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, TableDefinition};

use super::{load, lock, stored, META, NEXT_LEASE, PAUSED, SCHEDULES, TASKS, TOTALS};
use crate::core::queue::QueueRegistry;
use crate::store::local::{CommitLog, Outcome};
use crate::store::schedule_record;
use crate::store::table::{Changes, Table};
use prometheus_client::metrics::histogram::Histogram;

/// Most changes folded into one transaction.
const MAX_GROUP: usize = 4096;
/// First wait before trying to reopen after a failed commit.
pub const RETRY_FIRST: Duration = Duration::from_millis(500);
/// Longest wait between tries (the wait doubles while the disk stays full):
/// a full disk costs a reopen (a repair of the file) at most this often, and
/// the store is back at most this long after space returns.
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// Scratch table of the space probe.
const PROBE: TableDefinition<&str, &[u8]> = TableDefinition::new("probe");
/// Largest space probe: a group can hold up to [`MAX_GROUP`] tasks.
const PROBE_MAX: usize = 16 << 20;
/// What a record costs on disk beyond its payload and result (a guess on the
/// high side; the probe only needs to be of the right size).
const RECORD_OVERHEAD: usize = 512;

/// What the store sends the writer thread, under the table lock.
pub enum Msg {
    Commit(Commit),
    /// The table was swapped for the recovered one: write commits again.
    Resume,
}

/// One operation's changes on their way to disk.
pub struct Commit {
    pub changes: Changes,
    /// Where to say whether they are durable.
    pub outcome: Outcome,
}

/// The writer thread's side of the store.
pub struct Writer {
    pub rx: mpsc::Receiver<Msg>,
    pub log: Arc<CommitLog>,
    pub commits: Arc<AtomicU64>,
    /// The database file, to reopen after a failure.
    pub path: PathBuf,
    /// The queues' settings, for the table a recovery loads.
    pub queues: QueueRegistry,
    /// Where a recovery leaves the table it loaded, for the store to swap in.
    pub recovered: Arc<Mutex<Option<Table>>>,
    /// How long each commit took (`taskbroker_store_commit_seconds`).
    pub commit_seconds: Histogram,
}

impl Writer {
    /// Starts the thread on `db`.
    pub fn spawn(self, db: Database) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new().name("tb-writer".into()).spawn(move || self.run(db))
    }

    /// One transaction and one fsync for everything queued; after a failure,
    /// [`Writer::recover`]. Returns when the store is dropped.
    fn run(self, mut db: Database) {
        let _guard = FailOnPanic(self.log.clone());
        while let Ok(first) = self.rx.recv() {
            let Msg::Commit(first) = first else { continue };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match self.rx.try_recv() {
                    Ok(Msg::Commit(c)) => group.push(c),
                    Ok(Msg::Resume) | Err(_) => break,
                }
            }
            let started = std::time::Instant::now();
            let outcome = write_group(&db, &group);
            self.commit_seconds.observe(started.elapsed().as_secs_f64());
            self.commits.fetch_add(1, Ordering::Relaxed);
            match outcome {
                Ok(()) => {
                    for c in group {
                        let _ = c.outcome.send(Ok(()));
                    }
                }
                Err(e) => {
                    let e = e.to_string();
                    tracing::error!(error = %e, "embedded store commit failed; refusing calls until the disk takes writes again");
                    self.log.fail(e.clone());
                    let need = probe_bytes(&group);
                    for c in group {
                        let _ = c.outcome.send(Err(e.clone()));
                    }
                    drop(db); // redb must be reopened after an I/O error
                    match self.recover(need) {
                        Some(reopened) => db = reopened,
                        None => return,
                    }
                }
            }
        }
    }

    /// Fails every commit that arrives, and tries (with a growing wait) to
    /// reopen the database with room for `need` bytes and load the table
    /// from it; returns the database once the store swapped that table in
    /// ([`Msg::Resume`]), or `None` when the store is gone.
    fn recover(&self, need: usize) -> Option<Database> {
        let mut wait = RETRY_FIRST;
        let mut next_try = Instant::now() + wait;
        let mut reopened = None;
        loop {
            let timeout = next_try.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(if reopened.is_some() { RETRY_MAX } else { timeout }) {
                Ok(Msg::Commit(c)) => {
                    let _ = c.outcome.send(Err("made while an earlier commit failed".into()));
                }
                Ok(Msg::Resume) => return reopened,
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) if reopened.is_some() => {}
                Err(RecvTimeoutError::Timeout) => match self.reopen(need) {
                    Ok((db, table)) => {
                        tracing::info!(
                            tasks = table.len(),
                            "embedded store reopened: the disk takes writes again"
                        );
                        *lock(&self.recovered) = Some(table);
                        reopened = Some(db);
                    }
                    Err(e) => {
                        wait = (wait * 2).min(RETRY_MAX);
                        next_try = Instant::now() + wait;
                        tracing::warn!(error = %e, retry_in = ?wait, "embedded store still cannot write");
                    }
                },
            }
        }
    }

    /// Reopens the database (redb repairs it to its last commit), checks it
    /// takes `need` more bytes, and loads the table from it.
    fn reopen(&self, need: usize) -> Result<(Database, Table), String> {
        let db = Database::create(&self.path).map_err(|e| format!("reopen: {e}"))?;
        probe(&db, need).map_err(|e| format!("space probe of {need} bytes: {e}"))?;
        let mut table = Table::new(self.queues.current(), true);
        load(&db, &mut table).map_err(|e| format!("reload: {e}"))?;
        Ok((db, table))
    }
}

/// Roughly what `group` needed on disk: what the probe asks for.
fn probe_bytes(group: &[Commit]) -> usize {
    let bytes: usize = group
        .iter()
        .flat_map(|c| &c.changes.put)
        .map(|(t, _)| t.payload.len() + t.result.len() + RECORD_OVERHEAD)
        .sum();
    bytes.min(PROBE_MAX)
}

/// Writes `bytes` into a scratch record and commits, then removes it: the
/// disk takes that much again.
fn probe(db: &Database, bytes: usize) -> Result<(), Box<redb::Error>> {
    let scratch = vec![0u8; bytes];
    for write in [true, false] {
        let txn = db.begin_write().map_err(|e| Box::new(e.into()))?;
        {
            let mut t = txn.open_table(PROBE).map_err(|e| Box::new(e.into()))?;
            let done = if write { t.insert("probe", scratch.as_slice()) } else { t.remove("probe") };
            done.map_err(|e| Box::new(e.into()))?;
        }
        txn.commit().map_err(|e| Box::new(e.into()))?;
    }
    Ok(())
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
        let mut schedules = txn.open_table(SCHEDULES).map_err(|e| Box::new(e.into()))?;
        for commit in group {
            for (name, stored) in &commit.changes.schedules {
                match stored {
                    Some(s) => {
                        schedules.insert(name.as_str(), schedule_record::encode(s).as_slice()).map(|_| ())
                    }
                    None => schedules.remove(name.as_str()).map(|_| ()),
                }
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

/// Marks the store out for good if the writer thread panics; the commits it
/// held are answered (failed) as their senders drop.
struct FailOnPanic(Arc<CommitLog>);

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail("the writer thread panicked".into());
        }
    }
}
