//! One conformance suite for every storage backend: a backend is done when it
//! passes all of it. Time is passed explicitly (`now`), so nothing sleeps.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use taskbroker::core::flow::RateLimit;
use taskbroker::core::lease::LeaseError;
use taskbroker::core::queue::{Policies, QueuePolicy};
use taskbroker::core::retry::Backoff;
use taskbroker::core::schedule::{CatchUp, Schedule, ScheduleSource};
use taskbroker::core::stats::{QueueCounts, QueueStats, QueueTotals};
use taskbroker::core::task::{NewTask, Task, TaskState};
use taskbroker::store::embedded::EmbeddedStore;
use taskbroker::store::memory::MemoryStore;
use taskbroker::store::redis::{RedisStore, Target};
use taskbroker::store::{AckItem, Fired, LeaseSpec, NackSpec, Store, StoreError, StoredSchedule, Swept};
use tempfile::TempDir;

#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;

#[path = "store_conformance/workflows.rs"]
mod workflows;
use redis_server::{RedisCluster, RedisServer};
use workflows::*;

pub const NOW: u64 = 1_767_225_600_000;
pub const SEC: u64 = 1_000;

fn policies() -> Arc<Policies> {
    let policy = QueuePolicy {
        lease_duration: Duration::from_secs(30),
        max_attempts: 3,
        retry_backoff: Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.0,
        },
        default_priority: 0,
        retention: Duration::from_secs(100),
        dedup_window: Duration::from_secs(10),
        max_in_flight: 0,
        per_key_max_in_flight: 0,
        rate_limit: None,
        semaphores: Vec::new(),
    };
    // The queues and semaphore the flow-control cases use.
    let capped = QueuePolicy { max_in_flight: 3, ..policy.clone() };
    let keyed = QueuePolicy { per_key_max_in_flight: 1, ..policy.clone() };
    let rate = RateLimit { rate: "50/s".parse().unwrap(), burst: 10 };
    let rated = QueuePolicy { rate_limit: Some(rate), ..policy.clone() };
    let declared = BTreeMap::from([
        ("capped".to_owned(), capped),
        ("keyed".to_owned(), keyed),
        ("rated".to_owned(), rated),
    ]);
    let semaphores = BTreeMap::from([("sel".to_owned(), 2)]);
    Arc::new(Policies::new(declared, policy).with_semaphores(semaphores))
}

/// A backend under test; keeps its data directory alive.
pub struct Backend {
    store: Arc<dyn Store>,
    dir: Option<TempDir>,
    /// The private redis-server of the Redis backend.
    redis: Option<RedisServer>,
    /// The private Redis Cluster of the Redis Cluster backend.
    cluster: Option<RedisCluster>,
}

impl Backend {
    fn memory() -> Self {
        Self { store: Arc::new(MemoryStore::new(policies())), dir: None, redis: None, cluster: None }
    }

    fn embedded() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path(), policies()).unwrap());
        Self { store, dir: Some(dir), redis: None, cluster: None }
    }

    /// A fresh redis-server per test: tests run in parallel and share nothing.
    async fn redis() -> Self {
        let server = RedisServer::start();
        let store = RedisStore::connect(&server.url(), policies(), false).await.unwrap();
        Self { store: Arc::new(store), dir: None, redis: Some(server), cluster: None }
    }

    /// A fresh three-node Redis Cluster per test; queues land on different
    /// nodes.
    async fn redis_cluster() -> Self {
        let cluster = RedisCluster::start();
        let store = RedisStore::open(&Target::Cluster(cluster.urls()), policies(), false).await.unwrap();
        Self { store: Arc::new(store), dir: None, redis: None, cluster: Some(cluster) }
    }

    /// Closes and reopens a persistent backend. The memory store keeps
    /// nothing, so `state_survives_a_reopen` is not generated for it.
    async fn reopen(self) -> Self {
        if let Some(server) = self.redis {
            // A new store on the same server: what another replica would see.
            drop(self.store);
            let store = RedisStore::connect(&server.url(), policies(), false).await.unwrap();
            return Self { store: Arc::new(store), dir: None, redis: Some(server), cluster: None };
        }
        if let Some(cluster) = self.cluster {
            drop(self.store);
            let store = RedisStore::open(&Target::Cluster(cluster.urls()), policies(), false).await.unwrap();
            return Self { store: Arc::new(store), dir: None, redis: None, cluster: Some(cluster) };
        }
        let dir = self.dir.expect("only persistent backends reopen; the memory store has no data directory");
        drop(self.store); // closes the database
        let store = EmbeddedStore::open(dir.path(), policies()).unwrap();
        Self { store: Arc::new(store), dir: Some(dir), redis: None, cluster: None }
    }
}

pub fn new_task(queue: &str, priority: u8) -> NewTask {
    NewTask {
        depends_on: Vec::new(),
        on_dependency_failure: Default::default(),
        expire_time: None,
        queue: queue.into(),
        kind: "k".into(),
        payload: b"p".to_vec(),
        content_type: String::new(),
        priority,
        headers: BTreeMap::new(),
        max_attempts: 3,
        scheduled_time: 0,
        dedup_key: String::new(),
        request_id: String::new(),
        concurrency_key: String::new(),
        semaphores: Vec::new(),
    }
}

pub fn spec(queues: &[&str], max: usize) -> LeaseSpec {
    let queues: Vec<String> = queues.iter().map(|q| q.to_string()).collect();
    LeaseSpec::strict(&queues, max, None, "w")
}

pub fn nack(retry_after: Option<u64>, no_retry: bool) -> NackSpec {
    NackSpec { error: "boom".into(), retry_after, no_retry, jitter_sample: 0.5 }
}

pub async fn put(s: &dyn Store, t: NewTask) -> Task {
    s.enqueue(vec![t], NOW).await.unwrap().pop().unwrap().task
}

pub async fn lease_one(s: &dyn Store, queue: &str, now: u64) -> Task {
    s.lease(spec(&[queue], 1), now).await.unwrap().pop().expect("a task to lease")
}

pub fn lease_id(t: &Task) -> u64 {
    t.lease.as_ref().unwrap().id
}

async fn priority_then_fifo(b: &Backend) {
    let s = &*b.store;
    let low = put(s, new_task("q", 1)).await;
    let high1 = put(s, new_task("q", 8)).await;
    let high2 = put(s, new_task("q", 8)).await;
    let got = s.lease(spec(&["q"], 10), NOW).await.unwrap();
    let ids: Vec<_> = got.iter().map(|t| t.id).collect();
    assert_eq!(ids, [high1.id, high2.id, low.id]);
    assert!(got.iter().all(|t| t.state == TaskState::Leased && t.attempt == 1));
    let leases: HashSet<_> = got.iter().map(lease_id).collect();
    assert_eq!(leases.len(), 3, "every delivery gets its own lease id");
    assert!(s.lease(spec(&["q"], 10), NOW).await.unwrap().is_empty(), "each task delivered once");
}

async fn strict_preference_across_queues(b: &Backend) {
    let s = &*b.store;
    let shared = put(s, new_task("shared", 9)).await;
    let own = put(s, new_task("own", 0)).await;
    let got = s.lease(spec(&["own", "shared"], 1), NOW).await.unwrap();
    assert_eq!(got[0].id, own.id, "the first queue wins whatever the priorities");
    let got = s.lease(spec(&["own", "shared"], 5), NOW).await.unwrap();
    assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), [shared.id]);
}

async fn weighted_quotas_then_fill(b: &Backend) {
    let s = &*b.store;
    for _ in 0..10 {
        put(s, new_task("a", 0)).await;
    }
    put(s, new_task("b", 0)).await;
    let mut sp = spec(&["a", "b"], 5);
    sp.queues = vec![("a".into(), 2), ("b".into(), 3)];
    let got = s.lease(sp, NOW).await.unwrap();
    let from = |q: &str| got.iter().filter(|t| t.queue == q).count();
    assert_eq!((from("a"), from("b")), (4, 1), "quotas first, then the shortfall from the others");
}

async fn lease_responses_are_capped_by_payload_bytes(b: &Backend) {
    let s = &*b.store;
    let big = NewTask { payload: vec![7; 1 << 20], ..new_task("q", 0) };
    s.enqueue(vec![big; 5], NOW).await.unwrap();
    let got = s.lease(spec(&["q"], 10), NOW).await.unwrap();
    assert_eq!(got.len(), 3, "3 MiB of payloads per response");
    let mut tiny = spec(&["q"], 10);
    tiny.max_bytes = 1;
    assert_eq!(s.lease(tiny, NOW).await.unwrap().len(), 1, "always at least one task");
}

