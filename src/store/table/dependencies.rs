//! The table's task graph: which tasks wait for which (across queues), how a
//! dependency's end settles its waiters in the same operation, which
//! finished tasks are kept for their dependents, and deadlines.
//!
//! Decisions come from [`crate::core::dependency`]; this file only keeps the
//! reverse indexes and applies the outcomes through
//! [`Table::transition_in_place`], so every change is persisted and indexed
//! like any other. The indexes are derived from the records (each task's
//! `depends_on` and pending set), so [`Table::restore`] rebuilds them in any
//! order.

use std::collections::{HashMap, HashSet};

use super::Table;
use crate::core::dependency::{self, Resolution};
use crate::core::task::{NewTask, TaskId, TaskState};
use crate::core::Millis;
use crate::store::StoreEvent;

/// Who waits for whom.
#[derive(Default)]
pub struct Graph {
    /// Per task, the tasks whose pending set names it (entries of tasks that
    /// stopped waiting meanwhile are skipped when it ends).
    waiters: HashMap<TaskId, Vec<TaskId>>,
    /// Per task, how many unfinished tasks name it in `depends_on`: while
    /// above 0 it is kept, whatever its retention, so their workers can read
    /// its result.
    readers: HashMap<TaskId, u32>,
    /// Finished tasks past their retention, kept for their readers.
    held: HashSet<TaskId>,
    /// Tasks that ended and whose waiters are still to be settled.
    ended: Vec<(TaskId, TaskState)>,
    /// Whether [`Table::settle_dependents`] is running (it then picks up what
    /// the changes it makes end, instead of recursing).
    settling: bool,
    /// Tasks changed as a side effect of an operation on another task
    /// (dependents released or canceled, tasks expired at lease time), for
    /// the store to tell the broker ([`Table::take_side_changes`]).
    side: Vec<TaskId>,
}

impl Table {
    /// The dependencies named by `tasks` that the table does not hold (an
    /// item answered by its request id or dedup key is not looked at).
    pub(super) fn missing_dependencies(&self, tasks: &[NewTask], now: Millis) -> Vec<TaskId> {
        let mut missing: Vec<TaskId> = tasks
            .iter()
            .filter(|t| !t.depends_on.is_empty() && self.existing(t, now).is_none())
            .flat_map(|t| t.depends_on.iter().copied())
            .filter(|d| !self.tasks.contains_key(d))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        missing
    }

    /// A task just created WAITING: registers it as a reader of its
    /// dependencies, settles those that already ended, and waits on the rest.
    pub(super) fn start_waiting(&mut self, id: TaskId, now: Millis) {
        self.register_reader(id);
        let ended: Vec<(TaskId, TaskState)> = self.tasks[&id]
            .pending()
            .iter()
            .filter_map(|d| self.tasks.get(d).map(|t| (*d, t.state)))
            .filter(|(_, state)| state.is_final())
            .collect();
        self.graph.settling = true;
        for (dep, state) in ended {
            self.resolve_one(id, dep, state, now);
        }
        self.graph.settling = false;
        self.register_waiter(id);
        self.settle_dependents(now);
    }

    /// Enters a task read back in the graph. (Its pending dependencies have
    /// not ended: a dependency's end settles its waiters in the same step.)
    pub(super) fn register(&mut self, id: TaskId) {
        self.register_reader(id);
        self.register_waiter(id);
    }

    fn register_reader(&mut self, id: TaskId) {
        let task = &self.tasks[&id];
        if task.state.is_final() {
            return;
        }
        for dep in task.depends_on() {
            *self.graph.readers.entry(*dep).or_default() += 1;
        }
    }

    fn register_waiter(&mut self, id: TaskId) {
        let task = &self.tasks[&id];
        if task.state != TaskState::Waiting {
            return;
        }
        for dep in task.pending() {
            self.graph.waiters.entry(*dep).or_default().push(id);
        }
    }

    /// Task `id` left the unfinished states (or the table, `removed`): its
    /// dependencies lose a reader, and its waiters are settled.
    pub(super) fn ended(&mut self, id: TaskId, state: TaskState, depends_on: &[TaskId], now: Millis) {
        for dep in depends_on {
            self.release_reader(*dep);
        }
        if self.graph.waiters.contains_key(&id) {
            self.graph.ended.push((id, state));
            self.settle_dependents(now);
        }
    }

