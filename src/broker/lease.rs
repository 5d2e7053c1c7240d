//! Taking tasks: Lease with its long-poll, subscriptions, and what streams
//! need to wait for work (queue wake-ups, lost leases).

use std::time::Duration;

use futures_util::future::select_all;
use tokio::sync::broadcast;

use super::validate::{SubscribeInput, Subscription};
use super::{Broker, BrokerError, LeaseInput, LostLease, Phase};
use crate::core::task::Task;
use crate::core::Millis;
use crate::store::LeaseSpec;

/// How much of the client's deadline a long-poll leaves for the answer to
/// travel back: an empty answer just before the deadline beats
/// DEADLINE_EXCEEDED, which would strand tasks leased at the last moment
/// until their lease expires.
const DEADLINE_MARGIN: Duration = Duration::from_millis(200);

/// How long a Lease may wait: what it asked for, but never past the client's
/// deadline (less [`DEADLINE_MARGIN`]).
fn long_poll(wait: Option<Duration>, deadline: Option<Duration>) -> Duration {
    let wait = wait.unwrap_or_default();
    match deadline {
        Some(d) => wait.min(d.saturating_sub(DEADLINE_MARGIN)),
        None => wait,
    }
}

impl Broker {
    /// Leases ready tasks, waiting up to `input.wait` for some to appear.
    pub async fn lease(&self, input: LeaseInput) -> Result<Vec<Task>, BrokerError> {
        let max_tasks = self.with_rules(|r| r.lease(&input))?;
        let lease_duration = input.lease_duration.map(|d| d.as_millis() as Millis);
        let spec = LeaseSpec::strict(&input.queues, max_tasks, lease_duration, &input.worker_id);
        let wait = long_poll(input.wait, input.deadline);
        let deadline = tokio::time::Instant::now() + wait;
        let mut phase = self.phase();
        loop {
            // Register for wake-ups before looking, so no enqueue is missed in between.
            let notifies: Vec<_> = input.queues.iter().map(|q| self.inner.waiters.of(q)).collect();
            let mut woken: Vec<_> = notifies.iter().map(|n| Box::pin(n.notified())).collect();
            for w in &mut woken {
                w.as_mut().enable();
            }
            let tasks = self.lease_now(spec.clone()).await?;
            // Held by a unary worker: the shutdown's drain waits for these.
            self.inner.drain.hold(&tasks);
            if !tasks.is_empty() || wait.is_zero() {
                return Ok(tasks);
            }
            tokio::select! {
                _ = select_all(woken) => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
                // Shutting down: answer now rather than hold the shutdown up.
                _ = phase.wait_for(|p| *p != Phase::Serving) => return Ok(Vec::new()),
            }
        }
    }

    /// Checks a stream's subscription (the session takes the result).
    pub fn validate_subscription(&self, input: SubscribeInput) -> Result<Subscription, BrokerError> {
        self.with_rules(|r| r.subscribe(input))
    }

    /// Leases what is ready now (validated spec; streams and `lease` call it).
    /// Nothing once the broker drains: workers settle what they hold, and
    /// whatever is still ready stays for the replicas that go on.
    pub(crate) async fn lease_now(&self, spec: LeaseSpec) -> Result<Vec<Task>, BrokerError> {
        if *self.inner.phase.borrow() != Phase::Serving {
            return Ok(Vec::new());
        }
        let now = self.now();
        let asked = spec.max_tasks;
        let tasks = self.store().lease(spec.clone(), now).await;
        self.store_failed("lease", &tasks);
        let tasks = tasks?;
        for t in &tasks {
            let lease = t.lease.as_ref().map_or(0, |l| l.id);
            self.inner.metrics.delivered(&t.queue, t.id, lease, t.scheduled_time, now);
            super::spans::received(t);
        }
        if tasks.len() < asked {
            self.after_short_lease(&spec, now).await;
        }
        if let Some(first) = tasks.iter().filter_map(|t| t.lease.as_ref()).map(|l| l.expire_time).min() {
            self.timer_at(first);
        }
        self.changed(&tasks);
        Ok(tasks)
    }

    /// The wake-ups of `queues`: notified when one may have ready work.
    pub(crate) fn queue_notifies(&self, queues: &[String]) -> Vec<super::waiters::Waiter> {
        queues.iter().map(|q| self.inner.waiters.of(q)).collect()
    }

    /// Leases that end unsettled (expired, canceled), for streams.
    pub(crate) fn lost_leases(&self) -> broadcast::Receiver<LostLease> {
        self.inner.lost.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_poll_ends_before_the_clients_deadline() {
        let s = Duration::from_secs;
        assert_eq!(long_poll(Some(s(30)), None), s(30));
        assert_eq!(long_poll(Some(s(30)), Some(s(5))), s(5) - DEADLINE_MARGIN);
        assert_eq!(long_poll(Some(s(1)), Some(s(5))), s(1));
        assert_eq!(long_poll(Some(s(30)), Some(Duration::from_millis(50))), Duration::ZERO);
        assert_eq!(long_poll(None, Some(s(5))), Duration::ZERO);
    }
}
