//! The worker side: lease (with long-poll), ack, nack, extend, release.

use std::time::Duration;

use futures_util::future::select_all;
use tokio::sync::broadcast;

use super::validate::{lease_length, SubscribeInput, Subscription};
use super::{parse_id, Broker, BrokerError, LeaseInput, LostLease, Phase};
use crate::core::task::{Task, TaskId, TaskState};
use crate::core::Millis;
use crate::store::{AckItem, LeaseSpec, NackSpec};

/// Longest error text kept from a Nack.
const MAX_ERROR_BYTES: usize = 16 * 1024;

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
        let max_tasks = self.rules().lease(&input)?;
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
        self.rules().subscribe(input)
    }

    /// Leases what is ready now (validated spec; streams and `lease` call it).
    pub(crate) async fn lease_now(&self, spec: LeaseSpec) -> Result<Vec<Task>, BrokerError> {
        let tasks = self.store().lease(spec, self.now()).await?;
        if let Some(first) = tasks.iter().filter_map(|t| t.lease.as_ref()).map(|l| l.expire_time).min() {
            self.timer_at(first);
        }
        self.changed(&tasks);
        Ok(tasks)
    }

    /// The wake-ups of `queues`: notified when one may have ready work.
    pub(crate) fn queue_notifies(&self, queues: &[String]) -> Vec<std::sync::Arc<tokio::sync::Notify>> {
        queues.iter().map(|q| self.inner.waiters.of(q)).collect()
    }

    /// Leases that end unsettled (expired, canceled), for streams.
    pub(crate) fn lost_leases(&self) -> broadcast::Receiver<LostLease> {
        self.inner.lost.subscribe()
    }

    pub async fn ack(&self, task_id: &str, lease_id: &str, result: Vec<u8>) -> Result<Task, BrokerError> {
        let (id, lease) = parse_settle(task_id, lease_id)?;
        if result.len() > self.inner.settings.max_payload_bytes {
            return Err(BrokerError::invalid("result", "over the payload size limit"));
        }
        let task = self.store().ack(id, lease, result, self.now()).await?;
        self.changed([&task]);
        Ok(task)
    }

    /// Acks several tasks in one store operation; each succeeds or fails alone.
    pub async fn ack_many(&self, acks: Vec<(String, String, Vec<u8>)>) -> Vec<Result<Task, BrokerError>> {
        let max = self.inner.settings.max_payload_bytes;
        let checked: Vec<Result<AckItem, BrokerError>> = acks
            .into_iter()
            .map(|(task_id, lease_id, result)| {
                let (id, lease_id) = parse_settle(&task_id, &lease_id)?;
                if result.len() > max {
                    return Err(BrokerError::invalid("result", "over the payload size limit"));
                }
                Ok(AckItem { id, lease_id, result })
            })
            .collect();
        let valid: Vec<AckItem> = checked.iter().filter_map(|c| c.as_ref().ok().cloned()).collect();
        let n = valid.len();
        let mut stored = match self.store().ack_many(valid, self.now()).await {
            Ok(results) => results.into_iter().map(|r| r.map_err(BrokerError::from)).collect(),
            Err(e) => vec![Err(BrokerError::from(e)); n],
        };
        self.changed(stored.iter().filter_map(|r| r.as_ref().ok()));
        stored.reverse();
        checked
            .into_iter()
            .map(|c| {
                c.and_then(|_| {
                    stored.pop().unwrap_or_else(|| Err(BrokerError::Unavailable("store lost an ack".into())))
                })
            })
            .collect()
    }

    pub async fn nack(
        &self,
        task_id: &str,
        lease_id: &str,
        error: String,
        retry_after: Option<Duration>,
        no_retry: bool,
    ) -> Result<Task, BrokerError> {
        let (id, lease) = parse_settle(task_id, lease_id)?;
        let retry_after = retry_after.map(|d| d.as_millis() as Millis);
        self.settle_failure(id, lease, truncate(error), retry_after, no_retry).await
    }

    /// Gives a held task back at once (its holder went away): READY again, or
    /// DEAD if that was its last attempt.
    pub(crate) async fn release(&self, id: TaskId, lease: u64, why: &str) -> Result<Task, BrokerError> {
        self.settle_failure(id, lease, why.to_owned(), Some(0), false).await
    }

    async fn settle_failure(
        &self,
        id: TaskId,
        lease: u64,
        error: String,
        retry_after: Option<Millis>,
        no_retry: bool,
    ) -> Result<Task, BrokerError> {
        let spec = NackSpec { error, retry_after, no_retry, jitter_sample: rand::random::<f64>() };
        let task = self.store().nack(id, lease, spec, self.now()).await?;
        match task.state {
            TaskState::Ready => self.inner.waiters.wake_for(&task.queue, 1),
            TaskState::Scheduled => self.timer_at(task.scheduled_time),
            _ => {}
        }
        self.changed([&task]);
        Ok(task)
    }

    /// Extends a lease to now + `extend_by`; returns the new deadline.
    pub async fn extend(
        &self,
        task_id: &str,
        lease_id: &str,
        extend_by: Option<Duration>,
    ) -> Result<Millis, BrokerError> {
        let (id, lease) = parse_settle(task_id, lease_id)?;
        let by = extend_by.ok_or_else(|| BrokerError::invalid("extend_by", "required"))?;
        let by = lease_length("extend_by", by).map_err(|v| BrokerError::Invalid(vec![v]))?;
        Ok(self.store().extend(id, lease, by, self.now()).await?)
    }
}

fn truncate(mut error: String) -> String {
    if error.len() > MAX_ERROR_BYTES {
        let mut cut = MAX_ERROR_BYTES;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        error.truncate(cut);
    }
    error
}

fn parse_settle(task_id: &str, lease_id: &str) -> Result<(TaskId, u64), BrokerError> {
    let id = parse_id(task_id)?;
    if lease_id.is_empty() {
        return Err(BrokerError::invalid("lease_id", "required"));
    }
    // A lease id that is not one of ours cannot hold the task.
    let lease = lease_id.parse().map_err(|_| BrokerError::LeaseMismatch)?;
    Ok((id, lease))
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
