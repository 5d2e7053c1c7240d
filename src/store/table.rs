//! The task table: every task and the indexes that order them, as one
//! in-memory state machine.
//!
//! Both the memory store and the embedded store run their operations on a
//! `Table` under one lock; the embedded store then persists the records the
//! operation touched ([`Table::take_changes`]). The table owns the state
//! transitions; the rules it applies (ordering, fencing, backoff) come from
//! [`crate::core`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::{AckItem, Enqueued, LeaseSpec, NackSpec, StoreError, Swept};
use crate::core::lease;
use crate::core::priority::ReadyKey;
use crate::core::queue::Policies;
use crate::core::task::{Lease, NewTask, Task, TaskId, TaskState};
use crate::core::Millis;

/// Where each task sits, by state. A task is in exactly one index, the one of
/// its state.
#[derive(Default)]
struct Indexes {
    /// READY tasks per queue, in delivery order.
    ready: HashMap<String, BTreeMap<ReadyKey, TaskId>>,
    /// LEASED tasks by lease deadline: the reaper's work list.
    leased: BTreeSet<(Millis, TaskId)>,
    /// SCHEDULED tasks by due time: the scheduler's work list.
    scheduled: BTreeSet<(Millis, TaskId)>,
    /// Finished tasks by removal time (finish + retention).
    finished: BTreeSet<(Millis, TaskId)>,
}

/// The records an operation created, changed or removed, for persistence.
#[derive(Debug, Default)]
pub struct Changes {
    pub put: Vec<Task>,
    pub removed: Vec<TaskId>,
    /// The next lease id, persisted so lease ids never repeat across restarts
    /// (a task's old lease id must never become valid again).
    pub next_lease: u64,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.removed.is_empty()
    }
}

pub struct Table {
    policies: Arc<Policies>,
    tasks: HashMap<TaskId, Task>,
    idx: Indexes,
    /// Latest task per (queue, dedup_key).
    dedup: HashMap<(String, String), TaskId>,
    /// Task created by each (queue, request_id), while that task is kept.
    requests: HashMap<(String, String), TaskId>,
    /// Next READY sequence number (FIFO order).
    next_seq: u64,
    /// Next lease id: increases forever, so an old lease id never comes back.
    next_lease: u64,
    /// Whether to record changes (the embedded store does, memory does not).
    track: bool,
    dirty: Vec<TaskId>,
    removed: Vec<TaskId>,
}

impl Table {
    pub fn new(policies: Arc<Policies>, track: bool) -> Self {
        Self {
            policies,
            tasks: HashMap::new(),
            idx: Indexes::default(),
            dedup: HashMap::new(),
            requests: HashMap::new(),
            next_seq: 1,
            next_lease: 1,
            track,
            dirty: Vec::new(),
            removed: Vec::new(),
        }
    }

    /// Puts back a task read from disk, as it was.
    pub fn restore(&mut self, task: Task) {
        self.next_seq = self.next_seq.max(task.ready_seq + 1);
        if let Some(l) = &task.lease {
            self.next_lease = self.next_lease.max(l.id + 1);
        }
        self.index_lookups(&task);
        index(&mut self.idx, &self.policies, &task);
        self.tasks.insert(task.id, task);
    }

    /// Lease ids below `next` were handed out before (read back from disk).
    pub fn restore_lease_counter(&mut self, next: u64) {
        self.next_lease = self.next_lease.max(next);
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The records touched since the last call.
    pub fn take_changes(&mut self) -> Changes {
        let mut ids = std::mem::take(&mut self.dirty);
        ids.sort_unstable();
        ids.dedup();
        let put = ids.iter().filter_map(|id| self.tasks.get(id).cloned()).collect();
        Changes { put, removed: std::mem::take(&mut self.removed), next_lease: self.next_lease }
    }

    pub fn enqueue(&mut self, tasks: Vec<NewTask>, now: Millis) -> Vec<Enqueued> {
        tasks.into_iter().map(|t| self.enqueue_one(t, now)).collect()
    }

    fn enqueue_one(&mut self, new: NewTask, now: Millis) -> Enqueued {
        if let Some(task) = self.existing(&new, now) {
            return Enqueued { task: task.clone(), deduplicated: true };
        }
        let mut id = TaskId::generate(now);
        while self.tasks.contains_key(&id) {
            id = TaskId::generate(now);
        }
        let mut task = Task::create(id, new, now);
        if task.state == TaskState::Ready {
            task.ready_seq = self.take_seq();
        }
        self.index_lookups(&task);
        index(&mut self.idx, &self.policies, &task);
        self.mark(id);
        self.tasks.insert(id, task.clone());
        Enqueued { task, deduplicated: false }
    }

    /// The task a request_id or dedup_key points to, if it still counts.
    fn existing(&self, new: &NewTask, now: Millis) -> Option<&Task> {
        if !new.request_id.is_empty() {
            let key = (new.queue.clone(), new.request_id.clone());
            if let Some(t) = self.requests.get(&key).and_then(|id| self.tasks.get(id)) {
                return Some(t);
            }
        }
        if new.dedup_key.is_empty() {
            return None;
        }
        let key = (new.queue.clone(), new.dedup_key.clone());
        let task = self.dedup.get(&key).and_then(|id| self.tasks.get(id))?;
        let window = self.policies.get(&task.queue).dedup_window.as_millis() as Millis;
        (!task.state.is_final() || task.update_time + window > now).then_some(task)
    }

    fn index_lookups(&mut self, task: &Task) {
        if !task.request_id.is_empty() {
            self.requests.insert((task.queue.clone(), task.request_id.clone()), task.id);
        }
        if !task.dedup_key.is_empty() {
            self.dedup.insert((task.queue.clone(), task.dedup_key.clone()), task.id);
        }
    }

    pub fn lease(&mut self, spec: &LeaseSpec, now: Millis) -> Vec<Task> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for (queue, quota) in &spec.queues {
            let want = out.len() + (*quota).min(spec.max_tasks - out.len());
            self.lease_from(queue, want, spec, now, &mut out, &mut bytes);
        }
        for (queue, _) in &spec.queues {
            self.lease_from(queue, spec.max_tasks, spec, now, &mut out, &mut bytes);
        }
        out
    }