async fn ack_needs_the_live_lease(b: &Backend) {
    let s = &*b.store;
    let t = put(s, new_task("q", 0)).await;
    let l = lease_one(s, "q", NOW).await;
    let err = s.ack(t.id, lease_id(&l) + 1000, vec![], NOW).await.unwrap_err();
    assert_eq!(err, StoreError::Lease(LeaseError::Mismatch));
    assert_eq!(s.get(t.id).await.unwrap(), l, "a refused ack leaves the task untouched");
    let done = s.ack(t.id, lease_id(&l), b"ok".to_vec(), NOW + SEC).await.unwrap();
    assert_eq!((done.state, done.result.as_slice()), (TaskState::Succeeded, &b"ok"[..]));
    let again = s.ack(t.id, lease_id(&l), vec![], NOW + SEC).await.unwrap_err();
    assert_eq!(again, StoreError::Lease(LeaseError::Mismatch), "a lease settles once");
}

async fn ack_many_settles_each_item_alone(b: &Backend) {
    let s = &*b.store;
    put(s, new_task("q", 0)).await;
    put(s, new_task("other", 0)).await;
    let a = lease_one(s, "q", NOW).await;
    let o = lease_one(s, "other", NOW).await;
    let items = vec![
        AckItem { id: a.id, lease_id: lease_id(&a), result: b"a".to_vec() },
        AckItem { id: o.id, lease_id: lease_id(&o) + 999, result: vec![] },
        AckItem { id: o.id, lease_id: lease_id(&o), result: b"o".to_vec() },
        AckItem { id: a.id, lease_id: lease_id(&a), result: vec![] },
    ];
    let out = s.ack_many(items, NOW).await.unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!(out[0].as_ref().unwrap().result, b"a");
    assert_eq!(out[1].as_ref().unwrap_err(), &StoreError::Lease(LeaseError::Mismatch));
    assert_eq!(out[2].as_ref().unwrap().state, TaskState::Succeeded, "queues of one batch settle alike");
    assert_eq!(
        out[3].as_ref().unwrap_err(),
        &StoreError::Lease(LeaseError::Mismatch),
        "a lease settles once"
    );
    assert_eq!(s.get(a.id).await.unwrap().result, b"a");
}

async fn nack_backs_off_then_dies(b: &Backend) {
    let s = &*b.store;
    let t = put(s, new_task("q", 0)).await;
    let l = lease_one(s, "q", NOW).await;
    let n = s.nack(t.id, lease_id(&l), nack(None, false), NOW).await.unwrap();
    assert_eq!((n.state, n.scheduled_time, n.last_error.as_str()), (TaskState::Scheduled, NOW + SEC, "boom"));
    assert!(s.lease(spec(&["q"], 1), NOW).await.unwrap().is_empty(), "not before its backoff");
    assert_eq!(s.next_timer().await.unwrap(), Some(NOW + SEC));
    let swept = s.promote_due(NOW + SEC).await.unwrap();
    assert_eq!(swept.ready_queues, ["q"]);
    let l2 = lease_one(s, "q", NOW + SEC).await;
    assert_eq!(l2.attempt, 2);
    let n = s.nack(t.id, lease_id(&l2), nack(Some(0), false), NOW + SEC).await.unwrap();
    assert_eq!(n.state, TaskState::Ready, "retry_after 0 is ready at once");
    let l3 = lease_one(s, "q", NOW + SEC).await;
    let n = s.nack(t.id, lease_id(&l3), nack(Some(5 * SEC), false), NOW + SEC).await.unwrap();
    assert_eq!(n.state, TaskState::Dead, "the last attempt goes dead whatever retry_after says");
}

async fn nack_no_retry_is_dead(b: &Backend) {
    let s = &*b.store;
    let t = put(s, new_task("q", 0)).await;
    let l = lease_one(s, "q", NOW).await;
    let n = s.nack(t.id, lease_id(&l), nack(None, true), NOW).await.unwrap();
    assert_eq!((n.state, n.last_error.as_str()), (TaskState::Dead, "boom"));
}

async fn expired_leases_come_back_then_die(b: &Backend) {
    let s = &*b.store;
    let t = put(s, new_task("q", 0)).await;
    let mut now = NOW;
    for attempt in 1..=3 {
        let l = lease_one(s, "q", now).await;
        assert_eq!(l.attempt, attempt);
        let deadline = l.lease.as_ref().unwrap().expire_time;
        assert_eq!(deadline, now + 30 * SEC);
        assert_eq!(s.requeue_expired(deadline - 1).await.unwrap().count, 0);
        let err = s.ack(t.id, lease_id(&l), vec![], deadline).await.unwrap_err();
        assert_eq!(err, StoreError::Lease(LeaseError::Mismatch), "expired at its deadline");
        s.requeue_expired(deadline).await.unwrap();
        now = deadline;
    }
    let dead = s.get(t.id).await.unwrap();
    assert_eq!(dead.state, TaskState::Dead);
    assert!(dead.last_error.contains("lease expired"), "{}", dead.last_error);
}

async fn extend_moves_the_deadline(b: &Backend) {
    let s = &*b.store;
    let t = put(s, new_task("q", 0)).await;
    let l = lease_one(s, "q", NOW).await;
    let until = s.extend(t.id, lease_id(&l), 60 * SEC, NOW + 20 * SEC).await.unwrap();
    assert_eq!(until, NOW + 80 * SEC);
    assert_eq!(s.requeue_expired(NOW + 79 * SEC).await.unwrap().count, 0);
    assert_eq!(s.get(t.id).await.unwrap().state, TaskState::Leased);
    s.requeue_expired(NOW + 80 * SEC).await.unwrap();
    assert_eq!(s.get(t.id).await.unwrap().state, TaskState::Ready);
}

async fn cancel_in_every_state(b: &Backend) {
    let s = &*b.store;
    let ready = put(s, new_task("q", 0)).await;
    let c = s.cancel(ready.id, NOW).await.unwrap();
    assert_eq!(c.state, TaskState::Canceled);
    assert_eq!(s.cancel(ready.id, NOW).await.unwrap().state, TaskState::Canceled, "idempotent");
    assert!(s.lease(spec(&["q"], 1), NOW).await.unwrap().is_empty(), "never delivered");

    let later = put(s, NewTask { scheduled_time: NOW + 5 * SEC, ..new_task("q", 0) }).await;
    assert_eq!(later.state, TaskState::Scheduled);
    s.cancel(later.id, NOW).await.unwrap();
    s.promote_due(NOW + 5 * SEC).await.unwrap();
    assert!(s.lease(spec(&["q"], 1), NOW + 5 * SEC).await.unwrap().is_empty());

    let held = put(s, new_task("q", 0)).await;
    let l = lease_one(s, "q", NOW).await;
    s.cancel(held.id, NOW).await.unwrap();
    let err = s.ack(held.id, lease_id(&l), vec![], NOW).await.unwrap_err();
    assert_eq!(err, StoreError::Lease(LeaseError::Canceled));
    let err = s.extend(held.id, lease_id(&l), SEC, NOW).await.unwrap_err();
    assert_eq!(err, StoreError::Lease(LeaseError::Canceled));
    assert_eq!(s.requeue_expired(NOW + 31 * SEC).await.unwrap().count, 0, "not redelivered");

    let done = put(s, new_task("q", 0)).await;
    let l = lease_one(s, "q", NOW).await;
    s.ack(done.id, lease_id(&l), vec![], NOW).await.unwrap();
    assert_eq!(s.cancel(done.id, NOW).await.unwrap_err(), StoreError::TaskFinished(done.id));
}

async fn dedup_keys_and_request_ids(b: &Backend) {
    let s = &*b.store;
    let keyed = NewTask { dedup_key: "d".into(), ..new_task("q", 0) };
    let first = s.enqueue(vec![keyed.clone()], NOW).await.unwrap().pop().unwrap();
    let again = s.enqueue(vec![keyed.clone()], NOW).await.unwrap().pop().unwrap();
    assert!(!first.deduplicated && again.deduplicated);
    assert_eq!(first.task.id, again.task.id);
    let other_queue = put(s, NewTask { queue: "other".into(), ..keyed.clone() }).await;
    assert_ne!(other_queue.id, first.task.id, "dedup is per queue");

    let l = lease_one(s, "q", NOW).await;
    s.ack(first.task.id, lease_id(&l), vec![], NOW).await.unwrap();
    let within = s.enqueue(vec![keyed.clone()], NOW + 9 * SEC).await.unwrap().pop().unwrap();
    assert!(within.deduplicated, "finished within the dedup window");
    let after = s.enqueue(vec![keyed], NOW + 10 * SEC).await.unwrap().pop().unwrap();
    assert!(!after.deduplicated, "finished before the window");

    let req = NewTask { request_id: "r1".into(), ..new_task("q", 0) };
    let batch = s.enqueue(vec![req.clone(), req], NOW).await.unwrap();
    assert_eq!(batch[0].task.id, batch[1].task.id);
    assert!(batch[1].deduplicated);
}

