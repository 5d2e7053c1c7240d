//! The Redis store: tasks in a Redis shared by every broker replica, each
//! state change one atomic Lua script.
//!
//! # Layout in Redis
//! Each queue has its own keys under one hash tag, `tb:{<queue>}:...` (see
//! [`keys`]): the task records in two parts (see [`record`]: a small meta
//! record the scripts change, and a body they never decode), results, the
//! ready tasks (below), sorted sets of leased tasks (by
//! deadline) and scheduled tasks (by due time), a list of finished tasks in
//! purge order, counters for the ready order and for lease ids, and the
//! dedup-key and request-id lookups. A task
//! id carries a tag of its queue's name ([`queues`]), so no global index is
//! written per task; the one global set, `tb:queues`, lists the queues (what
//! the sweeps walk), written once per queue.
//!
//! Ready tasks: per priority, one FIFO list of the tasks without a
//! `concurrency_key` (`ready:<p>`) and, in a queue that has seen a key, one
//! FIFO list per key (`ready:<p>:k:<key>`) and the turn of the keys that
//! have READY tasks (`turn:<p>`, a sorted set; the no-key group is the
//! member `''`). A lease serves a level's groups in turn order, moving each
//! served group to the back, as the table stores' `Rotation` does; see
//! *Flow control*. A queue that never saw a key keeps no turn and reads its
//! lists directly, as before.
//!
//! Key layout 2 (before key groups) kept every READY task of a priority in
//! `ready:<p>`, keyed or not. This layout reads that list as the no-key
//! group, so such tasks are delivered without a migration: the first lease
//! of a keyed queue that finds the list outside the turn puts it at the
//! front (it waited longest), and the keyed tasks in it count against their
//! key's `per_key_max_in_flight` as usual; a cancel looks for a task in its
//! key's list, then in `ready:<p>`. Connecting marks a layout-2 Redis as
//! layout 3, so builds of layout 2 refuse it from then on (they would not
//! see the key groups). During a rolling upgrade, replicas of layout 2
//! still running deliver only the no-key lists (the new replicas deliver
//! the key groups), and a keyed task they cancel stays listed in its key's
//! list until a lease drops it (a lease drops any listed task that is not
//! READY).
//!
//! The operations API's keys (pause, totals, per-state id indexes) are
//! described in [`admin`].
//!
//! # Operations
//! One script per operation under `lua/` ([`scripts`]); each checks everything
//! before its first write, so a refused call changes nothing. Calls that span
//! queues (an enqueue batch over several queues, a lease over several queues,
//! the sweeps) run one script per queue: each queue's part is atomic, the
//! whole is not. A failure part-way through a multi-queue enqueue can leave
//! the earlier queues' tasks created (a retry with request ids is safe); a
//! lease that fails part-way returns what it already leased.
//!
//! # Flow control
//! Each queue's limits are checked and taken inside `lease.lua`, in the same
//! atomic step that leases (one step per queue), and shared by every replica:
//! - `max_in_flight`: the queue's leased set *is* the count (`ZCARD`), so
//!   every script that ends a lease frees the permit and none can leak;
//! - `rate_limit`: a token bucket (`tokens`, `at`) in the queue's `flow` hash,
//!   on the scripts' clock; `throttle.lua` tells the broker when the next
//!   token is due, so waiting workers are woken by one timer, not a poll;
//! - `per_key_max_in_flight`: in the `flow` hash, each task's key (`t:<id>`)
//!   and each key's LEASED count (`k:<key>`), counted up by `lease.lua` and
//!   down by every script that takes a task out of the leased set
//!   (`release_keys` in `lib.lua`); a saturated key's tasks are passed over
//!   and stay READY in place (a keyed group keeps its place in the turn);
//! - round-robin: within a priority, the groups of `turn:<p>` take turns,
//!   FIFO within each: `lease.lua` reads the first `want + 256` groups of
//!   the turn, a share of each group's list at a time, and passes over at
//!   most 256 saturated groups or tasks per level (the bound the FIFO path
//!   has), so a lease of N tasks never walks every key. A group that gets
//!   its first READY task joins the back of the turn (`push_ready` in
//!   `lib.lua`, from enqueue, promote, nack, reap, redrive); a served group
//!   goes to the back; a group left empty leaves (lease, cancel,
//!   purge_queue). A flood of one key therefore delays another key's next
//!   task by at most one round. Stats and pause read every group's list
//!   (O(keys)); listing READY tasks reads them up to its scan bound. The
//!   price: a lease spread over many keys reads, checks and trims a list per
//!   group it serves instead of one per level (roughly 2.5x the script time
//!   of a lease of 100 over 100 keys, measured with `INFO commandstats` on a
//!   busy machine); a queue that never saw a key runs the FIFO path as
//!   before.
//!
//! Shared semaphores span queues, and so Redis Cluster slots: one script
//! cannot touch a queue and a semaphore atomically. Each semaphore's holders
//! are a sorted set in the semaphore's own slot (`tb:{sem:<name>}:holders`,
//! member `<task>:<lease>`, score = when the permit lapses); holders past
//! their score do not count and are removed by the next take, so no permit
//! can leak beyond the lease that held it. A lease ([`lease`]):
//! 1. `lease.lua` with no permits: it takes tasks in order up to the first
//!    that needs a semaphore, and names that task's semaphores in the reply
//!    (so such tasks keep their place in the order);
//! 2. if that left the lease short, permits are reserved in each named
//!    semaphore's slot (`semaphore_take.lua`: members `r:<random>:<n>`
//!    lapsing in 10 s), at most the semaphore's limit minus its live holders;
//! 3. `lease.lua` again, told how many permits of each it may use: it goes on
//!    in order within them, passing over (and naming) tasks whose semaphores
//!    have no permit left, so nothing saturated blocks what can go;
//! 4. each leased task's reservations become its lease's holders (added, then
//!    the reservation removed: the count errs high, never low), lapsing at
//!    the lease's deadline; unused reservations are removed at once.
//!
//! Ack, Nack and CancelTask remove the lease's holders after the queue's
//! script succeeded (a stale ack fails that script first, so frees nothing)
//! and publish `freed`, which wakes every replica's waiting workers;
//! ExtendLease moves them with the deadline (`extend.lua` returns the task's
//! semaphores). An expired lease's holders lapse with it. A crash between
//! steps leaves at most a reservation that lapses in 10 s, or a holder whose
//! lease is LEASED anyway. A holder whose extension was lost (connection cut
//! after `extend.lua`) would lapse at the old deadline while the worker
//! still runs: ExtendLease then fails (`UNAVAILABLE`) although the lease
//! moved, so the worker extends again rather than trust a permit that
//! lapses under it; a worker that stops extending keeps its permit until
//! the old deadline only.
//!
//! # Dependencies and deadlines
//! A task and the tasks it depends on may sit in different queues, so in
//! different Redis Cluster slots: every cross-queue effect (registering a
//! dependent, a dependency's end, a finished dependent releasing what it
//! read) is an event in the changed queue's outbox, written in the same
//! script as the change, delivered by any replica and applied idempotently,
//! so exactly once, even when a replica dies half-way. The design is in
//! [`workflow`]. Deadlines: a per-queue `expiring` set, checked by
//! `lease.lua` (before it delivers) and by the promote sweep.
//!
//! # Time
//! Scripts take `now` from the caller, or with `server_time` read Redis's own
//! clock (`TIME`), so every replica settles leases against one clock.
//!
//! # Failures
//! Connection errors and timeouts are [`StoreError::Unavailable`] within a few
//! seconds ([`reply::CALL_TIMEOUT`]); the connection comes back by itself.
//! Redis refusing writes for lack of memory is [`StoreError::Full`].
//!
//! # Durability
//! Redis's: with `appendonly yes` and `appendfsync everysec` (the default) a
//! crash of the Redis process loses nothing acknowledged, a power loss up to
//! about a second; asynchronous replication loses acknowledged writes on
//! failover. `maxmemory-policy` must be `noeviction`, or Redis silently evicts
//! tasks; [`RedisStore::open`] warns when it is not.
//!
//! # Redis Cluster and Sentinel
//! [`Target::Cluster`]: every script and pipeline touches one queue's keys
//! (one slot); events use classic pub/sub, which the cluster forwards to every
//! node. [`Target::Sentinel`]: commands and events go to the master the
//! sentinels name, found again after a failover (see [`conn`]).

