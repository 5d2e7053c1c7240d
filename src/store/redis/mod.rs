//! The Redis store: tasks in a Redis shared by every broker replica, each
//! state change one atomic Lua script.
//!
//! # Layout in Redis
//! Each queue has its own keys under one hash tag, `tb:{<queue>}:...` (see
//! [`keys`]): the task records (a HASH of MessagePack records, see [`record`]),
//! one sorted set per state (ready by priority then arrival, leased by
//! deadline, scheduled by due time, finished by purge time), counters for the
//! ready order and for lease ids, and the dedup-key and request-id lookups.
//! Two global keys tie the queues together: `tb:index` (task id -> queue, for
//! the calls that only carry a task id) and `tb:queues` (what the sweeps walk).
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
//! tasks; [`RedisStore::connect`] warns when it is not.

mod ack;
mod cache;
mod enqueue;
mod events;
mod keys;
mod lease;
mod msgpack;
mod record;
mod reply;
mod scripts;
mod settings;
mod sweep;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script, ScriptInvocation, Value};
use tokio::sync::broadcast;

use self::keys::QueueKeys;
use self::reply::{bounded, settled, settled_task, uint, unexpected};
use super::{AckItem, Enqueued, LeaseSpec, NackSpec, Store, StoreError, StoreEvent, Swept};
use crate::core::queue::Policies;
use crate::core::task::{NewTask, Task, TaskId};
use crate::core::Millis;

/// How long opening a connection to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long Redis may take to answer one command.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(2_500);
/// Events buffered for a slow receiver before it sees `Lagged`.
const EVENT_BUFFER: usize = 4096;

/// Tasks in Redis; a cheap handle over one multiplexed, self-reconnecting
/// connection.
pub struct RedisStore {
    conn: ConnectionManager,
    policies: Arc<Policies>,
    /// Scripts read Redis's clock and ignore the `now` they are given.
    server_time: bool,
    /// Events from every replica (this one included), fed by `_listener`.
    events: broadcast::Sender<StoreEvent>,
    _listener: events::Listener,
    /// Task -> queue for tasks seen here, saving the `tb:index` lookup.
    queues_of: cache::QueueCache,
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`), checks Redis's settings and
    /// subscribes to the events of other replicas.
    ///
    /// `server_time`: use Redis's clock instead of the `now` every call passes
    /// (production); tests pass `false` to drive time explicitly.
    pub async fn connect(url: &str, policies: Arc<Policies>, server_time: bool) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(reply::store_error)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = bounded(client.get_connection_manager_with_config(config)).await?;
        settings::warn_if_unsafe(&conn).await;
        let first = bounded(events::subscribe(&client)).await?;
        let (tx, _) = broadcast::channel(EVENT_BUFFER);
        let listener = events::Listener::spawn(client, first, conn.clone(), tx.clone());
        Ok(Self {
            conn,
            policies,
            server_time,
            events: tx,
            _listener: listener,
            queues_of: cache::QueueCache::default(),
        })
    }

    /// A call of `script` on `queue`'s keys with the common arguments; the
    /// caller adds the script's own.
    fn invocation<'a>(&self, script: &'a Script, keys: &QueueKeys, now: Millis) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for key in keys.all() {
            inv.key(key);
        }
        let now = if self.server_time { String::new() } else { now.to_string() };
        inv.arg(now).arg(keys::EVENTS);
        inv
    }

    async fn run(&self, inv: &ScriptInvocation<'_>) -> Result<Value, StoreError> {
        let mut conn = self.conn.clone();
        bounded(inv.invoke_async(&mut conn)).await
    }

    /// The queue holding task `id`.
    async fn queue_of(&self, id: TaskId) -> Result<String, StoreError> {
        if let Some(queue) = self.queues_of.get(id) {
            return Ok(queue);
        }
        let mut conn = self.conn.clone();
        let queue: Option<String> = bounded(conn.hget(keys::INDEX, id.to_string())).await?;
        let queue = queue.ok_or(StoreError::TaskNotFound(id))?;
        self.queues_of.remember([(id, queue.as_str())]);
        Ok(queue)
    }

    async fn queues(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        bounded(conn.smembers(keys::QUEUES)).await
    }

    /// Drops index entries of tasks that do not exist (best effort: an entry
    /// left behind only reads as "not found").
    async fn forget(&self, ids: impl Iterator<Item = TaskId>) {
        let ids: Vec<String> = ids.map(|id| id.to_string()).collect();
        if ids.is_empty() {
            return;
        }
        let mut conn = self.conn.clone();
        if let Err(e) = bounded(conn.hdel::<_, _, ()>(keys::INDEX, ids)).await {
            tracing::debug!(error = %e, "could not drop unused task index entries");
        }
    }

    fn retention(&self, queue: &str) -> u64 {
        self.policies.get(queue).retention.as_millis() as u64
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
        let backoff = &self.policies.get(&queue).retry_backoff;
        let mut inv = self.invocation(&scripts::NACK, &QueueKeys::new(&queue), now);
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
        settled_task(self.run(&inv).await?, id)
    }

    async fn extend(&self, id: TaskId, lease_id: u64, by: Millis, now: Millis) -> Result<Millis, StoreError> {
        let queue = self.queue_of(id).await?;
        let mut inv = self.invocation(&scripts::EXTEND, &QueueKeys::new(&queue), now);
        inv.arg(id.to_string()).arg(lease_id).arg(by);
        let rest = settled(self.run(&inv).await?, id)?;
        uint(rest.first().ok_or_else(|| unexpected("no deadline"))?)
    }

    async fn cancel(&self, id: TaskId, now: Millis) -> Result<Task, StoreError> {
        let queue = self.queue_of(id).await?;
        let mut inv = self.invocation(&scripts::CANCEL, &QueueKeys::new(&queue), now);
        inv.arg(id.to_string()).arg(self.retention(&queue));
        settled_task(self.run(&inv).await?, id)
    }

    async fn get(&self, id: TaskId) -> Result<Task, StoreError> {
        let queue = self.queue_of(id).await?;
        let mut conn = self.conn.clone();
        let raw: Option<Vec<u8>> = bounded(conn.hget(QueueKeys::new(&queue).tasks(), id.to_string())).await?;
        let raw = raw.ok_or(StoreError::TaskNotFound(id))?;
        record::decode(&raw).map_err(|e| StoreError::Unavailable(e.to_string()))
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

    async fn next_timer(&self) -> Result<Option<Millis>, StoreError> {
        self.first_timer().await
    }

    async fn healthy(&self) -> bool {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        matches!(tokio::time::timeout(Duration::from_secs(1), ping).await, Ok(Ok(_)))
    }

    fn events(&self) -> Option<broadcast::Receiver<StoreEvent>> {
        Some(self.events.subscribe())
    }

    async fn set_watched(&self, id: TaskId, watched: bool) -> Result<(), StoreError> {
        let queue = self.queue_of(id).await?;
        let mut inv = self.invocation(&scripts::WATCH, &QueueKeys::new(&queue), 0);
        inv.arg(id.to_string()).arg(if watched { 1 } else { -1 });
        self.run(&inv).await.map(|_| ())
    }
}
