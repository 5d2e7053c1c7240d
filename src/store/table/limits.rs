//! The table's side of the store budgets ([`Limits`]): how many queues hold
//! tasks, refusing a batch that would go over a bound before anything
//! changes, and forgetting a queue with its last task.

use std::collections::HashMap;
use std::hash::Hash;

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
        self.lease_ids.carry_over(&stale.lease_ids);
    }

    /// How many queues hold tasks.
    pub fn queue_count(&self) -> usize {
        self.queue_tasks.len()
    }

    /// Gives back the slack a burst left in the lookup maps (a `HashMap`
    /// keeps its capacity when emptied); called after a purge, where a large
    /// drain ends. The slab gives back its own ([`super::slab`]).
    pub(super) fn shrink_maps(&mut self) {
        shrink(&mut self.dedup);
        shrink(&mut self.requests);
        shrink(&mut self.queue_tasks);
        shrink(&mut self.idx.ready);
        shrink(&mut self.idx.last_purge);
        self.names.shrink();
    }

    /// One task of `queue` is gone; with its last, the queue's index entries.
    pub(super) fn forget_task_of(&mut self, queue: Sym) {
        let Some(n) = self.queue_tasks.get_mut(&queue) else { return };
        *n -= 1;
        if *n == 0 {
            self.queue_tasks.remove(&queue);
            self.idx.ready.remove(&queue);
            self.idx.last_purge.remove(&queue);
            self.idx.books.remove(&queue);
            if self.track {
                self.dirty_queues.retain(|q| *q != queue);
                self.forgotten.push(self.names.resolve(queue).to_owned());
            }
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

/// Shrinks `map` to what it holds once it is four times larger (and not
/// small): a map grown back pays at most one rehash per such shrink.
fn shrink<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 1024 && map.len() * 4 < map.capacity() {
        map.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::super::Table;
    use crate::core::queue::{Policies, QueuePolicy};
    use crate::core::task::NewTask;

    fn task(i: usize) -> NewTask {
        NewTask {
            depends_on: Vec::new(),
            on_dependency_failure: Default::default(),
            expire_time: None,
            queue: format!("q{}", i % 50),
            kind: format!("kind-{i}"),
            payload: vec![],
            content_type: String::new(),
            priority: 0,
            headers: BTreeMap::new(),
            max_attempts: 1,
            scheduled_time: 0,
            dedup_key: format!("d{i}"),
            request_id: format!("r{i}"),
            concurrency_key: String::new(),
            semaphores: Vec::new(),
        }
    }

    #[test]
    fn a_purge_after_a_large_burst_gives_the_maps_memory_back() {
        let policies = Arc::new(Policies::new(BTreeMap::new(), QueuePolicy::default()));
        let mut table = Table::new(policies, false);
        let ids: Vec<_> = (0..20_000).map(|i| table.enqueue(vec![task(i)], 1).unwrap()[0].task.id).collect();
        let before = (table.requests.capacity(), table.dedup.capacity(), table.names.capacity());
        for id in &ids[100..] {
            table.cancel(*id, 2).unwrap();
        }
        let day = 24 * 3600 * 1000;
        table.purge_finished(2 + 2 * day);
        assert_eq!(table.len(), 100);
        let after = (table.requests.capacity(), table.dedup.capacity(), table.names.capacity());
        assert!(
            after.0 * 8 < before.0 && after.1 * 8 < before.1 && after.2 * 8 < before.2,
            "capacities (requests, dedup, names) {after:?}, before the drain {before:?}"
        );
        // What is left is still found.
        for (i, id) in ids[..100].iter().enumerate() {
            assert_eq!(table.get(*id).unwrap().kind, format!("kind-{i}"));
            assert_eq!(table.requests.get(&(format!("q{}", i % 50), format!("r{i}"))), Some(id));
        }
    }
}
