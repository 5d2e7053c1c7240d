//! The task table: every task and the indexes that order them, as one
//! in-memory state machine.
//!
//! Both the memory store and the embedded store run their operations on a
//! `Table` under one lock; the embedded store then persists the records the
//! operation touched ([`Table::take_changes`]). The table owns the state
//! transitions; the rules it applies (ordering, fencing, backoff) come from
//! [`crate::core`].
//!
//! Tasks are kept as compact [`Record`]s (see [`record`]); a [`Task`] is built
//! only when one is handed out or persisted.

mod admin;
mod dependencies;
mod indexes;
mod lease_ids;
mod leasing;
mod limits;
mod names;
mod permits;
mod ready;
mod record;
mod schedules;
mod slab;

use std::collections::HashMap;
use std::sync::Arc;

use self::indexes::{index, pop_due, take_due, unindex, Indexes};
use self::lease_ids::LeaseIds;
use self::names::{Names, Sym};
use self::record::Record;
use self::slab::Slab;
use super::{AckItem, Enqueued, Limits, NackSpec, StoreError, StoredSchedule, Swept};
use crate::core::flow::Bucket;
use crate::core::lease;
use crate::core::queue::Policies;
use crate::core::stats::{Event, QueueTotals};
use crate::core::task::{NewTask, Task, TaskId, TaskState};
use crate::core::transition::{self, Cancel, Retry};
use crate::core::Millis;

/// The records an operation created, changed or removed, for persistence.
#[derive(Debug, Default)]
pub struct Changes {
    /// Tasks created or changed, each with its READY sequence number.
    pub put: Vec<(Task, u64)>,
    pub removed: Vec<TaskId>,
    /// The next lease id, persisted so lease ids never repeat across restarts
    /// (a task's old lease id must never become valid again).
    pub next_lease: u64,
    /// Queues whose totals changed (`Some`), or that were forgotten (`None`).
    pub queues: Vec<(String, Option<QueueTotals>)>,
    /// Queues paused (`true`) or resumed.
    pub paused: Vec<(String, bool)>,
    /// Schedules created, changed or fired (`Some`), or deleted (`None`).
    pub schedules: Vec<(String, Option<StoredSchedule>)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty()
            && self.removed.is_empty()
            && self.queues.is_empty()
            && self.paused.is_empty()
            && self.schedules.is_empty()
    }
}

pub struct Table {
    /// Per-queue settings the table needs after finding a task by id
    /// (backoff, retention, dedup window).
    policies: Arc<Policies>,
    /// Every task, as a compact record.
    tasks: Slab,
    /// The queue, kind and lease-holder names the records refer to.
    names: Names,
    /// Where each task sits by state (ready order, lease deadlines, due times,
    /// purge times).
    idx: Indexes,
    /// Latest task per (queue, dedup_key).
    dedup: HashMap<(String, String), TaskId>,
    /// Task created by each (queue, request_id), while that task is kept.
    requests: HashMap<(String, String), TaskId>,
    /// Next READY sequence number (FIFO order).
    next_seq: u64,
    /// Lease ids, never repeating (see [`lease_ids`]).
    lease_ids: LeaseIds,
    /// Whether to record changes (the embedded store does, memory does not).
    track: bool,
    /// Bounds on what the table holds.
    limits: Limits,
    /// Tasks held per queue: a queue exists while it holds one (its entries
    /// in the indexes go with its last task, purged after its retention).
    queue_tasks: HashMap<Sym, usize>,
    /// Payload bytes of every task held (against `limits.max_queued_bytes`).
    held_bytes: u64,
    /// Tasks changed since the last [`Table::take_changes`].
    dirty: Vec<TaskId>,
    /// Tasks removed since the last [`Table::take_changes`].
    removed: Vec<TaskId>,
    /// Queues whose totals changed since the last [`Table::take_changes`].
    dirty_queues: Vec<Sym>,
    /// Queues forgotten since the last [`Table::take_changes`].
    forgotten: Vec<String>,
    /// Queues whose delivery is paused (held or not).
    paused: std::collections::BTreeSet<String>,
    /// Pauses and resumes since the last [`Table::take_changes`].
    paused_changes: Vec<(String, bool)>,
    /// Each rate-limited queue's token bucket (not persisted: a restarted
    /// broker starts with full buckets).
    buckets: HashMap<String, Bucket>,
    /// Periodic schedules by name, with their last fired due time.
    schedules: std::collections::BTreeMap<String, StoredSchedule>,
    /// Schedules changed since the last [`Table::take_changes`].
    schedule_changes: Vec<String>,
    /// Who waits for whom (derived from the records).
    graph: dependencies::Graph,
}

