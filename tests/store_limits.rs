//! What a store holds is bounded: `max_queues` (QUEUE_LIMIT), `max_tasks` and
//! `max_queued_bytes` (STORAGE_FULL), with leases, acks and nacks still
//! working at the bound; empty queues are forgotten after their retention;
//! idle waiters leave nothing behind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use taskbroker::config::StorageKind;
use taskbroker::core::queue::{Policies, QueuePolicy};
use taskbroker::core::task::NewTask;
use taskbroker::pb;
use taskbroker::store::embedded::EmbeddedStore;
use taskbroker::store::memory::MemoryStore;
use taskbroker::store::redis::RedisStore;
use taskbroker::store::{LeaseSpec, Limits, NackSpec, Store, StoreError};
use tempfile::TempDir;
use tonic::Code;

mod common;
use common::redis::RedisServer;

const NOW: u64 = 1_767_225_600_000;
const RETENTION: u64 = 100_000;

fn policies() -> Arc<Policies> {
    let policy = QueuePolicy { retention: Duration::from_millis(RETENTION), ..QueuePolicy::default() };
    Arc::new(Policies::new(BTreeMap::new(), policy))
}

fn task(queue: &str, payload: &[u8]) -> NewTask {
    NewTask {
        depends_on: Vec::new(),
        on_dependency_failure: Default::default(),
        expire_time: None,
        queue: queue.into(),
        kind: "k".into(),
        payload: payload.to_vec(),
        content_type: String::new(),
        priority: 0,
        headers: BTreeMap::new(),
        max_attempts: 3,
        scheduled_time: 0,
        dedup_key: String::new(),
        request_id: String::new(),
        concurrency_key: String::new(),
        semaphores: Vec::new(),
    }
}

fn spec(queue: &str, max: usize) -> LeaseSpec {
    LeaseSpec::strict(&[queue.to_owned()], max, None, "w")
}

fn limits(max_queues: usize, max_tasks: usize, max_queued_bytes: u64) -> Limits {
    Limits { max_queues, max_tasks, max_queued_bytes }
}

/// A store under test and what keeps it alive.
struct Backend {
    store: Arc<dyn Store>,
    _dir: Option<TempDir>,
    redis: Option<RedisServer>,
}

fn memory(l: Limits) -> Backend {
    Backend { store: Arc::new(MemoryStore::new(policies()).with_limits(l)), _dir: None, redis: None }
}

fn embedded(l: Limits) -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), policies()).unwrap().with_limits(l);
    Backend { store: Arc::new(store), _dir: Some(dir), redis: None }
}

async fn redis(l: Limits) -> Backend {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), policies(), false).await.unwrap().with_limits(l);
    Backend { store: Arc::new(store), _dir: None, redis: Some(server) }
}

async fn enqueue(s: &dyn Store, queue: &str) -> Result<(), StoreError> {
    s.enqueue(vec![task(queue, b"p")], NOW).await.map(|_| ())
}

async fn a_new_queue_beyond_max_queues_is_refused(b: Backend) {
    let s = &*b.store;
    for q in ["q1", "q2", "q3"] {
        enqueue(s, q).await.unwrap();
    }
    assert_eq!(enqueue(s, "q4").await, Err(StoreError::QueueLimit("q4".into())));
    enqueue(s, "q1").await.expect("an existing queue takes more tasks");
    // A batch that would create a queue is refused whole.
    let batch = vec![task("q2", b"p"), task("q5", b"p")];
    assert_eq!(s.enqueue(batch, NOW).await, Err(StoreError::QueueLimit("q5".into())));
    assert_eq!(
        s.lease(spec("q2", 10), NOW).await.unwrap().len(),
        1,
        "nothing of the refused batch was created"
    );
}