    /// Leases from `queue` until `out` holds `until` tasks or the queue is empty.
    fn lease_from(
        &mut self,
        queue: &str,
        until: usize,
        spec: &LeaseSpec,
        now: Millis,
        out: &mut Vec<Task>,
        bytes: &mut usize,
    ) {
        let duration = spec
            .lease_duration
            .unwrap_or_else(|| self.policies.get(queue).lease_duration.as_millis() as Millis);
        while out.len() < until {
            let Some(&id) = self.idx.ready.get(queue).and_then(|r| r.values().next()) else {
                break;
            };
            let size = self.tasks.get(&id).map_or(0, |t| t.payload.len());
            if !out.is_empty() && *bytes + size > spec.max_bytes {
                break;
            }
            *bytes += size;
            let lease_id = self.next_lease;
            self.next_lease += 1;
            let task = self.transition(id, now, |t| {
                t.state = TaskState::Leased;
                t.attempt += 1;
                t.lease = Some(Lease {
                    id: lease_id,
                    expire_time: now + duration,
                    worker_id: spec.worker_id.clone(),
                });
            });
            out.push(task.clone());
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
        self.check_lease(id, lease_id, now)?;
        Ok(self
            .transition(id, now, |t| {
                t.state = TaskState::Succeeded;
                t.result = result;
                t.lease = None;
            })
            .clone())
    }

    pub fn nack(
        &mut self,
        id: TaskId,
        lease_id: u64,
        spec: NackSpec,
        now: Millis,
    ) -> Result<Task, StoreError> {
        let task = self.check_lease(id, lease_id, now)?;
        let backoff = &self.policies.get(&task.queue).retry_backoff;
        let retry_in = (!spec.no_retry && task.attempts_left())
            .then(|| spec.retry_after.unwrap_or_else(|| backoff.delay(task.attempt, spec.jitter_sample)));
        Ok(self
            .transition(id, now, |t| {
                t.last_error = spec.error;
                t.lease = None;
                match retry_in {
                    None => t.state = TaskState::Dead,
                    Some(0) => t.state = TaskState::Ready,
                    Some(delay) => {
                        t.state = TaskState::Scheduled;
                        t.scheduled_time = now + delay;
                    }
                }
            })
            .clone())
    }

    pub fn extend(
        &mut self,
        id: TaskId,
        lease_id: u64,
        by: Millis,
        now: Millis,
    ) -> Result<Millis, StoreError> {
        self.check_lease(id, lease_id, now)?;
        self.transition(id, now, |t| {
            if let Some(l) = t.lease.as_mut() {
                l.expire_time = now + by;
            }
        });
        Ok(now + by)
    }

    pub fn cancel(&mut self, id: TaskId, now: Millis) -> Result<Task, StoreError> {
        let task = self.tasks.get(&id).ok_or(StoreError::TaskNotFound(id))?;
        match task.state {
            TaskState::Canceled => Ok(task.clone()),
            TaskState::Succeeded | TaskState::Dead => Err(StoreError::TaskFinished(id)),
            TaskState::Scheduled | TaskState::Ready | TaskState::Leased => {
                Ok(self.transition(id, now, |t| t.state = TaskState::Canceled).clone())
            }
        }
    }

    pub fn get(&self, id: TaskId) -> Result<Task, StoreError> {
        self.tasks.get(&id).cloned().ok_or(StoreError::TaskNotFound(id))
    }

    pub fn requeue_expired(&mut self, now: Millis) -> Swept {
        let due = take_due(&self.idx.leased, now);
        let mut swept = Swept::default();
        for id in due {
            let lease_id = self.tasks.get(&id).and_then(|t| t.lease.as_ref()).map_or(0, |l| l.id);
            swept.expired.push((id, lease_id));
            let task = self.transition(id, now, |t| {
                t.lease = None;
                if t.attempts_left() {
                    t.state = TaskState::Ready;
                } else {
                    t.state = TaskState::Dead;
                    t.last_error =
                        format!("lease expired on the last attempt ({} of {})", t.attempt, t.max_attempts);
                }
            });
            note(&mut swept, task);
        }
        swept
    }

    pub fn promote_due(&mut self, now: Millis) -> Swept {
        let due = take_due(&self.idx.scheduled, now);
        let mut swept = Swept::default();
        for id in due {
            let task = self.transition(id, now, |t| t.state = TaskState::Ready);
            note(&mut swept, task);
        }
        swept
    }

    pub fn purge_finished(&mut self, now: Millis) -> Swept {
        let due = take_due(&self.idx.finished, now);
        for id in &due {
            let Some(task) = self.tasks.remove(id) else { continue };
            unindex(&mut self.idx, &self.policies, &task);
            let key = (task.queue.clone(), task.request_id);
            if self.requests.get(&key) == Some(id) {
                self.requests.remove(&key);
            }
            let key = (task.queue, task.dedup_key);
            if self.dedup.get(&key) == Some(id) {
                self.dedup.remove(&key);
            }
            if self.track {
                self.removed.push(*id);
            }
        }
        Swept { count: due.len(), ..Swept::default() }
    }

    pub fn next_timer(&self) -> Option<Millis> {
        [&self.idx.leased, &self.idx.scheduled, &self.idx.finished]
            .into_iter()
            .filter_map(|set| set.first().map(|(at, _)| *at))
            .min()
    }

    fn check_lease(&self, id: TaskId, lease_id: u64, now: Millis) -> Result<&Task, StoreError> {
        let task = self.tasks.get(&id).ok_or(StoreError::TaskNotFound(id))?;
        lease::check(task, lease_id, now).map_err(StoreError::from)?;
        Ok(task)
    }

    /// Applies `change` to a task, moving it between indexes. A task that
    /// enters READY goes to the back of its priority level.
    fn transition(&mut self, id: TaskId, now: Millis, change: impl FnOnce(&mut Task)) -> &Task {
        let task = self.tasks.get_mut(&id).expect("transition of a task in the table");
        let before = task.state;
        unindex(&mut self.idx, &self.policies, task);
        change(task);
        task.update_time = now;
        if task.state == TaskState::Ready && before != TaskState::Ready {
            task.ready_seq = self.next_seq;
            self.next_seq += 1;
        }
        index(&mut self.idx, &self.policies, task);
        if self.track {
            self.dirty.push(id);
        }
        task
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

/// Records a swept task's outcome.
fn note(swept: &mut Swept, task: &Task) {
    swept.count += 1;
    swept.changed.push(task.id);
    if task.state == TaskState::Ready && !swept.ready_queues.contains(&task.queue) {
        swept.ready_queues.push(task.queue.clone());
    }
}

/// Ids whose time key is at or before `now`.
fn take_due(set: &BTreeSet<(Millis, TaskId)>, now: Millis) -> Vec<TaskId> {
    set.range(..=(now, TaskId(u128::MAX))).map(|(_, id)| *id).collect()
}

/// When a finished task is removed.
fn purge_time(policies: &Policies, task: &Task) -> Millis {
    task.update_time + policies.get(&task.queue).retention.as_millis() as Millis
}

fn index(idx: &mut Indexes, policies: &Policies, task: &Task) {
    match task.state {
        TaskState::Ready => {
            let key = ReadyKey::new(task.priority, task.ready_seq);
            idx.ready.entry(task.queue.clone()).or_default().insert(key, task.id);
        }
        TaskState::Leased => {
            let deadline = task.lease.as_ref().map_or(0, |l| l.expire_time);
            idx.leased.insert((deadline, task.id));
        }
        TaskState::Scheduled => {
            idx.scheduled.insert((task.scheduled_time, task.id));
        }
        TaskState::Succeeded | TaskState::Dead | TaskState::Canceled => {
            idx.finished.insert((purge_time(policies, task), task.id));
        }
    }
}

fn unindex(idx: &mut Indexes, policies: &Policies, task: &Task) {
    match task.state {
        TaskState::Ready => {
            if let Some(ready) = idx.ready.get_mut(&task.queue) {
                ready.remove(&ReadyKey::new(task.priority, task.ready_seq));
            }
        }
        TaskState::Leased => {
            let deadline = task.lease.as_ref().map_or(0, |l| l.expire_time);
            idx.leased.remove(&(deadline, task.id));
        }
        TaskState::Scheduled => {
            idx.scheduled.remove(&(task.scheduled_time, task.id));
        }
        TaskState::Succeeded | TaskState::Dead | TaskState::Canceled => {
            idx.finished.remove(&(purge_time(policies, task), task.id));
        }
    }
}
