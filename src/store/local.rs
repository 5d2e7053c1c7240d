//! The stores that keep every task in this process: one [`Table`] behind a
//! mutex (never held across `.await`), and a [`Persist`] policy for what
//! happens to each operation's changes. [`super::memory::MemoryStore`]
//! forgets them; [`super::embedded::EmbeddedStore`] makes them durable before
//! the call returns. Everything else about the two is this one file.
//!
//! # No answer reveals what is not durable
//! An operation that changes nothing (a replayed `request_id`, a lease of an
//! empty queue, a `get`) may still read state whose commit is on its way to
//! disk. It therefore waits, like a changing operation, until every commit
//! submitted before it is durable ([`Persist::barrier`], kept by a
//! [`CommitLog`]), and is refused with `Unavailable` once a commit failed.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use async_trait::async_trait;
use tokio::sync::watch;

use super::table::{Changes, Table};
use super::{AckItem, Enqueued, LeaseSpec, Limits, NackSpec, Store, StoreError, Swept};
use crate::core::queue::QueueRegistry;
use crate::core::task::{NewTask, Task, TaskId};
use crate::core::Millis;

/// Resolves once submitted changes are durable (or failed to become so).
pub type Durable = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// What a local store does with an operation's changes.
pub trait Persist: Send + Sync + 'static {
    /// Whether the table should record changes for [`Persist::submit`].
    const TRACKS_CHANGES: bool;

    /// Refuses calls while the store cannot keep what they change (an
    /// earlier commit failed).
    fn check(&self) -> Result<(), StoreError>;

    /// Hands `changes` over, under the table lock (so their order on disk is
    /// the order in which they were made); the call answers once the returned
    /// future resolves.
    fn submit(&self, changes: Changes) -> Result<Durable, StoreError>;

    /// For an operation that changed nothing, called under the table lock:
    /// resolves once every change submitted before is durable (`None`:
    /// already), so its answer reveals nothing that a crash could take back.
    fn barrier(&self) -> Result<Option<Durable>, StoreError>;

    /// Whether the store can serve.
    fn healthy(&self) -> bool;

    /// Commits so far, if this policy commits.
    fn commits(&self) -> Option<u64>;
}

/// A [`Store`] over an in-process [`Table`].
pub struct TableStore<P: Persist> {
    table: Mutex<Table>,
    persist: P,
    /// Every queue's settings; each operation runs under one snapshot.
    queues: QueueRegistry,
}

impl<P: Persist> TableStore<P> {
    /// A store over `table` (made with [`TableStore::table_for`]).
    pub(super) fn with(queues: QueueRegistry, table: Table, persist: P) -> Self {
        Self { table: Mutex::new(table), persist, queues }
    }

    /// An empty table for this kind of store.
    pub(super) fn table_for(queues: &QueueRegistry) -> Table {
        Table::new(queues.current(), P::TRACKS_CHANGES)
    }

    /// Puts `limits` in force (see [`Limits`]).
    pub fn with_limits(self, limits: Limits) -> Self {
        self.table().set_limits(limits);
        self
    }

    /// How many queues hold tasks.
    pub fn queue_count(&self) -> usize {
        self.table().queue_count()
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave a half-applied change
        // visible to callers in a way poisoning would fix: keep serving.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `op` on the table and returns once its changes, and every change
    /// submitted before them, are kept (see the module docs).
    async fn run<R>(&self, op: impl FnOnce(&mut Table) -> R) -> Result<R, StoreError> {
        self.persist.check()?;
        let (result, durable) = {
            let mut table = self.table();
            table.use_policies(self.queues.current());
            let result = op(&mut table);
            if !P::TRACKS_CHANGES {
                return Ok(result);
            }
            let changes = table.take_changes();
            let durable = if changes.is_empty() {
                self.persist.barrier()?
            } else {
                Some(self.persist.submit(changes)?)
            };
            (result, durable)
        };
        if let Some(durable) = durable {
            durable.await?;
        }
        Ok(result)
    }
}

#[async_trait]
impl<P: Persist> Store for TableStore<P> {
    async fn enqueue(&self, tasks: Vec<NewTask>, now: Millis) -> Result<Vec<Enqueued>, StoreError> {
        self.run(|t| t.enqueue(tasks, now)).await?
    }

    async fn lease(&self, spec: LeaseSpec, now: Millis) -> Result<Vec<Task>, StoreError> {
        self.run(|t| t.lease(&spec, now)).await
    }

