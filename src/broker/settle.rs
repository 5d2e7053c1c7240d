//! Settling leased tasks: ack, nack, extend, and release (a lease given back
//! unsettled, as when its stream ends).

use std::time::Duration;

use super::validate::lease_length;
use super::{Broker, BrokerError};
use crate::core::budget::MAX_ERROR_BYTES;
use crate::core::lease::LeaseError;
use crate::core::lease::LeaseId;
use crate::core::task::{Task, TaskId, TaskState};
use crate::core::Millis;
use crate::store::{AckItem, NackSpec, StoreError};
use crate::telemetry::metrics::Outcome;

impl Broker {
    pub async fn ack(&self, id: TaskId, lease: LeaseId, result: Vec<u8>) -> Result<Task, BrokerError> {
        if result.len() > self.inner.settings.max_payload_bytes {
            return Err(BrokerError::invalid("result", "over the payload size limit"));
        }
        let task = self.store().ack(id, lease.0, result, self.now()).await;
        self.settled(id, lease.0, &task);
        self.observe_settlement("ack", id, lease.0, Outcome::Acked, &task).await;
        let task = task?;
        self.freed(&task);
        self.changed([&task]);
        Ok(task)
    }

    /// Acks several tasks in one store operation; each succeeds or fails alone.
    pub async fn ack_many(&self, acks: Vec<(TaskId, LeaseId, Vec<u8>)>) -> Vec<Result<Task, BrokerError>> {
        let max = self.inner.settings.max_payload_bytes;
        let checked: Vec<Result<AckItem, BrokerError>> = acks
            .into_iter()
            .map(|(id, lease, result)| {
                if result.len() > max {
                    return Err(BrokerError::invalid("result", "over the payload size limit"));
                }
                Ok(AckItem { id, lease_id: lease.0, result })
            })
            .collect();
        let valid: Vec<AckItem> = checked.iter().filter_map(|c| c.as_ref().ok().cloned()).collect();
        let leases: Vec<_> = valid.iter().map(|a| (a.id, a.lease_id)).collect();
        let n = valid.len();
        let mut stored: Vec<_> = match self.store().ack_many(valid, self.now()).await {
            Ok(results) => results,
            Err(e) => vec![Err(e); n],
        };
        for ((id, lease), outcome) in leases.into_iter().zip(&stored) {
            self.settled(id, lease, outcome);
            self.observe_settlement("ack", id, lease, Outcome::Acked, outcome).await;
        }
        for task in stored.iter().filter_map(|r| r.as_ref().ok()) {
            self.freed(task);
        }
        let mut stored: Vec<_> = stored.drain(..).map(|r| r.map_err(BrokerError::from)).collect();
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
        id: TaskId,
        lease: LeaseId,
        error: String,
        retry_after: Option<Duration>,
        no_retry: bool,
    ) -> Result<Task, BrokerError> {
        let retry_after = retry_after.map(|d| self.with_rules(|r| r.retry_after(d))).transpose()?;
        self.settle_failure(id, lease.0, truncate(error), retry_after, no_retry).await
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
        let task = self.store().nack(id, lease, spec, self.now()).await;
        self.settled(id, lease, &task);
        self.observe_settlement("nack", id, lease, Outcome::Nacked, &task).await;
        let task = task?;
        match task.state {
            TaskState::Ready => self.inner.waiters.wake_for(&task.queue, 1),
            TaskState::Scheduled => self.timer_at(task.scheduled_time),
            _ => {}
        }
        if task.state != TaskState::Ready || !task.semaphores.is_empty() {
            self.freed(&task);
        }
        self.changed([&task]);
        Ok(task)
    }

    /// Extends a lease to now + `extend_by`; returns the new deadline.
    pub async fn extend(
        &self,
        id: TaskId,
        lease: LeaseId,
        extend_by: Option<Duration>,
    ) -> Result<Millis, BrokerError> {
        let by = extend_by.ok_or_else(|| BrokerError::invalid("extend_by", "required"))?;
        let by = lease_length("extend_by", by).map_err(|v| BrokerError::Invalid(vec![v]))?;
        let deadline = self.store().extend(id, lease.0, by, self.now()).await;
        match &deadline {
            Ok(at) => self.inner.drain.extended(id, lease.0, *at),
            Err(e) if not_held(e) => self.inner.drain.ended(id, lease.0),
            Err(_) => {}
        }
        Ok(deadline?)
    }

    /// Counts a settlement: its outcome, or a stale lease (LEASE_MISMATCH,
    /// labelled with the task's queue), or a storage failure.
    async fn observe_settlement(
        &self,
        op: &'static str,
        id: TaskId,
        lease: u64,
        outcome: Outcome,
        result: &Result<Task, StoreError>,
    ) {
        let m = &self.inner.metrics;
        match result {
            Ok(t) => {
                m.settled(&t.queue, id, lease, outcome, t.state == TaskState::Dead, self.now());
                super::spans::settled(t, if outcome == Outcome::Acked { "ack" } else { "nack" });
            }
            Err(StoreError::Lease(LeaseError::Mismatch)) => {
                if let Ok(t) = self.store().get(id).await {
                    m.stale(&t.queue);
                }
            }
            Err(_) => self.store_failed(op, result),
        }
    }

    /// A settling call on `(id, lease)` came to `outcome`: the lease is over
    /// if it settled or was not held (any other failure changed nothing).
    fn settled<T>(&self, id: TaskId, lease: u64, outcome: &Result<T, StoreError>) {
        if outcome.as_ref().err().is_none_or(not_held) {
            self.inner.drain.ended(id, lease);
        }
    }
}

/// The failure says the lease is not (or no longer) held.
fn not_held(e: &StoreError) -> bool {
    matches!(e, StoreError::Lease(_) | StoreError::TaskNotFound(_))
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
