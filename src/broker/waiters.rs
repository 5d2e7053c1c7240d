//! Wake-ups for idle workers (long-polls and streams): one `Notify` per queue,
//! fired when the queue gets ready tasks.
//!
//! A queue that got `n` ready tasks wakes at most `n` waiters (`notify_one`
//! each), not all of them: with many idle streams on a queue, waking all for
//! every task costs a wasted lease attempt per stream per task. A waiter that
//! is woken but stops waiting before it looks passes its wake-up on (tokio's
//! `Notified` forwards an unreceived `notify_one` when dropped).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Most waiters one call wakes: a big batch is taken by a few leases anyway.
const MAX_WAKE_PER_CALL: usize = 64;

#[derive(Default)]
pub struct Waiters {
    queues: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Waiters {
    /// The notifier of `queue` (created on first use).
    pub fn of(&self, queue: &str) -> Arc<Notify> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = queues.get(queue) {
            return n.clone();
        }
        queues.entry(queue.to_owned()).or_default().clone()
    }

    /// Wakes everyone waiting on any queue (after missed wake-ups).
    pub fn wake_all(&self) {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        for n in queues.values() {
            n.notify_waiters();
        }
    }

    /// Wakes everyone waiting on `queue` (when the number of ready tasks is
    /// not known).
    pub fn wake(&self, queue: &str) {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = queues.get(queue) {
            n.notify_waiters();
        }
    }

    /// Wakes up to `ready` waiters of `queue`, one per task that became ready.
    pub fn wake_for(&self, queue: &str, ready: usize) {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = queues.get(queue) {
            for _ in 0..ready.min(MAX_WAKE_PER_CALL) {
                n.notify_one();
            }
        }
    }
}
