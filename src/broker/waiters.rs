//! Wake-ups for idle workers (long-polls and streams): one `Notify` per queue,
//! fired when the queue gets ready tasks.
//!
//! A queue that got `n` ready tasks wakes at most `n` waiters (`notify_one`
//! each), not all of them: with many idle streams on a queue, waking all for
//! every task costs a wasted lease attempt per stream per task. A waiter that
//! is woken but stops waiting before it looks passes its wake-up on (tokio's
//! `Notified` forwards an unreceived `notify_one` when dropped).

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Most waiters one call wakes: a big batch is taken by a few leases anyway.
const MAX_WAKE_PER_CALL: usize = 64;

/// The notifier of each queue someone waits on; an entry goes with its last
/// [`Waiter`], so queue names named once (a Lease on a random name) are not
/// kept.
type Queues = Arc<Mutex<HashMap<String, Arc<Notify>>>>;

#[derive(Default)]
pub struct Waiters {
    queues: Queues,
}

/// One waiter's hold on a queue's notifier (derefs to the [`Notify`]).
pub struct Waiter {
    /// `None` only while dropping.
    notify: Option<Arc<Notify>>,
    queue: String,
    queues: Queues,
}

impl Deref for Waiter {
    type Target = Notify;

    fn deref(&self) -> &Notify {
        self.notify.as_deref().expect("a waiter holds its notifier until dropped")
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut queues = lock(&self.queues);
        // Ours is let go under the lock, so the last of several waiters
        // dropping at once sees itself as the last.
        drop(self.notify.take());
        if queues.get(&self.queue).is_some_and(|n| Arc::strong_count(n) == 1) {
            queues.remove(&self.queue);
        }
    }
}

fn lock(queues: &Queues) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
    queues.lock().unwrap_or_else(|p| p.into_inner())
}

impl Waiters {
    /// A hold on the notifier of `queue` (created on first use, dropped with
    /// its last waiter).
    pub fn of(&self, queue: &str) -> Waiter {
        let mut queues = lock(&self.queues);
        let notify = match queues.get(queue) {
            Some(n) => n.clone(),
            None => queues.entry(queue.to_owned()).or_default().clone(),
        };
        Waiter { notify: Some(notify), queue: queue.to_owned(), queues: self.queues.clone() }
    }

    /// How many queues have waiters.
    pub fn len(&self) -> usize {
        lock(&self.queues).len()
    }

    /// Wakes everyone waiting on any queue (after missed wake-ups).
    pub fn wake_all(&self) {
        let queues = lock(&self.queues);
        for n in queues.values() {
            n.notify_waiters();
        }
    }

    /// Wakes everyone waiting on `queue` (when the number of ready tasks is
    /// not known).
    pub fn wake(&self, queue: &str) {
        let queues = lock(&self.queues);
        if let Some(n) = queues.get(queue) {
            n.notify_waiters();
        }
    }

    /// Wakes up to `ready` waiters of `queue`, one per task that became ready.
    pub fn wake_for(&self, queue: &str, ready: usize) {
        let queues = lock(&self.queues);
        if let Some(n) = queues.get(queue) {
            for _ in 0..ready.min(MAX_WAKE_PER_CALL) {
                n.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_entry_lives_while_someone_waits_on_it() {
        let waiters = Waiters::default();
        let a = waiters.of("emails");
        let b = waiters.of("emails");
        let c = waiters.of("random-name-1");
        assert_eq!(waiters.len(), 2);
        drop(c);
        assert_eq!(waiters.len(), 1, "a queue nobody waits on is forgotten");
        drop(a);
        assert_eq!(waiters.len(), 1, "one waiter left");
        drop(b);
        assert_eq!(waiters.len(), 0);
    }

    #[tokio::test]
    async fn a_waiter_is_woken_through_its_entry() {
        let waiters = Waiters::default();
        let w = waiters.of("q");
        let mut woken = std::pin::pin!(w.notified());
        woken.as_mut().enable();
        waiters.wake_for("q", 1);
        tokio::time::timeout(std::time::Duration::from_secs(5), woken).await.unwrap();
    }
}
