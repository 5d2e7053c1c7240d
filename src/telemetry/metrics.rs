//! Prometheus metrics (text format at `/metrics` on `admin_listen`).
//!
//! Counters and histograms are per process (Prometheus sums replicas) and
//! cost one atomic add on the hot path; gauges of queue state are read from
//! the store at scrape time ([`Metrics::encode`]), so over Redis they are
//! cluster-wide and the same on every replica. Labels come only from bounded
//! sets: `queue` (at most `max_queues`), `state`, `method` (the served
//! methods; anything else is `unknown`), `code`, `outcome`, `op`.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::broker::QueueInfo;
use crate::core::stats::STATES;
use crate::core::task::{TaskId, TaskState};
use crate::core::Millis;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueState {
    queue: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueOutcome {
    queue: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodCode {
    method: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

/// How a delivery ended, for `taskbroker_task_run_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Acked,
    Nacked,
    Expired,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Acked => "acked",
            Outcome::Nacked => "nacked",
            Outcome::Expired => "expired",
        }
    }
}

/// A histogram of durations in seconds, 1 ms to ~9 h.
pub fn seconds_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 25))
}

/// Most deliveries timed at once for `taskbroker_task_run_seconds`.
const MAX_TRACKED: usize = 200_000;
/// A delivery not seen to end within this long is no longer timed.
const FORGET_AFTER: Millis = 12 * 3600 * 1000;

fn queue(q: &str) -> QueueLabel {
    QueueLabel { queue: q.to_owned() }
}

/// One queue's series, cached: counting is an atomic add once the queue's
/// handles are found (a read lock and a hash lookup, no allocation).
struct QueueSeries {
    enqueued: Counter,
    delivered: Counter,
    acked: Counter,
    nacked: Counter,
    dead: Counter,
    expired: Counter,
    stale: Counter,
    wait: Histogram,
    /// By [`Outcome`], made on first use (an outcome never seen exports nothing).
    run: [OnceLock<Histogram>; 3],
}

/// One method's series, cached like [`QueueSeries`].
struct MethodSeries {
    duration: Histogram,
    /// By status code, made on first use.
    codes: [OnceLock<Counter>; 17],
}

/// Shards of the delivery-time map, so settling threads rarely meet.
const SHARDS: usize = 16;

/// When a lease this process handed out began, and its queue's series.
type Starts = HashMap<(TaskId, u64), (Millis, Arc<QueueSeries>)>;

/// Every metric the broker keeps; one per process, shared by handle.
pub struct Metrics {
    enqueued: Family<QueueLabel, Counter>,
    delivered: Family<QueueLabel, Counter>,
    acked: Family<QueueLabel, Counter>,
    nacked: Family<QueueLabel, Counter>,
    dead: Family<QueueLabel, Counter>,
    expired: Family<QueueLabel, Counter>,
    stale: Family<QueueLabel, Counter>,
    wait: Family<QueueLabel, Histogram, fn() -> Histogram>,
    run: Family<QueueOutcome, Histogram, fn() -> Histogram>,
    requests: Family<MethodCode, Counter>,
    request_seconds: Family<MethodLabel, Histogram, fn() -> Histogram>,
    store_errors: Family<OpLabel, Counter>,
    queues: RwLock<HashMap<String, Arc<QueueSeries>>>,
    methods: RwLock<HashMap<String, Arc<MethodSeries>>>,
    /// When each lease this process handed out began, until it ends: the
    /// start of `taskbroker_task_run_seconds`.
    delivered_at: [Mutex<Starts>; SHARDS],
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            enqueued: Family::default(),
            delivered: Family::default(),
            acked: Family::default(),
            nacked: Family::default(),
            dead: Family::default(),
            expired: Family::default(),
            stale: Family::default(),
            wait: Family::new_with_constructor(seconds_buckets),
            run: Family::new_with_constructor(seconds_buckets),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(seconds_buckets),
            store_errors: Family::default(),
            queues: RwLock::default(),
            methods: RwLock::default(),
            delivered_at: std::array::from_fn(|_| Mutex::default()),
        }
    }
}

const OUTCOMES: [Outcome; 3] = [Outcome::Acked, Outcome::Nacked, Outcome::Expired];