async fn finished_tasks_are_purged_after_retention(b: &Backend) {
    let s = &*b.store;
    let t = put(s, new_task("q", 0)).await;
    let l = lease_one(s, "q", NOW).await;
    s.ack(t.id, lease_id(&l), vec![], NOW).await.unwrap();
    assert_eq!(s.next_timer().await.unwrap(), Some(NOW + 100 * SEC));
    assert_eq!(s.purge_finished(NOW + 99 * SEC).await.unwrap().count, 0);
    assert_eq!(s.purge_finished(NOW + 100 * SEC).await.unwrap().count, 1);
    assert_eq!(s.get(t.id).await.unwrap_err(), StoreError::TaskNotFound(t.id));
    assert_eq!(s.next_timer().await.unwrap(), None);
}

async fn unknown_tasks_are_not_found(b: &Backend) {
    let s = &*b.store;
    let ghost = put(s, new_task("q", 0)).await.id;
    s.cancel(ghost, NOW).await.unwrap();
    s.purge_finished(NOW + 1_000 * SEC).await.unwrap();
    assert_eq!(s.get(ghost).await.unwrap_err(), StoreError::TaskNotFound(ghost));
    assert_eq!(s.ack(ghost, 1, vec![], NOW).await.unwrap_err(), StoreError::TaskNotFound(ghost));
    assert_eq!(s.cancel(ghost, NOW).await.unwrap_err(), StoreError::TaskNotFound(ghost));
}

async fn state_survives_a_reopen(b: Backend) {
    let s = &*b.store;
    let ready = put(s, new_task("q", 5)).await;
    let later =
        put(s, NewTask { scheduled_time: NOW + 9 * SEC, dedup_key: "d".into(), ..new_task("q", 0) }).await;
    let held = put(s, new_task("q", 0)).await;
    let done = put(s, NewTask { request_id: "r".into(), ..new_task("q", 0) }).await;
    let first = s.lease(spec(&["q"], 1), NOW).await.unwrap().pop().unwrap();
    assert_eq!(first.id, ready.id);
    s.nack(ready.id, lease_id(&first), nack(Some(0), false), NOW).await.unwrap();
    let leased = s.lease(spec(&["q"], 3), NOW).await.unwrap();
    let by_id = |id| leased.iter().find(|t| t.id == id).unwrap().clone();
    s.ack(done.id, lease_id(&by_id(done.id)), b"r".to_vec(), NOW).await.unwrap();
    s.nack(ready.id, lease_id(&by_id(ready.id)), nack(Some(0), false), NOW).await.unwrap();
    let held_lease = by_id(held.id);
    let before: Vec<Task> = {
        let mut v = Vec::new();
        for id in [ready.id, later.id, held.id, done.id] {
            v.push(s.get(id).await.unwrap());
        }
        v
    };
    let b = b.reopen().await;
    let s = &*b.store;
    for t in &before {
        assert_eq!(&s.get(t.id).await.unwrap(), t, "task {} survives", t.id);
    }
    let replay = s.enqueue(vec![NewTask { request_id: "r".into(), ..new_task("q", 0) }], NOW).await.unwrap();
    assert_eq!(replay[0].task.id, done.id, "request ids survive");
    let dedup = s.enqueue(vec![NewTask { dedup_key: "d".into(), ..new_task("q", 0) }], NOW).await.unwrap();
    assert_eq!(dedup[0].task.id, later.id, "dedup keys survive");
    let again = lease_one(s, "q", NOW).await;
    assert_eq!(again.id, ready.id);
    let before_ids =
        [lease_id(&first), lease_id(&by_id(ready.id)), lease_id(&held_lease), lease_id(&by_id(done.id))];
    assert!(before_ids.iter().all(|&old| lease_id(&again) > old), "lease ids never repeat across restarts");
    let stale = s.ack(ready.id, lease_id(&first), vec![], NOW).await.unwrap_err();
    assert_eq!(stale, StoreError::Lease(LeaseError::Mismatch), "a lease from before the restart stays stale");
    s.requeue_expired(NOW + 30 * SEC).await.unwrap();
    assert_eq!(s.get(held.id).await.unwrap().state, TaskState::Ready, "leases out at the crash come back");
}

// The operations API (AdminService): every store keeps the same numbers.

async fn put_at(s: &dyn Store, t: NewTask, now: u64) -> Task {
    s.enqueue(vec![t], now).await.unwrap().pop().unwrap().task
}

fn totals(enqueued: u64, delivered: u64, acked: u64, nacked: u64, dead: u64, expired: u64) -> QueueTotals {
    QueueTotals { enqueued, delivered, acked, nacked, dead, expired }
}

/// Counts by state in `core::stats::STATES` order.
fn counts(scheduled: u64, ready: u64, leased: u64, succeeded: u64, dead: u64, canceled: u64) -> QueueCounts {
    QueueCounts([scheduled, ready, leased, succeeded, dead, canceled, 0])
}

async fn admin_counts_and_totals(b: &Backend) {
    let s = &*b.store;
    let mut batch: Vec<NewTask> = (0..10).map(|_| new_task("q", 0)).collect();
    batch[9].dedup_key = "d".into();
    s.enqueue(batch, NOW).await.unwrap();
    let again = s.enqueue(vec![NewTask { dedup_key: "d".into(), ..new_task("q", 0) }], NOW).await.unwrap();
    assert!(again[0].deduplicated, "a deduplicated enqueue is not counted");
    let later = put(s, NewTask { scheduled_time: NOW + 100 * SEC, ..new_task("q", 0) }).await;
    let leased = s.lease(spec(&["q"], 4), NOW).await.unwrap();
    assert_eq!(leased.len(), 4);
    let stats = s.queue_stats("q").await.unwrap();
    assert_eq!(stats.counts, counts(1, 6, 4, 0, 0, 0));
    s.ack(leased[0].id, lease_id(&leased[0]), vec![], NOW).await.unwrap();
    s.ack(leased[1].id, lease_id(&leased[1]), vec![], NOW).await.unwrap();
    s.nack(leased[2].id, lease_id(&leased[2]), nack(None, true), NOW).await.unwrap();
    s.cancel(later.id, NOW).await.unwrap();
    s.requeue_expired(NOW + 30 * SEC).await.unwrap(); // leased[3] comes back
    let stats = s.queue_stats("q").await.unwrap();
    assert_eq!(stats.counts, counts(0, 7, 0, 2, 1, 1));
    assert_eq!(stats.totals, totals(11, 4, 2, 1, 1, 1));
    assert!(!stats.paused);

    // A nack that retries, and a lease expiring on the last attempt.
    let one = put(s, NewTask { max_attempts: 1, ..new_task("last", 0) }).await;
    let l = lease_one(s, "last", NOW).await;
    assert_eq!(l.id, one.id);
    s.requeue_expired(NOW + 30 * SEC).await.unwrap();
    let retried = put(s, new_task("last", 0)).await;
    let l = lease_one(s, "last", NOW + 30 * SEC).await;
    assert_eq!(l.id, retried.id);
    s.nack(l.id, lease_id(&l), nack(None, false), NOW + 30 * SEC).await.unwrap();
    let stats = s.queue_stats("last").await.unwrap();
    assert_eq!(stats.counts, counts(1, 0, 0, 0, 1, 0));
    assert_eq!(stats.totals, totals(2, 2, 0, 1, 1, 1), "an expiry that kills counts as a death");

    assert_eq!(s.queue_stats("nowhere").await.unwrap(), QueueStats::default());
}

async fn admin_oldest_ready_time(b: &Backend) {
    let s = &*b.store;
    assert_eq!(s.queue_stats("q").await.unwrap().oldest_ready_time, None);
    let a = put_at(s, new_task("q", 0), NOW).await;
    put_at(s, new_task("q", 9), NOW + 5 * SEC).await;
    assert_eq!(s.queue_stats("q").await.unwrap().oldest_ready_time, Some(NOW), "across priorities");
    lease_one(s, "q", NOW + 6 * SEC).await; // the priority 9 one
    assert_eq!(s.queue_stats("q").await.unwrap().oldest_ready_time, Some(NOW));
    let l = lease_one(s, "q", NOW + 6 * SEC).await;
    assert_eq!(l.id, a.id);
    assert_eq!(s.queue_stats("q").await.unwrap().oldest_ready_time, None, "nothing READY");
    s.nack(a.id, lease_id(&l), nack(Some(0), false), NOW + 10 * SEC).await.unwrap();
    put_at(s, new_task("q", 9), NOW + 12 * SEC).await;
    assert_eq!(
        s.queue_stats("q").await.unwrap().oldest_ready_time,
        Some(NOW + 10 * SEC),
        "when it became READY again, not when it was created"
    );
}

