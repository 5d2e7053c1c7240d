//! The commits on their way to disk, in order, and whether the store can
//! serve: what a [`Persist::barrier`](super::Persist::barrier) or a lease
//! waits for and what [`Persist::check`](super::Persist::check) refuses on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::{FutureExt, Shared};
use tokio::sync::oneshot;

use super::{lock, Durable};
use crate::store::StoreError;

/// The persisting side answers each commit through the [`Outcome`] it gets
/// from [`CommitLog::submit`], in submission order. When one fails it calls
/// [`CommitLog::fail`] *before* answering, so nothing that saw the failure
/// is served; [`CommitLog::resume`] ends the outage once the table was put
/// back as the disk has it.
///
/// Commits are numbered in submission order: a change made under the table
/// lock belongs to commit [`CommitLog::next_seq`], and [`CommitLog::wait_for`]
/// waits for one commit (and so every one before it) rather than all.
pub struct CommitLog {
    /// The outcome of the last commit submitted since the table was last
    /// (re)loaded: every earlier one is answered before it, and fails if an
    /// earlier one failed, so a barrier waits for this one only.
    last: Mutex<Option<Shared<Durable>>>,
    /// Commits submitted and perhaps not answered yet, oldest first, by
    /// number (those at or below `durable` are dropped as they are seen).
    inflight: Mutex<VecDeque<(u64, Shared<Durable>)>>,
    /// The number the next commit gets.
    next: AtomicU64,
    /// Every commit up to this number is durable.
    durable: Arc<AtomicU64>,
    /// Why calls are refused, while they are: a commit failed, and the table
    /// is ahead of the disk until it is reloaded.
    outage: Mutex<Option<String>>,
    /// Prefixed to every refusal (`embedded store: ...`).
    what: &'static str,
}

/// The persisting side's end of one commit: send `Ok(())` once it is
/// durable, or why it is not.
pub struct Outcome {
    tx: oneshot::Sender<Result<(), String>>,
    seq: u64,
    durable: Arc<AtomicU64>,
}

impl Outcome {
    pub fn send(self, outcome: Result<(), String>) {
        if outcome.is_ok() {
            self.durable.fetch_max(self.seq, Ordering::Release);
        }
        let _ = self.tx.send(outcome);
    }
}

impl CommitLog {
    pub fn new(what: &'static str) -> Arc<Self> {
        Arc::new(Self {
            last: Mutex::new(None),
            inflight: Mutex::new(VecDeque::new()),
            next: AtomicU64::new(1),
            durable: Arc::new(AtomicU64::new(0)),
            outage: Mutex::new(None),
            what,
        })
    }

    /// The number the next commit gets (read under the table lock, where
    /// commits are submitted).
    pub fn next_seq(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Every commit up to this number is durable.
    pub fn durable_seq(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// A new commit (call under the table lock, so commits are submitted in
    /// the order their changes were made): where to report its outcome, and
    /// the future its call awaits.
    pub fn submit(&self) -> (Outcome, Durable) {
        let (tx, rx) = oneshot::channel::<Result<(), String>>();
        let what = self.what;
        let durable: Durable = Box::pin(async move {
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(StoreError::Unavailable(format!("{what}: a commit failed ({e})"))),
                Err(_) => Err(StoreError::Unavailable(format!("{what}: the store closed"))),
            }
        });
        let shared = durable.shared();
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last) = Some(shared.clone());
        let mut inflight = lock(&self.inflight);
        let done = self.durable_seq();
        while inflight.front().is_some_and(|(s, _)| *s <= done) {
            inflight.pop_front();
        }
        inflight.push_back((seq, shared.clone()));
        (Outcome { tx, seq, durable: self.durable.clone() }, Box::pin(shared))
    }

    /// Waits for commit `seq` (and so for every one before it): `None` if it
    /// is durable already, or was made before the table was last reloaded.
    pub fn wait_for(&self, seq: u64) -> Result<Option<Durable>, StoreError> {
        self.check()?;
        if seq <= self.durable_seq() {
            return Ok(None);
        }
        let inflight = lock(&self.inflight);
        let at = inflight.partition_point(|(s, _)| *s < seq);
        Ok(inflight.get(at).filter(|(s, _)| *s == seq).map(|(_, d)| Box::pin(d.clone()) as Durable))
    }

    /// A commit failed: calls are refused until [`CommitLog::resume`]. Call
    /// before answering the failed commit.
    pub fn fail(&self, why: String) {
        lock(&self.outage).get_or_insert(why);
    }

    /// The table holds what the disk holds again (call under the table
    /// lock): calls are served, and no earlier commit matters to a barrier.
    pub fn resume(&self) {
        *lock(&self.outage) = None;
        *lock(&self.last) = None;
        lock(&self.inflight).clear();
    }

    /// `Unavailable` while a failed commit is not recovered from.
    pub fn check(&self) -> Result<(), StoreError> {
        match &*lock(&self.outage) {
            Some(e) => Err(StoreError::Unavailable(format!(
                "{}: a commit failed ({e}); refusing calls until the disk takes writes again",
                self.what
            ))),
            None => Ok(()),
        }
    }

    /// [`Persist::barrier`](super::Persist::barrier): waits for the last
    /// commit submitted so far.
    pub fn barrier(&self) -> Result<Option<Durable>, StoreError> {
        self.check()?;
        match &*lock(&self.last) {
            Some(last) if last.peek().is_none() => Ok(Some(Box::pin(last.clone()))),
            _ => Ok(None),
        }
    }

    pub fn healthy(&self) -> bool {
        lock(&self.outage).is_none()
    }
}
