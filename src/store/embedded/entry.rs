//! What a frame's body holds: a run of [`Entry`] values, each one change of
//! the durable state, postcard-encoded back to back. A group commit is one
//! frame of the changes of every commit in it; a snapshot is the whole
//! state, as the same entries. [`Folded`] is the state they add up to.
//!
//! Task, totals and schedule values are the [`super::stored`] and
//! [`crate::store::schedule_record`] formats, unchanged: the log only says
//! which record changed.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::stored;
use crate::core::task::TaskId;
use crate::store::schedule_record;
use crate::store::table::{Changes, Table};

/// One change of the durable state. Never change a variant; add one.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub enum Entry<'a> {
    /// A task's record (a [`stored`] value), new or replacing the last one.
    Task(u128, &'a [u8]),
    /// A task was removed.
    Removed(u128),
    /// A queue's totals (a [`stored`] totals value), or `None`: forgotten.
    Totals(&'a str, #[serde(borrow)] Option<&'a [u8]>),
    Paused(&'a str, bool),
    /// A schedule (a [`schedule_record`] value), or `None`: deleted.
    Schedule(&'a str, #[serde(borrow)] Option<&'a [u8]>),
    /// Lease ids below this were handed out (kept as the highest seen).
    NextLease(u64),
    /// Alone in the last frame of a snapshot: how many frames came before it.
    End(u64),
}

/// Appends `entry` to a frame's body.
pub fn push(out: &mut Vec<u8>, entry: &Entry<'_>) {
    // Writing into a Vec cannot fail.
    let _ = postcard::to_io(entry, &mut *out);
}

/// Appends the entries of one commit's `changes` (the lease counter is
/// written once per group, by the caller); `scratch` is a buffer to reuse
/// for each record.
pub fn push_changes(out: &mut Vec<u8>, changes: &Changes, scratch: &mut Vec<u8>) {
    for (task, ready_seq) in &changes.put {
        *scratch = stored::encode_into(task, *ready_seq, std::mem::take(scratch));
        push(out, &Entry::Task(task.id.0, scratch));
    }
    for id in &changes.removed {
        push(out, &Entry::Removed(id.0));
    }
    for (queue, totals) in &changes.queues {
        let value = totals.as_ref().map(stored::encode_totals);
        push(out, &Entry::Totals(queue, value.as_deref()));
    }
    for (queue, paused) in &changes.paused {
        push(out, &Entry::Paused(queue, *paused));
    }
    for (name, schedule) in &changes.schedules {
        let value = schedule.as_ref().map(schedule_record::encode);
        push(out, &Entry::Schedule(name, value.as_deref()));
    }
}

/// The entries in a frame's body, in order.
pub fn entries(mut body: &[u8]) -> impl Iterator<Item = Result<Entry<'_>, String>> {
    std::iter::from_fn(move || {
        if body.is_empty() {
            return None;
        }
        match postcard::take_from_bytes::<Entry<'_>>(body) {
            Ok((entry, rest)) => {
                body = rest;
                Some(Ok(entry))
            }
            Err(e) => {
                body = &[];
                Some(Err(format!("undecodable entry: {e}")))
            }
        }
    })
}

/// The durable state as the entries so far add up to: what a snapshot holds
/// and what the table is loaded from. Task records borrow from the bytes
/// read (no copy of each record).
#[derive(Default, Debug)]
pub struct Folded<'a> {
    /// Every task change in log order (`None`: removed) until
    /// [`Folded::finish`]; then each live task once, by id.
    tasks: Vec<(u128, Option<&'a [u8]>)>,
    pub totals: HashMap<String, Vec<u8>>,
    pub paused: HashSet<String>,
    pub schedules: HashMap<String, Vec<u8>>,
    pub next_lease: u64,
}

impl<'a> Folded<'a> {
    /// Applies one frame's entries; `Ok(Some(n))` if it was a snapshot's end
    /// frame saying `n` frames came before it.
    pub fn apply(&mut self, body: &'a [u8]) -> Result<Option<u64>, String> {
        for entry in entries(body) {
            match entry? {
                Entry::Task(id, value) => self.tasks.push((id, Some(value))),
                Entry::Removed(id) => self.tasks.push((id, None)),
                Entry::Totals(queue, Some(value)) => {
                    self.totals.insert(queue.to_owned(), value.to_vec());
                }
                Entry::Totals(queue, None) => {
                    self.totals.remove(queue);
                }
                Entry::Paused(queue, true) => {
                    self.paused.insert(queue.to_owned());
                }
                Entry::Paused(queue, false) => {
                    self.paused.remove(queue);
                }
                Entry::Schedule(name, Some(value)) => {
                    self.schedules.insert(name.to_owned(), value.to_vec());
                }
                Entry::Schedule(name, None) => {
                    self.schedules.remove(name);
                }
                Entry::NextLease(next) => self.next_lease = self.next_lease.max(next),
                Entry::End(count) => return Ok(Some(count)),
            }
        }
        Ok(None)
    }