async fn admin_pause_stops_lease_until_resume(b: &Backend) {
    let s = &*b.store;
    put(s, new_task("q", 0)).await;
    assert!(s.set_paused("q", true).await.unwrap());
    assert!(!s.set_paused("q", true).await.unwrap(), "already paused");
    assert!(s.queue_stats("q").await.unwrap().paused);
    assert!(s.lease(spec(&["q"], 10), NOW).await.unwrap().is_empty(), "a paused queue delivers nothing");
    put(s, new_task("q", 0)).await; // enqueues are still accepted
    let other = put(s, new_task("other", 0)).await;
    let got = s.lease(spec(&["q", "other"], 10), NOW).await.unwrap();
    assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), [other.id], "the other queues still deliver");
    let stats = s.queue_stats("q").await.unwrap();
    assert_eq!((stats.counts.get(TaskState::Ready), stats.totals.delivered), (2, 0));

    assert!(s.set_paused("q", false).await.unwrap());
    assert!(!s.set_paused("q", false).await.unwrap(), "already running");
    assert!(!s.queue_stats("q").await.unwrap().paused);
    assert_eq!(s.lease(spec(&["q"], 10), NOW).await.unwrap().len(), 2, "a resume restores delivery");
}

async fn admin_purge_by_states(b: &Backend) {
    let s = &*b.store;
    let keyed =
        |t: NewTask, n: &str| NewTask { request_id: format!("r{n}"), dedup_key: format!("d{n}"), ..t };
    let held = put(s, new_task("q", 9)).await;
    let l = lease_one(s, "q", NOW).await;
    assert_eq!(l.id, held.id);
    let done = put(s, keyed(new_task("q", 8), "done")).await;
    let dead = put(s, keyed(new_task("q", 7), "dead")).await;
    let ld = lease_one(s, "q", NOW).await;
    s.ack(done.id, lease_id(&ld), vec![], NOW).await.unwrap();
    let ln = lease_one(s, "q", NOW).await;
    s.nack(dead.id, lease_id(&ln), nack(None, true), NOW).await.unwrap();
    let ready = put(s, keyed(new_task("q", 0), "ready")).await;
    put(s, new_task("q", 3)).await;
    let later = put(s, keyed(NewTask { scheduled_time: NOW + 50 * SEC, ..new_task("q", 0) }, "later")).await;
    let canceled = put(s, new_task("q", 0)).await;
    s.cancel(canceled.id, NOW).await.unwrap();
    assert_eq!(s.queue_stats("q").await.unwrap().counts, counts(1, 2, 1, 1, 1, 1));

    assert_eq!(s.purge_queue("q", &[TaskState::Leased], NOW).await.unwrap(), 0, "LEASED is never purged");
    assert_eq!(s.purge_queue("q", &[], NOW).await.unwrap(), 0);
    let states = [TaskState::Dead, TaskState::Succeeded, TaskState::Leased, TaskState::Dead];
    assert_eq!(s.purge_queue("q", &states, NOW).await.unwrap(), 2, "each task counted once");
    assert_eq!(s.queue_stats("q").await.unwrap().counts, counts(1, 2, 1, 0, 0, 1));
    for id in [done.id, dead.id] {
        assert_eq!(s.get(id).await.unwrap_err(), StoreError::TaskNotFound(id));
    }
    let n = s
        .purge_queue("q", &[TaskState::Ready, TaskState::Scheduled, TaskState::Canceled], NOW)
        .await
        .unwrap();
    assert_eq!(n, 4);
    assert_eq!(s.queue_stats("q").await.unwrap().counts, counts(0, 0, 1, 0, 0, 0));
    assert_eq!(s.get(held.id).await.unwrap().state, TaskState::Leased, "the leased task is untouched");
    assert!(s.lease(spec(&["q"], 10), NOW).await.unwrap().is_empty(), "nothing READY is left");
    assert_eq!(s.promote_due(NOW + 60 * SEC).await.unwrap().count, 0, "nothing SCHEDULED is left");

    // Request ids and dedup keys of purged tasks no longer match.
    for (name, old) in [("done", done.id), ("dead", dead.id), ("ready", ready.id), ("later", later.id)] {
        let again = s.enqueue(vec![keyed(new_task("q", 0), name)], NOW).await.unwrap().pop().unwrap();
        assert!(!again.deduplicated && again.task.id != old, "{name}: a new task");
    }
    s.purge_queue("q", &[TaskState::Ready], NOW).await.unwrap();

    // The queue goes with its last task; nothing is left to time.
    s.ack(held.id, lease_id(&l), vec![], NOW).await.unwrap();
    assert!(s.queue_names().await.unwrap().contains(&"q".to_owned()));
    assert_eq!(s.purge_queue("q", &[TaskState::Succeeded], NOW).await.unwrap(), 1);
    assert!(!s.queue_names().await.unwrap().contains(&"q".to_owned()), "a queue without tasks is forgotten");
    assert_eq!(s.queue_stats("q").await.unwrap(), QueueStats::default(), "its totals with it");
    assert_eq!(s.next_timer().await.unwrap(), None);
}

async fn admin_list_tasks_pages_by_creation(b: &Backend) {
    let s = &*b.store;
    // Delivery order (priority first) differs from creation order.
    let mut created = Vec::new();
    for i in 0..7u64 {
        created.push(put_at(s, new_task("q", (i % 3) as u8 * 4), NOW + i).await.id);
    }
    let mut walked = Vec::new();
    let mut after = None;
    let mut more = 0u64;
    loop {
        let page = s.list_tasks("q", TaskState::Ready, after, 3).await.unwrap();
        assert!(page.len() <= 3);
        if page.is_empty() {
            break;
        }
        assert!(page.iter().all(|t| t.state == TaskState::Ready && t.queue == "q"));
        walked.extend(page.iter().map(|t| t.id));
        after = page.last().map(|t| t.id);
        // Enqueued between pages: later ids, so later pages (never a repeat).
        if more < 2 {
            more += 1;
            created.push(put_at(s, new_task("q", 9), NOW + 100 + more).await.id);
        }
    }
    let mut sorted = walked.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(walked, sorted, "ids ascending, none twice");
    created.sort();
    assert_eq!(walked, created, "every task, the ones enqueued during the walk included");

    // Every state lists in id order.
    let leased = s.lease(spec(&["q"], 6), NOW + 200).await.unwrap();
    let mut ids: Vec<_> = leased.iter().map(|t| t.id).collect();
    ids.sort();
    let listed = s.list_tasks("q", TaskState::Leased, None, 100).await.unwrap();
    assert_eq!(listed.iter().map(|t| t.id).collect::<Vec<_>>(), ids);
    assert!(listed.iter().all(|t| t.lease.is_some()));
    let listed = s.list_tasks("q", TaskState::Leased, Some(ids[2]), 2).await.unwrap();
    assert_eq!(listed.iter().map(|t| t.id).collect::<Vec<_>>(), ids[3..5]);
    for (i, t) in leased.iter().enumerate() {
        if i % 2 == 0 {
            s.ack(t.id, lease_id(t), format!("r{i}").into_bytes(), NOW + 200).await.unwrap();
        } else {
            s.nack(t.id, lease_id(t), nack(None, true), NOW + 200).await.unwrap();
        }
    }
    let done = s.list_tasks("q", TaskState::Succeeded, None, 100).await.unwrap();
    assert_eq!(done.len(), 3);
    assert!(done.windows(2).all(|w| w[0].id < w[1].id));
    assert!(done.iter().all(|t| t.result.starts_with(b"r")), "results are listed");
    let dead = s.list_tasks("q", TaskState::Dead, None, 2).await.unwrap();
    assert_eq!(dead.len(), 2);
    let rest = s.list_tasks("q", TaskState::Dead, Some(dead[1].id), 2).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert!(dead[0].id < dead[1].id && dead[1].id < rest[0].id);
    assert!(rest.iter().chain(&dead).all(|t| t.last_error == "boom"));
    let a = put_at(s, NewTask { scheduled_time: NOW + 900 * SEC, ..new_task("q", 0) }, NOW + 300).await;
    let b2 = put_at(s, NewTask { scheduled_time: NOW + 800 * SEC, ..new_task("q", 0) }, NOW + 301).await;
    let listed = s.list_tasks("q", TaskState::Scheduled, None, 10).await.unwrap();
    assert_eq!(listed.iter().map(|t| t.id).collect::<Vec<_>>(), [a.id, b2.id], "by id, not by due time");
    assert!(s.list_tasks("q", TaskState::Canceled, None, 10).await.unwrap().is_empty());
    assert!(s.list_tasks("nowhere", TaskState::Ready, None, 10).await.unwrap().is_empty());
    assert!(s.list_tasks("q", TaskState::Scheduled, None, 0).await.unwrap().is_empty());
}

