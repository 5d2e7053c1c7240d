//! The writer thread: group commit into the log while the disk takes
//! writes, and the way back after a write failed (see the module docs of
//! [`super`]).
//!
//! While healthy it takes everything queued, appends it to the newest log
//! segment as one frame, `fdatasync`s once and answers each commit. A full
//! segment is closed (handed to the compactor) and a new one started.
//! After a failure it cuts the segment back to its last durable byte, fails
//! every commit that arrives (they were made on top of the failed one), and
//! tries to get back: probe that the disk takes the failed write's size at
//! the same place, then load the table from the files. The store swaps that
//! table in and sends [`Msg::Resume`], after which commits are written again.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;

use super::entry::{self, Entry};
use super::files::Files;
use super::frame;
use super::lock;
use crate::core::queue::QueueRegistry;
use crate::store::local::{CommitLog, Outcome};
use crate::store::table::{Changes, Table};

/// Most commits folded into one frame.
const MAX_GROUP: usize = 4096;
/// A group stops taking commits once its frame is this large.
const MAX_GROUP_BYTES: usize = 16 << 20;
/// First wait before trying again after a failed write.
pub const RETRY_FIRST: Duration = Duration::from_millis(500);
/// Longest wait between tries (the wait doubles while the disk stays full):
/// the store is back at most this long after space returns.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// What the store sends the writer thread, under the table lock.
pub enum Msg {
    Commit(Commit),
    /// The table was swapped for the recovered one: write commits again.
    Resume,
}

/// One operation's changes on their way to disk.
pub struct Commit {
    pub changes: Changes,
    /// Where to say whether they are durable (or, unsynced, written).
    pub outcome: Outcome,
    /// Whether the answer waits for an fsync (see
    /// [`crate::store::local::Persist::submit_unsynced`]).
    pub sync: bool,
}

/// Zeros are written this far ahead of the log at a time.
const FILL: u64 = 1 << 20;
/// A new fill starts once the zeros ahead are fewer than this.
const FILL_LOW: u64 = 256 << 10;

/// The segment being written: its number, file, and length.
pub struct Segment {
    pub number: u64,
    pub file: File,
    pub len: u64,
    /// Bytes before `len` were written without an fsync yet.
    pub unsynced: bool,
    /// The file is zero-filled (and its size durable) up to here: a commit
    /// written below it changes no file size, so its `fdatasync` has no
    /// metadata to journal (~30% cheaper here). `None`: filling failed on
    /// this segment (a full disk); commits append.
    pub zeroed: Option<u64>,
}

impl Segment {
    /// A segment whose file is `size` bytes long, `len` of them the log's.
    pub fn new(number: u64, file: File, len: u64, size: u64) -> Self {
        Segment { number, file, len, unsynced: false, zeroed: Some(size) }
    }

    /// Zero-fills the next [`FILL`] bytes ahead of the log once fewer than
    /// [`FILL_LOW`] are left, and syncs them: once a megabyte, between
    /// commits, instead of a file size change in every commit.
    fn fill_ahead(&mut self) {
        let Some(zeroed) = self.zeroed else { return };
        if zeroed >= self.len + FILL_LOW {
            return;
        }
        let from = zeroed.max(self.len);
        let filled = self.file.write_all_at(&[0; FILL as usize], from).and_then(|()| self.file.sync_data());
        self.zeroed = match filled {
            Ok(()) => Some(from + FILL),
            Err(e) => {
                tracing::warn!(error = %e, "cannot zero-fill the log ahead; appending to this segment");
                None
            }
        };
    }
}

/// The writer thread's side of the store.
pub struct Writer {
    pub rx: mpsc::Receiver<Msg>,
    pub log: Arc<CommitLog>,
    pub commits: Arc<AtomicU64>,
    pub files: Arc<Files>,
    /// A segment this large is closed and a new one started.
    pub segment_bytes: u64,
    /// Closed segments (number, size), for the compactor.
    pub closed: mpsc::Sender<(u64, u64)>,
    /// The queues' settings, for the table a recovery loads.
    pub queues: QueueRegistry,
    /// Where a recovery leaves the table it loaded, for the store to swap in.
    pub recovered: Arc<Mutex<Option<Table>>>,
    /// How long each commit took (`taskbroker_store_commit_seconds`).
    pub commit_seconds: Histogram,
}