    async fn ack(&self, id: TaskId, lease_id: u64, result: Vec<u8>, now: Millis) -> Result<Task, StoreError> {
        self.run(|t| t.ack(id, lease_id, result, now)).await?
    }

    async fn ack_many(
        &self,
        items: Vec<AckItem>,
        now: Millis,
    ) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
        self.run(|t| t.ack_many(items, now)).await
    }

    async fn nack(&self, id: TaskId, lease_id: u64, spec: NackSpec, now: Millis) -> Result<Task, StoreError> {
        self.run(|t| t.nack(id, lease_id, spec, now)).await?
    }

    async fn extend(&self, id: TaskId, lease_id: u64, by: Millis, now: Millis) -> Result<Millis, StoreError> {
        self.run(|t| t.extend(id, lease_id, by, now)).await?
    }

    async fn cancel(&self, id: TaskId, now: Millis) -> Result<Task, StoreError> {
        self.run(|t| t.cancel(id, now)).await?
    }

    async fn get(&self, id: TaskId) -> Result<Task, StoreError> {
        self.run(|t| t.get(id)).await?
    }

    async fn requeue_expired(&self, now: Millis) -> Result<Swept, StoreError> {
        self.run(|t| t.requeue_expired(now)).await
    }

    async fn promote_due(&self, now: Millis) -> Result<Swept, StoreError> {
        self.run(|t| t.promote_due(now)).await
    }

    async fn purge_finished(&self, now: Millis) -> Result<Swept, StoreError> {
        self.run(|t| t.purge_finished(now)).await
    }

    async fn throttled(&self, queue: &str, now: Millis) -> Result<Option<Millis>, StoreError> {
        let mut table = self.table();
        table.use_policies(self.queues.current());
        Ok(table.throttled(queue, now))
    }

    async fn next_timer(&self) -> Result<Option<Millis>, StoreError> {
        Ok(self.table().next_timer())
    }

    async fn healthy(&self) -> bool {
        self.persist.healthy()
    }

    fn commits(&self) -> Option<u64> {
        self.persist.commits()
    }
}

/// Sequence numbers of the commits on their way to disk: what a
/// [`Persist::barrier`] waits for. The persisting side numbers each commit
/// ([`CommitLog::submit`], under the table lock) and reports how far it got
/// ([`CommitLog::finish`]).
pub struct CommitLog {
    /// The last sequence number handed out.
    submitted: AtomicU64,
    /// Every commit up to this number finished (durable, or failed).
    finished: watch::Sender<u64>,
    /// The first failure: from then on the table is ahead of the disk.
    failure: OnceLock<String>,
    /// Prefixed to every refusal (`embedded store: ...`).
    what: &'static str,
}

impl CommitLog {
    pub fn new(what: &'static str) -> Arc<Self> {
        Arc::new(Self {
            submitted: AtomicU64::new(0),
            finished: watch::channel(0).0,
            failure: OnceLock::new(),
            what,
        })
    }

    /// Numbers a new commit; call under the table lock.
    pub fn submit(&self) -> u64 {
        self.submitted.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Every commit up to `upto` finished with `outcome` (a failure is kept
    /// for good).
    pub fn finish(&self, upto: u64, outcome: Result<(), String>) {
        if let Err(e) = outcome {
            let _ = self.failure.set(e);
        }
        self.finished.send_modify(|f| *f = (*f).max(upto));
    }

    /// `Unavailable` once a commit failed.
    pub fn check(&self) -> Result<(), StoreError> {
        match self.failure.get() {
            Some(e) => Err(StoreError::Unavailable(format!(
                "{}: a commit failed ({e}); restart the broker",
                self.what
            ))),
            None => Ok(()),
        }
    }

    /// Resolves once commit `seq` and every one before it finished.
    pub fn wait(self: &Arc<Self>, seq: u64) -> Durable {
        let log = self.clone();
        let mut finished = self.finished.subscribe();
        Box::pin(async move {
            if finished.wait_for(|f| *f >= seq).await.is_err() {
                return Err(StoreError::Unavailable(format!("{}: the store closed", log.what)));
            }
            log.check()
        })
    }

    /// [`Persist::barrier`]: waits for the last commit submitted so far.
    pub fn barrier(self: &Arc<Self>) -> Result<Option<Durable>, StoreError> {
        self.check()?;
        let last = self.submitted.load(Ordering::Acquire);
        if *self.finished.borrow() >= last {
            return Ok(None);
        }
        Ok(Some(self.wait(last)))
    }

    pub fn healthy(&self) -> bool {
        self.failure.get().is_none()
    }
}

#[cfg(test)]
mod tests;
