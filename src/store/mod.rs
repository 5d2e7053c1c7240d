//! Storage: one trait in task operations, and its backends.
//!
//! # Contract every backend keeps (checked by `tests/store_conformance.rs`)
//! - Each operation is atomic: it happens whole or not at all, even when the
//!   calling future is dropped half-way.
//! - An operation that returns `Ok` is durable to the backend's promise (the
//!   embedded store: fsynced).
//! - `lease` delivers ready tasks of the given queues in strict preference
//!   order, highest priority first and FIFO within a priority, each to exactly
//!   one caller, with a new fencing `lease.id` per delivery.
//! - Settling calls (`ack`, `nack`, `extend`) check the lease with
//!   [`crate::core::lease::check`] and leave the task untouched on failure.
//! - `requeue_expired`, `promote_due` and `purge_finished` are idempotent and
//!   safe to call at any time and from several places at once.
//! - Flow control (see [`crate::core::flow`]): the lease is the permit. A
//!   task counts against its queue's `max_in_flight`, its key's
//!   `per_key_max_in_flight` and each of its semaphores' `limit` while it
//!   is LEASED, and at no other time: every way out of LEASED (ack, nack,
//!   expiry, cancel) gives its permits back, and a settling call with a
//!   stale lease changes nothing, so frees nothing. `lease` takes the
//!   permits in the same atomic step that leases: it never leases past a
//!   limit, passes over a task whose key or semaphore is saturated for the
//!   next deliverable one, takes one token of a rate-limited queue's bucket
//!   per delivery, and serves `concurrency_key` groups round-robin within a
//!   priority level (FIFO within a key). Saturation is never an error: the
//!   lease returns fewer tasks, and [`Fill`](crate::core::select::Fill)
//!   goes on to the next queue. Limits are read from the policies in force
//!   at each call.
//! - Dependencies (see [`crate::core::dependency`]): a task with
//!   `depends_on` is WAITING, never delivered, until each dependency has
//!   ended; `enqueue` refuses a batch naming a task it does not hold with
//!   [`StoreError::DependencyNotFound`] (all the ids), before changing
//!   anything. The end of a dependency (ack, nack or expiry to DEAD, cancel,
//!   deadline, a cascade, a purge of an unfinished task) settles its
//!   waiters with [`crate::core::dependency::resolve`], each exactly once:
//!   in the same operation on the table stores; on Redis before the call
//!   returns, or (when that replica could not) by any replica's next
//!   `promote_due` (see `redis/workflow.rs`). A finished task that an
//!   unfinished task depends on is not purged until that one finishes.
//! - Deadlines: a WAITING, SCHEDULED or READY task whose `expire_time`
//!   passed is CANCELED with `last_error = "expired"` by `lease` (instead of
//!   being delivered) and by `promote_due`; `next_timer` includes them.
//! - `enqueue` refuses a batch, before changing anything, that would create a
//!   queue beyond [`Limits::max_queues`] (the table stores also enforce
//!   `max_tasks` and `max_queued_bytes`); no other call checks a limit, so
//!   workers can always drain. A queue without tasks is forgotten.
//! - Schedules: `fire_schedule` records a due time as fired and enqueues its
//!   task in one atomic step, and changes nothing for a due time at or
//!   before the one recorded, so each due time enqueues at most one task
//!   whoever fires it; the record outlives the task and its queue, and is
//!   kept when the schedule is replaced (`put_schedule`), dropped with it
//!   (`delete_schedule`).
//!
//! Backends: [`memory::MemoryStore`] (the reference) and
//! [`embedded::EmbeddedStore`] (persisted in its own write-ahead log with group commit) are one
//! generic [`local::TableStore`] over [`table::Table`], which applies
//! [`crate::core::transition`], with a different [`local::Persist`] policy;
//! [`redis::RedisStore`] (one Lua script per operation, shared by many
//! broker replicas, which it keeps informed through [`Store::events`]).

pub mod embedded;
pub mod local;
pub mod memory;
pub mod redis;
pub mod schedule_record;
pub mod table;

use async_trait::async_trait;

use crate::core::lease::LeaseError;
use crate::core::schedule::Schedule;
use crate::core::stats::QueueStats;
use crate::core::task::{NewTask, Task, TaskId, TaskState};
use crate::core::Millis;

