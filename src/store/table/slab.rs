//! The records by task id, packed: records sit in a `Vec` and a small map
//! points from id to slot.
//!
//! A `HashMap<TaskId, Record>` touches every bucket it has, and it has up to
//! twice as many as tasks right after it grows; here only the id map (24-byte
//! buckets) carries that slack, and the records take one slot each (a `Vec`
//! only touches the slots it uses). Freed slots are reused.

use std::collections::HashMap;
use std::ops::Index;

use super::record::Record;
use crate::core::task::TaskId;

/// A task id as two words: 8-byte aligned, so a map bucket is 24 bytes, not 32.
type Key = [u64; 2];

fn key(id: TaskId) -> Key {
    [(id.0 >> 64) as u64, id.0 as u64]
}

#[derive(Default)]
pub struct Slab {
    /// Slot of each task's record.
    slots: HashMap<Key, u32>,
    /// Records by slot; `None` is a free slot (listed in `free`).
    records: Vec<Option<Record>>,
    free: Vec<u32>,
}

impl Slab {
    pub fn get(&self, id: &TaskId) -> Option<&Record> {
        let slot = *self.slots.get(&key(*id))?;
        self.records[slot as usize].as_ref()
    }

    pub fn get_mut(&mut self, id: &TaskId) -> Option<&mut Record> {
        let slot = *self.slots.get(&key(*id))?;
        self.records[slot as usize].as_mut()
    }

    pub fn contains_key(&self, id: &TaskId) -> bool {
        self.slots.contains_key(&key(*id))
    }

    /// Puts `record` under `id`, returning the record it replaces.
    pub fn insert(&mut self, id: TaskId, record: Record) -> Option<Record> {
        if let Some(&slot) = self.slots.get(&key(id)) {
            return self.records[slot as usize].replace(record);
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.records[slot as usize] = Some(record);
                slot
            }
            None => {
                self.records.push(Some(record));
                u32::try_from(self.records.len() - 1).expect("fewer than 2^32 tasks")
            }
        };
        self.slots.insert(key(id), slot);
        None
    }

    pub fn remove(&mut self, id: &TaskId) -> Option<Record> {
        let slot = self.slots.remove(&key(*id))?;
        self.free.push(slot);
        self.records[slot as usize].take()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

impl Index<&TaskId> for Slab {
    type Output = Record;

    fn index(&self, id: &TaskId) -> &Record {
        self.get(id).expect("a task in the table")
    }
}

#[cfg(test)]
mod tests {
    use super::super::names::Names;
    use super::*;
    use crate::core::task::{NewTask, Task};

    fn record(names: &mut Names, priority: u8) -> Record {
        let new = NewTask {
            queue: "q".into(),
            kind: "k".into(),
            payload: vec![],
            content_type: String::new(),
            priority,
            headers: Default::default(),
            max_attempts: 1,
            scheduled_time: 0,
            dedup_key: String::new(),
            request_id: String::new(),
        };
        Record::new(Task::create(TaskId(0), new, 0), names)
    }

    #[test]
    fn records_are_found_by_id_and_slots_are_reused() {
        let mut names = Names::default();
        let mut slab = Slab::default();
        let (a, b, c) = (TaskId(1), TaskId(u128::MAX), TaskId(1 << 64));
        assert!(slab.insert(a, record(&mut names, 1)).is_none());
        assert!(slab.insert(b, record(&mut names, 2)).is_none());
        assert_eq!((slab.len(), slab[&a].priority, slab[&b].priority), (2, 1, 2));
        assert_eq!(slab.insert(a, record(&mut names, 3)).map(|r| r.priority), Some(1));
        slab.get_mut(&a).unwrap().priority = 4;
        assert_eq!(slab.remove(&a).map(|r| r.priority), Some(4));
        assert!(slab.remove(&a).is_none() && !slab.contains_key(&a) && slab.get(&c).is_none());
        slab.insert(c, record(&mut names, 5));
        assert_eq!((slab.records.len(), slab[&c].priority, slab.len()), (2, 5, 2), "slot reused");
    }
}