mod ack;
mod admin;
mod conn;
mod enqueue;
mod events;
mod keys;
mod lease;
mod permits;
mod queues;
mod record;
mod reply;
mod schedules;
mod scripts;
mod settings;
mod sweep;
mod workflow;

use std::time::Duration;

use async_trait::async_trait;
use redis::{Script, ScriptInvocation, Value};
use tokio::sync::broadcast;

use self::conn::Conn;
pub use self::conn::{redact, Target};
use self::keys::QueueKeys;
use self::reply::{bounded, settled, settled_task, uint, unexpected};
use super::{
    AckItem, Enqueued, Fired, LeaseSpec, Limits, NackSpec, Store, StoreError, StoreEvent, StoredSchedule,
    Swept,
};
use crate::core::queue::QueueRegistry;
use crate::core::schedule::Schedule;
use crate::core::stats::QueueStats;
use crate::core::task::{NewTask, Task, TaskId, TaskState};
use crate::core::Millis;

/// Events buffered for a slow receiver before it sees `Lagged`.
const EVENT_BUFFER: usize = 4096;

/// Tasks in Redis; a cheap handle over one multiplexed, self-reconnecting
/// connection (to one Redis, or to a Redis Cluster).
pub struct RedisStore {
    conn: Conn,
    /// Every queue's settings (retention, backoff, lease length, dedup window).
    queues: QueueRegistry,
    /// Scripts read Redis's clock and ignore the `now` they are given.
    server_time: bool,
    /// Events from every replica (this one included), fed by `_listener`.
    events: broadcast::Sender<StoreEvent>,
    _listener: events::Listener,
    /// The queues this replica knows, to find a task's queue from its id.
    known: queues::KnownQueues,
    /// Bounds; Redis enforces only `max_queues` (its `maxmemory` bounds the rest).
    limits: Limits,
}

