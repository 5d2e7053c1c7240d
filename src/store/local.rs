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
//! [`CommitLog`]), and is refused with `Unavailable` once a commit failed,
//! until the store recovered (the table is then put back as the disk has
//! it, see [`Persist::check`]).
//!
//! The one exception is a lease's own change ([`Wait::Prior`]): a lease
//! waits for everything before it, not for its own record, so a read after
//! it may show a delivery that a crash then forgets (at-least-once holds).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use futures_util::future::{FutureExt, Shared};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{broadcast, oneshot};

use super::table::{Changes, Table};
use super::{
    AckItem, Enqueued, Fired, LeaseSpec, Limits, NackSpec, Store, StoreError, StoreEvent, StoredSchedule,
    Swept,
};
use crate::core::queue::QueueRegistry;
use crate::core::schedule::Schedule;
use crate::core::stats::QueueStats;
use crate::core::task::{NewTask, Task, TaskId, TaskState};
use crate::core::Millis;

/// Resolves once submitted changes are durable (or failed to become so).
pub type Durable = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// What a local store does with an operation's changes.
pub trait Persist: Send + Sync + 'static {
    /// Whether the table should record changes for [`Persist::submit`].
    const TRACKS_CHANGES: bool;

    /// Refuses calls while the store cannot keep what they change (an
    /// earlier commit failed). Called under the table lock: a store that
    /// recovered from a failed commit puts `table` back as its disk has it
    /// here, and serves again.
    fn check(&self, table: &mut Table) -> Result<(), StoreError>;

    /// Hands `changes` over, under the table lock (so their order on disk is
    /// the order in which they were made); the call answers once the returned
    /// future resolves.
    fn submit(&self, changes: Changes) -> Result<Durable, StoreError>;

    /// Hands `changes` over like [`Persist::submit`], for an answer that
    /// does not wait for them: they may be written without an fsync of their
    /// own (the next commit's covers them), and a crash may forget them.
    fn submit_unsynced(&self, changes: Changes) -> Result<(), StoreError> {
        self.submit(changes).map(drop)
    }

    /// For an operation that changed nothing, called under the table lock:
    /// resolves once every change submitted before is durable (`None`:
    /// already), so its answer reveals nothing that a crash could take back.
    fn barrier(&self) -> Result<Option<Durable>, StoreError>;

    /// Commits so far, if this policy commits.
    fn commits(&self) -> Option<u64>;

    /// How long its commits took, if this policy commits.
    fn commit_seconds(&self) -> Option<Histogram> {
        None
    }
}

/// What an operation's answer waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Its own changes, and every change before them, are durable.
    Own,
    /// Every change submitted before it is durable; its own are written in
    /// order but not fsynced on their own (the next durable commit covers
    /// them: an ack of this lease makes the lease durable too).
    /// For leases: a delivery a crash forgets is delivered again (at least
    /// once holds), with the attempt count it had before. What must not be
    /// forgotten waits anyway: a new block of lease ids (ids never repeat,
    /// see [`super::table`]'s `lease_ids`) and tasks the lease expired.
    Prior,
}

/// A [`Store`] over an in-process [`Table`].
pub struct TableStore<P: Persist> {
    table: Mutex<Table>,
    persist: P,
    /// Every queue's settings; each operation runs under one snapshot.
    queues: QueueRegistry,
    /// What an operation changed beyond the tasks it answers with (tasks
    /// released or canceled by a dependency's end, tasks expired at lease
    /// time), told to the broker once durable: it knows only what it asked.
    events: broadcast::Sender<StoreEvent>,
}

