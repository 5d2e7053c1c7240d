//! The table's indexes: where each task sits, by state.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::names::{Names, Sym};
use super::permits::Permits;
use super::ready::{ReadyQueue, Slot};
use super::record::Record;
use crate::core::queue::Policies;
use crate::core::stats::{QueueCounts, QueueTotals};
use crate::core::task::{TaskId, TaskState};
use crate::core::transition;
use crate::core::Millis;

/// Where each task sits, by state. A task is in exactly one index, the one of
/// its state.
#[derive(Default)]
pub struct Indexes {
    /// READY tasks per queue (by its interned name), in delivery order.
    pub ready: HashMap<Sym, ReadyQueue>,
    /// The permits LEASED tasks hold (derived here, from the LEASED index).
    pub permits: Permits,
    /// LEASED tasks by lease deadline: the reaper's work list.
    pub leased: BTreeSet<(Millis, TaskId)>,
    /// SCHEDULED tasks by due time: the scheduler's work list.
    pub scheduled: BTreeSet<(Millis, TaskId)>,
    /// WAITING, SCHEDULED and READY tasks with a deadline, by deadline: the
    /// expiry sweep's work list.
    pub expiring: BTreeSet<(Millis, TaskId)>,
    /// Finished tasks by removal time (see [`transition::purge_time`]).
    pub finished: BTreeSet<(Millis, TaskId)>,
    /// Per queue, the removal time of the task that finished last.
    pub last_purge: HashMap<Sym, Millis>,
    /// Per queue, what the operations API shows of it.
    pub books: HashMap<Sym, Book>,
}

/// One queue's counts, totals, and its tasks by id in the states the ready
/// and lease indexes do not already list per queue (so listing, purging and
/// redriving them never scans other queues).
#[derive(Default)]
pub struct Book {
    pub counts: QueueCounts,
    pub totals: QueueTotals,
    /// SCHEDULED, SUCCEEDED, DEAD, CANCELED and WAITING tasks in creation
    /// order, each finished one with its removal time (its key in
    /// [`Indexes::finished`], so a redriven task leaves that index exactly).
    pub by_id: [BTreeMap<TaskId, Millis>; 5],
}

impl Book {
    /// The ids of `state`, if the book keeps them.
    pub fn ids(&self, state: TaskState) -> Option<&BTreeMap<TaskId, Millis>> {
        by_id_slot(state).map(|i| &self.by_id[i])
    }

    fn enter(&mut self, id: TaskId, state: TaskState, purge_at: Millis) {
        self.counts.add(state, 1);
        if let Some(i) = by_id_slot(state) {
            self.by_id[i].insert(id, purge_at);
        }
    }

    /// `id` leaves `state` (moved on, or removed); its removal time if finished.
    pub fn leave(&mut self, id: TaskId, state: TaskState) -> Option<Millis> {
        self.counts.sub(state, 1);
        by_id_slot(state).and_then(|i| self.by_id[i].remove(&id))
    }
}

fn by_id_slot(state: TaskState) -> Option<usize> {
    match state {
        TaskState::Scheduled => Some(0),
        TaskState::Succeeded => Some(1),
        TaskState::Dead => Some(2),
        TaskState::Canceled => Some(3),
        TaskState::Waiting => Some(4),
        TaskState::Ready | TaskState::Leased => None,
    }
}

/// Removes and returns the ids whose time key is at or before `now`.
/// (Finished tasks leave their index this way only: their key holds the
/// removal time their retention gave them, whatever the policy is now.)
pub fn pop_due(set: &mut BTreeSet<(Millis, TaskId)>, now: Millis) -> Vec<TaskId> {
    let later = set.split_off(&(now.saturating_add(1), TaskId(0)));
    let due = std::mem::replace(set, later);
    due.into_iter().map(|(_, id)| id).collect()
}

/// Ids whose time key is at or before `now`.
pub fn take_due(set: &BTreeSet<(Millis, TaskId)>, now: Millis) -> Vec<TaskId> {
    set.range(..=(now, TaskId(u128::MAX))).map(|(_, id)| *id).collect()
}

/// When a task finishing now is removed.
fn purge_time(idx: &Indexes, policies: &Policies, names: &Names, task: &Record) -> Millis {
    let retention = policies.get(names.resolve(task.queue)).retention.as_millis() as Millis;
    transition::purge_time(task.update_time, retention, idx.last_purge.get(&task.queue).copied())
}

/// The deadline key of `task` in [`Indexes::expiring`], if it has one there.
fn expiring(task: &Record) -> Option<Millis> {
    let undelivered = matches!(task.state, TaskState::Waiting | TaskState::Scheduled | TaskState::Ready);
    task.expire_time().filter(|_| undelivered)
}

pub fn index(idx: &mut Indexes, policies: &Policies, names: &Names, id: TaskId, task: &Record) {
    let mut purge_at = 0;
    if let Some(at) = expiring(task) {
        idx.expiring.insert((at, id));
    }
    match task.state {
        TaskState::Waiting => {}
        TaskState::Ready => {
            idx.ready.entry(task.queue).or_default().insert(slot(task), id);
        }
        TaskState::Leased => {
            if idx.leased.insert((task.lease_expire().unwrap_or(0), id)) {
                idx.permits.take(task, names);
            }
        }
        TaskState::Scheduled => {
            idx.scheduled.insert((task.scheduled_time, id));
        }
        TaskState::Succeeded | TaskState::Dead | TaskState::Canceled => {
            purge_at = purge_time(idx, policies, names, task);
            idx.last_purge.insert(task.queue, purge_at);
            idx.finished.insert((purge_at, id));
        }
    }
    idx.books.entry(task.queue).or_default().enter(id, task.state, purge_at);
}

pub fn unindex(idx: &mut Indexes, names: &Names, id: TaskId, task: &Record) {
    let purge_at = idx.books.get_mut(&task.queue).and_then(|book| book.leave(id, task.state));
    if let Some(at) = expiring(task) {
        idx.expiring.remove(&(at, id));
    }
    match task.state {
        TaskState::Waiting => {}
        TaskState::Ready => {
            if let Some(ready) = idx.ready.get_mut(&task.queue) {
                ready.remove(slot(task));
            }
        }
        TaskState::Leased => {
            if idx.leased.remove(&(task.lease_expire().unwrap_or(0), id)) {
                idx.permits.give_back(task, names);
            }
        }
        TaskState::Scheduled => {
            idx.scheduled.remove(&(task.scheduled_time, id));
        }
        // Only a redrive moves a finished (DEAD) task on; otherwise it
        // leaves its index when it is removed.
        TaskState::Succeeded | TaskState::Dead | TaskState::Canceled => {
            if let Some(at) = purge_at {
                idx.finished.remove(&(at, id));
            }
        }
    }
}

/// Where a READY task sits in its queue's order.
pub fn slot(task: &Record) -> Slot {
    Slot { priority: task.priority, key: task.key(), sems: task.sems(), seq: task.ready_seq }
}