impl Table {
    pub fn new(policies: Arc<Policies>, track: bool) -> Self {
        Self {
            policies,
            tasks: Slab::default(),
            names: Names::default(),
            idx: Indexes::default(),
            dedup: HashMap::new(),
            requests: HashMap::new(),
            next_seq: 1,
            lease_ids: LeaseIds::default(),
            track,
            limits: Limits::UNLIMITED,
            queue_tasks: HashMap::new(),
            held_bytes: 0,
            dirty: Vec::new(),
            removed: Vec::new(),
            dirty_queues: Vec::new(),
            forgotten: Vec::new(),
            paused: Default::default(),
            paused_changes: Vec::new(),
            buckets: HashMap::new(),
            schedules: Default::default(),
            schedule_changes: Vec::new(),
            graph: Default::default(),
        }
    }

    /// Puts back a task read from disk, as it was.
    pub fn restore(&mut self, task: Task, ready_seq: u64) {
        self.next_seq = self.next_seq.max(ready_seq + 1);
        if let Some(l) = &task.lease {
            self.lease_ids.seen(l.id);
        }
        self.index_lookups(&task);
        let id = task.id;
        let record = Record::new(task, ready_seq, &mut self.names);
        index(&mut self.idx, &self.policies, &self.names, id, &record);
        *self.queue_tasks.entry(record.queue).or_default() += 1;
        self.held_bytes += record.payload_len() as u64;
        if let Some(old) = self.tasks.insert(id, record) {
            self.held_bytes -= old.payload_len() as u64;
            self.forget_task_of(old.queue);
            old.release(&mut self.names);
        }
        self.register(id);
    }

    /// Puts `policies` in force for the next operations (see
    /// [`crate::core::queue::QueueRegistry`]).
    pub fn use_policies(&mut self, policies: Arc<Policies>) {
        if !Arc::ptr_eq(&self.policies, &policies) {
            self.policies = policies;
        }
    }

    /// Lease ids below `next` were handed out before (read back from disk).
    pub fn restore_lease_counter(&mut self, next: u64) {
        self.lease_ids.restore(next);
    }