impl Writer {
    /// Starts the thread, appending to `segment`.
    pub fn spawn(self, segment: Segment) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new().name("tb-writer".into()).spawn(move || self.run(segment))
    }

    /// One frame and one fdatasync for everything queued; after a failure,
    /// [`Writer::recover`]. Returns when the store is dropped.
    fn run(self, mut segment: Segment) {
        let _guard = FailOnPanic(self.log.clone());
        let (mut buf, mut scratch) = (Vec::with_capacity(1 << 16), Vec::new());
        while let Ok(first) = self.rx.recv() {
            let Msg::Commit(first) = first else { continue };
            buf.clear();
            let start = frame::begin(&mut buf);
            entry::push_changes(&mut buf, &first.changes, &mut scratch);
            let mut next_lease = first.changes.next_lease;
            let mut sync = first.sync;
            let mut group = vec![first.outcome];
            while group.len() < MAX_GROUP && buf.len() < MAX_GROUP_BYTES {
                match self.rx.try_recv() {
                    Ok(Msg::Commit(c)) => {
                        entry::push_changes(&mut buf, &c.changes, &mut scratch);
                        next_lease = next_lease.max(c.changes.next_lease);
                        sync |= c.sync;
                        group.push(c.outcome);
                    }
                    Ok(Msg::Resume) | Err(_) => break,
                }
            }
            entry::push(&mut buf, &Entry::NextLease(next_lease));
            frame::finish(&mut buf, start);

            let started = Instant::now();
            let mut written = segment.file.write_all_at(&buf, segment.len);
            if sync {
                written = written.and_then(|()| segment.file.sync_data());
                self.commit_seconds.observe(started.elapsed().as_secs_f64());
                self.commits.fetch_add(1, Ordering::Relaxed);
            }
            match written {
                Ok(()) => {
                    segment.len += buf.len() as u64;
                    segment.unsynced = !sync;
                    for outcome in group {
                        let _ = outcome.send(Ok(()));
                    }
                    if segment.len >= self.segment_bytes {
                        self.roll(&mut segment);
                    }
                    segment.fill_ahead();
                }
                Err(e) => {
                    let e = e.to_string();
                    tracing::error!(error = %e, "embedded store commit failed; refusing calls until the disk takes writes again");
                    self.log.fail(e.clone());
                    for outcome in group {
                        let _ = outcome.send(Err(e.clone()));
                    }
                    // What did reach the file is not acknowledged: cut it off
                    // (again before every probe, should this fail now).
                    let _ = segment.file.set_len(segment.len);
                    segment.zeroed = None;
                    if !self.recover(&segment, buf.len() as u64) {
                        return;
                    }
                    // The probe took the disk's word for space: fill again.
                    segment.zeroed = Some(segment.len);
                }
            }
        }
    }

    /// Closes `segment` for the compactor and starts the next one; on
    /// failure keeps appending to this one (and tries again next commit).
    fn roll(&self, segment: &mut Segment) {
        if segment.unsynced {
            // A closed segment is whole on disk: later ones are replayed after it.
            if let Err(e) = segment.file.sync_data() {
                return tracing::warn!(error = %e, "cannot sync the log segment; appending to it");
            }
            segment.unsynced = false;
        }
        match self.files.create_segment(segment.number + 1) {
            Ok(file) => {
                let _ = self.closed.send((segment.number, segment.len));
                *segment = Segment::new(segment.number + 1, file, 0, 0);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a new log segment; appending to the current one")
            }
        }
    }

    /// Fails every commit that arrives, and tries (with a growing wait) to
    /// write `need` bytes at the end of `segment` and load the table from
    /// the files; returns `true` once the store swapped that table in
    /// ([`Msg::Resume`]), `false` when the store is gone.
    fn recover(&self, segment: &Segment, need: u64) -> bool {
        let mut wait = RETRY_FIRST;
        let mut next_try = Instant::now() + wait;
        let mut reloaded = false;
        loop {
            let timeout = next_try.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(if reloaded { RETRY_MAX } else { timeout }) {
                Ok(Msg::Commit(c)) => {
                    let _ = c.outcome.send(Err("made while an earlier commit failed".into()));
                }
                Ok(Msg::Resume) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
                Err(RecvTimeoutError::Timeout) if reloaded => {}
                Err(RecvTimeoutError::Timeout) => match self.reload(segment, need) {
                    Ok(table) => {
                        tracing::info!(tasks = table.len(), "embedded store: the disk takes writes again");
                        *lock(&self.recovered) = Some(table);
                        reloaded = true;
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

    /// Checks the disk takes `need` more bytes where the failed write went
    /// (zeros, written, synced, cut off again), then loads the table.
    fn reload(&self, segment: &Segment, need: u64) -> Result<Table, String> {
        let probe = || -> std::io::Result<()> {
            segment.file.set_len(segment.len)?;
            segment.file.write_all_at(&vec![0; need as usize], segment.len)?;
            segment.file.sync_data()?;
            segment.file.set_len(segment.len)?;
            segment.file.sync_all()
        };
        probe().map_err(|e| format!("space probe of {need} bytes: {e}"))?;
        let loaded = self.files.load().map_err(|e| format!("reload: {e}"))?;
        let folded = loaded.fold().map_err(|e| format!("reload: {e}"))?;
        let mut table = Table::new(self.queues.current(), true);
        folded.load_into(&mut table).map_err(|e| format!("reload: {e}"))?;
        Ok(table)
    }
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
