//! One queue's READY tasks in delivery order: highest priority first; within
//! a priority level, `concurrency_key` groups take turns
//! ([`Rotation`]); within a group, FIFO.
//!
//! A group is split in lanes by the set of semaphores its tasks need, so a
//! task held back by a saturated semaphore is passed over without scanning:
//! the group's next task is the oldest head among the lanes whose
//! semaphores have room (FIFO among what can go).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use super::names::Sym;
use crate::core::flow::Rotation;
use crate::core::task::TaskId;

/// A queue's READY tasks.
#[derive(Default)]
pub struct ReadyQueue {
    /// Priority levels, highest first.
    levels: BTreeMap<Reverse<u8>, Level>,
}

/// The READY tasks of one priority level.
#[derive(Default)]
struct Level {
    groups: HashMap<Sym, Group>,
    /// Whose turn it is (every key in `groups`, once).
    turn: Rotation<Sym>,
}

/// The READY tasks of one `concurrency_key` at one priority level.
#[derive(Default)]
struct Group {
    /// `(semaphore set, tasks by READY sequence)`: usually one lane.
    lanes: Vec<(Sym, BTreeMap<u64, TaskId>)>,
}

/// Where a task sits in the order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub priority: u8,
    pub key: Sym,
    pub sems: Sym,
    pub seq: u64,
}

/// A task [`ReadyQueue::next`] found, for [`ReadyQueue::served`].
#[derive(Clone, Copy, Debug)]
pub struct Pick {
    pub id: TaskId,
    priority: u8,
    position: usize,
}

impl ReadyQueue {
    pub fn insert(&mut self, slot: Slot, id: TaskId) {
        let level = self.levels.entry(Reverse(slot.priority)).or_default();
        let group = level.groups.entry(slot.key).or_insert_with(|| {
            level.turn.join(slot.key);
            Group::default()
        });
        match group.lanes.iter_mut().find(|(s, _)| *s == slot.sems) {
            Some((_, lane)) => {
                lane.insert(slot.seq, id);
            }
            None => group.lanes.push((slot.sems, BTreeMap::from([(slot.seq, id)]))),
        }
    }

    pub fn remove(&mut self, slot: Slot) {
        let Some(level) = self.levels.get_mut(&Reverse(slot.priority)) else { return };
        let Some(group) = level.groups.get_mut(&slot.key) else { return };
        let Some(i) = group.lanes.iter().position(|(s, _)| *s == slot.sems) else { return };
        group.lanes[i].1.remove(&slot.seq);
        if group.lanes[i].1.is_empty() {
            group.lanes.swap_remove(i);
        }
        if group.lanes.is_empty() {
            level.groups.remove(&slot.key);
            level.turn.leave(slot.key);
        }
        if level.groups.is_empty() {
            self.levels.remove(&Reverse(slot.priority));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// The next task to deliver, passing over groups whose key has no room
    /// (`key_open`) and lanes whose semaphores have none (`lane_open`).
    pub fn next(
        &self,
        mut key_open: impl FnMut(Sym) -> bool,
        mut lane_open: impl FnMut(Sym) -> bool,
    ) -> Option<Pick> {
        for (&Reverse(priority), level) in &self.levels {
            for (position, key) in level.turn.iter().enumerate() {
                if !key_open(key) {
                    continue;
                }
                let group = &level.groups[&key];
                let head = group
                    .lanes
                    .iter()
                    .filter(|(sems, _)| lane_open(*sems))
                    .filter_map(|(_, lane)| lane.first_key_value())
                    .min_by_key(|(seq, _)| **seq);
                if let Some((_, &id)) = head {
                    return Some(Pick { id, priority, position });
                }
            }
        }
        None
    }

    /// Every READY task of the queue, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.lanes().flat_map(|lane| lane.values().copied())
    }

    /// The oldest task of every lane (FIFO within a lane): among them is
    /// the task that has waited longest.
    pub fn heads(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.lanes().filter_map(|lane| lane.values().next().copied())
    }

    fn lanes(&self) -> impl Iterator<Item = &BTreeMap<u64, TaskId>> + '_ {
        self.levels
            .values()
            .flat_map(|l| l.groups.values())
            .flat_map(|g| g.lanes.iter().map(|(_, lane)| lane))
    }

    /// The group of `pick` was served: the next group takes its turn.
    pub fn served(&mut self, pick: Pick) {
        if let Some(level) = self.levels.get_mut(&Reverse(pick.priority)) {
            level.turn.served(pick.position);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut ReadyQueue, slots: &HashMap<TaskId, Slot>, blocked_lane: Option<Sym>) -> Vec<u128> {
        let mut out = Vec::new();
        while let Some(pick) = q.next(|_| true, |s| Some(s) != blocked_lane) {
            q.served(pick);
            q.remove(slots[&pick.id]);
            out.push(pick.id.0);
        }
        out
    }

    fn fill(tasks: &[(u128, u8, Sym, Sym)]) -> (ReadyQueue, HashMap<TaskId, Slot>) {
        let mut q = ReadyQueue::default();
        let mut slots = HashMap::new();
        for (seq, &(id, priority, key, sems)) in tasks.iter().enumerate() {
            let slot = Slot { priority, key, sems, seq: seq as u64 };
            q.insert(slot, TaskId(id));
            slots.insert(TaskId(id), slot);
        }
        (q, slots)
    }

    #[test]
    fn keys_take_turns_within_a_level_and_higher_levels_go_first() {
        let none = Sym::NONE;
        let mut names = super::super::names::Names::default();
        let (a, b) = (names.acquire("a"), names.acquire("b"));
        let (mut q, slots) =
            fill(&[(1, 0, a, none), (2, 0, a, none), (3, 0, a, none), (4, 0, b, none), (5, 9, b, none)]);
        assert_eq!(drain(&mut q, &slots, None), [5, 1, 4, 2, 3]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_blocked_lane_is_passed_over_and_fifo_holds_among_the_others() {
        let mut names = super::super::names::Names::default();
        let sel = names.acquire("selenium");
        let (mut q, slots) = fill(&[
            (1, 0, Sym::NONE, sel),
            (2, 0, Sym::NONE, Sym::NONE),
            (3, 0, Sym::NONE, sel),
            (4, 0, Sym::NONE, Sym::NONE),
        ]);
        assert_eq!(drain(&mut q, &slots, Some(sel)), [2, 4]);
        assert_eq!(drain(&mut q, &slots, None), [1, 3]);
    }

    #[test]
    fn a_closed_key_is_passed_over() {
        let mut names = super::super::names::Names::default();
        let (a, b) = (names.acquire("a"), names.acquire("b"));
        let (q, _) = fill(&[(1, 0, a, Sym::NONE), (2, 0, b, Sym::NONE)]);
        assert_eq!(q.next(|k| k != a, |_| true).map(|p| p.id.0), Some(2));
        assert!(q.next(|_| false, |_| true).is_none());
    }
}