/// `n` DEAD tasks of `queue` (nacked with "boom"), in id order.
async fn dead_tasks(s: &dyn Store, queue: &str, n: usize, now: u64) -> Vec<Task> {
    let mut ids = Vec::new();
    for i in 0..n {
        let t = put_at(s, new_task(queue, 0), now + i as u64).await;
        let l = lease_one(s, queue, now + i as u64).await;
        assert_eq!(l.id, t.id);
        ids.push(s.nack(t.id, lease_id(&l), nack(None, true), now + i as u64).await.unwrap());
    }
    ids
}

async fn admin_redrive_by_ids_and_by_limit(b: &Backend) {
    let s = &*b.store;
    let dead = dead_tasks(s, "q", 7, NOW).await;
    let other = dead_tasks(s, "other", 1, NOW).await;
    let ready = put(s, new_task("q", 0)).await;
    let ids = [dead[3].id, dead[1].id, ready.id, other[0].id, dead[3].id];
    let swept = s.redrive("q", &ids, 0, NOW + SEC).await.unwrap();
    assert_eq!(swept.count, 2, "only DEAD tasks of the queue, each once");
    let mut changed = swept.changed.clone();
    changed.sort();
    assert_eq!(changed, [dead[1].id, dead[3].id]);
    assert_eq!(swept.ready_queues, ["q"]);
    for id in [dead[1].id, dead[3].id] {
        let t = s.get(id).await.unwrap();
        assert_eq!((t.state, t.attempt, t.last_error.as_str()), (TaskState::Ready, 0, "boom"));
        assert_eq!(t.update_time, NOW + SEC);
    }
    assert_eq!(s.get(other[0].id).await.unwrap().state, TaskState::Dead, "another queue's task is skipped");
    let twice = s.redrive("q", &[dead[4].id, dead[4].id, dead[5].id], 2, NOW + SEC).await.unwrap();
    assert_eq!(twice.count, 2, "the limit counts tasks, not ids given");
    assert_eq!(s.queue_stats("q").await.unwrap().counts, counts(0, 5, 0, 0, 3, 0));

    let swept = s.redrive("q", &[], 1, NOW + SEC).await.unwrap();
    assert_eq!(swept.changed, [dead[0].id], "the oldest first");
    let swept = s.redrive("q", &[], 0, NOW + SEC).await.unwrap();
    assert_eq!(swept.changed, [dead[2].id, dead[6].id], "0: all");
    assert_eq!(s.redrive("q", &[], 0, NOW + SEC).await.unwrap(), Swept::default(), "none left");
    let stats = s.queue_stats("q").await.unwrap();
    assert_eq!(stats.counts, counts(0, 8, 0, 0, 0, 0));
    assert_eq!(stats.totals.dead, 7, "totals count deaths, not what is dead now");

    // A redriven task runs again from its first attempt, and its old
    // retention no longer applies.
    let got = s.lease(spec(&["q"], 10), NOW + 2 * SEC).await.unwrap();
    assert!(got.iter().all(|t| t.attempt == 1));
    let again = got.iter().find(|t| t.id == dead[0].id).unwrap();
    s.nack(again.id, lease_id(again), nack(None, true), NOW + 20 * SEC).await.unwrap();
    let purged = s.purge_finished(NOW + 100 * SEC + 10).await.unwrap();
    assert_eq!(purged.count, 1, "the other queue's task; the first deaths' retention no longer applies");
    assert_eq!(s.get(other[0].id).await.unwrap_err(), StoreError::TaskNotFound(other[0].id));
    assert_eq!(s.get(dead[0].id).await.unwrap().state, TaskState::Dead);
    assert_eq!(s.get(dead[1].id).await.unwrap().state, TaskState::Leased);
    assert_eq!(s.purge_finished(NOW + 120 * SEC).await.unwrap().count, 1);
    assert_eq!(s.get(dead[0].id).await.unwrap_err(), StoreError::TaskNotFound(dead[0].id));
}

async fn admin_queue_names(b: &Backend) {
    let s = &*b.store;
    assert!(s.queue_names().await.unwrap().is_empty());
    put(s, new_task("b", 0)).await;
    put(s, new_task("a", 0)).await;
    s.set_paused("idle", true).await.unwrap();
    s.set_paused("a", true).await.unwrap();
    assert_eq!(s.queue_names().await.unwrap(), ["a", "b", "idle"], "paused queues too, by name");
    s.purge_queue("b", &[TaskState::Ready], NOW).await.unwrap();
    s.set_paused("idle", false).await.unwrap();
    assert_eq!(s.queue_names().await.unwrap(), ["a"]);
    assert!(s.queue_stats("a").await.unwrap().paused);
}

/// Pause and totals are durable (the memory store keeps nothing).
async fn admin_state_survives_a_reopen(b: Backend) {
    let s = &*b.store;
    s.enqueue((0..3).map(|_| new_task("q", 0)).collect(), NOW).await.unwrap();
    let l = lease_one(s, "q", NOW).await;
    s.ack(l.id, lease_id(&l), vec![], NOW).await.unwrap();
    let l = lease_one(s, "q", NOW).await;
    s.nack(l.id, lease_id(&l), nack(None, true), NOW).await.unwrap();
    s.set_paused("q", true).await.unwrap();
    s.set_paused("idle", true).await.unwrap();
    let before = s.queue_stats("q").await.unwrap();
    assert_eq!(before.totals, totals(3, 2, 1, 1, 1, 0));
    let b = b.reopen().await;
    let s = &*b.store;
    assert_eq!(s.queue_stats("q").await.unwrap(), before);
    assert!(s.queue_stats("idle").await.unwrap().paused);
    assert_eq!(s.queue_names().await.unwrap(), ["idle", "q"]);
    assert!(s.lease(spec(&["q"], 10), NOW).await.unwrap().is_empty(), "still paused");
    assert!(s.set_paused("q", false).await.unwrap());
    assert_eq!(lease_one(s, "q", NOW).await.attempt, 1);
    assert_eq!(s.queue_stats("q").await.unwrap().totals.delivered, 3, "counting goes on");
    let dead = s.list_tasks("q", TaskState::Dead, None, 10).await.unwrap();
    assert_eq!(s.redrive("q", &[], 0, NOW).await.unwrap().changed, [dead[0].id], "the dead index survives");
}

fn keyed(queue: &str, key: &str) -> NewTask {
    NewTask { concurrency_key: key.into(), ..new_task(queue, 0) }
}

fn needs(queue: &str, semaphores: &[&str]) -> NewTask {
    NewTask { semaphores: semaphores.iter().map(|s| s.to_string()).collect(), ..new_task(queue, 0) }
}

async fn lease_n(s: &dyn Store, queues: &[&str], n: usize, now: u64) -> Vec<Task> {
    s.lease(spec(queues, n), now).await.unwrap()
}

/// `max_in_flight = 3`: never more than 3 LEASED; every way out of LEASED
/// (ack, nack, expiry, cancel) gives the permit back; a stale ack frees nothing.
async fn max_in_flight_caps_leases_and_every_end_frees_the_permit(b: &Backend) {
    let s = &*b.store;
    for _ in 0..10 {
        put(s, new_task("capped", 0)).await;
    }
    let held = lease_n(s, &["capped"], 10, NOW).await;
    assert_eq!(held.len(), 3, "capped at 3");
    assert!(lease_n(s, &["capped"], 10, NOW).await.is_empty(), "saturated: nothing, no error");
    // Ack frees one.
    s.ack(held[0].id, lease_id(&held[0]), vec![], NOW).await.unwrap();
    let one = lease_n(s, &["capped"], 10, NOW).await;
    assert_eq!(one.len(), 1);
    // A stale ack (the old lease of an acked task) frees nothing.
    assert!(s.ack(held[0].id, lease_id(&held[0]), vec![], NOW).await.is_err());
    assert!(lease_n(s, &["capped"], 10, NOW).await.is_empty(), "a stale ack freed nothing");
    // Nack frees one.
    s.nack(held[1].id, lease_id(&held[1]), nack(Some(0), false), NOW).await.unwrap();
    assert_eq!(lease_n(s, &["capped"], 10, NOW).await.len(), 1);
    // Cancel of a leased task frees one.
    s.cancel(held[2].id, NOW).await.unwrap();
    assert_eq!(lease_n(s, &["capped"], 10, NOW).await.len(), 1);
    assert!(lease_n(s, &["capped"], 10, NOW).await.is_empty());
    // Expiry frees all three.
    let swept = s.requeue_expired(NOW + 30 * SEC).await.unwrap();
    assert_eq!(swept.expired.len(), 3);
    assert_eq!(lease_n(s, &["capped"], 10, NOW + 30 * SEC).await.len(), 3);
}