impl Metrics {
    /// The cached series of queue `q`.
    fn queue(&self, q: &str) -> Arc<QueueSeries> {
        if let Some(s) = self.queues.read().unwrap_or_else(|p| p.into_inner()).get(q) {
            return s.clone();
        }
        let label = queue(q);
        let series = Arc::new(QueueSeries {
            enqueued: self.enqueued.get_or_create(&label).clone(),
            delivered: self.delivered.get_or_create(&label).clone(),
            acked: self.acked.get_or_create(&label).clone(),
            nacked: self.nacked.get_or_create(&label).clone(),
            dead: self.dead.get_or_create(&label).clone(),
            expired: self.expired.get_or_create(&label).clone(),
            stale: self.stale.get_or_create(&label).clone(),
            wait: self.wait.get_or_create(&label).clone(),
            run: Default::default(),
        });
        let mut queues = self.queues.write().unwrap_or_else(|p| p.into_inner());
        queues.entry(q.to_owned()).or_insert(series).clone()
    }

    fn run(&self, q: &str, series: &QueueSeries, outcome: Outcome) -> Histogram {
        let i = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        series.run[i]
            .get_or_init(|| {
                let label = QueueOutcome { queue: q.to_owned(), outcome: outcome.as_str() };
                self.run.get_or_create(&label).clone()
            })
            .clone()
    }