async fn an_empty_queue_is_forgotten_after_its_retention(b: Backend) {
    let s = &*b.store;
    enqueue(s, "old").await.unwrap();
    assert_eq!(enqueue(s, "new").await, Err(StoreError::QueueLimit("new".into())));
    let leased = s.lease(spec("old", 1), NOW).await.unwrap().remove(0);
    s.ack(leased.id, leased.lease.unwrap().id, vec![], NOW).await.unwrap();
    s.purge_finished(NOW + RETENTION - 1).await.unwrap();
    assert_eq!(enqueue(s, "new").await, Err(StoreError::QueueLimit("new".into())), "kept for its retention");
    s.purge_finished(NOW + RETENTION).await.unwrap();
    enqueue(s, "new").await.expect("the emptied queue no longer counts");
    if let Some(redis) = &b.redis {
        assert_eq!(redis.command("SMEMBERS tb:queues").as_deref(), Some("*1"), "one queue left in tb:queues");
        assert_eq!(redis.command("SISMEMBER tb:queues old").as_deref(), Some(":0"));
    }
    // The forgotten queue comes back with its next task (over the limit of
    // one: refused, proving it is counted again only when created).
    assert_eq!(enqueue(s, "old").await, Err(StoreError::QueueLimit("old".into())));
}

async fn budgets_refuse_enqueues_and_let_workers_drain(b: Backend) {
    let s = &*b.store;
    let mut first = task("q", b"123456");
    first.request_id = "r1".into();
    s.enqueue(vec![first.clone(), task("q", b"1234")], NOW).await.unwrap();
    // max_tasks = 3, max_queued_bytes = 12: 10 bytes held.
    let full = s.enqueue(vec![task("q", b"123")], NOW).await;
    assert!(matches!(full, Err(StoreError::Full(ref why)) if why.contains("max_queued_bytes")), "{full:?}");
    s.enqueue(vec![task("q", b"12")], NOW).await.expect("within both budgets");
    let full = s.enqueue(vec![task("q", b"")], NOW).await;
    assert!(matches!(full, Err(StoreError::Full(ref why)) if why.contains("max_tasks")), "{full:?}");
    let replay = s.enqueue(vec![first], NOW).await.expect("a replay creates nothing: answered");
    assert!(replay[0].deduplicated);

    // Workers drain: lease, nack, extend, ack all work at the bound.
    let mut leased = s.lease(spec("q", 3), NOW).await.unwrap();
    assert_eq!(leased.len(), 3);
    let t = leased.pop().unwrap();
    let nack = NackSpec { error: "e".into(), retry_after: Some(0), no_retry: false, jitter_sample: 0.0 };
    s.nack(t.id, t.lease.unwrap().id, nack, NOW).await.unwrap();
    for t in leased {
        let lease_id = t.lease.unwrap().id;
        s.extend(t.id, lease_id, 1_000, NOW).await.unwrap();
        s.ack(t.id, lease_id, vec![], NOW).await.unwrap();
    }
    assert!(matches!(enqueue(s, "q").await, Err(StoreError::Full(_))), "finished tasks count until purged");
    s.purge_finished(NOW + RETENTION).await.unwrap();
    enqueue(s, "q").await.expect("room again after the purge");
}

#[tokio::test]
async fn max_queues_memory() {
    a_new_queue_beyond_max_queues_is_refused(memory(limits(3, 100, 1000))).await;
}

#[tokio::test]
async fn max_queues_embedded() {
    a_new_queue_beyond_max_queues_is_refused(embedded(limits(3, 100, 1000))).await;
}

#[tokio::test]
async fn max_queues_redis() {
    a_new_queue_beyond_max_queues_is_refused(redis(limits(3, 100, 1000)).await).await;
}

#[tokio::test]
async fn empty_queue_forgotten_memory() {
    an_empty_queue_is_forgotten_after_its_retention(memory(limits(1, 100, 1000))).await;
}

#[tokio::test]
async fn empty_queue_forgotten_embedded() {
    an_empty_queue_is_forgotten_after_its_retention(embedded(limits(1, 100, 1000))).await;
}

#[tokio::test]
async fn empty_queue_forgotten_redis() {
    an_empty_queue_is_forgotten_after_its_retention(redis(limits(1, 100, 1000)).await).await;
}