/// What a store can fail with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("task {0} not found")]
    TaskNotFound(TaskId),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// An enqueue named dependencies that do not exist (unknown, or purged).
    #[error("dependencies not found: {}", ids_list(.0))]
    DependencyNotFound(Vec<TaskId>),
    /// Cancel of a task that already succeeded or died.
    #[error("task {0} already finished")]
    TaskFinished(TaskId),
    /// The storage engine cannot serve (disk error, connection lost).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The storage engine refuses writes for lack of space (e.g. Redis OOM),
    /// or the store's budget ([`Limits`]) is spent.
    #[error("storage full: {0}")]
    Full(String),
    /// The enqueue would create a queue beyond [`Limits::max_queues`].
    #[error("queue limit reached: {0:?} would be a new queue")]
    QueueLimit(String),
    /// The store read something it cannot understand: a corrupt record, a
    /// script reply of the wrong shape, no free id. Retrying will not help.
    #[error("storage internal error: {0}")]
    Internal(String),
}

fn ids_list(ids: &[TaskId]) -> String {
    ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// What a shared store tells every broker replica attached to it, so that a
/// change made through one replica reaches streams and watchers on all.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreEvent {
    /// The queue got this many ready tasks (0: an unknown number).
    Ready(String, usize),
    /// A lease ended unsettled: `(task, lease id, canceled?)`.
    LeaseLost(TaskId, u64, bool),
    /// The task changed state.
    Changed(TaskId),
    /// A permit shared across queues (a semaphore's) came back: workers
    /// waiting on any queue may look again.
    Freed,
    /// A task became SCHEDULED, due at this time, as a side effect (a
    /// dependent released with a delay): the timer loop should not sleep
    /// past it.
    Timer(crate::core::Millis),
}

/// The outcome of one enqueued item.
#[derive(Clone, Debug, PartialEq)]
pub struct Enqueued {
    pub task: Task,
    /// An existing task was returned (dedup_key or request_id matched).
    pub deduplicated: bool,
}

/// A schedule as a store keeps it: its definition, and the last due time
/// fired for it (the state every replica and every restart agrees on).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSchedule {
    pub schedule: Schedule,
    /// The latest due time fired (or skipped by its catch-up policy); `None`
    /// before the first.
    pub last_fired: Option<Millis>,
}

/// What [`Store::fire_schedule`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Fired {
    /// The due time was recorded as fired and this task enqueued (or an
    /// existing one with the same dedup key returned).
    Enqueued(Box<Enqueued>),
    /// The due time was recorded as fired without a task (skipped).
    Skipped,
    /// Nothing done: this due time, or a later one, was fired already (by
    /// this or another replica), or the schedule is gone.
    Already,
}

/// Bounds a store keeps on what it holds (config `max_queues`, `max_tasks`,
/// `max_queued_bytes`). Only creating work is refused at a bound: leasing and
/// settling go on, so workers can drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Queues holding tasks (declared or not); an enqueue that would create
    /// one more is refused with [`StoreError::QueueLimit`].
    pub max_queues: usize,
    /// Tasks held, in every state until purged.
    pub max_tasks: usize,
    /// Payload bytes held, in every state until purged.
    pub max_queued_bytes: u64,
}

impl Limits {
    /// Budgets for this machine: payload bytes a quarter of its memory (the
    /// smaller of RAM and the cgroup's limit), tasks one per KiB of that
    /// (a record with its indexes costs a few hundred bytes beyond its
    /// payload). 4 GiB of memory when it cannot be read.
    pub fn from_memory() -> Limits {
        let memory = memory_bytes().unwrap_or(4 << 30);
        let bytes = (memory / 4).max(1 << 20);
        Limits { max_queues: 10_000, max_tasks: (bytes / 1024) as usize, max_queued_bytes: bytes }
    }

    /// No bounds (tests, tools).
    pub const UNLIMITED: Limits =
        Limits { max_queues: usize::MAX, max_tasks: usize::MAX, max_queued_bytes: u64::MAX };
}

impl Default for Limits {
    fn default() -> Self {
        Self::UNLIMITED
    }
}

/// This machine's memory for this process: the smaller of `MemTotal` and
/// the cgroup (v2) limit.
fn memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)?;
    let cgroup =
        std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|v| v.trim().parse::<u64>().ok());
    Some(cgroup.map_or(total, |c| c.min(total)))
}

/// Default byte budget of one lease response (whole tasks, counted as
/// [`crate::core::budget`] does): under the clients' default 4 MiB message
/// limit, with a margin; one task is always delivered, so only a task
/// alone larger than that (a `max_payload_bytes` raised near 4 MiB) can
/// make a larger response.
pub const LEASE_RESPONSE_BYTES: usize = (4 << 20) - (64 << 10);

