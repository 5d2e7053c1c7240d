//! What an operator sees of a queue: tasks held by state, totals since the
//! queue was created, whether it is paused.
//!
//! Stores keep these numbers; this module only says what they mean and
//! which transition moves which number ([`QueueTotals::count`]), so every
//! store counts the same way.

use super::task::TaskState;
use super::Millis;

/// The states a task can be in, in the order counts list them.
pub const STATES: [TaskState; 7] = [
    TaskState::Scheduled,
    TaskState::Ready,
    TaskState::Leased,
    TaskState::Succeeded,
    TaskState::Dead,
    TaskState::Canceled,
    TaskState::Waiting,
];

/// Where `state` sits in [`STATES`] (and in [`QueueCounts`]).
pub fn state_index(state: TaskState) -> usize {
    match state {
        TaskState::Scheduled => 0,
        TaskState::Ready => 1,
        TaskState::Leased => 2,
        TaskState::Succeeded => 3,
        TaskState::Dead => 4,
        TaskState::Canceled => 5,
        TaskState::Waiting => 6,
    }
}

/// Tasks held now, one number per state in [`STATES`] order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts(pub [u64; 7]);

impl QueueCounts {
    pub fn get(&self, state: TaskState) -> u64 {
        self.0[state_index(state)]
    }

    pub fn add(&mut self, state: TaskState, n: u64) {
        self.0[state_index(state)] += n;
    }

    pub fn sub(&mut self, state: TaskState, n: u64) {
        let c = &mut self.0[state_index(state)];
        *c = c.saturating_sub(n);
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// Monotonic counts since the queue was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueTotals {
    pub enqueued: u64,
    pub delivered: u64,
    pub acked: u64,
    pub nacked: u64,
    /// Tasks that became DEAD (by Nack or by lease expiry).
    pub dead: u64,
    /// Leases that ran out.
    pub expired: u64,
}

/// A counted event of a task's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Enqueued,
    Delivered,
    Acked,
    Nacked,
    Died,
    Expired,
}

impl QueueTotals {
    /// Counts `event` once.
    pub fn count(&mut self, event: Event) {
        let n = match event {
            Event::Enqueued => &mut self.enqueued,
            Event::Delivered => &mut self.delivered,
            Event::Acked => &mut self.acked,
            Event::Nacked => &mut self.nacked,
            Event::Died => &mut self.dead,
            Event::Expired => &mut self.expired,
        };
        *n += 1;
    }
}

/// One queue as a store sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub counts: QueueCounts,
    /// When the READY task waiting longest became ready (`None`: none is).
    pub oldest_ready_time: Option<Millis>,
    pub totals: QueueTotals,
    pub paused: bool,
}

/// States an operator may purge: every state but LEASED (a worker holds it).
pub fn purgeable(state: TaskState) -> bool {
    state != TaskState::Leased
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_the_state_order_and_never_go_below_zero() {
        let mut c = QueueCounts::default();
        for (i, s) in STATES.iter().enumerate() {
            assert_eq!(state_index(*s), i);
            c.add(*s, i as u64 + 1);
        }
        assert_eq!(c.get(TaskState::Dead), 5);
        assert_eq!(c.total(), 28);
        assert_eq!(c.get(TaskState::Waiting), 7);
        c.sub(TaskState::Scheduled, 7);
        assert_eq!(c.get(TaskState::Scheduled), 0);
    }

    #[test]
    fn leased_tasks_cannot_be_purged() {
        assert!(!purgeable(TaskState::Leased));
        assert!(STATES.iter().filter(|s| purgeable(**s)).count() == 6);
    }
}
