//! The broker: validates requests, resolves them against queue settings and
//! routes, makes one store call per request, and wakes waiting workers.
//!
//! It owns no task state itself (that is the store's) and knows nothing of
//! gRPC (that is `grpc/`'s).

pub mod error;
pub mod validate;
mod waiters;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::select_all;
use tokio::sync::Notify;

pub use error::{BrokerError, Violation};
pub use validate::{EnqueueInput, LeaseInput};

use crate::core::clock::Clock;
use crate::core::queue::Policies;
use crate::core::routing::Route;
use crate::core::task::{Task, TaskId, TaskState};
use crate::core::Millis;
use crate::store::{Enqueued, LeaseSpec, NackSpec, Store, Swept};
use validate::{lease_length, Rules, MAX_BATCH};
use waiters::Waiters;

/// Longest error text kept from a Nack.
const MAX_ERROR_BYTES: usize = 16 * 1024;

/// Settings the broker applies to requests.
#[derive(Clone, Debug)]
pub struct BrokerSettings {
    pub policies: Arc<Policies>,
    pub routes: Vec<Route>,
    pub strict_queues: bool,
    pub max_payload_bytes: usize,
}

/// A cheap, cloneable handle to the broker.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    settings: BrokerSettings,
    waiters: Waiters,
    /// Wakes the timer loop when a timer earlier than its sleep appears.
    timers: Notify,
    /// When the timer loop will next wake on its own.
    next_sweep: AtomicU64,
}