/// A capped queue gives what it may and the lease goes on to the next queue
/// of the subscription.
async fn a_capped_queue_lets_the_next_queue_fill_the_lease(b: &Backend) {
    let s = &*b.store;
    for _ in 0..5 {
        put(s, new_task("capped", 0)).await;
        put(s, new_task("other", 0)).await;
    }
    let got = lease_n(s, &["capped", "other"], 5, NOW).await;
    let from_capped = got.iter().filter(|t| t.queue == "capped").count();
    assert_eq!((from_capped, got.len()), (3, 5), "3 from the capped queue, the rest from the next");
}

/// `per_key_max_in_flight = 1` with keys taking turns: B's task, enqueued
/// after many of A's, goes second; a saturated key does not hold others back.
async fn keys_take_turns_and_per_key_caps_hold(b: &Backend) {
    let s = &*b.store;
    for _ in 0..20 {
        put(s, keyed("keyed", "a")).await;
    }
    let b_task = put(s, keyed("keyed", "b")).await;
    put(s, new_task("keyed", 0)).await;
    let got = lease_n(s, &["keyed"], 10, NOW).await;
    let keys: Vec<&str> = got.iter().map(|t| t.concurrency_key.as_str()).collect();
    assert_eq!(
        keys,
        ["a", "b", ""],
        "one of each key (the cap), round-robin; no key is uncapped but one group"
    );
    assert_eq!(got[1].id, b_task.id);
    assert!(lease_n(s, &["keyed"], 10, NOW).await.iter().all(|t| t.concurrency_key.is_empty()));
    s.ack(got[0].id, lease_id(&got[0]), vec![], NOW).await.unwrap();
    let next = lease_n(s, &["keyed"], 10, NOW).await;
    assert_eq!(next.iter().map(|t| t.concurrency_key.as_str()).collect::<Vec<_>>(), ["a"]);
    assert_eq!(s.get(b_task.id).await.unwrap().concurrency_key, "b", "kept on the task");
}

/// `per_key_max_in_flight = 1`: ack, nack, cancel and expiry each give the
/// key's permit back, a stale ack does not, and a saturated key's tasks stay
/// READY in order for when it frees.
async fn per_key_permits_come_back_on_every_path(b: &Backend) {
    let s = &*b.store;
    let mut a = Vec::new();
    for _ in 0..6 {
        a.push(put(s, keyed("keyed", "a")).await.id);
    }
    let first = lease_n(s, &["keyed"], 10, NOW).await;
    assert_eq!(first.iter().map(|t| t.id).collect::<Vec<_>>(), [a[0]]);
    s.ack(first[0].id, lease_id(&first[0]), vec![], NOW).await.unwrap();
    assert!(s.ack(first[0].id, lease_id(&first[0]), vec![], NOW).await.is_err());
    let second = lease_n(s, &["keyed"], 10, NOW).await;
    assert_eq!(
        second.iter().map(|t| t.id).collect::<Vec<_>>(),
        [a[1]],
        "ack freed it once; FIFO within the key"
    );
    s.nack(second[0].id, lease_id(&second[0]), nack(None, true), NOW).await.unwrap();
    let third = lease_n(s, &["keyed"], 10, NOW).await;
    assert_eq!(third.iter().map(|t| t.id).collect::<Vec<_>>(), [a[2]], "nack freed it");
    s.cancel(third[0].id, NOW).await.unwrap();
    let fourth = lease_n(s, &["keyed"], 10, NOW).await;
    assert_eq!(fourth.iter().map(|t| t.id).collect::<Vec<_>>(), [a[3]], "cancel freed it");
    s.requeue_expired(NOW + 30 * SEC).await.unwrap();
    let fifth = lease_n(s, &["keyed"], 10, NOW + 30 * SEC).await;
    assert_eq!(fifth.len(), 1, "expiry freed it");
    assert!(lease_n(s, &["keyed"], 10, NOW + 30 * SEC).await.is_empty());
}

/// Round-robin without a cap: A, B, C take turns within a priority level,
/// FIFO within each key; a higher priority still goes first.
async fn round_robin_across_keys_fifo_within_a_key(b: &Backend) {
    let s = &*b.store;
    let mut ids = Vec::new();
    for key in ["a", "a", "a", "b", "b", "c"] {
        ids.push((key, put(s, keyed("q", key)).await.id));
    }
    let urgent = put(s, NewTask { priority: 5, ..keyed("q", "a") }).await;
    let got = lease_n(s, &["q"], 10, NOW).await;
    assert_eq!(got[0].id, urgent.id);
    let keys: String = got[1..].iter().map(|t| t.concurrency_key.as_str()).collect();
    assert_eq!(keys, "abcaba");
    let a_order: Vec<_> =
        got.iter().filter(|t| t.concurrency_key == "a" && t.priority == 0).map(|t| t.id).collect();
    let a_ids: Vec<_> = ids.iter().filter(|(k, _)| *k == "a").map(|(_, id)| *id).collect();
    assert_eq!(a_order, a_ids, "FIFO within a key");
}

/// 10,000 READY tasks of key A, then one of key B (no caps): B's task is in
/// the first round, so among the first two deliveries.
async fn a_flood_of_one_key_does_not_delay_the_next_key(b: &Backend) {
    let s = &*b.store;
    let mut a_ids = Vec::new();
    for _ in 0..10 {
        let batch = (0..1_000).map(|_| keyed("q", "a")).collect();
        a_ids.extend(s.enqueue(batch, NOW).await.unwrap().into_iter().map(|e| e.task.id));
    }
    let b_task = put(s, keyed("q", "b")).await;
    let got = lease_n(s, &["q"], 2, NOW).await;
    let ids: Vec<_> = got.iter().map(|t| t.id).collect();
    assert_eq!(ids, [a_ids[0], b_task.id], "A's oldest task, then B's: one round");
    let rest: Vec<_> = lease_n(s, &["q"], 100, NOW).await.iter().map(|t| t.id).collect();
    assert_eq!(rest, a_ids[1..101], "then A's flood, FIFO");
}

/// A key's tasks left READY when a lease stops short (a semaphore without
/// permits yet, the response's byte budget) keep their group's turn and are
/// delivered by the next lease.
async fn a_keyed_group_cut_short_keeps_its_turn(b: &Backend) {
    let s = &*b.store;
    let sel = put(s, NewTask { concurrency_key: "a".into(), ..needs("s1", &["sel"]) }).await;
    let got = lease_n(s, &["s1"], 10, NOW).await;
    assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), [sel.id], "permits taken, then the task");
    let big = NewTask { payload: vec![7; 1 << 20], ..keyed("q", "a") };
    let bigs: Vec<_> = s.enqueue(vec![big; 2], NOW).await.unwrap().into_iter().map(|e| e.task.id).collect();
    let mut tiny = spec(&["q"], 10);
    tiny.max_bytes = 1;
    let first: Vec<_> = s.lease(tiny.clone(), NOW).await.unwrap().iter().map(|t| t.id).collect();
    assert_eq!(first, [bigs[0]], "the budget holds one");
    let second: Vec<_> = s.lease(tiny, NOW).await.unwrap().iter().map(|t| t.id).collect();
    assert_eq!(second, [bigs[1]], "the other is still in turn");
}

/// A semaphore with limit 2 shared by two queues caps their sum; a task
/// needing it waits while tasks behind it that do not need it flow.
async fn a_shared_semaphore_caps_the_sum_of_its_queues(b: &Backend) {
    let s = &*b.store;
    for _ in 0..3 {
        put(s, needs("s1", &["sel"])).await;
        put(s, needs("s2", &["sel"])).await;
    }
    let free = put(s, new_task("s1", 0)).await;
    let first = lease_n(s, &["s1"], 10, NOW).await;
    assert_eq!(first.iter().filter(|t| t.semaphores == ["sel"]).count(), 2);
    assert!(first.iter().any(|t| t.id == free.id), "a task without the semaphore is not held back");
    assert!(lease_n(s, &["s2"], 10, NOW).await.is_empty(), "s2 shares s1's semaphore: none left");
    let holder = first.iter().find(|t| !t.semaphores.is_empty()).unwrap();
    s.ack(holder.id, lease_id(holder), vec![], NOW).await.unwrap();
    let second = lease_n(s, &["s2"], 10, NOW).await;
    assert_eq!(second.len(), 1, "one permit came back");
    assert_eq!(second[0].semaphores, ["sel"]);
    let swept = s.requeue_expired(NOW + 30 * SEC).await.unwrap();
    assert_eq!(swept.expired.len(), 3, "two holders and the task without the semaphore");
    let again = lease_n(s, &["s2", "s1"], 10, NOW + 30 * SEC).await;
    assert_eq!(again.iter().filter(|t| !t.semaphores.is_empty()).count(), 2, "expiry gave both permits back");
}

