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

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::broadcast;

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

    /// The number the next [`Persist::submit`] gets (commits are numbered in
    /// order; see [`CommitLog`]), and every number up to which is durable.
    fn commit_seqs(&self) -> (u64, u64) {
        (0, 0)
    }

    /// Resolves once commit `seq` (and every one before it) is durable.
    fn wait_commit(&self, _seq: u64) -> Result<Option<Durable>, StoreError> {
        self.barrier()
    }

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
    /// The commits that last changed the tasks it hands out are durable
    /// (an answer that hands out nothing waits for every commit before it);
    /// its own changes are written in order but not fsynced on their own
    /// (the next durable commit covers them: an ack of this lease makes the
    /// lease durable too).
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
    /// The commit that last changed each task while it may not be durable
    /// (locked inside the table lock): what a lease waits for.
    pending: Mutex<PendingCommits>,
}

impl<P: Persist> TableStore<P> {
    /// A store over `table` (made with [`TableStore::table_for`]).
    pub(super) fn with(queues: QueueRegistry, table: Table, persist: P) -> Self {
        Self {
            table: Mutex::new(table),
            persist,
            queues,
            events: broadcast::channel(1024).0,
            pending: Mutex::new(PendingCommits::default()),
        }
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
        self.run_waiting(Wait::Own, op, |_| Vec::new()).await
    }

    /// [`TableStore::run`], waiting as `wait` says.
    /// `revealed`: the tasks an answer of [`Wait::Prior`] hands out.
    async fn run_waiting<R>(
        &self,
        wait: Wait,
        op: impl FnOnce(&mut Table) -> R,
        revealed: impl FnOnce(&R) -> Vec<TaskId>,
    ) -> Result<R, StoreError> {
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
            let own = wait == Wait::Own || table.take_lease_reserved() || !events.is_empty();
            let durable = if changes.is_empty() {
                self.persist.barrier()?
            } else {
                let (seq, durable) = self.persist.commit_seqs();
                let mut pending = lock(&self.pending);
                // What a lease hands out must be durable: the commits that
                // last changed those tasks before it, not every one before.
                let before = match own {
                    true => None,
                    false => match pending.newest(&revealed(&result), durable) {
                        Some(seq) => self.persist.wait_commit(seq)?,
                        None => None,
                    },
                };
                pending.record(changes.put.iter().map(|(t, _)| t.id), seq, durable);
                if own {
                    Some(self.persist.submit(changes)?)
                } else {
                    self.persist.submit_unsynced(changes)?;
                    before
                }
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
        let leased = |tasks: &Vec<Task>| tasks.iter().map(|t| t.id).collect();
        self.run_waiting(Wait::Prior, |t| t.lease(&spec, now), leased).await
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

mod commit_log;
mod pending;

pub use self::commit_log::{CommitLog, Outcome};
use self::pending::PendingCommits;

/// Locks `m`, whatever a panic left in it (a plain value, always whole).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
