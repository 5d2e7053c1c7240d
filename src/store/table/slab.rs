//! The records by task id, packed: records sit in a `Vec` and a small map
//! points from id to slot.
//!
//! A `HashMap<TaskId, Record>` touches every bucket it has, and it has up to
//! twice as many as tasks right after it grows; here only the id map (24-byte
//! buckets) carries that slack, and the records take one slot each. Records
//! live in fixed-size chunks, so growing never moves them: a million-task
//! table grows without a stall while it holds the lock. Freed slots are reused.
//!
//! After a large drain the slab gives memory back: once fewer than a
//! quarter of the slots it ever used hold a record, a removal compacts it
//! (records moved to the lowest slots, the id map rebuilt at its size). That
//! costs one pass over the records left, at most once per three quarters of
//! the slots freed, so removal stays O(1) amortized.

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
    /// Records by slot, [`CHUNK`] slots per chunk; `None` is a free slot
    /// (listed in `free`).
    chunks: Vec<Vec<Option<Record>>>,
    /// Slots in use or free (the next new slot's number).
    used: u32,
    free: Vec<u32>,
}

/// Slots per chunk.
const CHUNK: usize = 4096;

impl Slab {
    fn at(&self, slot: u32) -> &Option<Record> {
        let slot = slot as usize;
        &self.chunks[slot / CHUNK][slot % CHUNK]
    }

    fn at_mut(&mut self, slot: u32) -> &mut Option<Record> {
        let slot = slot as usize;
        &mut self.chunks[slot / CHUNK][slot % CHUNK]
    }

    pub fn get(&self, id: &TaskId) -> Option<&Record> {
        let slot = *self.slots.get(&key(*id))?;
        self.at(slot).as_ref()
    }

    pub fn get_mut(&mut self, id: &TaskId) -> Option<&mut Record> {
        let slot = *self.slots.get(&key(*id))?;
        self.at_mut(slot).as_mut()
    }

    pub fn contains_key(&self, id: &TaskId) -> bool {
        self.slots.contains_key(&key(*id))
    }

    /// Puts `record` under `id`, returning the record it replaces.
    pub fn insert(&mut self, id: TaskId, record: Record) -> Option<Record> {
        if let Some(&slot) = self.slots.get(&key(id)) {
            return self.at_mut(slot).replace(record);
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                *self.at_mut(slot) = Some(record);
                slot
            }
            None => {
                let slot = self.used;
                self.used = slot.checked_add(1).expect("fewer than 2^32 tasks");
                if (slot as usize).is_multiple_of(CHUNK) {
                    self.chunks.push(Vec::with_capacity(CHUNK));
                }
                self.chunks.last_mut().expect("a chunk with room").push(Some(record));
                slot
            }
        };
        self.slots.insert(key(id), slot);
        None
    }

    pub fn remove(&mut self, id: &TaskId) -> Option<Record> {
        let slot = self.slots.remove(&key(*id))?;
        self.free.push(slot);
        let record = self.at_mut(slot).take();
        if self.used as usize > CHUNK && self.len() * 4 < self.used as usize {
            self.compact();
        }
        record
    }

    /// Moves every record to the lowest slots and drops the chunks, the free
    /// list and the map slack left over.
    fn compact(&mut self) {
        let old_slots = std::mem::take(&mut self.slots);
        let mut old_chunks = std::mem::take(&mut self.chunks);
        self.free = Vec::new();
        self.used = 0;
        self.slots = HashMap::with_capacity(old_slots.len());
        for (key, slot) in old_slots {
            let slot = slot as usize;
            let Some(record) = old_chunks[slot / CHUNK][slot % CHUNK].take() else { continue };
            let new = self.used;
            self.used += 1;
            if (new as usize).is_multiple_of(CHUNK) {
                self.chunks.push(Vec::with_capacity(CHUNK));
            }
            self.chunks.last_mut().expect("a chunk with room").push(Some(record));
            self.slots.insert(key, new);
        }
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
            depends_on: Vec::new(),
            on_dependency_failure: Default::default(),
            expire_time: None,
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
            concurrency_key: String::new(),
            semaphores: Vec::new(),
        };
        Record::new(Task::create(TaskId(0), new, 0), 0, names)
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
        assert_eq!((slab.used, slab[&c].priority, slab.len()), (2, 5, 2), "slot reused");
    }

    #[test]
    fn a_large_drain_gives_the_memory_back() {
        let mut names = Names::default();
        let mut slab = Slab::default();
        let n = 8 * CHUNK as u128;
        for i in 0..n {
            slab.insert(TaskId(i), record(&mut names, (i % 10) as u8));
        }
        let (chunks, map) = (slab.chunks.len(), slab.slots.capacity());
        assert_eq!(chunks, 8);
        // Keep every 100th task.
        for i in (0..n).filter(|i| i % 100 != 0) {
            slab.remove(&TaskId(i));
        }
        assert_eq!(slab.len(), (n as usize).div_ceil(100));
        assert_eq!(slab.chunks.len(), 1, "chunks after the drain (from {chunks})");
        assert!(slab.slots.capacity() * 8 < map, "id map capacity {} (from {map})", slab.slots.capacity());
        assert!(slab.free.capacity() < CHUNK, "free list capacity {}", slab.free.capacity());
        for i in (0..n).step_by(100) {
            assert_eq!(slab[&TaskId(i)].priority, (i % 10) as u8, "task {i} kept");
        }
        assert!(slab.get(&TaskId(1)).is_none());
        // And it fills again as before.
        for i in n..n + 2 * CHUNK as u128 {
            slab.insert(TaskId(i), record(&mut names, 1));
        }
        assert_eq!(slab.len(), (n as usize).div_ceil(100) + 2 * CHUNK);
    }

    #[test]
    fn records_span_chunks() {
        let mut names = Names::default();
        let mut slab = Slab::default();
        for i in 0..(2 * CHUNK as u128 + 3) {
            slab.insert(TaskId(i), record(&mut names, (i % 10) as u8));
        }
        assert_eq!((slab.chunks.len(), slab.len()), (3, 2 * CHUNK + 3));
        assert_eq!(slab[&TaskId(CHUNK as u128 + 7)].priority, ((CHUNK + 7) % 10) as u8);
    }
}
