//! The table's side of the store budgets ([`Limits`]): how many queues hold
//! tasks, refusing a batch that would go over a bound before anything
//! changes, and forgetting a queue with its last task.

use super::names::Sym;
use super::Table;
use crate::core::task::NewTask;
use crate::core::Millis;
use crate::store::{Limits, StoreError};

impl Table {
    /// Puts `limits` in force for the next enqueues.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Takes over what a table keeps only in memory from `stale`, which this
    /// one (loaded from disk after a failed commit) replaces: the limits in
    /// force, and the lease counter (no lease id handed out comes back).
    pub fn carry_over(&mut self, stale: &Table) {
        self.limits = stale.limits;
        self.next_lease = self.next_lease.max(stale.next_lease);
    }

    /// How many queues hold tasks.
    pub fn queue_count(&self) -> usize {
        self.queue_tasks.len()
    }

    /// One task of `queue` is gone; with its last, the queue's index entries.
    pub(super) fn forget_task_of(&mut self, queue: Sym) {
        let Some(n) = self.queue_tasks.get_mut(&queue) else { return };
        *n -= 1;
        if *n == 0 {
            self.queue_tasks.remove(&queue);
            self.idx.ready.remove(&queue);
            self.idx.last_purge.remove(&queue);
        }
    }

    /// Refuses a batch that would go over [`Limits`] (before any change).
    pub(super) fn check_room(&self, tasks: &[NewTask], now: Millis) -> Result<(), StoreError> {
        let (mut count, mut bytes) = (0usize, 0u64);
        for t in tasks {
            if self.existing(t, now).is_none() {
                count += 1;
                bytes += t.payload.len() as u64;
            }
        }
        if self.tasks.len().saturating_add(count) > self.limits.max_tasks {
            return Err(StoreError::Full(format!(
                "the store holds max_tasks = {} tasks",
                self.limits.max_tasks
            )));
        }
        if self.held_bytes.saturating_add(bytes) > self.limits.max_queued_bytes {
            return Err(StoreError::Full(format!(
                "the store holds max_queued_bytes = {} payload bytes",
                self.limits.max_queued_bytes
            )));
        }
        let mut new_queues = std::collections::HashSet::new();
        for t in tasks {
            let held = self.names.get(&t.queue).is_some_and(|q| self.queue_tasks.contains_key(&q));
            if !held
                && new_queues.insert(t.queue.as_str())
                && self.queue_tasks.len() + new_queues.len() > self.limits.max_queues
            {
                return Err(StoreError::QueueLimit(t.queue.clone()));
            }
        }
        Ok(())
    }
}