impl<P: Persist> TableStore<P> {
    /// A store over `table` (made with [`TableStore::table_for`]).
    pub(super) fn with(queues: QueueRegistry, table: Table, persist: P) -> Self {
        Self { table: Mutex::new(table), persist, queues, events: broadcast::channel(1024).0 }
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

    fn tell(&self, events: Vec<StoreEvent>) {
        for event in events {
            // No receiver: no broker is listening, nobody to tell.
            let _ = self.events.send(event);
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave a half-applied change
        // visible to callers in a way poisoning would fix: keep serving.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `op` on the table and returns once its changes, and every change
    /// submitted before them, are kept (see the module docs).
    async fn run<R>(&self, op: impl FnOnce(&mut Table) -> R) -> Result<R, StoreError> {
        self.run_waiting(Wait::Own, op).await
    }

    /// [`TableStore::run`], waiting as `wait` says.
    async fn run_waiting<R>(&self, wait: Wait, op: impl FnOnce(&mut Table) -> R) -> Result<R, StoreError> {
        let (result, durable, events) = {
            let mut table = self.table();
            self.persist.check(&mut table)?;
            table.use_policies(self.queues.current());
            let result = op(&mut table);
            let side = table.take_side_changes();
            let events = if side.is_empty() { Vec::new() } else { table.side_events(&side) };
            if !P::TRACKS_CHANGES {
                self.tell(events);
                return Ok(result);
            }
            let changes = table.take_changes();
            let reserved = table.take_lease_reserved();
            let own = wait == Wait::Own || reserved || !events.is_empty();
            let durable = if changes.is_empty() {
                self.persist.barrier()?
            } else if own {
                Some(self.persist.submit(changes)?)
            } else {
                let before = self.persist.barrier()?;
                self.persist.submit_unsynced(changes)?;
                before
            };
            (result, durable, events)
        };
        if let Some(durable) = durable {
            durable.await?;
        }
        self.tell(events);
        Ok(result)
    }
}

#[async_trait]
impl<P: Persist> Store for TableStore<P> {
    async fn enqueue(&self, tasks: Vec<NewTask>, now: Millis) -> Result<Vec<Enqueued>, StoreError> {
        self.run(|t| t.enqueue(tasks, now)).await?
    }

    /// A lease is answered once everything before it is durable, without
    /// waiting for its own commit (see [`Wait::Prior`]).
    async fn lease(&self, spec: LeaseSpec, now: Millis) -> Result<Vec<Task>, StoreError> {
        self.run_waiting(Wait::Prior, |t| t.lease(&spec, now)).await
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

    /// Readiness looks every second: a store that recovered from a failed
    /// commit serves again from this call on, even before a request comes.
    async fn healthy(&self) -> bool {
        self.persist.check(&mut self.table()).is_ok()
    }

    async fn queue_names(&self) -> Result<Vec<String>, StoreError> {
        self.run(|t| t.queue_names()).await
    }

    async fn queue_stats(&self, queue: &str) -> Result<QueueStats, StoreError> {
        self.run(|t| t.queue_stats(queue)).await
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<bool, StoreError> {
        self.run(|t| t.set_paused(queue, paused)).await
    }

    async fn purge_queue(&self, queue: &str, states: &[TaskState], now: Millis) -> Result<u64, StoreError> {
        self.run(|t| t.purge_queue(queue, states, now)).await
    }

    async fn list_tasks(
        &self,
        queue: &str,
        state: TaskState,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError> {
        self.run(|t| t.list_tasks(queue, state, after, limit)).await
    }

    async fn redrive(
        &self,
        queue: &str,
        ids: &[TaskId],
        limit: usize,
        now: Millis,
    ) -> Result<Swept, StoreError> {
        self.run(|t| t.redrive(queue, ids, limit, now)).await
    }

    async fn list_schedules(&self) -> Result<Vec<StoredSchedule>, StoreError> {
        self.run(|t| t.schedules()).await
    }

    async fn put_schedule(&self, schedule: Schedule) -> Result<(), StoreError> {
        self.run(|t| t.put_schedule(schedule)).await
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        self.run(|t| t.delete_schedule(name)).await
    }

    async fn fire_schedule(
        &self,
        name: &str,
        due: Millis,
        task: Option<NewTask>,
        now: Millis,
    ) -> Result<Fired, StoreError> {
        self.run(|t| t.fire_schedule(name, due, task, now)).await?
    }

    fn commits(&self) -> Option<u64> {
        self.persist.commits()
    }

    /// Only what an operation changed beyond its answer (see
    /// [`TableStore::events`](TableStore)): the broker knows the rest.
    fn events(&self) -> Option<broadcast::Receiver<StoreEvent>> {
        Some(self.events.subscribe())
    }

    fn commit_seconds(&self) -> Option<Histogram> {
        self.persist.commit_seconds()
    }
}

/// The commits on their way to disk, and whether the store can serve: what
/// a [`Persist::barrier`] waits for and what [`Persist::check`] refuses on.
///
/// The persisting side answers each commit through the [`Outcome`] it gets
/// from [`CommitLog::submit`], in submission order. When one fails it calls
/// [`CommitLog::fail`] *before* answering, so nothing that saw the failure
/// is served; [`CommitLog::resume`] ends the outage once the table was put
/// back as the disk has it.
pub struct CommitLog {
    /// The outcome of the last commit submitted since the table was last
    /// (re)loaded: every earlier one is answered before it, and fails if an
    /// earlier one failed, so a barrier waits for this one only.
    last: Mutex<Option<Shared<Durable>>>,
    /// Why calls are refused, while they are: a commit failed, and the table
    /// is ahead of the disk until it is reloaded.
    outage: Mutex<Option<String>>,
    /// Prefixed to every refusal (`embedded store: ...`).
    what: &'static str,
}

/// The persisting side's end of one commit: send `Ok(())` once it is
/// durable, or why it is not.
pub type Outcome = oneshot::Sender<Result<(), String>>;

impl CommitLog {
    pub fn new(what: &'static str) -> Arc<Self> {
        Arc::new(Self { last: Mutex::new(None), outage: Mutex::new(None), what })
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
        *lock(&self.last) = Some(shared.clone());
        (tx, Box::pin(shared))
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

    /// [`Persist::barrier`]: waits for the last commit submitted so far.
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

/// Locks `m`, whatever a panic left in it (a plain value, always whole).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
