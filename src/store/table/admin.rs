//! What the operations API asks of the table: a queue's numbers, pausing,
//! listing, purging and redriving its tasks.

use super::indexes::{index, unindex};
use super::Table;
use crate::core::stats::{purgeable, state_index, QueueStats, QueueTotals};
use crate::core::task::{Task, TaskId, TaskState};
use crate::core::Millis;
use crate::store::Swept;

impl Table {
    /// Queues holding tasks or paused, by name.
    pub fn queue_names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.queue_tasks.keys().map(|q| self.names.resolve(*q).to_owned()).collect();
        names.extend(self.paused.iter().cloned());
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The numbers of `queue` (zeros for a queue the table does not hold).
    pub fn queue_stats(&self, queue: &str) -> QueueStats {
        let paused = self.paused.contains(queue);
        let Some(sym) = self.names.get(queue) else { return QueueStats { paused, ..QueueStats::default() } };
        let Some(book) = self.idx.books.get(&sym) else {
            return QueueStats { paused, ..QueueStats::default() };
        };
        QueueStats {
            counts: book.counts,
            totals: book.totals,
            oldest_ready_time: self.oldest_ready(sym),
            paused,
        }
    }

    /// When the READY task of `queue` waiting longest became ready: the
    /// head of one of its lanes (FIFO within a lane).
    fn oldest_ready(&self, queue: super::names::Sym) -> Option<Millis> {
        let ready = self.idx.ready.get(&queue)?;
        ready.heads().filter_map(|id| self.tasks.get(&id).map(|t| t.update_time)).min()
    }

    /// Pauses or resumes delivery from `queue`; whether that changed anything.
    pub fn set_paused(&mut self, queue: &str, paused: bool) -> bool {
        let changed = if paused { self.paused.insert(queue.to_owned()) } else { self.paused.remove(queue) };
        if changed && self.track {
            self.paused_changes.push((queue.to_owned(), paused));
        }
        changed
    }

    /// Puts back a queue's totals read from disk (after its tasks).
    pub fn restore_totals(&mut self, queue: &str, totals: QueueTotals) {
        if let Some(book) = self.names.get(queue).and_then(|q| self.idx.books.get_mut(&q)) {
            book.totals = totals;
        }
    }

    /// Removes the tasks of `queue` in `states` (LEASED ones are never
    /// touched); returns how many.
    /// Tasks waiting on a removed unfinished task see it CANCELED at `now`.
    pub fn purge_queue(&mut self, queue: &str, states: &[TaskState], now: Millis) -> u64 {
        let mut states: Vec<TaskState> = states.iter().copied().filter(|s| purgeable(*s)).collect();
        // A state named twice is purged (and counted) once.
        states.sort_unstable_by_key(|s| state_index(*s));
        states.dedup();
        let mut ids = Vec::new();
        for state in states {
            ids.extend(self.ids_in(queue, state, None, usize::MAX));
        }
        for id in &ids {
            self.remove_task(*id, now);
        }
        ids.len() as u64
    }

    /// Up to `limit` tasks of `queue` in `state` with ids after `after`, by
    /// id (creation time).
    pub fn list_tasks(
        &self,
        queue: &str,
        state: TaskState,
        after: Option<TaskId>,
        limit: usize,
    ) -> Vec<Task> {
        self.ids_in(queue, state, after, limit)
            .into_iter()
            .filter_map(|id| self.tasks.get(&id).map(|t| t.to_task(id, &self.names)))
            .collect()
    }

    /// Ids of `queue` in `state`, after `after`, by id, at most `limit`.
    fn ids_in(&self, queue: &str, state: TaskState, after: Option<TaskId>, limit: usize) -> Vec<TaskId> {
        let Some(sym) = self.names.get(queue) else { return Vec::new() };
        let Some(book) = self.idx.books.get(&sym) else { return Vec::new() };
        let from = after.map_or(0, |a| a.0.saturating_add(1));
        if let Some(ids) = book.ids(state) {
            return ids.range(TaskId(from)..).take(limit).map(|(id, _)| *id).collect();
        }
        // READY and LEASED are ordered by delivery and deadline: collect
        // this queue's, then sort (their number is what waits or runs now).
        let mut ids: Vec<TaskId> = match state {
            TaskState::Ready => self.idx.ready.get(&sym).map(|r| r.ids().collect()).unwrap_or_default(),
            _ => self
                .idx
                .leased
                .iter()
                .map(|(_, id)| *id)
                .filter(|id| self.tasks.get(id).is_some_and(|t| t.queue == sym))
                .collect(),
        };
        ids.retain(|id| id.0 >= from);
        ids.sort_unstable();
        ids.truncate(limit);
        ids
    }

    /// DEAD tasks of `queue` back to READY with attempt 0 (`last_error`
    /// kept until the next attempt): those of `ids`, or when `ids` is empty
    /// the oldest dead ones; at most `limit` (0: no limit). Tasks that are
    /// not DEAD, or not of this queue, are skipped.
    pub fn redrive(&mut self, queue: &str, ids: &[TaskId], limit: usize, now: Millis) -> Swept {
        let limit = if limit == 0 { usize::MAX } else { limit };
        let mut chosen: Vec<TaskId> = if ids.is_empty() {
            self.ids_in(queue, TaskState::Dead, None, limit)
        } else {
            let sym = self.names.get(queue);
            // An id given twice counts once against the limit.
            let mut seen = std::collections::HashSet::new();
            ids.iter()
                .copied()
                .filter(|id| {
                    self.tasks.get(id).is_some_and(|t| Some(t.queue) == sym && t.state == TaskState::Dead)
                })
                .filter(|id| seen.insert(*id))
                .take(limit)
                .collect()
        };
        chosen.sort_unstable();
        let mut swept = Swept::default();
        for id in chosen {
            let task = self.tasks.get_mut(&id).expect("a chosen task is in the table");
            unindex(&mut self.idx, &self.names, id, task);
            task.state = TaskState::Ready;
            task.attempt = 0;
            task.update_time = now;
            task.ready_seq = self.next_seq;
            self.next_seq += 1;
            index(&mut self.idx, &self.policies, &self.names, id, task);
            self.reopened(id);
            self.mark(id);
            self.note(&mut swept, id);
        }
        swept
    }
}
