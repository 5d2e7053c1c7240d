//! The operations API over Redis beyond the conformance suite: what two
//! replicas of one Redis see of a pause, the wake-up a resume publishes, and
//! a redrive of 10,000 dead tasks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use taskbroker::core::queue::{Policies, QueuePolicy};
use taskbroker::core::task::{NewTask, TaskState};
use taskbroker::store::redis::RedisStore;
use taskbroker::store::{LeaseSpec, Store, StoreEvent};

#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;
use redis_server::RedisServer;

const NOW: u64 = 1_767_225_600_000;

fn policies() -> Arc<Policies> {
    let policy =
        QueuePolicy { max_attempts: 1, lease_duration: Duration::from_secs(30), ..QueuePolicy::default() };
    Arc::new(Policies::new(BTreeMap::new(), policy))
}

fn new_task(queue: &str) -> NewTask {
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
        max_attempts: 1,
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

/// The next `Ready` event for `queue`, within a few seconds.
async fn ready_event(events: &mut tokio::sync::broadcast::Receiver<StoreEvent>, queue: &str) -> usize {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(StoreEvent::Ready(q, n)) if q == queue => return n,
                Ok(_) => {}
                Err(e) => panic!("events ended: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait).await.expect("a Ready event")
}

#[tokio::test]
async fn a_pause_is_shared_by_replicas_and_a_resume_wakes_every_one() {
    let redis = RedisServer::start();
    let a = RedisStore::connect(&redis.url(), policies(), false).await.unwrap();
    let b = RedisStore::connect(&redis.url(), policies(), false).await.unwrap();
    let mut b_events = b.events().unwrap();
    a.enqueue(vec![new_task("q"), new_task("q")], NOW).await.unwrap();
    assert_eq!(ready_event(&mut b_events, "q").await, 2);

    assert!(a.set_paused("q", true).await.unwrap());
    assert!(b.queue_stats("q").await.unwrap().paused, "the other replica sees the pause");
    assert!(!b.set_paused("q", true).await.unwrap());
    assert!(b.lease(spec("q", 10), NOW).await.unwrap().is_empty(), "nor does it deliver");
    assert_eq!(b.queue_names().await.unwrap(), ["q"]);

    assert!(a.set_paused("q", false).await.unwrap());
    assert_eq!(ready_event(&mut b_events, "q").await, 2, "the resume wakes the other replica's workers");
    assert_eq!(b.lease(spec("q", 10), NOW).await.unwrap().len(), 2);
    let stats = a.queue_stats("q").await.unwrap();
    assert!(!stats.paused);
    assert_eq!((stats.totals.enqueued, stats.totals.delivered), (2, 2), "one set of totals for all");
}

#[tokio::test]
async fn a_redrive_of_ten_thousand_dead_tasks() {
    const N: usize = 10_000;
    let redis = RedisServer::start();
    let s = RedisStore::connect(&redis.url(), policies(), false).await.unwrap();
    for _ in 0..N / 1000 {
        s.enqueue((0..1000).map(|_| new_task("q")).collect(), NOW).await.unwrap();
        assert_eq!(s.lease(spec("q", 1000), NOW).await.unwrap().len(), 1000);
    }
    // Their only attempt runs out.
    assert_eq!(s.requeue_expired(NOW + 30_000).await.unwrap().count, N);
    let stats = s.queue_stats("q").await.unwrap();
    assert_eq!((stats.counts.get(TaskState::Dead), stats.totals.dead), (N as u64, N as u64));

    let mut events = s.events().unwrap();
    let started = Instant::now();
    let swept = s.redrive("q", &[], 0, NOW + 31_000).await.unwrap();
    let took = started.elapsed();
    println!("redrive of {N} dead tasks on Redis: {took:?}");
    assert_eq!(swept.count, N);
    assert_eq!(swept.ready_queues, ["q"]);
    assert!(ready_event(&mut events, "q").await > 0, "workers are woken");
    let stats = s.queue_stats("q").await.unwrap();
    assert_eq!((stats.counts.get(TaskState::Dead), stats.counts.get(TaskState::Ready)), (0, N as u64));
    assert_eq!(stats.oldest_ready_time, Some(NOW + 31_000));
    let listed = s.list_tasks("q", TaskState::Ready, None, 5).await.unwrap();
    assert!(listed.iter().all(|t| t.attempt == 0 && t.last_error.contains("lease expired")));
    assert_eq!(s.lease(spec("q", 1000), NOW + 32_000).await.unwrap().len(), 1000, "deliverable again");
    // The dead entries left in the finished list do not purge the redriven
    // tasks when their old retention runs out.
    let retention = QueuePolicy::default().retention.as_millis() as u64;
    assert_eq!(s.purge_finished(NOW + 30_000 + retention).await.unwrap().count, 0);
    assert_eq!(s.queue_stats("q").await.unwrap().counts.total(), N as u64);
}