impl RedisStore {
    /// Connects to one Redis at `url` (`redis://host:port/db`); see
    /// [`RedisStore::open`].
    pub async fn connect(
        url: &str,
        queues: impl Into<QueueRegistry>,
        server_time: bool,
    ) -> Result<Self, StoreError> {
        Self::open(&Target::Single(url.to_owned()), queues, server_time).await
    }

    /// Connects to `target`, checks Redis's settings and subscribes to the
    /// events of other replicas.
    ///
    /// `server_time`: use Redis's clock instead of the `now` every call passes
    /// (production); tests pass `false` to drive time explicitly.
    pub async fn open(
        target: &Target,
        queues: impl Into<QueueRegistry>,
        server_time: bool,
    ) -> Result<Self, StoreError> {
        let queues = queues.into();
        if target.urls().is_empty() {
            return Err(StoreError::Unavailable("no Redis node given".into()));
        }
        let conn = bounded(Conn::open(target)).await?;
        settings::check_layout(&conn).await?;
        settings::warn_if_unsafe(&conn).await;
        let first = bounded(events::subscribe(&conn)).await?;
        let (tx, _) = broadcast::channel(EVENT_BUFFER);
        let listener = events::Listener::spawn(first, conn.clone(), tx.clone());
        let store = Self {
            conn,
            queues,
            server_time,
            events: tx,
            _listener: listener,
            known: queues::KnownQueues::default(),
            limits: Limits::UNLIMITED,
        };
        store.index_tags().await?;
        Ok(store)
    }