/// What a worker asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseSpec {
    /// `(queue, quota)` in the order to try: first up to each quota from its
    /// queue, then whatever is still missing from the queues in this order.
    /// Strict preference is every quota equal to `max_tasks`.
    pub queues: Vec<(String, usize)>,
    pub max_tasks: usize,
    /// Stop adding tasks once they add up to this many bytes in the response
    /// ([`crate::core::budget::lease_bytes`]: every field, not only the
    /// payload; at least one task is always delivered), so a response stays
    /// under the clients' default 4 MiB message limit.
    pub max_bytes: usize,
    /// Lease length; `None`: each queue's `lease_duration`.
    pub lease_duration: Option<Millis>,
    pub worker_id: String,
}

/// One item of [`Store::ack_many`].
#[derive(Clone, Debug, PartialEq)]
pub struct AckItem {
    pub id: TaskId,
    pub lease_id: u64,
    pub result: Vec<u8>,
}

/// How a failed delivery is settled.
#[derive(Clone, Debug, PartialEq)]
pub struct NackSpec {
    pub error: String,
    /// Retry after this long instead of the queue's backoff.
    pub retry_after: Option<Millis>,
    /// Go straight to DEAD.
    pub no_retry: bool,
    /// A random number in `[0, 1)` for the backoff's jitter.
    pub jitter_sample: f64,
}

/// What a timer sweep changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Swept {
    /// Queues that got ready tasks (waiting workers should look again).
    pub ready_queues: Vec<String>,
    /// How many tasks changed state or were removed.
    pub count: usize,
    /// Tasks whose state changed (not removed ones), for watchers.
    pub changed: Vec<TaskId>,
    /// Leases that ran out: `(task, lease id)`, for the streams holding them.
    pub expired: Vec<(TaskId, u64)>,
    /// A lease that ran out held a semaphore permit: tasks of any queue may
    /// now go. (A queue whose own cap freed is in `ready_queues`.)
    pub freed_semaphores: bool,
}

impl LeaseSpec {
    /// Strict preference over `queues`.
    pub fn strict(
        queues: &[String],
        max_tasks: usize,
        lease_duration: Option<Millis>,
        worker_id: &str,
    ) -> Self {
        Self {
            queues: queues.iter().map(|q| (q.clone(), max_tasks)).collect(),
            max_tasks,
            max_bytes: LEASE_RESPONSE_BYTES,
            lease_duration,
            worker_id: worker_id.to_owned(),
        }
    }
}

