//! The broker: validates requests, resolves them against queue settings and
//! routes, makes one store call per request, and tells whoever waits on the
//! outcome (long-polling workers, streams, task watchers, the timer loop).
//!
//! It owns no task state itself (that is the store's) and knows nothing of
//! gRPC (that is `grpc/`'s).
//!
//! Files: `produce.rs` (enqueue, get, cancel, watch), `lease.rs` (Lease and its
//! long-poll, subscriptions), `settle.rs` (ack, nack, extend, release),
//! `session.rs` (a worker stream), `drain.rs` (what a graceful shutdown waits
//! for), `watch.rs` (task watchers), `waiters.rs` (per-queue wake-ups),
//! `validate.rs`, `error.rs`.

mod access;
mod activity;
pub mod admin;
mod drain;
pub mod error;
mod flow;
mod lease;
mod outbound;
mod produce;
pub mod schedules;
pub mod session;
mod settle;
mod spans;
pub mod validate;
mod waiters;
mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{broadcast, watch as watch_channel, Notify};

/// What an enqueue returns (the store's outcome, unchanged).
pub use crate::store::Enqueued;
pub use admin::{QueueInfo, TaskPage};
pub use error::{BrokerError, Violation};
pub use produce::Watch;
pub use schedules::ScheduleInfo;
pub use validate::{EnqueueInput, LeaseInput};

use crate::core::access::Access;
use crate::core::clock::Clock;
use crate::core::queue::QueueRegistry;
use crate::core::task::{Task, TaskId, TaskState};
use crate::core::Millis;
use crate::store::{Store, StoreError, StoreEvent, Swept};
use crate::telemetry::metrics::{Metrics, Snapshot};
use validate::Rules;
use waiters::Waiters;
use watch::Watchers;

/// Settings the broker applies to requests.
#[derive(Clone, Debug)]
pub struct BrokerSettings {
    /// Every queue's resolved settings (the declared ones and the fallback)
    /// and the routes, shared with the store; a reload replaces them.
    pub queues: QueueRegistry,
    /// Refuse queues the config does not declare (`QUEUE_NOT_FOUND`).
    pub strict_queues: bool,
    /// Largest payload an enqueue may carry.
    pub max_payload_bytes: usize,
    /// Longest `delay`/`retry_after`, furthest `scheduled_time` ahead.
    pub max_delay: std::time::Duration,
    /// Bounds of every worker stream (outbound bytes, stall timeout).
    pub streams: session::StreamLimits,
}

/// A lease that ended without its holder settling it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostLease {
    pub task_id: TaskId,
    pub lease_id: u64,
    pub reason: LostReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostReason {
    Expired,
    Canceled,
}

impl LostReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LostReason::Expired => "expired",
            LostReason::Canceled => "canceled",
        }
    }
}

/// Where the broker is in its life; streams watch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Serving,
    /// Shutting down: push no new tasks, still accept settlements.
    Draining,
    /// Grace is over: streams release what they hold and end.
    Stopped,
}

/// A cheap, cloneable handle to the broker.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where every task lives; the broker holds no task state of its own.
    store: Arc<dyn Store>,
    /// "Now" for every store call (a manual clock in tests).
    clock: Arc<dyn Clock>,
    settings: BrokerSettings,
    /// Long-polls and streams waiting for a queue to get ready work.
    waiters: Waiters,
    /// WatchTask calls waiting for a task's next state.
    watchers: Watchers,
    /// Leases that ended unsettled, for the streams that held them.
    lost: broadcast::Sender<LostLease>,
    /// Unary workers' leases and open streams, for the shutdown's drain.
    drain: drain::Drain,
    phase: watch_channel::Sender<Phase>,
    /// Wakes the timer loop when a timer earlier than its sleep appears.
    timers: Notify,
    /// Fired after every change, for depth observers (the KEDA scaler).
    activity: activity::Activity,
    /// Prometheus counters and histograms of this process.
    metrics: Arc<Metrics>,
    /// When the timer loop will next wake on its own.
    next_sweep: AtomicU64,
    /// Per rate-limited queue, when a wake-up for its next token is set.
    rate_timers: std::sync::Mutex<std::collections::HashMap<String, Millis>>,
}