impl Broker {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, settings: BrokerSettings) -> Self {
        let inner = Inner {
            store,
            clock,
            settings,
            waiters: Waiters::default(),
            timers: Notify::new(),
            next_sweep: AtomicU64::new(0),
        };
        Self { inner: Arc::new(inner) }
    }

    pub fn now(&self) -> Millis {
        self.inner.clock.now()
    }

    fn rules(&self) -> Rules<'_> {
        let s = &self.inner.settings;
        Rules {
            policies: &s.policies,
            routes: &s.routes,
            strict_queues: s.strict_queues,
            max_payload_bytes: s.max_payload_bytes,
        }
    }

    pub async fn enqueue(&self, input: EnqueueInput) -> Result<Enqueued, BrokerError> {
        let now = self.now();
        let task = self.rules().enqueue(input, now)?;
        let mut out = self.inner.store.enqueue(vec![task], now).await?;
        let enqueued = out.pop().ok_or_else(|| BrokerError::Unavailable("store returned no task".into()))?;
        self.after_enqueue(std::slice::from_ref(&enqueued));
        Ok(enqueued)
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
        let rules = self.rules();
        let checked: Vec<_> = items.into_iter().map(|i| i.and_then(|i| rules.enqueue(i, now))).collect();
        let valid: Vec<_> = checked.iter().filter_map(|c| c.as_ref().ok().cloned()).collect();
        let mut stored =
            if valid.is_empty() { Vec::new() } else { self.inner.store.enqueue(valid, now).await? };
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
        let mut woken: Vec<&str> = Vec::new();
        for e in enqueued.iter().filter(|e| !e.deduplicated) {
            match e.task.state {
                TaskState::Ready if !woken.contains(&e.task.queue.as_str()) => {
                    woken.push(&e.task.queue);
                    self.inner.waiters.wake(&e.task.queue);
                }
                TaskState::Scheduled => self.timer_at(e.task.scheduled_time),
                _ => {}
            }
        }
    }

    pub async fn get(&self, task_id: &str) -> Result<Task, BrokerError> {
        Ok(self.inner.store.get(parse_id(task_id)?).await?)
    }

    pub async fn cancel(&self, task_id: &str) -> Result<Task, BrokerError> {
        Ok(self.inner.store.cancel(parse_id(task_id)?, self.now()).await?)
    }

    /// Leases ready tasks, waiting up to `input.wait` for some to appear.
    pub async fn lease(&self, input: LeaseInput) -> Result<Vec<Task>, BrokerError> {
        let max_tasks = self.rules().lease(&input)?;
        let spec = LeaseSpec {
            queues: input.queues,
            max_tasks,
            lease_duration: input.lease_duration.map(|d| d.as_millis() as Millis),
            worker_id: input.worker_id,
        };
        let wait = input.wait.unwrap_or_default();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register for wake-ups before looking, so no enqueue is missed in between.
            let notifies: Vec<_> = spec.queues.iter().map(|q| self.inner.waiters.of(q)).collect();
            let mut woken: Vec<_> = notifies.iter().map(|n| Box::pin(n.notified())).collect();
            for w in &mut woken {
                w.as_mut().enable();
            }
            let now = self.now();
            let tasks = self.inner.store.lease(spec.clone(), now).await?;
            if let Some(first) = tasks.iter().filter_map(|t| t.lease.as_ref()).map(|l| l.expire_time).min() {
                self.timer_at(first);
            }
            if !tasks.is_empty() || wait.is_zero() {
                return Ok(tasks);
            }
            tokio::select! {
                _ = select_all(woken) => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        }
    }

    pub async fn ack(&self, task_id: &str, lease_id: &str, result: Vec<u8>) -> Result<Task, BrokerError> {
        let (id, lease) = parse_settle(task_id, lease_id)?;
        if result.len() > self.inner.settings.max_payload_bytes {
            return Err(BrokerError::invalid("result", "over the payload size limit"));
        }
        Ok(self.inner.store.ack(id, lease, result, self.now()).await?)
    }

    pub async fn nack(
        &self,
        task_id: &str,
        lease_id: &str,
        mut error: String,
        retry_after: Option<Duration>,
        no_retry: bool,
    ) -> Result<Task, BrokerError> {
        let (id, lease) = parse_settle(task_id, lease_id)?;
        if error.len() > MAX_ERROR_BYTES {
            let mut cut = MAX_ERROR_BYTES;
            while !error.is_char_boundary(cut) {
                cut -= 1;
            }
            error.truncate(cut);
        }
        let spec = NackSpec {
            error,
            retry_after: retry_after.map(|d| d.as_millis() as Millis),
            no_retry,
            jitter_sample: rand::random::<f64>(),
        };
        let task = self.inner.store.nack(id, lease, spec, self.now()).await?;
        match task.state {
            TaskState::Ready => self.inner.waiters.wake(&task.queue),
            TaskState::Scheduled => self.timer_at(task.scheduled_time),
            _ => {}
        }
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
        Ok(self.inner.store.extend(id, lease, by, self.now()).await?)
    }

    /// Runs every due timer now: expired leases, due scheduled tasks, finished
    /// tasks past retention. The background loop calls it; so may tests.
    pub async fn run_timers(&self) -> Result<Swept, BrokerError> {
        let now = self.now();
        let store = &self.inner.store;
        let mut swept = store.requeue_expired(now).await?;
        let promoted = store.promote_due(now).await?;
        let purged = store.purge_finished(now).await?;
        swept.count += promoted.count + purged.count;
        for q in promoted.ready_queues {
            if !swept.ready_queues.contains(&q) {
                swept.ready_queues.push(q);
            }
        }
        for q in &swept.ready_queues {
            self.inner.waiters.wake(q);
        }
        Ok(swept)
    }

    /// The earliest pending timer.
    pub async fn next_timer(&self) -> Result<Option<Millis>, BrokerError> {
        Ok(self.inner.store.next_timer().await?)
    }

    /// Whether storage can serve.
    pub async fn healthy(&self) -> bool {
        self.inner.store.healthy().await
    }

    /// Waits until a timer earlier than the loop's planned wake-up appears.
    pub(crate) async fn timers_changed(&self, planned: Millis) {
        self.inner.next_sweep.store(planned, Ordering::Release);
        self.inner.timers.notified().await;
    }

    /// Tells the timer loop about a timer at `at`, if it would sleep past it.
    fn timer_at(&self, at: Millis) {
        if at < self.inner.next_sweep.load(Ordering::Acquire) {
            self.inner.timers.notify_one();
        }
    }
}

fn parse_id(task_id: &str) -> Result<TaskId, BrokerError> {
    if task_id.is_empty() {
        return Err(BrokerError::invalid("task_id", "required"));
    }
    task_id.parse().map_err(|e: crate::core::task::BadTaskId| BrokerError::invalid("task_id", e.to_string()))
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