#[tokio::test]
async fn budgets_memory() {
    budgets_refuse_enqueues_and_let_workers_drain(memory(limits(10, 3, 12))).await;
}

#[tokio::test]
async fn budgets_embedded() {
    budgets_refuse_enqueues_and_let_workers_drain(embedded(limits(10, 3, 12))).await;
}

/// The table forgets everything of an emptied queue, also across a reopen of
/// the embedded store (the count is rebuilt from what is on disk).
#[tokio::test]
async fn the_queue_count_follows_the_tasks_held() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path(), policies()).unwrap();
    for q in ["a", "b", "c"] {
        enqueue(&s, q).await.unwrap();
    }
    assert_eq!(s.queue_count(), 3);
    drop(s);
    let s = EmbeddedStore::open(dir.path(), policies()).unwrap().with_limits(limits(3, 100, 1000));
    assert_eq!(s.queue_count(), 3);
    assert_eq!(
        enqueue(&s, "d").await,
        Err(StoreError::QueueLimit("d".into())),
        "the limit holds after a reopen"
    );
    for t in s.lease(LeaseSpec::strict(&["a".into(), "b".into()], 2, None, "w"), NOW).await.unwrap() {
        s.ack(t.id, t.lease.unwrap().id, vec![], NOW).await.unwrap();
    }
    s.purge_finished(NOW + RETENTION).await.unwrap();
    assert_eq!(s.queue_count(), 1);
}

/// Over gRPC: RESOURCE_EXHAUSTED with the reason and the queue; the budget
/// answers STORAGE_FULL; Lease on many queue names leaves no waiter entry.
#[tokio::test]
async fn limits_over_grpc() {
    let opts = common::Options {
        storage: StorageKind::Memory,
        config: "max_queues = 2\nmax_tasks = 3\n",
        manual_clock: false,
        ..Default::default()
    };
    let mut s = common::start_with(opts).await;
    s.enqueue("a", "k").await;
    s.enqueue("b", "k").await;
    let req = pb::EnqueueRequest { queue: "c".into(), kind: "k".into(), ..Default::default() };
    let err = s.producer.enqueue(req).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(common::reason(&err), "QUEUE_LIMIT");
    use tonic_types::StatusExt;
    assert_eq!(
        err.get_error_details().error_info().unwrap().metadata.get("queue").map(String::as_str),
        Some("c")
    );

    s.enqueue("a", "k").await;
    let req = pb::EnqueueRequest { queue: "a".into(), kind: "k".into(), ..Default::default() };
    let err = s.producer.enqueue(req).await.unwrap_err();
    assert_eq!((err.code(), common::reason(&err).as_str()), (Code::ResourceExhausted, "STORAGE_FULL"));

    // Long-polls on names nobody enqueues to: nothing kept once they end.
    let queues: Vec<String> = (0..10).map(|i| format!("nobody-{i}")).collect();
    let lease = pb::LeaseRequest {
        queues: queues.clone(),
        max_tasks: 1,
        wait: Some(prost_types::Duration { seconds: 0, nanos: 1_000_000 }),
        ..Default::default()
    };
    assert!(s.worker.lease(lease).await.unwrap().into_inner().tasks.is_empty());
    assert_eq!(s.broker.waited_queues(), 0, "waiter entries of queues nobody waits on");
    s.shutdown().await;
}

#[test]
fn the_limits_are_configured_and_validated() {
    use taskbroker::config::Config;
    let config = Config::from_toml("max_queues = 5\nmax_tasks = 7\nmax_queued_bytes = 9\n").unwrap();
    assert_eq!(config.limits(), limits(5, 7, 9));
    let derived = Config::default().limits();
    assert_eq!(derived.max_queues, 10_000);
    assert!(derived.max_queued_bytes >= 1 << 20 && derived.max_tasks >= 1024, "{derived:?}");
    let errors =
        Config::from_toml("max_queues = 0\nmax_tasks = 0\nmax_queued_bytes = 0\n").unwrap().validate();
    assert_eq!(errors.unwrap_err().iter().filter(|e| e.starts_with("max_")).count(), 3);
}
