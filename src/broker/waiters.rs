//! Wake-ups for long-polling workers: one `Notify` per queue, fired when the
//! queue gets ready tasks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

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

    /// Wakes everyone waiting on `queue`.
    pub fn wake(&self, queue: &str) {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = queues.get(queue) {
            n.notify_waiters();
        }
    }
}
