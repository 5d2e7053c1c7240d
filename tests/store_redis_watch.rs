//! WatchTask on Redis leaves nothing behind, whatever point its setup is
//! abandoned at: no local channel, no entry in the queue's `watched` hash
//! (which would make every later change of the task publish an event).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use taskbroker::app;
use taskbroker::config::{Config, StorageKind};
use taskbroker::core::clock::SystemClock;
use taskbroker::pb;
use taskbroker::pb::producer_service_client::ProducerServiceClient;

#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;
use redis_server::RedisServer;

/// Waits (bounded) until `done` holds; the cleanup of an abandoned watch runs
/// on a background task, so there is no signal to wait for.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The watch counts in the queue's `watched` hash.
fn watched(conn: &mut redis::Connection) -> Vec<(String, i64)> {
    redis::cmd("HGETALL").arg("tb:{q}:watched").query(conn).unwrap()
}

#[tokio::test]
async fn a_watch_abandoned_during_setup_leaves_no_channel_and_no_redis_entry() {
    let redis = RedisServer::start();
    let mut config = Config { storage: StorageKind::Redis, redis_url: redis.url(), ..Config::default() };
    config.listen = "127.0.0.1:0".into();
    config.validate().unwrap();
    let running = app::start(&config, Arc::new(SystemClock)).await.unwrap();
    let broker = running.broker().clone();
    let mut producer = ProducerServiceClient::connect(format!("http://{}", running.addr)).await.unwrap();
    let enqueue = pb::EnqueueRequest { queue: "q".into(), kind: "k".into(), ..Default::default() };
    let task = producer.enqueue(enqueue.clone()).await.unwrap().into_inner().task.unwrap();
    let id = task.id.parse().unwrap();
    let mut conn = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();

    // Dropped right after its first step (the store's mark is on its way),
    // each on its own task.
    let batch = pb::EnqueueBatchRequest { tasks: vec![enqueue; 100] };
    for result in producer.enqueue_batch(batch).await.unwrap().into_inner().results {
        let Some(pb::enqueue_result::Result::Task(t)) = result.result else { panic!("enqueued") };
        let id = t.id.parse().unwrap();
        assert!(broker.watch(id).now_or_never().is_none(), "a Redis round trip cannot be instant");
    }
    // Dropped at every point of the setup, or just after it.
    for i in 0..100u64 {
        let _ = tokio::time::timeout(Duration::from_micros(i * 20), broker.watch(id)).await;
    }
    // Clients that give up while the server sets their watch up.
    for i in 0..50u64 {
        let watch = producer.watch_task(pb::WatchTaskRequest { task_id: task.id.clone() });
        let _ = tokio::time::timeout(Duration::from_micros(100 + i * 40), watch).await;
    }

    eventually("every abandoned watch's channel is dropped", || broker.watched_tasks() == 0).await;
    eventually("the Redis watched hash empties", || watched(&mut conn).is_empty()).await;

    // A watch that was set up still works and counts once while it lasts.
    let mut stream =
        producer.watch_task(pb::WatchTaskRequest { task_id: task.id.clone() }).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().task.unwrap().id, task.id);
    assert_eq!(watched(&mut conn), [(task.id.clone(), 1)]);
    assert_eq!(broker.watched_tasks(), 1);
    drop(stream);
    eventually("an ended watch's channel is dropped", || broker.watched_tasks() == 0).await;
    eventually("an ended watch leaves the Redis hash", || watched(&mut conn).is_empty()).await;
    running.shutdown().await.unwrap();
}