    /// A task record (an import: no log order to keep).
    pub fn put_task(&mut self, id: u128, value: &'a [u8]) {
        self.tasks.push((id, Some(value)));
    }

    /// Keeps the last word on each task, in id order: a stable sort by id
    /// (cheaper than a map for a million records), then the last of each run.
    pub fn finish(&mut self) {
        self.tasks.sort_by_key(|(id, _)| *id);
        let mut kept: Vec<(u128, Option<&'a [u8]>)> = Vec::with_capacity(self.tasks.len());
        for (id, value) in self.tasks.drain(..) {
            match kept.last_mut() {
                Some(last) if last.0 == id => last.1 = value,
                _ => kept.push((id, value)),
            }
        }
        kept.retain(|(_, value)| value.is_some());
        self.tasks = kept;
    }

    /// The live tasks, by id (after [`Folded::finish`]).
    pub fn tasks(&self) -> impl Iterator<Item = (u128, &'a [u8])> + '_ {
        self.tasks.iter().filter_map(|(id, value)| Some((*id, (*value)?)))
    }

    /// Every entry that rebuilds this state (the end marker aside; after
    /// [`Folded::finish`]).
    pub fn snapshot_entries(&self) -> impl Iterator<Item = Entry<'_>> {
        let tasks = self.tasks().map(|(id, v)| Entry::Task(id, v));
        let totals = self.totals.iter().map(|(q, v)| Entry::Totals(q, Some(v)));
        let paused = self.paused.iter().map(|q| Entry::Paused(q, true));
        let schedules = self.schedules.iter().map(|(n, v)| Entry::Schedule(n, Some(v)));
        tasks.chain(totals).chain(paused).chain(schedules).chain([Entry::NextLease(self.next_lease)])
    }

    /// Decodes every record into `table` (tasks in id order, as they were
    /// created; after [`Folded::finish`]).
    pub fn load_into(&self, table: &mut Table) -> Result<(), String> {
        table.restore_lease_counter(self.next_lease);
        for (id, value) in self.tasks() {
            let stored = stored::decode(value).map_err(|e| format!("task {}: {e}", TaskId(id)))?;
            table.restore(stored.task, stored.ready_seq);
        }
        for (queue, value) in &self.totals {
            let totals = stored::decode_totals(value).map_err(|e| format!("totals of queue {queue}: {e}"))?;
            table.restore_totals(queue, totals);
        }
        for queue in &self.paused {
            table.set_paused(queue, true);
        }
        for (name, value) in &self.schedules {
            let schedule =
                schedule_record::decode(name, value).map_err(|e| format!("schedule {name}: {e}"))?;
            table.restore_schedule(schedule);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_fold_to_the_last_word_on_each_key() {
        let mut body = Vec::new();
        for entry in [
            Entry::Task(1, b"a"),
            Entry::Task(2, b"b"),
            Entry::Task(1, b"a2"),
            Entry::Removed(2),
            Entry::Totals("q", Some(b"t")),
            Entry::Paused("q", true),
            Entry::Paused("r", true),
            Entry::Paused("r", false),
            Entry::Schedule("s", Some(b"x")),
            Entry::Schedule("gone", Some(b"y")),
            Entry::Schedule("gone", None),
            Entry::NextLease(7),
            Entry::NextLease(5),
        ] {
            push(&mut body, &entry);
        }
        let mut folded = Folded::default();
        assert_eq!(folded.apply(&body), Ok(None));
        folded.finish();
        assert_eq!(folded.tasks().collect::<Vec<_>>(), vec![(1, &b"a2"[..])]);
        assert_eq!(folded.totals, HashMap::from([("q".to_owned(), b"t".to_vec())]));
        assert_eq!(folded.paused, HashSet::from(["q".to_owned()]));
        assert_eq!(folded.schedules, HashMap::from([("s".to_owned(), b"x".to_vec())]));
        assert_eq!(folded.next_lease, 7);

        let mut again = Folded::default();
        let mut snapshot = Vec::new();
        for entry in folded.snapshot_entries() {
            push(&mut snapshot, &entry);
        }
        push(&mut snapshot, &Entry::End(1));
        assert_eq!(again.apply(&snapshot), Ok(Some(1)));
        again.finish();
        assert_eq!(again.tasks().collect::<Vec<_>>(), folded.tasks().collect::<Vec<_>>());
        assert_eq!((again.totals, again.paused), (folded.totals, folded.paused));
    }

    #[test]
    fn a_garbled_body_is_an_error_not_a_panic() {
        let mut folded = Folded::default();
        assert!(folded.apply(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