    /// Puts `limits` in force (Redis: `max_queues`; see [`Limits`]).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// A call of `script` on `queue`'s keys with the common arguments; the
    /// caller adds the script's own.
    fn invocation<'a>(&self, script: &'a Script, queue: &str, now: Millis) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for key in QueueKeys::new(queue).all() {
            inv.key(key);
        }
        let now = if self.server_time { String::new() } else { now.to_string() };
        inv.arg(now).arg(keys::EVENTS).arg(queue);
        inv
    }

    async fn run(&self, inv: &ScriptInvocation<'_>) -> Result<Value, StoreError> {
        let mut conn = self.conn.clone();
        bounded(inv.invoke_async(&mut conn)).await
    }

    /// `n` leases of `queue` ended: when the queue caps its leases, tells
    /// every replica (as `ready <queue> <n>`), so streams and long-polls
    /// waiting on its permits look again. A lost message costs a delay,
    /// never a permit: the count is the leased set's size (lease.lua).
    async fn announce_freed(&self, queue: &str, n: usize) {
        if n == 0 || !self.queues.current().get(queue).caps_leases() {
            return;
        }
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(keys::EVENTS).arg(format!("ready {queue} {n}"));
        if let Err(e) = bounded(cmd.query_async::<i64>(&mut conn)).await {
            tracing::debug!(error = %e, queue, "could not announce freed permits");
        }
    }

    fn retention(&self, queue: &str) -> u64 {
        self.queues.current().get(queue).retention.as_millis() as u64
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn enqueue(&self, tasks: Vec<NewTask>, now: Millis) -> Result<Vec<Enqueued>, StoreError> {
        self.enqueue_batch(tasks, now).await
    }

    async fn lease(&self, spec: LeaseSpec, now: Millis) -> Result<Vec<Task>, StoreError> {
        self.lease_tasks(spec, now).await
    }

    async fn ack(&self, id: TaskId, lease_id: u64, result: Vec<u8>, now: Millis) -> Result<Task, StoreError> {
        let mut results = self.ack_items(vec![AckItem { id, lease_id, result }], now).await?;
        results.pop().unwrap_or_else(|| Err(unexpected("no ack reply")))
    }

    async fn ack_many(
        &self,
        items: Vec<AckItem>,
        now: Millis,
    ) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
        self.ack_items(items, now).await
    }

    async fn nack(&self, id: TaskId, lease_id: u64, spec: NackSpec, now: Millis) -> Result<Task, StoreError> {
        let queue = self.queue_of(id).await?;
        let policies = self.queues.current();
        let backoff = &policies.get(&queue).retry_backoff;
        let mut inv = self.invocation(&scripts::NACK, &queue, now);
        inv.arg(id.to_string())
            .arg(lease_id)
            .arg(spec.error)
            .arg(if spec.no_retry { "1" } else { "0" })
            .arg(spec.retry_after.map(|ms| ms.to_string()).unwrap_or_default())
            .arg(backoff.initial.as_millis() as u64)
            .arg(backoff.max.as_millis() as u64)
            // Shortest text that reads back as the same double.
            .arg(format!("{:?}", backoff.multiplier))
            .arg(format!("{:?}", backoff.jitter))
            .arg(format!("{:?}", spec.jitter_sample))
            .arg(self.retention(&queue));
        let task = settled_task(self.run(&inv).await?, id, &queue)?;
        self.release_permits(&task, lease_id).await;
        if task.state != crate::core::task::TaskState::Ready {
            self.announce_freed(&queue, 1).await;
        }
        if task.state == TaskState::Dead {
            self.deliver(&queue, now).await?;
        }
        Ok(task)
    }

    async fn extend(&self, id: TaskId, lease_id: u64, by: Millis, now: Millis) -> Result<Millis, StoreError> {
        let queue = self.queue_of(id).await?;
        let mut inv = self.invocation(&scripts::EXTEND, &queue, now);
        inv.arg(id.to_string()).arg(lease_id).arg(by);
        let rest = settled(self.run(&inv).await?, id)?;
        let deadline = uint(rest.first().ok_or_else(|| unexpected("no deadline"))?)?;
        if let Some(semaphores) = rest.get(1) {
            self.extend_permits(id, lease_id, reply::text(semaphores)?, deadline).await?;
        }
        Ok(deadline)
    }

    async fn cancel(&self, id: TaskId, now: Millis) -> Result<Task, StoreError> {
        let queue = self.queue_of(id).await?;
        let mut inv = self.invocation(&scripts::CANCEL, &queue, now);
        inv.arg(id.to_string()).arg(self.retention(&queue));
        let task = settled_task(self.run(&inv).await?, id, &queue)?;
        if let Some(lease) = &task.lease {
            self.release_permits(&task, lease.id).await;
            self.announce_freed(&queue, 1).await;
        }
        self.deliver(&queue, now).await?;
        Ok(task)
    }

    async fn get(&self, id: TaskId) -> Result<Task, StoreError> {
        let queue = self.queue_of(id).await?;
        let mut inv = self.invocation(&scripts::GET, &queue, 0);
        inv.arg(id.to_string());
        let items = settled(self.run(&inv).await?, id)?;
        let [record @ .., pending] = items.as_slice() else { return Err(unexpected("a short get reply")) };
        let mut task = reply::task(&queue, record)?;
        for dep in reply::text(pending)?.split(',').filter(|d| !d.is_empty()) {
            task.pending_dependencies.push(dep.parse().map_err(|_| unexpected("a pending dependency id"))?);
        }
        Ok(task)
    }

    async fn requeue_expired(&self, now: Millis) -> Result<Swept, StoreError> {
        self.reap(now).await
    }

    async fn promote_due(&self, now: Millis) -> Result<Swept, StoreError> {
        self.promote(now).await
    }

    async fn purge_finished(&self, now: Millis) -> Result<Swept, StoreError> {
        self.purge(now).await
    }

    async fn throttled(&self, queue: &str, now: Millis) -> Result<Option<Millis>, StoreError> {
        let Some(limit) = self.queues.current().get(queue).rate_limit else { return Ok(None) };
        let mut inv = self.invocation(&scripts::THROTTLE, queue, now);
        inv.arg(format!("{:e}", limit.rate.per_ms())).arg(limit.burst);
        let wait: i64 =
            redis::from_redis_value(self.run(&inv).await?).map_err(|e| unexpected(&e.to_string()))?;
        // A delay on Redis's clock, made a time on ours.
        Ok(u64::try_from(wait).ok().map(|ms| now + ms.max(1)))
    }

    async fn next_timer(&self) -> Result<Option<Millis>, StoreError> {
        self.first_timer().await
    }

    async fn healthy(&self) -> bool {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        matches!(tokio::time::timeout(Duration::from_secs(1), ping).await, Ok(Ok(_)))
    }

    async fn queue_names(&self) -> Result<Vec<String>, StoreError> {
        self.admin_queue_names().await
    }

    async fn queue_stats(&self, queue: &str) -> Result<QueueStats, StoreError> {
        self.admin_queue_stats(queue).await
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<bool, StoreError> {
        self.admin_set_paused(queue, paused).await
    }

    async fn purge_queue(&self, queue: &str, states: &[TaskState], now: Millis) -> Result<u64, StoreError> {
        self.admin_purge_queue(queue, states, now).await
    }

    async fn list_tasks(
        &self,
        queue: &str,
        state: TaskState,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError> {
        self.admin_list_tasks(queue, state, after, limit).await
    }

    async fn redrive(
        &self,
        queue: &str,
        ids: &[TaskId],
        limit: usize,
        now: Millis,
    ) -> Result<Swept, StoreError> {
        self.admin_redrive(queue, ids, limit, now).await
    }

    fn events(&self) -> Option<broadcast::Receiver<StoreEvent>> {
        Some(self.events.subscribe())
    }

    async fn set_watched(&self, id: TaskId, watched: bool) -> Result<(), StoreError> {
        let queue = self.queue_of(id).await?;
        let mut inv = self.invocation(&scripts::WATCH, &queue, 0);
        inv.arg(id.to_string()).arg(if watched { 1 } else { -1 });
        self.run(&inv).await.map(|_| ())
    }

    async fn list_schedules(&self) -> Result<Vec<StoredSchedule>, StoreError> {
        self.redis_list_schedules().await
    }

    async fn put_schedule(&self, schedule: Schedule) -> Result<(), StoreError> {
        self.redis_put_schedule(schedule).await
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        self.redis_delete_schedule(name).await
    }

    async fn fire_schedule(
        &self,
        name: &str,
        due: Millis,
        task: Option<NewTask>,
        now: Millis,
    ) -> Result<Fired, StoreError> {
        self.redis_fire_schedule(name, due, task, now).await
    }
}
