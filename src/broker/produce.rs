//! The producer side: enqueue, look up, cancel, watch.

use tokio::sync::broadcast;

use super::validate::MAX_BATCH;
use super::{Broker, BrokerError, EnqueueInput, LostLease, LostReason};
use crate::core::task::{Task, TaskId, TaskState};
use crate::store::Enqueued;

impl Broker {
    pub async fn enqueue(&self, input: EnqueueInput) -> Result<Enqueued, BrokerError> {
        let mut out = self.enqueue_batch(vec![Ok(input)]).await?;
        out.pop().unwrap_or_else(|| Err(BrokerError::Unavailable("store returned no task".into())))
    }

    /// Enqueues up to 1000 tasks in one store commit; each item fails alone
    /// (including items that already failed to convert).
    pub async fn enqueue_batch(
        &self,
        items: Vec<Result<EnqueueInput, BrokerError>>,
    ) -> Result<Vec<Result<Enqueued, BrokerError>>, BrokerError> {
        if items.is_empty() || items.len() > MAX_BATCH {
            return Err(BrokerError::invalid("tasks", format!("must hold 1 to {MAX_BATCH} items")));
        }
        let now = self.now();
        let checked: Vec<_> = self
            .with_rules(|rules| items.into_iter().map(|i| i.and_then(|i| rules.enqueue(i, now))).collect());
        let valid: Vec<_> = checked.iter().filter_map(|c| c.as_ref().ok().cloned()).collect();
        let mut stored = if valid.is_empty() { Vec::new() } else { self.store().enqueue(valid, now).await? };
        self.after_enqueue(&stored);
        stored.reverse();
        Ok(checked
            .into_iter()
            .map(|c| {
                c.and_then(|_| {
                    stored
                        .pop()
                        .ok_or_else(|| BrokerError::Unavailable("store returned too few tasks".into()))
                })
            })
            .collect())
    }

    fn after_enqueue(&self, enqueued: &[Enqueued]) {
        // Ready tasks per queue (a batch usually holds one or a few queues).
        let mut ready: Vec<(&str, usize)> = Vec::new();
        for e in enqueued.iter().filter(|e| !e.deduplicated) {
            match e.task.state {
                TaskState::Ready => match ready.iter_mut().find(|(q, _)| *q == e.task.queue) {
                    Some((_, n)) => *n += 1,
                    None => ready.push((&e.task.queue, 1)),
                },
                TaskState::Scheduled => self.timer_at(e.task.scheduled_time),
                _ => {}
            }
        }
        for (queue, n) in ready {
            self.inner.waiters.wake_for(queue, n);
        }
    }

    pub async fn get(&self, id: TaskId) -> Result<Task, BrokerError> {
        Ok(self.store().get(id).await?)
    }

    pub async fn cancel(&self, id: TaskId) -> Result<Task, BrokerError> {
        let task = self.store().cancel(id, self.now()).await?;
        // A task canceled while leased keeps its lease, so its holder can be told.
        if let Some(lease) = &task.lease {
            let lost = LostLease { task_id: id, lease_id: lease.id, reason: LostReason::Canceled };
            let _ = self.inner.lost.send(lost);
        }
        self.changed([&task]);
        Ok(task)
    }

    /// The task now, and a receiver of its later states. Subscribes before
    /// reading, so no change in between is missed.
    pub async fn watch(&self, id: TaskId) -> Result<(Task, broadcast::Receiver<Task>), BrokerError> {
        let rx = self.inner.watchers.subscribe(id);
        // Before the read too: a shared store then reports later changes made
        // through other replicas.
        let read = match self.store().set_watched(id, true).await {
            Ok(()) => {
                let read = self.store().get(id).await;
                if read.is_err() {
                    self.unmark_watched(id);
                }
                read
            }
            Err(e) => Err(e),
        };
        match read {
            Ok(task) => Ok((task, rx)),
            Err(e) => {
                drop(rx);
                self.inner.watchers.release(id);
                Err(e.into())
            }
        }
    }

    /// Ends a watch started with [`Broker::watch`] (after its receiver is dropped).
    pub fn unwatch(&self, id: TaskId) {
        self.inner.watchers.release(id);
        self.unmark_watched(id);
    }

    /// Ends the store's count of one watch, in the background (best effort:
    /// a count left behind only costs some events until the task is purged).
    fn unmark_watched(&self, id: TaskId) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let broker = self.clone();
        runtime.spawn(async move {
            if let Err(e) = broker.store().set_watched(id, false).await {
                tracing::debug!(error = %e, task = %id, "could not end a watch in the store");
            }
        });
    }
}