    fn shard(&self, id: TaskId, lease_id: u64) -> std::sync::MutexGuard<'_, Starts> {
        let i = ((id.0 as u64) ^ lease_id) as usize % SHARDS;
        self.delivered_at[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn enqueued(&self, q: &str) {
        self.queue(q).enqueued.inc();
    }

    /// A task was delivered at `now`, having been due since `ready_since`
    /// (its `scheduled_time`: a retry without backoff counts from its
    /// earlier due time).
    pub fn delivered(&self, q: &str, id: TaskId, lease_id: u64, ready_since: Millis, now: Millis) {
        let series = self.queue(q);
        series.delivered.inc();
        series.wait.observe(now.saturating_sub(ready_since) as f64 / 1000.0);
        let mut starts = self.shard(id, lease_id);
        if starts.len() >= MAX_TRACKED / SHARDS {
            // Leases that ended where this process did not see it (settled
            // through another replica, canceled) would otherwise stay.
            starts.retain(|_, (start, _)| *start + FORGET_AFTER > now);
        }
        if starts.len() < MAX_TRACKED / SHARDS {
            starts.insert((id, lease_id), (now, series));
        }
    }

    /// A delivery ended (`dead`: the task is DEAD now).
    pub fn settled(&self, q: &str, id: TaskId, lease_id: u64, outcome: Outcome, dead: bool, now: Millis) {
        let started = self.shard(id, lease_id).remove(&(id, lease_id));
        let series = match &started {
            Some((_, s)) => s.clone(),
            None => self.queue(q),
        };
        match outcome {
            Outcome::Acked => series.acked.inc(),
            Outcome::Nacked => series.nacked.inc(),
            Outcome::Expired => series.expired.inc(),
        };
        if dead {
            series.dead.inc();
        }
        if let Some((start, _)) = started {
            self.run(q, &series, outcome).observe(now.saturating_sub(start) as f64 / 1000.0);
        }
    }

    /// A lease of a task of `q` ran out (found by this process's sweep).
    pub fn expired(&self, q: &str, id: TaskId, lease_id: u64, dead: bool, now: Millis) {
        self.settled(q, id, lease_id, Outcome::Expired, dead, now);
    }

    /// A settlement with a stale lease (LEASE_MISMATCH).
    pub fn stale(&self, q: &str) {
        self.queue(q).stale.inc();
    }

    /// A call to `method` answered `code` (a gRPC status code) after `seconds`.
    pub fn request(&self, method: &str, code: i32, seconds: f64) {
        let series = self.method(method);
        series.duration.observe(seconds);
        let i = usize::try_from(code).ok().filter(|i| *i < 17).unwrap_or(2);
        series.codes[i]
            .get_or_init(|| {
                let label = MethodCode { method: method.to_owned(), code: code_name(code) };
                self.requests.get_or_create(&label).clone()
            })
            .inc();
    }

    fn method(&self, method: &str) -> Arc<MethodSeries> {
        if let Some(s) = self.methods.read().unwrap_or_else(|p| p.into_inner()).get(method) {
            return s.clone();
        }
        let label = MethodLabel { method: method.to_owned() };
        let series = Arc::new(MethodSeries {
            duration: self.request_seconds.get_or_create(&label).clone(),
            codes: Default::default(),
        });
        let mut methods = self.methods.write().unwrap_or_else(|p| p.into_inner());
        methods.entry(method.to_owned()).or_insert(series).clone()
    }

    pub fn store_error(&self, op: &'static str) {
        self.store_errors.get_or_create(&OpLabel { op }).inc();
    }

    /// The text exposition: every metric, with the queue gauges from `queues`
    /// (read from the store by the caller) as of `now`, and what `now_state`
    /// says of the process.
    pub fn encode(&self, queues: &[QueueInfo], now: Millis, now_state: Snapshot) -> String {
        let mut r = Registry::default();
        let tasks = Family::<QueueState, Gauge>::default();
        let oldest = Family::<QueueLabel, Gauge<f64, AtomicU64>>::default();
        let paused = Family::<QueueLabel, Gauge>::default();
        let max_in_flight = Family::<QueueLabel, Gauge>::default();
        for q in queues {
            for s in STATES {
                let label = QueueState { queue: q.name.clone(), state: state_name(s) };
                tasks.get_or_create(&label).set(q.stats.counts.get(s) as i64);
            }
            let age = q.stats.oldest_ready_time.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0);
            oldest.get_or_create(&queue(&q.name)).set(age);
            paused.get_or_create(&queue(&q.name)).set(i64::from(q.stats.paused));
            if q.policy.max_in_flight > 0 {
                max_in_flight.get_or_create(&queue(&q.name)).set(i64::from(q.policy.max_in_flight));
            }
        }
        r.register("taskbroker_queue_tasks", "Tasks held, by queue and state", tasks);
        r.register(
            "taskbroker_queue_oldest_ready_age_seconds",
            "How long the oldest READY task has waited (0 when none is ready)",
            oldest,
        );
        r.register("taskbroker_queue_paused", "1 while the queue is paused", paused);
        r.register(
            "taskbroker_queue_max_in_flight",
            "The queue's max_in_flight (queues with one set)",
            max_in_flight,
        );
        r.register("taskbroker_tasks_enqueued", "Tasks enqueued (not deduplicated)", self.enqueued.clone());
        r.register("taskbroker_tasks_delivered", "Deliveries (Lease or stream push)", self.delivered.clone());
        r.register("taskbroker_tasks_acked", "Tasks acked", self.acked.clone());
        r.register("taskbroker_tasks_nacked", "Tasks nacked", self.nacked.clone());
        r.register("taskbroker_tasks_dead", "Tasks that became DEAD", self.dead.clone());
        r.register("taskbroker_leases_expired", "Leases that ran out", self.expired.clone());
        r.register(
            "taskbroker_stale_settlements",
            "Settlements refused with LEASE_MISMATCH",
            self.stale.clone(),
        );
        r.register("taskbroker_task_wait_seconds", "Time from due to delivery", self.wait.clone());
        r.register(
            "taskbroker_task_run_seconds",
            "Time from delivery to ack, nack or expiry",
            self.run.clone(),
        );
        r.register("taskbroker_grpc_requests", "gRPC calls by method and status code", self.requests.clone());
        r.register(
            "taskbroker_grpc_request_duration_seconds",
            "gRPC call duration (for streams: until the response starts)",
            self.request_seconds.clone(),
        );
        let streams = Gauge::<i64>::default();
        streams.set(now_state.streams_open as i64);
        r.register("taskbroker_streams_open", "Worker streams open", streams);
        if let Some(h) = now_state.commit_seconds {
            r.register("taskbroker_store_commit_seconds", "Embedded store commit (one fsync) duration", h);
        }
        if let Some(n) = now_state.commits {
            r.register("taskbroker_store_commits", "Embedded store commits", ConstCounter::new(n));
        }
        r.register(
            "taskbroker_store_errors",
            "Store calls that failed, by operation",
            self.store_errors.clone(),
        );
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}

/// What the process is now, read at scrape time.
pub struct Snapshot {
    pub streams_open: usize,
    /// Commits of a store that commits to a local disk.
    pub commits: Option<u64>,
    pub commit_seconds: Option<Histogram>,
}

pub fn state_name(s: TaskState) -> &'static str {
    match s {
        TaskState::Scheduled => "scheduled",
        TaskState::Ready => "ready",
        TaskState::Leased => "leased",
        TaskState::Succeeded => "succeeded",
        TaskState::Dead => "dead",
        TaskState::Canceled => "canceled",
        TaskState::Waiting => "waiting",
    }
}

/// The gRPC name of a status code.
pub fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("UNKNOWN")
}