/// A task needing a semaphore with a permit free keeps its place in the
/// order: tasks behind it that need none do not go first.
async fn tasks_needing_a_semaphore_keep_their_place(b: &Backend) {
    let s = &*b.store;
    let first = put(s, needs("s1", &["sel"])).await;
    let second = put(s, new_task("s1", 0)).await;
    put(s, new_task("s1", 0)).await;
    let got = lease_n(s, &["s1"], 2, NOW).await;
    let mut ids: Vec<_> = got.iter().map(|t| t.id).collect();
    ids.sort();
    let mut want = vec![first.id, second.id];
    want.sort();
    assert_eq!(ids, want, "FIFO: the task needing the semaphore, then the next");
}

/// Extending a lease keeps its semaphore permit as long as the lease (on
/// Redis the holder's lapse time moves with the deadline).
async fn an_extended_lease_keeps_its_semaphore_permits(b: &Backend) {
    let s = &*b.store;
    for _ in 0..3 {
        put(s, needs("s1", &["sel"])).await;
    }
    let held = lease_n(s, &["s1"], 10, NOW).await;
    assert_eq!(held.len(), 2, "the semaphore's limit");
    for t in &held {
        s.extend(t.id, lease_id(t), 60 * SEC, NOW + 20 * SEC).await.unwrap();
    }
    assert_eq!(s.requeue_expired(NOW + 50 * SEC).await.unwrap().count, 0);
    assert!(
        lease_n(s, &["s1"], 10, NOW + 50 * SEC).await.is_empty(),
        "the extended leases still hold both permits"
    );
    s.requeue_expired(NOW + 80 * SEC).await.unwrap();
    assert_eq!(lease_n(s, &["s1"], 10, NOW + 80 * SEC).await.len(), 2, "expired with their leases");
}

/// `rate_limit = "50/s"`, `rate_burst = 10`: the bucket starts full, refills
/// at 50/s, and `throttled` says when the next token is due.
async fn the_rate_limit_spends_a_token_per_delivery(b: &Backend) {
    let s = &*b.store;
    for _ in 0..100 {
        put(s, new_task("rated", 0)).await;
    }
    assert_eq!(lease_n(s, &["rated"], 100, NOW).await.len(), 10, "the burst");
    assert!(lease_n(s, &["rated"], 100, NOW).await.is_empty());
    let at = s.throttled("rated", NOW).await.unwrap().expect("held back by the rate limit");
    assert!((NOW + 1..=NOW + 20).contains(&at), "next token within 20 ms: {}", at - NOW);
    assert_eq!(lease_n(s, &["rated"], 100, NOW + SEC).await.len(), 10, "refilled, capped at the burst");
    assert_eq!(lease_n(s, &["rated"], 100, NOW + SEC + 100).await.len(), 5, "50/s: 5 in 100 ms");
    assert_eq!(s.throttled("q", NOW).await.unwrap(), None, "no rate limit");
}

/// A concurrency key and semaphores are kept on the task (and survive a
/// reopen where the store persists).
async fn flow_fields_are_stored_and_returned(b: &Backend) {
    let s = &*b.store;
    let t = put(s, NewTask { concurrency_key: "tenant-7".into(), ..needs("q", &["sel"]) }).await;
    assert_eq!((t.concurrency_key.as_str(), t.semaphores.as_slice()), ("tenant-7", &["sel".to_owned()][..]));
    let got = s.get(t.id).await.unwrap();
    assert_eq!((got.concurrency_key, got.semaphores), (t.concurrency_key.clone(), t.semaphores.clone()));
    let leased = lease_one(s, "q", NOW).await;
    assert_eq!(leased.concurrency_key, "tenant-7");
    let plain = put(s, new_task("q", 0)).await;
    assert_eq!(s.get(plain.id).await.unwrap().concurrency_key, "");
}

// Periodic schedules: definitions, and the last fired due time that makes
// each due time enqueue one task.

fn schedule(name: &str) -> Schedule {
    Schedule {
        name: name.into(),
        cron: "0 3 * * *".into(),
        every: None,
        timezone: "Europe/Berlin".into(),
        queue: "reports".into(),
        kind: "report.build".into(),
        payload: br#"{"scope":"all"}"#.to_vec(),
        headers: BTreeMap::from([("source".to_owned(), "cron".to_owned())]),
        catch_up: CatchUp::All,
        source: ScheduleSource::Config,
        since: NOW,
    }
}

/// The task a schedule fires for `due`.
fn fired_task(s: &Schedule, due: u64) -> NewTask {
    NewTask { kind: s.kind.clone(), dedup_key: s.dedup_key(due), ..new_task(&s.queue, 0) }
}

async fn fire(st: &dyn Store, s: &Schedule, due: u64, now: u64) -> Fired {
    st.fire_schedule(&s.name, due, Some(fired_task(s, due)), now).await.unwrap()
}

async fn schedules_are_put_listed_replaced_and_deleted(b: &Backend) {
    let st = &*b.store;
    assert_eq!(st.list_schedules().await.unwrap(), []);
    let nightly = schedule("nightly");
    let hourly = Schedule {
        cron: String::new(),
        every: Some(3_600_000),
        timezone: String::new(),
        ..schedule("hourly")
    };
    st.put_schedule(nightly.clone()).await.unwrap();
    st.put_schedule(hourly.clone()).await.unwrap();
    let listed = st.list_schedules().await.unwrap();
    assert_eq!(
        listed,
        [
            StoredSchedule { schedule: hourly.clone(), last_fired: None },
            StoredSchedule { schedule: nightly.clone(), last_fired: None },
        ]
    );
    let changed =
        Schedule { kind: "report.other".into(), source: ScheduleSource::Runtime, ..nightly.clone() };
    st.put_schedule(changed.clone()).await.unwrap();
    assert_eq!(st.list_schedules().await.unwrap()[1].schedule, changed);
    assert!(st.delete_schedule("nightly").await.unwrap());
    assert!(!st.delete_schedule("nightly").await.unwrap());
    assert_eq!(st.list_schedules().await.unwrap(), [StoredSchedule { schedule: hourly, last_fired: None }]);
}

async fn each_due_time_fires_once(b: &Backend) {
    let st = &*b.store;
    let s = schedule("nightly");
    st.put_schedule(s.clone()).await.unwrap();
    let (t1, t2, t3) = (NOW + 10 * SEC, NOW + 20 * SEC, NOW + 30 * SEC);
    let Fired::Enqueued(first) = fire(st, &s, t1, t1).await else { panic!("the first due time fires") };
    assert!(!first.deduplicated);
    assert_eq!((first.task.queue.as_str(), first.task.dedup_key.clone()), ("reports", s.dedup_key(t1)));
    assert_eq!(fire(st, &s, t1, t1).await, Fired::Already, "the same due time again");
    assert_eq!(fire(st, &s, t1 - SEC, t1).await, Fired::Already, "an earlier due time");
    // Many replicas firing one due time at once: one task.
    let racers = (0..8).map(|_| fire(st, &s, t2, t2));
    let outcomes = futures_util::future::join_all(racers).await;
    let enqueued = outcomes.iter().filter(|f| matches!(f, Fired::Enqueued(_))).count();
    assert_eq!(enqueued, 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|f| matches!(f, Fired::Enqueued(_) | Fired::Already)));
    // A skipped run is recorded without a task.
    assert_eq!(st.fire_schedule("nightly", t3, None, t3).await.unwrap(), Fired::Skipped);
    assert_eq!(fire(st, &s, t3, t3).await, Fired::Already);
    assert_eq!(st.list_schedules().await.unwrap()[0].last_fired, Some(t3));
    assert_eq!(st.queue_stats("reports").await.unwrap().counts.get(TaskState::Ready), 2);
    // An unknown schedule fires nothing.
    assert_eq!(fire(st, &schedule("gone"), t3 + SEC, t3).await, Fired::Already);
    assert_eq!(st.queue_stats("reports").await.unwrap().counts.get(TaskState::Ready), 2);
}