/// The storage trait: every state change of a task is one call.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates tasks (all in one commit), honouring request ids and dedup keys.
    async fn enqueue(&self, tasks: Vec<NewTask>, now: Millis) -> Result<Vec<Enqueued>, StoreError>;
    /// Leases up to `spec.max_tasks` ready tasks.
    async fn lease(&self, spec: LeaseSpec, now: Millis) -> Result<Vec<Task>, StoreError>;
    /// Marks a leased task SUCCEEDED with `result`.
    async fn ack(&self, id: TaskId, lease_id: u64, result: Vec<u8>, now: Millis) -> Result<Task, StoreError>;
    /// Acks several tasks in one store operation (one commit; one script per
    /// queue); each item succeeds or fails alone, in order.
    async fn ack_many(
        &self,
        items: Vec<AckItem>,
        now: Millis,
    ) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
        let mut out = Vec::with_capacity(items.len());
        for AckItem { id, lease_id, result } in items {
            out.push(self.ack(id, lease_id, result, now).await);
        }
        Ok(out)
    }
    /// Retries (READY or SCHEDULED) or kills (DEAD) a leased task.
    async fn nack(&self, id: TaskId, lease_id: u64, spec: NackSpec, now: Millis) -> Result<Task, StoreError>;
    /// Sets the lease deadline to `now + by`; returns the new deadline.
    async fn extend(&self, id: TaskId, lease_id: u64, by: Millis, now: Millis) -> Result<Millis, StoreError>;
    /// Cancels a scheduled, ready or leased task (idempotent on a canceled one).
    async fn cancel(&self, id: TaskId, now: Millis) -> Result<Task, StoreError>;
    async fn get(&self, id: TaskId) -> Result<Task, StoreError>;
    /// Returns tasks whose lease ran out to READY, or DEAD when no attempts remain.
    async fn requeue_expired(&self, now: Millis) -> Result<Swept, StoreError>;
    /// Makes due SCHEDULED tasks READY.
    async fn promote_due(&self, now: Millis) -> Result<Swept, StoreError>;
    /// Removes finished tasks past their retention.
    async fn purge_finished(&self, now: Millis) -> Result<Swept, StoreError>;
    /// When `queue`'s next delivery is held back only by its `rate_limit`
    /// (it has ready tasks and its token bucket is empty): the time the
    /// bucket next has a token, so waiting workers can be woken then rather
    /// than poll. `None` otherwise (no rate limit, tokens left, or no work).
    async fn throttled(&self, queue: &str, now: Millis) -> Result<Option<Millis>, StoreError>;
    /// The earliest time at which one of the three sweeps has work, if any.
    async fn next_timer(&self) -> Result<Option<Millis>, StoreError>;
    /// Whether the store can serve (for readiness).
    async fn healthy(&self) -> bool;

    // What the operations API asks (AdminService, dashboard). Every store
    // keeps the same numbers; over a shared store every replica sees them.

    /// Queues that hold tasks or are paused, by name.
    async fn queue_names(&self) -> Result<Vec<String>, StoreError>;
    /// The queue's counts by state, totals, oldest ready time and pause
    /// (zeros for a queue the store does not hold).
    async fn queue_stats(&self, queue: &str) -> Result<QueueStats, StoreError>;
    /// Pauses (or resumes) delivery from `queue`: `lease` takes nothing from
    /// a paused queue. Durable; returns whether it changed anything.
    async fn set_paused(&self, queue: &str, paused: bool) -> Result<bool, StoreError>;
    /// Removes the queue's tasks in `states` (LEASED ones never); returns how
    /// many.
    async fn purge_queue(&self, queue: &str, states: &[TaskState], now: Millis) -> Result<u64, StoreError>;
    /// Up to `limit` tasks of `queue` in `state` whose ids come after
    /// `after`, in id (creation) order.
    async fn list_tasks(
        &self,
        queue: &str,
        state: TaskState,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError>;
    /// DEAD tasks of `queue` back to READY with attempt 0 and `last_error`
    /// kept: those of `ids`, or (`ids` empty) the oldest; at most `limit`
    /// (0: all). Others are skipped. `Swept::count` is how many.
    async fn redrive(
        &self,
        queue: &str,
        ids: &[TaskId],
        limit: usize,
        now: Millis,
    ) -> Result<Swept, StoreError>;

    // Periodic schedules (see `crate::core::schedule`). Every replica
    // runs the firing loop; `fire_schedule` is what makes each due time
    // enqueue exactly one task.

    /// Every schedule, by name.
    async fn list_schedules(&self) -> Result<Vec<StoredSchedule>, StoreError>;
    /// Creates or replaces the schedule of that name; its last fired due
    /// time is kept.
    async fn put_schedule(&self, schedule: Schedule) -> Result<(), StoreError>;
    /// Removes the schedule (and its last fired due time); whether it existed.
    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError>;
    /// In one atomic step: if the schedule `name` exists and its last fired
    /// due time is before `due`, records `due` as fired and enqueues `task`
    /// (`None`: records only, a skipped run); otherwise changes nothing
    /// ([`Fired::Already`]). The task goes to the schedule's queue as
    /// stored (`task.queue` must be it). So each due time enqueues at
    /// most one task however many replicas fire it, and once recorded is
    /// never fired again.
    async fn fire_schedule(
        &self,
        name: &str,
        due: Millis,
        task: Option<NewTask>,
        now: Millis,
    ) -> Result<Fired, StoreError>;

    /// Transactions committed (each one fsync) since the store opened, for
    /// stores that commit to a local disk; `None` for the others.
    fn commits(&self) -> Option<u64> {
        None
    }

    /// How long its commits took (the same stores as [`Store::commits`]).
    fn commit_seconds(&self) -> Option<prometheus_client::metrics::histogram::Histogram> {
        None
    }

    /// Counts one WatchTask on `id` starting (`true`) or ending (`false`), for
    /// stores shared by several brokers: while a task has watches, the store
    /// reports its changes as [`StoreEvent::Changed`] to every replica. Each
    /// `true` is matched by one `false`. Local stores need not: the broker
    /// already tells its watchers.
    async fn set_watched(&self, id: TaskId, watched: bool) -> Result<(), StoreError> {
        let _ = (id, watched);
        Ok(())
    }

    /// Events from other replicas, for stores shared by several brokers.
    /// Local stores return `None`: the broker already knows what it did.
    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<StoreEvent>> {
        None
    }
}
