//! Wake-ups that flow control needs: when a lease ends, the permit it held
//! may let a waiting worker take a task; when a rate-limited queue's bucket
//! is empty, its waiting workers are woken when the next token is due (one
//! timer per queue, never a polling loop).

use std::sync::Weak;
use std::time::Duration;

use super::{Broker, Inner};
use crate::core::task::Task;
use crate::core::Millis;
use crate::store::LeaseSpec;

impl Broker {
    /// `task`'s lease ended (settled, released, canceled): wake a worker
    /// that may now take the permit it held.
    pub(super) fn freed(&self, task: &Task) {
        if !task.semaphores.is_empty() {
            // Tasks of any queue may wait for this semaphore.
            self.inner.waiters.wake_all();
        } else if self.inner.settings.queues.current().get(&task.queue).caps_leases() {
            self.inner.waiters.wake_for(&task.queue, 1);
        }
    }

    /// After a lease that got fewer tasks than it asked for: for each of its
    /// rate-limited queues whose bucket is what held work back, a wake-up of
    /// the queue's waiting workers when the next token is due.
    pub(super) async fn after_short_lease(&self, spec: &LeaseSpec, now: Millis) {
        let policies = self.inner.settings.queues.current();
        for (queue, _) in &spec.queues {
            if policies.get(queue).rate_limit.is_none() {
                continue;
            }
            if let Ok(Some(at)) = self.store().throttled(queue, now).await {
                self.wake_at(queue, at.max(now + 1), now);
            }
        }
    }

    /// Wakes the workers waiting on `queue` at `at` (one timer per queue:
    /// an earlier timer already set covers a later one).
    fn wake_at(&self, queue: &str, at: Millis, now: Millis) {
        {
            let mut timers = self.inner.rate_timers.lock().unwrap_or_else(|p| p.into_inner());
            match timers.get(queue) {
                Some(&set) if set > now && set <= at => return,
                _ => timers.insert(queue.to_owned(), at),
            };
        }
        let inner: Weak<Inner> = std::sync::Arc::downgrade(&self.inner);
        let queue = queue.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(at - now)).await;
            let Some(inner) = inner.upgrade() else { return };
            {
                let mut timers = inner.rate_timers.lock().unwrap_or_else(|p| p.into_inner());
                if timers.get(&queue) == Some(&at) {
                    timers.remove(&queue);
                }
            }
            inner.waiters.wake(&queue);
        });
    }
}
