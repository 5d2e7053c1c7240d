//! The producer side: enqueue, look up, cancel, watch.

use std::sync::Arc;

use tokio::sync::{broadcast, oneshot};

use super::validate::MAX_BATCH;
use super::{spans, Broker, BrokerError, EnqueueInput, LostLease, LostReason};
use crate::core::access::{Access, Operation};
use crate::core::task::{NewTask, Task, TaskId, TaskState};
use crate::core::trace::TRACEPARENT;
use crate::store::{Enqueued, Store, StoreError};

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
        let own_context: Vec<bool> =
            items.iter().map(|i| i.as_ref().is_ok_and(|i| i.headers.contains_key(TRACEPARENT))).collect();
        // One caller per batch: what it may read decides which dependencies it may name.
        let access = items.iter().find_map(|i| i.as_ref().ok().map(|i| i.access.clone())).unwrap_or_default();
        let mut checked: Vec<_> = self
            .with_rules(|rules| items.into_iter().map(|i| i.and_then(|i| rules.enqueue(i, now))).collect());
        // Trace export on: each task's `send {queue}` span, whose context
        // becomes the task's creation context unless the producer set its own.
        let sends: Vec<_> = checked
            .iter_mut()
            .zip(own_context)
            .filter_map(|(c, own)| c.as_mut().ok().map(|task| (task, own)))
            .filter_map(|(task, own)| spans::send(task, own))
            .collect();
        // Alone, a task's unknown dependency fails it in the store; a batch
        // (so the others go on) and a caller restricted to some queues look first.
        let restricted = !access.allows_everywhere(Operation::GetTask)
            && checked.iter().flatten().any(|t| !t.depends_on.is_empty());
        if restricted || checked.iter().filter(|c| c.is_ok()).count() > 1 {
            self.check_dependencies(&access, &mut checked).await?;
        }
        let valid: Vec<_> = checked.iter().filter_map(|c| c.as_ref().ok().cloned()).collect();
        let mut stored = if valid.is_empty() {
            Vec::new()
        } else {
            let stored = self.store().enqueue(valid, now).await;
            self.store_failed("enqueue", &stored);
            stored?
        };
        self.after_enqueue(&stored);
        if !sends.is_empty() {
            tracing::Span::current().record("messaging.batch.message_count", stored.len());
            for (span, e) in sends.iter().zip(&stored) {
                spans::sent(span, &e.task);
            }
        }
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

    /// Fails the items of a batch that name unknown dependencies, so the
    /// others go on (the store refuses a whole batch that names one; it
    /// still does if one is purged between this look and the enqueue).
    ///
    /// A dependency in a queue the caller may not read (`GetTask`: enqueue
    /// or inspect there) counts as unknown: a producer cannot wait on, nor
    /// learn of, another tenant's tasks.
    async fn check_dependencies(
        &self,
        access: &Access,
        checked: &mut [Result<NewTask, BrokerError>],
    ) -> Result<(), BrokerError> {
        let mut ids: Vec<TaskId> =
            checked.iter().flatten().flat_map(|t| t.depends_on.iter().copied()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut missing = std::collections::HashSet::new();
        for id in ids {
            match self.store().get(id).await {
                Ok(dep) if access.allows(Operation::GetTask, &dep.queue) => {}
                Ok(_) | Err(StoreError::TaskNotFound(_)) => {
                    missing.insert(id);
                }
                Err(e) => return Err(e.into()),
            }
        }
        for item in checked.iter_mut() {
            let Ok(task) = item else { continue };
            let named: Vec<String> =
                task.depends_on.iter().filter(|d| missing.contains(d)).map(ToString::to_string).collect();
            if !named.is_empty() {
                *item = Err(BrokerError::DependencyNotFound(named));
            }
        }
        Ok(())
    }

    pub(super) fn after_enqueue(&self, enqueued: &[Enqueued]) {
        self.inner.activity.touch();
        // Ready tasks per queue (a batch usually holds one or a few queues).
        let mut ready: Vec<(&str, usize)> = Vec::new();
        for e in enqueued.iter().filter(|e| !e.deduplicated) {
            self.inner.metrics.enqueued(&e.task.queue);
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

    /// The task, and with `include_dependencies` its dependencies as kept,
    /// in `depends_on` order (one purged since is left out).
    pub async fn get_with_dependencies(
        &self,
        access: &Access,
        id: TaskId,
        include_dependencies: bool,
    ) -> Result<(Task, Vec<Task>), BrokerError> {
        let task = self.task_for(access, Operation::GetTask, id).await?;
        if !include_dependencies {
            return Ok((task, Vec::new()));
        }
        let mut out = Vec::with_capacity(task.depends_on.len());
        for id in &task.depends_on {
            match self.store().get(*id).await {
                // Dependencies in queues the caller may not read are left out.
                Ok(dep) if access.allows(Operation::GetTask, &dep.queue) => out.push(dep),
                Ok(_) => {}
                Err(StoreError::TaskNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok((task, out))
    }

    pub async fn cancel(&self, id: TaskId) -> Result<Task, BrokerError> {
        let task = self.store().cancel(id, self.now()).await?;
        // A task canceled while leased keeps its lease, so its holder can be told.
        if let Some(lease) = &task.lease {
            let lost = LostLease { task_id: id, lease_id: lease.id, reason: LostReason::Canceled };
            let _ = self.inner.lost.send(lost);
            self.freed(&task);
        }
        self.changed([&task]);
        Ok(task)
    }

    /// The task now, and its later states. Subscribes before reading, so no
    /// change in between is missed. The watch ends when the returned
    /// [`Watch`] is dropped, and so does a watch whose setup is abandoned
    /// (the caller's future dropped): nothing is left behind on any path.
    pub async fn watch(&self, id: TaskId) -> Result<(Task, Watch), BrokerError> {
        let changes = self.inner.watchers.subscribe(id);
        // Marked in the store before the read too: a shared store then
        // reports later changes made through other replicas. The mark runs on
        // its own task, so it either happens whole and is known to have
        // happened (and is undone by whoever ends the watch), or not at all.
        let (marked, mark) = oneshot::channel();
        let store = self.inner.store.clone();
        tokio::spawn(async move {
            let outcome = store.set_watched(id, true).await;
            if let Err(Ok(())) = marked.send(outcome) {
                // The watch was abandoned while this mark was on its way.
                undo_mark(store, id).await;
            }
        });
        let mut watch =
            Watch { changes, end: EndWatch { broker: self.clone(), id, mark: Mark::Pending(mark) } };
        let Mark::Pending(pending) = &mut watch.end.mark else { unreachable!("just set") };
        match pending.await {
            Ok(Ok(())) => watch.end.mark = Mark::Done,
            Ok(Err(e)) => {
                watch.end.mark = Mark::None;
                return Err(e.into());
            }
            Err(_) => {
                watch.end.mark = Mark::None;
                return Err(BrokerError::Unavailable("the watch could not be set up".into()));
            }
        }
        let task = self.store().get(id).await?;
        Ok((task, watch))
    }

    /// How many tasks this broker has watch channels for.
    pub fn watched_tasks(&self) -> usize {
        self.inner.watchers.len()
    }
}

/// A WatchTask on one task: its later states. Dropping it ends the watch.
pub struct Watch {
    /// Dropped before `end` (fields drop in order), so the channel is unused
    /// when `end` looks.
    changes: broadcast::Receiver<Task>,
    end: EndWatch,
}

impl Watch {
    /// The task's next state (see [`broadcast::Receiver::recv`]).
    pub async fn recv(&mut self) -> Result<Task, broadcast::error::RecvError> {
        self.changes.recv().await
    }
}

/// Where the store's count of this watch stands.
enum Mark {
    /// Asked for; the answer comes on this channel.
    Pending(oneshot::Receiver<Result<(), StoreError>>),
    /// Counted: ending the watch must uncount it.
    Done,
    /// Not counted.
    None,
}

/// Ends a watch on drop, on every path: the local channel goes with its last
/// receiver, and the store's count is undone if it was made.
struct EndWatch {
    broker: Broker,
    id: TaskId,
    mark: Mark,
}

impl Drop for EndWatch {
    fn drop(&mut self) {
        self.broker.inner.watchers.release(self.id);
        let undo = match std::mem::replace(&mut self.mark, Mark::None) {
            Mark::Done => true,
            // Closed first: a mark that lands later is undone by its own
            // task; one that landed before is seen here.
            Mark::Pending(mut pending) => {
                pending.close();
                matches!(pending.try_recv(), Ok(Ok(())))
            }
            Mark::None => false,
        };
        if undo {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(undo_mark(self.broker.inner.store.clone(), self.id));
            }
        }
    }
}

/// Ends the store's count of one watch (best effort: a count left behind
/// only costs some events until the task is purged).
async fn undo_mark(store: Arc<dyn Store>, id: TaskId) {
    if let Err(e) = store.set_watched(id, false).await {
        tracing::debug!(error = %e, task = %id, "could not end a watch in the store");
    }
}
