//! The commit that last changed each task, while that commit may not be
//! durable yet: a lease waits for the commits of the tasks it hands out
//! (the ones that made them READY), not for every commit before it, so a
//! delivery does not queue behind other workers' acks on their way to disk.

use std::collections::HashMap;

use crate::core::task::TaskId;

#[derive(Default)]
pub struct PendingCommits {
    by_task: HashMap<TaskId, u64>,
    /// Durable entries are dropped once the map grows to this size.
    prune_at: usize,
}

/// The map is pruned of durable entries no sooner than at this size.
const PRUNE_MIN: usize = 1024;

impl PendingCommits {
    /// `ids` were changed by commit `seq`; commits up to `durable` are on disk.
    pub fn record(&mut self, ids: impl Iterator<Item = TaskId>, seq: u64, durable: u64) {
        for id in ids {
            self.by_task.insert(id, seq);
        }
        if self.by_task.len() >= self.prune_at.max(PRUNE_MIN) {
            self.by_task.retain(|_, s| *s > durable);
            self.prune_at = self.by_task.len() * 2;
        }
    }

    /// The newest commit that last changed one of `ids` and may not be
    /// durable (above `durable`), if any.
    pub fn newest(&self, ids: &[TaskId], durable: u64) -> Option<u64> {
        ids.iter().filter_map(|id| self.by_task.get(id).copied()).filter(|s| *s > durable).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_undurable_commit_of_the_tasks_asked_about() {
        let mut p = PendingCommits::default();
        p.record([TaskId(1), TaskId(2)].into_iter(), 5, 0);
        p.record([TaskId(2)].into_iter(), 7, 0);
        p.record([TaskId(3)].into_iter(), 8, 0);
        assert_eq!(p.newest(&[TaskId(1), TaskId(2)], 0), Some(7));
        assert_eq!(p.newest(&[TaskId(1)], 6), None, "commit 5 is durable");
        assert_eq!(p.newest(&[TaskId(9)], 0), None, "never changed here");
    }

    #[test]
    fn durable_entries_are_pruned_as_the_map_grows() {
        let mut p = PendingCommits::default();
        for i in 0..10 * PRUNE_MIN as u128 {
            p.record([TaskId(i)].into_iter(), i as u64 + 1, i as u64);
        }
        assert!(p.by_task.len() < 2 * PRUNE_MIN, "{} entries kept", p.by_task.len());
    }
}
