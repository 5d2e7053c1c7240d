//! Compaction: folds the last snapshot and the closed log segments after it
//! into a new snapshot, then removes what it replaces, on a thread of its
//! own so commits never wait for it.
//!
//! It runs once the closed segments since the snapshot add up to at least
//! the snapshot's own size (and one segment): the bytes rewritten are then
//! at most about the bytes logged, and the directory holds at most about
//! twice the live state plus one segment.

use std::sync::mpsc;
use std::sync::Arc;

use super::files::Files;

pub struct Compactor {
    pub files: Arc<Files>,
    /// Closed segments (number, size), from the writer.
    pub closed: mpsc::Receiver<(u64, u64)>,
    /// The snapshot now on disk: its segment number (0: none) and size.
    pub snapshot: (u64, u64),
    /// Closed segments after it, oldest first.
    pub pending: Vec<(u64, u64)>,
    /// The least closed-log size worth a compaction.
    pub min_bytes: u64,
}

impl Compactor {
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new().name("tb-compact".into()).spawn(move || self.run())
    }

    fn run(mut self) {
        lower_priority();
        self.maybe_compact();
        while let Ok(segment) = self.closed.recv() {
            self.pending.push(segment);
            while let Ok(segment) = self.closed.try_recv() {
                self.pending.push(segment);
            }
            self.maybe_compact();
        }
    }

    fn maybe_compact(&mut self) {
        let logged: u64 = self.pending.iter().map(|(_, len)| len).sum();
        if self.pending.is_empty() || logged < self.snapshot.1.max(self.min_bytes) {
            return;
        }
        let started = std::time::Instant::now();
        let numbers: Vec<u64> = self.pending.iter().map(|(n, _)| *n).collect();
        let upto = *numbers.last().expect("pending is not empty");
        let installed = self.files.read_closed(self.snapshot.0, &numbers).and_then(|read| {
            let folded = read.fold().map_err(|e| e.to_string())?;
            self.files.install_snapshot(upto, &folded).map_err(|e| e.to_string())
        });
        match installed {
            Ok(bytes) => {
                tracing::info!(
                    segments = numbers.len(),
                    logged,
                    snapshot_bytes = bytes,
                    took = ?started.elapsed(),
                    "embedded store compacted its log"
                );
                self.snapshot = (upto, bytes);
                self.pending.clear();
            }
            // The log is whole without it: try again after the next segment.
            Err(e) => tracing::warn!(error = %e, "embedded store compaction failed; the log keeps growing"),
        }
    }
}

/// Runs this thread at nice 10: under load, serving goes first and the
/// compaction (seconds of CPU for a large store) takes what is left.
fn lower_priority() {
    // On Linux a thread id names that thread alone.
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), 10) {
        tracing::debug!(error = %e, "cannot lower the compaction thread's priority");
    }
}
