//! The Redis store's queue registry (`tb:queues`, and the tag of a queue in
//! its task ids): an unknown task id costs a lookup of its tag, not a read
//! of every queue; a forgotten queue leaves no key behind, nor an entry in
//! any replica's cache once it swept; and `max_queues` holds against a
//! replica that still believes a forgotten queue registered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use taskbroker::core::queue::{Policies, QueuePolicy};
use taskbroker::core::task::{NewTask, TaskId};
use taskbroker::store::redis::RedisStore;
use taskbroker::store::{LeaseSpec, Limits, Store, StoreError};

#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;
use redis_server::{Monitor, RedisServer};

const NOW: u64 = 1_767_225_600_000;
const RETENTION: u64 = 100_000;

fn policies() -> Arc<Policies> {
    let policy = QueuePolicy { retention: Duration::from_millis(RETENTION), ..QueuePolicy::default() };
    Arc::new(Policies::new(BTreeMap::new(), policy))
}

async fn connect(server: &RedisServer, max_queues: usize) -> RedisStore {
    let store = RedisStore::connect(&server.url(), policies(), false).await.expect("connects to redis");
    store.with_limits(Limits { max_queues, ..Limits::UNLIMITED })
}

fn task(queue: &str) -> NewTask {
    NewTask {
        depends_on: Vec::new(),
        on_dependency_failure: Default::default(),
        expire_time: None,
        queue: queue.into(),
        kind: "k".into(),
        payload: b"p".to_vec(),
        content_type: String::new(),
        priority: 0,
        headers: BTreeMap::new(),
        max_attempts: 3,
        scheduled_time: 0,
        dedup_key: "d".into(),
        request_id: "r".into(),
        concurrency_key: String::new(),
        semaphores: Vec::new(),
    }
}

/// Enqueues, leases and acks one task of `queue`, then purges it after its
/// retention: the queue is empty and forgotten.
async fn use_and_forget(s: &RedisStore, queue: &str) -> TaskId {
    let id = s.enqueue(vec![task(queue)], NOW).await.unwrap().remove(0).task.id;
    let leased = s.lease(LeaseSpec::strict(&[queue.to_owned()], 1, None, "w"), NOW).await.unwrap().remove(0);
    s.ack(id, leased.lease.unwrap().id, vec![], NOW).await.unwrap();
    s.purge_finished(NOW + 2 * RETENTION).await.unwrap();
    id
}

#[tokio::test]
async fn an_unknown_task_id_does_not_read_every_queue() {
    let server = RedisServer::start();
    let a = connect(&server, usize::MAX).await;
    let mut ids = Vec::new();
    for q in 0..50 {
        ids.push(a.enqueue(vec![task(&format!("q{q}"))], NOW).await.unwrap().remove(0).task.id);
    }
    // A replica that has swept nothing yet knows no queue.
    let b = connect(&server, usize::MAX).await;
    let mut monitor = Monitor::start(server.port()).await;
    let ghost = TaskId::generate(NOW);
    assert_eq!(b.get(ghost).await.unwrap_err(), StoreError::TaskNotFound(ghost));
    assert_eq!(b.cancel(ghost, NOW).await.unwrap_err(), StoreError::TaskNotFound(ghost));
    server.command("ECHO after-the-unknown-ids").expect("the marker");
    let sent = monitor.until("after-the-unknown-ids", Duration::from_secs(5)).await;
    let full_reads: Vec<_> =
        sent.iter().filter(|c| c.to_lowercase().contains("\"smembers\" \"tb:queues\"")).collect();
    assert!(full_reads.is_empty(), "an unknown id read every queue: {full_reads:?} (all: {sent:?})");
    // A known queue's task is still found by that replica.
    for id in &ids {
        b.get(*id).await.unwrap_or_else(|e| panic!("task {id} of another replica: {e}"));
    }
}

#[tokio::test]
async fn a_forgotten_queue_leaves_no_key_behind() {
    let server = RedisServer::start();
    let s = connect(&server, usize::MAX).await;
    s.enqueue(vec![task("kept")], NOW).await.unwrap();
    use_and_forget(&s, "gone").await;
    assert_eq!(server.command("SISMEMBER tb:queues gone").as_deref(), Some(":0"), "out of tb:queues");
    assert_eq!(
        server.command("KEYS tb:{gone}:*").as_deref(),
        Some("*0"),
        "keys of the forgotten queue (its counters included)"
    );
    assert_eq!(server.command("KEYS tb:tag:*").as_deref(), Some("*1"), "only the kept queue's tag is left");
    // The queue comes back as a new one.
    let again = s.enqueue(vec![task("gone")], NOW).await.unwrap().remove(0);
    assert!(!again.deduplicated, "a fresh queue: its old request id is gone");
    assert_eq!(server.command("SISMEMBER tb:queues gone").as_deref(), Some(":1"));
}

#[tokio::test]
async fn a_replica_that_swept_forgets_a_queue_forgotten_elsewhere_and_max_queues_holds() {
    let server = RedisServer::start();
    let a = connect(&server, 1).await;
    let b = connect(&server, 1).await;
    // Both replicas use "old"; A drains it and forgets it, then "new" takes its place.
    let id = b.enqueue(vec![task("old")], NOW).await.unwrap().remove(0).task.id;
    let leased = a.lease(LeaseSpec::strict(&["old".to_owned()], 1, None, "w"), NOW).await.unwrap().remove(0);
    a.ack(id, leased.lease.unwrap().id, vec![], NOW).await.unwrap();
    a.purge_finished(NOW + 2 * RETENTION).await.unwrap();
    a.enqueue(vec![task("new")], NOW).await.expect("room for one queue again");
    // B sweeps (reading the registry), then enqueues into "old": that would
    // be a second queue.
    b.next_timer().await.unwrap();
    assert_eq!(
        b.enqueue(vec![task("old")], NOW).await.unwrap_err(),
        StoreError::QueueLimit("old".into()),
        "B knew \"old\" from before it was forgotten"
    );
    assert_eq!(server.command("SCARD tb:queues").as_deref(), Some(":1"));
}

#[tokio::test]
async fn max_queues_holds_against_a_replica_that_has_not_swept_since_a_queue_was_forgotten() {
    let server = RedisServer::start();
    let a = connect(&server, 1).await;
    let b = connect(&server, 1).await;
    let id = b.enqueue(vec![task("old")], NOW).await.unwrap().remove(0).task.id;
    let leased = a.lease(LeaseSpec::strict(&["old".to_owned()], 1, None, "w"), NOW).await.unwrap().remove(0);
    a.ack(id, leased.lease.unwrap().id, vec![], NOW).await.unwrap();
    a.purge_finished(NOW + 2 * RETENTION).await.unwrap();
    a.enqueue(vec![task("new")], NOW).await.expect("room for one queue again");
    // B still believes "old" registered: its enqueue finds the queue empty
    // and registers it first, within the bound.
    assert_eq!(b.enqueue(vec![task("old")], NOW).await.unwrap_err(), StoreError::QueueLimit("old".into()));
    assert_eq!(server.command("SCARD tb:queues").as_deref(), Some(":1"));
    assert_eq!(server.command("KEYS tb:{old}:*").as_deref(), Some("*0"), "the refused enqueue wrote nothing");
}