impl Broker {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, settings: BrokerSettings) -> Self {
        let inner = Inner {
            store,
            clock,
            settings,
            waiters: Waiters::default(),
            watchers: Watchers::default(),
            lost: broadcast::channel(4096).0,
            drain: drain::Drain::default(),
            phase: watch_channel::channel(Phase::Serving).0,
            timers: Notify::new(),
            activity: activity::Activity::default(),
            metrics: Arc::new(Metrics::default()),
            next_sweep: AtomicU64::new(0),
            rate_timers: Default::default(),
        };
        let broker = Self { inner: Arc::new(inner) };
        if let Some(events) = broker.store().events() {
            tokio::spawn(follow_store(Arc::downgrade(&broker.inner), events));
        }
        broker
    }

    pub fn now(&self) -> Millis {
        self.inner.clock.now()
    }

    /// Every queue's settings and the routes (a reload replaces them).
    pub fn queues(&self) -> &QueueRegistry {
        &self.inner.settings.queues
    }

    /// How worker streams are bounded.
    pub fn stream_limits(&self) -> session::StreamLimits {
        self.inner.settings.streams
    }

    fn store(&self) -> &dyn Store {
        &*self.inner.store
    }

    /// Runs `check` with the rules in force now (one policy snapshot).
    fn with_rules<R>(&self, check: impl FnOnce(&Rules<'_>) -> R) -> R {
        let s = &self.inner.settings;
        let policies = s.queues.current();
        let rules = Rules {
            policies: &policies,
            routes: policies.routes(),
            strict_queues: s.strict_queues,
            max_payload_bytes: s.max_payload_bytes,
            max_delay: s.max_delay,
        };
        check(&rules)
    }

    /// This process's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The Prometheus text exposition: this process's counters and the
    /// queue gauges read from the store now.
    pub async fn encode_metrics(&self) -> Result<String, BrokerError> {
        let queues = self.list_queues(&Access::Open).await?;
        let snapshot = Snapshot {
            streams_open: self.open_streams(),
            commits: self.store().commits(),
            commit_seconds: self.store().commit_seconds(),
        };
        Ok(self.inner.metrics.encode(&queues, self.now(), snapshot))
    }

    /// Counts a failed store call (`op`: the store operation).
    fn store_failed<T>(&self, op: &'static str, outcome: &Result<T, StoreError>) {
        if let Err(e) = outcome {
            if matches!(e, StoreError::Unavailable(_) | StoreError::Full(_) | StoreError::Internal(_)) {
                self.inner.metrics.store_error(op);
            }
        }
    }

    /// Waits until something changes (see [`activity::Activity`]).
    pub async fn activity(&self) {
        self.inner.activity.changed().await
    }

    /// Tells watchers of these tasks about their new state.
    fn changed<'a>(&self, tasks: impl IntoIterator<Item = &'a Task>) {
        self.inner.activity.touch();
        if self.inner.watchers.any() {
            for t in tasks {
                self.inner.watchers.publish(t);
            }
        }
    }

    /// Runs every due timer now: expired leases, due scheduled tasks, finished
    /// tasks past retention. The background loop calls it; so may tests.
    pub async fn run_timers(&self) -> Result<Swept, BrokerError> {
        let now = self.now();
        let store = self.store();
        self.inner.drain.expire(now);
        let expired = store.requeue_expired(now).await;
        self.store_failed("requeue_expired", &expired);
        let mut swept = expired?;
        let promoted = store.promote_due(now).await;
        self.store_failed("promote_due", &promoted);
        let promoted = promoted?;
        let purged = store.purge_finished(now).await;
        self.store_failed("purge_finished", &purged);
        let purged = purged?;
        swept.count += promoted.count + purged.count;
        swept.changed.extend(promoted.changed);
        for q in promoted.ready_queues {
            if !swept.ready_queues.contains(&q) {
                swept.ready_queues.push(q);
            }
        }
        if swept.count > 0 {
            self.inner.activity.touch();
        }
        if swept.freed_semaphores {
            self.inner.waiters.wake_all();
        }
        for q in &swept.ready_queues {
            self.inner.waiters.wake(q);
        }
        for &(task_id, lease_id) in &swept.expired {
            let _ = self.inner.lost.send(LostLease { task_id, lease_id, reason: LostReason::Expired });
            if let Ok(task) = store.get(task_id).await {
                self.inner.metrics.expired(
                    &task.queue,
                    task_id,
                    lease_id,
                    task.state == TaskState::Dead,
                    now,
                );
                spans::expired(&task);
            }
        }
        if self.inner.watchers.any() {
            for id in &swept.changed {
                if let Ok(task) = store.get(*id).await {
                    self.inner.watchers.publish(&task);
                }
            }
        }
        Ok(swept)
    }

    /// The earliest pending timer.
    pub async fn next_timer(&self) -> Result<Option<Millis>, BrokerError> {
        Ok(self.store().next_timer().await?)
    }

    /// How many queues have workers waiting on them (long-polls, streams).
    pub fn waited_queues(&self) -> usize {
        self.inner.waiters.len()
    }

    /// Transactions the store committed (each one fsync), if it counts them.
    pub fn store_commits(&self) -> Option<u64> {
        self.store().commits()
    }

    /// Whether storage can serve.
    pub async fn healthy(&self) -> bool {
        self.store().healthy().await
    }

    /// Moves the broker to `phase` (it never goes back).
    pub fn set_phase(&self, phase: Phase) {
        self.inner.phase.send_if_modified(|p| {
            let later = phase > *p;
            if later {
                *p = phase;
            }
            later
        });
    }

    pub(crate) fn phase(&self) -> watch_channel::Receiver<Phase> {
        self.inner.phase.subscribe()
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

/// Relays what other replicas did (through a shared store) to this replica's
/// waiting workers, streams and watchers. Ends with the broker.
async fn follow_store(inner: std::sync::Weak<Inner>, mut events: broadcast::Receiver<StoreEvent>) {
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // Some wake-ups were lost: wake every waiter to look again.
                tracing::warn!(missed = n, "store events lagged; waking every waiting worker");
                if let Some(inner) = inner.upgrade() {
                    inner.waiters.wake_all();
                }
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(inner) = inner.upgrade() else { return };
        inner.activity.touch();
        let broker = Broker { inner };
        match event {
            // As many waiters as tasks, so one task does not wake every idle
            // stream of every replica (they would all go to the store for it).
            StoreEvent::Ready(queue, 0) => broker.inner.waiters.wake(&queue),
            StoreEvent::Ready(queue, n) => broker.inner.waiters.wake_for(&queue, n),
            StoreEvent::LeaseLost(task_id, lease_id, canceled) => {
                let reason = if canceled { LostReason::Canceled } else { LostReason::Expired };
                let _ = broker.inner.lost.send(LostLease { task_id, lease_id, reason });
            }
            StoreEvent::Freed => broker.inner.waiters.wake_all(),
            StoreEvent::Timer(at) => broker.timer_at(at),
            StoreEvent::Changed(id) => {
                if broker.inner.watchers.any() {
                    if let Ok(task) = broker.store().get(id).await {
                        broker.inner.watchers.publish(&task);
                    }
                }
            }
        }
    }
}
