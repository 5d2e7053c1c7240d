//! One owner of queue settings at run time: the store reads every policy it
//! needs (lease length, backoff, retention, dedup window) from the shared
//! `QueueRegistry`, so a replaced set of policies (a config reload) applies to
//! the next operation on every backend, while what already happened keeps
//! the policy it happened under (a finished task keeps its removal time).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use taskbroker::core::queue::{Policies, QueuePolicy, QueueRegistry};
use taskbroker::core::retry::Backoff;
use taskbroker::core::task::{NewTask, TaskState};
use taskbroker::store::embedded::EmbeddedStore;
use taskbroker::store::memory::MemoryStore;
use taskbroker::store::redis::RedisStore;
use taskbroker::store::{LeaseSpec, NackSpec, Store, StoreError};

#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;
use redis_server::RedisServer;

const NOW: u64 = 1_767_225_600_000;
const SEC: u64 = 1_000;

fn policies(lease: u64, backoff: u64, retention: u64) -> Policies {
    let policy = QueuePolicy {
        lease_duration: Duration::from_secs(lease),
        max_attempts: 5,
        retry_backoff: Backoff {
            initial: Duration::from_secs(backoff),
            max: Duration::from_secs(3600),
            multiplier: 1.0,
            jitter: 0.0,
        },
        default_priority: 0,
        retention: Duration::from_secs(retention),
        dedup_window: Duration::ZERO,
        max_in_flight: 0,
        per_key_max_in_flight: 0,
        rate_limit: None,
        semaphores: Vec::new(),
    };
    Policies::new(BTreeMap::new(), policy)
}

fn task() -> NewTask {
    NewTask {
        depends_on: Vec::new(),
        on_dependency_failure: Default::default(),
        expire_time: None,
        queue: "q".into(),
        kind: "k".into(),
        payload: vec![],
        content_type: String::new(),
        priority: 0,
        headers: BTreeMap::new(),
        max_attempts: 5,
        scheduled_time: 0,
        dedup_key: String::new(),
        request_id: String::new(),
        concurrency_key: String::new(),
        semaphores: Vec::new(),
    }
}

async fn a_replaced_policy_applies_to_the_next_operation(store: Arc<dyn Store>, queues: QueueRegistry) {
    let lease_one = |now| {
        let store = store.clone();
        async move {
            let spec = LeaseSpec::strict(&["q".to_string()], 1, None, "w");
            store.lease(spec, now).await.unwrap().pop().expect("a ready task")
        }
    };
    let first = store.enqueue(vec![task()], NOW).await.unwrap().pop().unwrap().task;
    let second = store.enqueue(vec![task()], NOW).await.unwrap().pop().unwrap().task;

    // Under the first policies: 10 s leases, 100 s retention.
    let leased = lease_one(NOW).await;
    assert_eq!(leased.lease.as_ref().unwrap().expire_time, NOW + 10 * SEC);
    let done = store.ack(first.id, leased.lease.unwrap().id, vec![], NOW).await.unwrap();
    assert_eq!(done.state, TaskState::Succeeded);

    // New policies: 60 s leases, 7 s backoff, 5 s retention.
    queues.replace(policies(60, 7, 5));
    let leased = lease_one(NOW).await;
    assert_eq!(leased.id, second.id);
    assert_eq!(leased.lease.as_ref().unwrap().expire_time, NOW + 60 * SEC, "the new lease length");
    let nacked = store
        .nack(
            second.id,
            leased.lease.unwrap().id,
            NackSpec { error: "e".into(), retry_after: None, no_retry: false, jitter_sample: 0.5 },
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(
        (nacked.state, nacked.scheduled_time),
        (TaskState::Scheduled, NOW + 7 * SEC),
        "the new backoff"
    );

    // The new retention applies to what finishes from now on, and finished
    // tasks leave in the order they finished: the first keeps its 100 s, and
    // the second, finished after it under 5 s, goes with it.
    store.promote_due(NOW + 7 * SEC).await.unwrap();
    let leased = lease_one(NOW + 7 * SEC).await;
    assert_eq!(leased.id, second.id);
    store.ack(second.id, leased.lease.unwrap().id, vec![], NOW + 7 * SEC).await.unwrap();
    store.purge_finished(NOW + 12 * SEC).await.unwrap();
    assert_eq!(store.get(first.id).await.unwrap().state, TaskState::Succeeded, "kept for its 100 s");
    assert_eq!(store.get(second.id).await.unwrap().state, TaskState::Succeeded, "not before the first");
    store.purge_finished(NOW + 100 * SEC).await.unwrap();
    assert_eq!(store.get(first.id).await, Err(StoreError::TaskNotFound(first.id)));
    assert_eq!(store.get(second.id).await, Err(StoreError::TaskNotFound(second.id)));

    // Once those are gone, the 5 s retention is all a finished task gets.
    let third = store.enqueue(vec![task()], NOW + 200 * SEC).await.unwrap().pop().unwrap().task;
    let leased = lease_one(NOW + 200 * SEC).await;
    assert_eq!(leased.id, third.id);
    store.ack(third.id, leased.lease.unwrap().id, vec![], NOW + 200 * SEC).await.unwrap();
    store.purge_finished(NOW + 204 * SEC).await.unwrap();
    assert_eq!(store.get(third.id).await.unwrap().state, TaskState::Succeeded);
    store.purge_finished(NOW + 205 * SEC).await.unwrap();
    assert_eq!(store.get(third.id).await, Err(StoreError::TaskNotFound(third.id)), "purged after 5 s");
}

#[tokio::test]
async fn memory() {
    let queues = QueueRegistry::new(policies(10, 1, 100));
    let store = Arc::new(MemoryStore::new(queues.clone()));
    a_replaced_policy_applies_to_the_next_operation(store, queues).await;
}

#[tokio::test]
async fn embedded() {
    let dir = tempfile::tempdir().unwrap();
    let queues = QueueRegistry::new(policies(10, 1, 100));
    let store = Arc::new(EmbeddedStore::open(dir.path(), queues.clone()).unwrap());
    a_replaced_policy_applies_to_the_next_operation(store, queues).await;
}

#[tokio::test]
async fn redis() {
    let server = RedisServer::start();
    let queues = QueueRegistry::new(policies(10, 1, 100));
    let store = Arc::new(RedisStore::connect(&server.url(), queues.clone(), false).await.unwrap());
    a_replaced_policy_applies_to_the_next_operation(store, queues).await;
}