async fn a_redefined_schedule_keeps_its_last_fired_time(b: &Backend) {
    let st = &*b.store;
    let s = schedule("nightly");
    st.put_schedule(s.clone()).await.unwrap();
    assert!(matches!(fire(st, &s, NOW + SEC, NOW + SEC).await, Fired::Enqueued(_)));
    st.put_schedule(Schedule { payload: b"{}".to_vec(), ..s.clone() }).await.unwrap();
    assert_eq!(st.list_schedules().await.unwrap()[0].last_fired, Some(NOW + SEC));
    assert_eq!(fire(st, &s, NOW + SEC, NOW + SEC).await, Fired::Already);
}

/// The fired record is not the task: once the task ran and was purged (and
/// its queue forgotten), its due time still does not fire again.
async fn a_fired_due_time_outlives_its_task(b: &Backend) {
    let st = &*b.store;
    let s = schedule("nightly");
    st.put_schedule(s.clone()).await.unwrap();
    assert!(matches!(fire(st, &s, NOW, NOW).await, Fired::Enqueued(_)));
    let l = lease_one(st, "reports", NOW).await;
    st.ack(l.id, lease_id(&l), vec![], NOW).await.unwrap();
    assert_eq!(st.purge_finished(NOW + 100 * SEC).await.unwrap().count, 1);
    assert_eq!(st.queue_names().await.unwrap(), Vec::<String>::new());
    assert_eq!(fire(st, &s, NOW, NOW + 100 * SEC).await, Fired::Already);
    assert_eq!(st.queue_stats("reports").await.unwrap().counts.get(TaskState::Ready), 0);
}

/// Definitions and last fired times are durable (the memory store keeps nothing).
async fn schedules_survive_a_reopen(b: Backend) {
    let s = schedule("nightly");
    b.store.put_schedule(s.clone()).await.unwrap();
    assert!(matches!(fire(&*b.store, &s, NOW + SEC, NOW + SEC).await, Fired::Enqueued(_)));
    let b = b.reopen().await;
    let st = &*b.store;
    assert_eq!(
        st.list_schedules().await.unwrap(),
        [StoredSchedule { schedule: s.clone(), last_fired: Some(NOW + SEC) }]
    );
    assert_eq!(fire(st, &s, NOW + SEC, NOW + SEC).await, Fired::Already);
    assert!(matches!(fire(st, &s, NOW + 2 * SEC, NOW + 2 * SEC).await, Fired::Enqueued(_)));
}

macro_rules! conformance_flow {
    ($($case:ident),* $(,)?) => {
        mod flow_all_memory {
            $(#[tokio::test] async fn $case() { super::$case(&super::Backend::memory()).await })*
        }
        mod flow_all_embedded {
            $(#[tokio::test] async fn $case() { super::$case(&super::Backend::embedded()).await })*
        }
        mod flow_all_redis {
            $(#[tokio::test] async fn $case() { super::$case(&super::Backend::redis().await).await })*
        }
        mod flow_all_redis_cluster {
            $(#[tokio::test] async fn $case() { super::$case(&super::Backend::redis_cluster().await).await })*
        }
    };
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            // No state_survives_a_reopen: the memory store keeps nothing.
            $(#[tokio::test] async fn $case() { super::$case(&super::Backend::memory()).await })*
        }
        mod embedded {
            $(#[tokio::test] async fn $case() { super::$case(&super::Backend::embedded()).await })*
            #[tokio::test] async fn state_survives_a_reopen() { super::state_survives_a_reopen(super::Backend::embedded()).await }
            #[tokio::test] async fn admin_state_survives_a_reopen() { super::admin_state_survives_a_reopen(super::Backend::embedded()).await }
            #[tokio::test] async fn schedules_survive_a_reopen() { super::schedules_survive_a_reopen(super::Backend::embedded()).await }
        }
        mod redis {
            $(#[tokio::test] async fn $case() { super::$case(&super::Backend::redis().await).await })*
            #[tokio::test] async fn state_survives_a_reopen() { super::state_survives_a_reopen(super::Backend::redis().await).await }
            #[tokio::test] async fn admin_state_survives_a_reopen() { super::admin_state_survives_a_reopen(super::Backend::redis().await).await }
            #[tokio::test] async fn schedules_survive_a_reopen() { super::schedules_survive_a_reopen(super::Backend::redis().await).await }
        }
        mod redis_cluster {
            $(#[tokio::test] async fn $case() { super::$case(&super::Backend::redis_cluster().await).await })*
            #[tokio::test] async fn state_survives_a_reopen() { super::state_survives_a_reopen(super::Backend::redis_cluster().await).await }
            #[tokio::test] async fn admin_state_survives_a_reopen() { super::admin_state_survives_a_reopen(super::Backend::redis_cluster().await).await }
            #[tokio::test] async fn schedules_survive_a_reopen() { super::schedules_survive_a_reopen(super::Backend::redis_cluster().await).await }
        }
    };
}

conformance!(
    priority_then_fifo,
    strict_preference_across_queues,
    weighted_quotas_then_fill,
    lease_responses_are_capped_by_payload_bytes,
    ack_needs_the_live_lease,
    ack_many_settles_each_item_alone,
    nack_backs_off_then_dies,
    nack_no_retry_is_dead,
    expired_leases_come_back_then_die,
    extend_moves_the_deadline,
    cancel_in_every_state,
    dedup_keys_and_request_ids,
    finished_tasks_are_purged_after_retention,
    unknown_tasks_are_not_found,
    admin_counts_and_totals,
    admin_oldest_ready_time,
    admin_pause_stops_lease_until_resume,
    admin_purge_by_states,
    admin_list_tasks_pages_by_creation,
    admin_redrive_by_ids_and_by_limit,
    admin_queue_names,
    schedules_are_put_listed_replaced_and_deleted,
    each_due_time_fires_once,
    a_redefined_schedule_keeps_its_last_fired_time,
    a_fired_due_time_outlives_its_task,
);

// Flow control on every store: queue caps, rate limits, semaphores, per-key
// caps and round-robin across keys.
conformance_flow!(
    max_in_flight_caps_leases_and_every_end_frees_the_permit,
    a_capped_queue_lets_the_next_queue_fill_the_lease,
    the_rate_limit_spends_a_token_per_delivery,
    flow_fields_are_stored_and_returned,
    keys_take_turns_and_per_key_caps_hold,
    per_key_permits_come_back_on_every_path,
    a_shared_semaphore_caps_the_sum_of_its_queues,
    an_extended_lease_keeps_its_semaphore_permits,
    tasks_needing_a_semaphore_keep_their_place,
    round_robin_across_keys_fifo_within_a_key,
    a_flood_of_one_key_does_not_delay_the_next_key,
    a_keyed_group_cut_short_keeps_its_turn,
);

/// Dependencies and deadlines.
macro_rules! workflow_conformance {
    ($($case:ident),* $(,)?) => {
        mod workflow_memory {
            $(#[tokio::test] async fn $case() { super::$case(&super::Backend::memory()).await })*
        }
        mod workflow_embedded {
            $(#[tokio::test] async fn $case() { super::$case(&super::Backend::embedded()).await })*
            #[tokio::test] async fn dependencies_survive_a_reopen() { super::dependencies_survive_a_reopen(super::Backend::embedded()).await }
        }
        mod workflow_redis {
            $(#[tokio::test] async fn $case() { super::$case(&super::Backend::redis().await).await })*
            #[tokio::test] async fn dependencies_survive_a_reopen() { super::dependencies_survive_a_reopen(super::Backend::redis().await).await }
        }
        mod workflow_redis_cluster {
            $(#[tokio::test] async fn $case() { super::$case(&super::Backend::redis_cluster().await).await })*
            #[tokio::test] async fn dependencies_survive_a_reopen() { super::dependencies_survive_a_reopen(super::Backend::redis_cluster().await).await }
        }
    };
}

workflow_conformance!(
    a_chain_runs_link_by_link,
    a_retried_dependency_keeps_its_dependent_waiting,
    fan_in_of_a_thousand_dependencies,
    a_failed_dependency_cancels_down_the_graph_or_runs_by_policy,
    canceling_a_waiting_task_cascades,
    dependencies_cross_queues,
    unknown_or_purged_dependencies_are_refused_with_their_ids,
    dependencies_that_already_ended_count_at_enqueue,
    a_dependency_is_kept_past_its_retention_until_its_dependents_finish,
    waiting_tasks_are_counted_listed_and_purged,
    a_delayed_dependent_is_scheduled_once_released,
    an_expired_task_is_canceled_instead_of_delivered,
    the_timer_sweep_cancels_expired_tasks_down_the_graph,
    a_redriven_dependent_keeps_its_dependency_while_it_runs_again,
    a_replayed_request_finds_its_task_after_its_dependency_was_purged,
);