    /// Whether the last operation started a new block of lease ids: its
    /// answer waits for its own commit (see [`lease_ids`]).
    pub fn take_lease_reserved(&mut self) -> bool {
        self.lease_ids.take_reserved()
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// The task `request_id` created in `queue`, if kept.
    #[cfg(test)]
    pub fn request(&self, queue: &str, request_id: &str) -> Option<TaskId> {
        self.requests.get(&(queue.to_owned(), request_id.to_owned())).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The records touched since the last call.
    pub fn take_changes(&mut self) -> Changes {
        let mut ids = std::mem::take(&mut self.dirty);
        ids.sort_unstable();
        ids.dedup();
        let put = ids
            .iter()
            .filter_map(|&id| {
                let record = self.tasks.get(&id)?;
                Some((record.to_task(id, &self.names), record.ready_seq))
            })
            .collect();
        let mut queues: Vec<_> = std::mem::take(&mut self.forgotten).into_iter().map(|q| (q, None)).collect();
        let mut dirty = std::mem::take(&mut self.dirty_queues);
        dirty.sort_unstable_by_key(|q| self.names.resolve(*q).to_owned());
        dirty.dedup();
        for q in dirty {
            if let Some(book) = self.idx.books.get(&q) {
                queues.push((self.names.resolve(q).to_owned(), Some(book.totals)));
            }
        }
        Changes {
            put,
            removed: std::mem::take(&mut self.removed),
            next_lease: self.lease_ids.mark(),
            queues,
            paused: std::mem::take(&mut self.paused_changes),
            schedules: self.take_schedule_changes(),
        }
    }

    /// Counts `event` in the totals of `queue`.
    fn count(&mut self, queue: Sym, event: Event) {
        self.idx.books.entry(queue).or_default().totals.count(event);
        if self.track {
            self.dirty_queues.push(queue);
        }
    }

    pub fn enqueue(&mut self, tasks: Vec<NewTask>, now: Millis) -> Result<Vec<Enqueued>, StoreError> {
        self.check_room(&tasks, now)?;
        let missing = self.missing_dependencies(&tasks, now);
        if !missing.is_empty() {
            return Err(StoreError::DependencyNotFound(missing));
        }
        Ok(tasks.into_iter().map(|t| self.enqueue_one(t, now)).collect())
    }

    fn enqueue_one(&mut self, new: NewTask, now: Millis) -> Enqueued {
        if let Some(id) = self.existing(&new, now) {
            return Enqueued { task: self.tasks[&id].to_task(id, &self.names), deduplicated: true };
        }
        let mut id = TaskId::generate(now);
        while self.tasks.contains_key(&id) {
            id = TaskId::generate(now);
        }
        let task = Task::create(id, new, now);
        let ready_seq = if task.state == TaskState::Ready { self.take_seq() } else { 0 };
        self.index_lookups(&task);
        let record = Record::new(task.clone(), ready_seq, &mut self.names);
        index(&mut self.idx, &self.policies, &self.names, id, &record);
        *self.queue_tasks.entry(record.queue).or_default() += 1;
        self.held_bytes += record.payload_len() as u64;
        self.mark(id);
        self.count(record.queue, Event::Enqueued);
        self.tasks.insert(id, record);
        if task.state != TaskState::Waiting {
            return Enqueued { task, deduplicated: false };
        }
        self.start_waiting(id, now);
        Enqueued { task: self.tasks[&id].to_task(id, &self.names), deduplicated: false }
    }

    /// The task a request_id or dedup_key points to, if it still counts.
    fn existing(&self, new: &NewTask, now: Millis) -> Option<TaskId> {
        if !new.request_id.is_empty() {
            let key = (new.queue.clone(), new.request_id.clone());
            if let Some(&id) = self.requests.get(&key).filter(|id| self.tasks.contains_key(id)) {
                return Some(id);
            }
        }
        if new.dedup_key.is_empty() {
            return None;
        }
        let key = (new.queue.clone(), new.dedup_key.clone());
        let id = *self.dedup.get(&key)?;
        let task = self.tasks.get(&id)?;
        let window = self.policies.get(self.names.resolve(task.queue)).dedup_window.as_millis() as Millis;
        (!task.state.is_final() || task.update_time + window > now).then_some(id)
    }

    fn index_lookups(&mut self, task: &Task) {
        if !task.request_id.is_empty() {
            self.requests.insert((task.queue.clone(), task.request_id.clone()), task.id);
        }
        if !task.dedup_key.is_empty() {
            self.dedup.insert((task.queue.clone(), task.dedup_key.clone()), task.id);
        }
    }

    pub fn ack_many(&mut self, items: Vec<AckItem>, now: Millis) -> Vec<Result<Task, StoreError>> {
        items.into_iter().map(|i| self.ack(i.id, i.lease_id, i.result, now)).collect()
    }

    pub fn ack(
        &mut self,
        id: TaskId,
        lease_id: u64,
        result: Vec<u8>,
        now: Millis,
    ) -> Result<Task, StoreError> {
        let queue = self.check_lease(id, lease_id, now)?.queue;
        self.count(queue, Event::Acked);
        Ok(self.transition(id, now, |t| {
            t.state = transition::on_ack();
            t.set_result(result);
            t.clear_lease();
        }))
    }

    pub fn nack(
        &mut self,
        id: TaskId,
        lease_id: u64,
        spec: NackSpec,
        now: Millis,
    ) -> Result<Task, StoreError> {
        let task = self.check_lease(id, lease_id, now)?;
        let backoff = &self.policies.get(self.names.resolve(task.queue)).retry_backoff;
        let request = transition::NackRequest {
            retry_after: spec.retry_after,
            no_retry: spec.no_retry,
            backoff,
            jitter_sample: spec.jitter_sample,
        };
        let retry = transition::on_nack(task.attempt, task.max_attempts, &request, now);
        let queue = task.queue;
        self.count(queue, Event::Nacked);
        if retry == Retry::Dead {
            self.count(queue, Event::Died);
        }
        Ok(self.transition(id, now, |t| {
            t.set_last_error(spec.error);
            t.clear_lease();
            t.retry(retry);
        }))
    }

    pub fn extend(
        &mut self,
        id: TaskId,
        lease_id: u64,
        by: Millis,
        now: Millis,
    ) -> Result<Millis, StoreError> {
        self.check_lease(id, lease_id, now)?;
        self.transition_in_place(id, now, |t| t.set_lease_expire(now + by));
        Ok(now + by)
    }

    pub fn cancel(&mut self, id: TaskId, now: Millis) -> Result<Task, StoreError> {
        let task = self.tasks.get(&id).ok_or(StoreError::TaskNotFound(id))?;
        match transition::on_cancel(task.state) {
            Cancel::AlreadyCanceled => Ok(task.to_task(id, &self.names)),
            Cancel::Finished => Err(StoreError::TaskFinished(id)),
            Cancel::Cancel { .. } => Ok(self.transition(id, now, |t| t.state = TaskState::Canceled)),
        }
    }

    pub fn get(&self, id: TaskId) -> Result<Task, StoreError> {
        self.tasks.get(&id).map(|t| t.to_task(id, &self.names)).ok_or(StoreError::TaskNotFound(id))
    }

    pub fn requeue_expired(&mut self, now: Millis) -> Swept {
        let due = take_due(&self.idx.leased, now);
        let mut swept = Swept::default();
        for id in due {
            let Some(task) = self.tasks.get(&id) else { continue };
            let lease_id = task.holder().map_or(0, |(lease_id, _)| lease_id);
            let (queue, retry) = (task.queue, transition::on_expiry(task.attempt, task.max_attempts));
            swept.expired.push((id, lease_id));
            self.count(queue, Event::Expired);
            if retry == Retry::Dead {
                self.count(queue, Event::Died);
            }
            if let Some(task) = self.tasks.get(&id) {
                let queue = self.names.resolve(task.queue);
                // Its permits free: workers waiting on the queue (or, for a
                // semaphore, on any queue) may take another task.
                swept.freed_semaphores |= task.sems() != names::Sym::NONE;
                if self.policies.get(queue).caps_leases() && !swept.ready_queues.iter().any(|q| q == queue) {
                    swept.ready_queues.push(queue.to_owned());
                }
            }
            self.transition_in_place(id, now, |t| {
                t.clear_lease();
                if retry == Retry::Dead {
                    t.set_last_error(transition::expiry_error(t.attempt, t.max_attempts));
                }
                t.retry(retry);
            });
            self.note(&mut swept, id);
        }
        swept
    }

    /// Cancels undelivered tasks past their deadline, then makes due
    /// SCHEDULED tasks READY.
    pub fn promote_due(&mut self, now: Millis) -> Swept {
        let mut swept = Swept::default();
        for id in self.expire_due(now) {
            self.note(&mut swept, id);
        }
        let due = take_due(&self.idx.scheduled, now);
        for id in due {
            self.transition_in_place(id, now, |t| t.state = TaskState::Ready);
            self.note(&mut swept, id);
        }
        swept
    }

    pub fn purge_finished(&mut self, now: Millis) -> Swept {
        let mut due = pop_due(&mut self.idx.finished, now);
        due.retain(|id| !self.hold(*id));
        for id in &due {
            self.remove_task(*id, now);
        }
        if !due.is_empty() {
            self.shrink_maps();
        }
        Swept { count: due.len(), ..Swept::default() }
    }

    /// Removes a task and everything that refers to it.
    fn remove_task(&mut self, id: TaskId, now: Millis) {
        let Some(task) = self.tasks.remove(&id) else { return };
        unindex(&mut self.idx, &self.names, id, &task);
        self.graph_forget(id);
        if !task.state.is_final() {
            // Removed unfinished (a purge): its waiters see it CANCELED.
            self.ended(id, TaskState::Canceled, task.depends_on(), now);
        }
        let queue = self.names.resolve(task.queue);
        if !task.request_id().is_empty() {
            let key = (queue.to_owned(), task.request_id().to_owned());
            if self.requests.get(&key) == Some(&id) {
                self.requests.remove(&key);
            }
        }
        if !task.dedup_key().is_empty() {
            let key = (queue.to_owned(), task.dedup_key().to_owned());
            if self.dedup.get(&key) == Some(&id) {
                self.dedup.remove(&key);
            }
        }
        self.forget_task_of(task.queue);
        self.held_bytes -= task.payload_len() as u64;
        task.release(&mut self.names);
        if self.track {
            self.removed.push(id);
        }
    }

    pub fn next_timer(&self) -> Option<Millis> {
        [&self.idx.leased, &self.idx.scheduled, &self.idx.finished, &self.idx.expiring]
            .into_iter()
            .filter_map(|set| set.first().map(|(at, _)| *at))
            .min()
    }

    fn check_lease(&self, id: TaskId, lease_id: u64, now: Millis) -> Result<&Record, StoreError> {
        let task = self.tasks.get(&id).ok_or(StoreError::TaskNotFound(id))?;
        // Fencing reads only fixed-size fields: the hollow task costs no allocation.
        lease::check(&task.hollow(id), lease_id, now).map_err(StoreError::from)?;
        Ok(task)
    }

    /// [`Self::transition_in_place`], returning the changed task.
    fn transition(&mut self, id: TaskId, now: Millis, change: impl FnOnce(&mut Record)) -> Task {
        self.transition_in_place(id, now, change);
        self.tasks[&id].to_task(id, &self.names)
    }

    /// Applies `change` to a task, moving it between indexes. A task that
    /// enters READY goes to the back of its priority level. A lease that
    /// `change` replaces or removes gives back its holder's name.
    fn transition_in_place(&mut self, id: TaskId, now: Millis, change: impl FnOnce(&mut Record)) {
        let task = self.tasks.get_mut(&id).expect("transition of a task in the table");
        let before = task.state;
        let holder = task.holder();
        unindex(&mut self.idx, &self.names, id, task);
        change(task);
        if let Some((lease_id, worker)) = holder {
            if task.holder().map(|(id, _)| id) != Some(lease_id) {
                self.names.release(worker);
            }
        }
        task.update_time = now;
        if task.state == TaskState::Ready && before != TaskState::Ready {
            task.ready_seq = self.next_seq;
            self.next_seq += 1;
        }
        index(&mut self.idx, &self.policies, &self.names, id, task);
        if self.track {
            self.dirty.push(id);
        }
        if !before.is_final() && task.state.is_final() {
            let (state, depends_on) = (task.state, task.depends_on().to_vec());
            self.ended(id, state, &depends_on, now);
        }
    }

    /// Records a swept task's outcome.
    fn note(&self, swept: &mut Swept, id: TaskId) {
        swept.count += 1;
        swept.changed.push(id);
        let task = &self.tasks[&id];
        let queue = self.names.resolve(task.queue);
        if task.state == TaskState::Ready && !swept.ready_queues.iter().any(|q| q == queue) {
            swept.ready_queues.push(queue.to_owned());
        }
    }

    fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq - 1
    }

    fn mark(&mut self, id: TaskId) {
        if self.track {
            self.dirty.push(id);
        }
    }
}