    /// A task left the finished states (a redrive): it reads its
    /// dependencies again while it runs.
    pub(super) fn reopened(&mut self, id: TaskId) {
        let deps = self.tasks[&id].depends_on().to_vec();
        for dep in deps.into_iter().filter(|d| self.tasks.contains_key(d)) {
            *self.graph.readers.entry(dep).or_default() += 1;
        }
    }

    /// Task `id` left the table: it is no longer held.
    pub(super) fn graph_forget(&mut self, id: TaskId) {
        self.graph.held.remove(&id);
    }

    fn release_reader(&mut self, dep: TaskId) {
        let Some(n) = self.graph.readers.get_mut(&dep) else { return };
        *n -= 1;
        if *n == 0 {
            self.graph.readers.remove(&dep);
            if self.graph.held.remove(&dep) {
                // Finished (only finished tasks are held): no waiters, so
                // the time plays no part.
                self.remove_task(dep, 0);
            }
        }
    }

    /// Whether finished task `id`, past its retention, must stay for its
    /// readers (it is then removed when the last one finishes).
    pub(super) fn hold(&mut self, id: TaskId) -> bool {
        let read = self.graph.readers.contains_key(&id);
        if read {
            self.graph.held.insert(id);
        }
        read
    }

    /// Settles the waiters of every task that ended, and of those that end
    /// because of it, down the graph (iteratively: a long chain does not
    /// deepen the stack).
    fn settle_dependents(&mut self, now: Millis) {
        if self.graph.settling {
            return;
        }
        self.graph.settling = true;
        while let Some((dep, state)) = self.graph.ended.pop() {
            for waiter in self.graph.waiters.remove(&dep).unwrap_or_default() {
                self.resolve_one(waiter, dep, state, now);
            }
        }
        self.graph.settling = false;
    }

    /// Applies [`dependency::resolve`] of `dep` (ended in `state`) to `id`.
    fn resolve_one(&mut self, id: TaskId, dep: TaskId, state: TaskState, now: Millis) {
        let Some(task) = self.tasks.get(&id) else { return };
        if task.state != TaskState::Waiting || !task.pending().contains(&dep) {
            return;
        }
        let (policy, due) = (task.on_dependency_failure(), task.scheduled_time);
        self.transition_in_place(id, now, |t| {
            match t.edit_pending(|p| dependency::resolve(p, dep, state, policy, due, now)) {
                Resolution::Go(next) => t.state = next,
                Resolution::Cancel(error) => {
                    t.state = TaskState::Canceled;
                    t.set_last_error(error);
                }
                Resolution::Waiting | Resolution::Unchanged => {}
            }
        });
        self.graph.side.push(id);
    }

    /// CANCELED as expired (its deadline passed before delivery).
    pub(super) fn expire(&mut self, id: TaskId, now: Millis) {
        self.transition_in_place(id, now, |t| {
            t.state = TaskState::Canceled;
            t.set_last_error(dependency::EXPIRED.to_owned());
        });
        self.graph.side.push(id);
    }

    /// Cancels every undelivered task whose deadline passed; returns them.
    pub(super) fn expire_due(&mut self, now: Millis) -> Vec<TaskId> {
        let due = super::indexes::take_due(&self.idx.expiring, now);
        for id in &due {
            self.expire(*id, now);
        }
        due
    }

    /// Tasks changed since the last call as a side effect of operations on
    /// other tasks, each once.
    pub fn take_side_changes(&mut self) -> Vec<TaskId> {
        let mut side = std::mem::take(&mut self.graph.side);
        side.sort_unstable();
        side.dedup();
        side
    }

    /// What the broker is told of side changes `ids`: each changed (for its
    /// watchers), the queues that got READY tasks (for their workers), and
    /// the due times of those that became SCHEDULED (for the timer loop).
    pub fn side_events(&self, ids: &[TaskId]) -> Vec<StoreEvent> {
        let mut ready: Vec<(String, usize)> = Vec::new();
        let mut timers = Vec::new();
        for task in ids.iter().filter_map(|id| self.tasks.get(id)) {
            if task.state == TaskState::Scheduled {
                timers.push(StoreEvent::Timer(task.scheduled_time));
            }
            if task.state == TaskState::Ready {
                let queue = self.names.resolve(task.queue);
                match ready.iter_mut().find(|(q, _)| q == queue) {
                    Some((_, n)) => *n += 1,
                    None => ready.push((queue.to_owned(), 1)),
                }
            }
        }
        let changed = ids.iter().map(|id| StoreEvent::Changed(*id));
        let ready = ready.into_iter().map(|(q, n)| StoreEvent::Ready(q, n));
        changed.chain(ready).chain(timers).collect()
    }
}
