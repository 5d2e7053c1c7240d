//! AdminService over Redis: two broker replicas on one redis-server (started
//! by the test) answer the same, and a pause made through one holds on the
//! other; a resume through one wakes a worker waiting on the other.

#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use taskbroker::app::{self, Running};
use taskbroker::config::{Config, StorageKind};
use taskbroker::core::clock::SystemClock;
use taskbroker::pb;
use taskbroker::pb::admin_service_client::AdminServiceClient;
use taskbroker::pb::producer_service_client::ProducerServiceClient;
use taskbroker::pb::worker_service_client::WorkerServiceClient;
use tonic::transport::Channel;

struct Replica {
    running: Running,
    admin: AdminServiceClient<Channel>,
    producer: ProducerServiceClient<Channel>,
    worker: WorkerServiceClient<Channel>,
}

async fn replica(redis: &RedisServer) -> Replica {
    let mut config = Config::from_toml("[queues.q]\nmax_attempts = 1\n").unwrap();
    config.storage = StorageKind::Redis;
    config.redis_url = redis.url();
    config.listen = "127.0.0.1:0".into();
    config.validate().unwrap();
    let running = app::start(&config, Arc::new(SystemClock)).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", running.addr)).unwrap().connect().await.unwrap();
    Replica {
        running,
        admin: AdminServiceClient::new(channel.clone()),
        producer: ProducerServiceClient::new(channel.clone()),
        worker: WorkerServiceClient::new(channel),
    }
}

fn lease(max: u32, wait: u64) -> pb::LeaseRequest {
    pb::LeaseRequest {
        queues: vec!["q".into()],
        max_tasks: max,
        wait: Some(prost_types::Duration { seconds: wait as i64, nanos: 0 }),
        ..Default::default()
    }
}

async fn info(r: &mut Replica) -> pb::QueueInfo {
    r.admin.get_queue(pb::GetQueueRequest { queue: "q".into() }).await.unwrap().into_inner()
}

#[tokio::test]
async fn two_replicas_share_counts_pause_and_redrive() {
    let redis = RedisServer::start();
    let (mut a, mut b) = (replica(&redis).await, replica(&redis).await);
    for _ in 0..6 {
        let request = pb::EnqueueRequest { queue: "q".into(), kind: "k".into(), ..Default::default() };
        a.producer.enqueue(request).await.unwrap();
    }
    let leased = b.worker.lease(lease(3, 0)).await.unwrap().into_inner().tasks;
    assert_eq!(leased.len(), 3);
    for t in &leased[..2] {
        let task = t.task.as_ref().unwrap();
        let request = pb::NackRequest {
            task_id: task.id.clone(),
            lease_id: t.lease_id.clone(),
            error: "boom".into(),
            ..Default::default()
        };
        b.worker.nack(request).await.unwrap();
    }
    let (qa, qb) = (info(&mut a).await, info(&mut b).await);
    assert_eq!(qa.counts, qb.counts, "both replicas read the counts from Redis");
    assert_eq!(qa.totals, qb.totals);
    let c = qa.counts.unwrap();
    assert_eq!((c.ready, c.leased, c.dead), (3, 1, 2));
    let t = qa.totals.unwrap();
    assert_eq!((t.enqueued, t.delivered, t.nacked, t.dead), (6, 3, 2, 2));

    // A pause through A holds on B.
    a.admin.pause_queue(pb::PauseQueueRequest { queue: "q".into() }).await.unwrap();
    assert!(info(&mut b).await.paused);
    assert!(b.worker.lease(lease(10, 0)).await.unwrap().into_inner().tasks.is_empty());

    // A worker waits on B; the resume through A wakes it at once.
    let mut worker = b.worker.clone();
    let started = Instant::now();
    let waiting = tokio::spawn(async move { worker.lease(lease(10, 20)).await.unwrap().into_inner().tasks });
    // The long-poll is parked on the paused queue before the resume.
    while b.running.broker().waited_queues() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.admin.resume_queue(pb::ResumeQueueRequest { queue: "q".into() }).await.unwrap();
    let got = waiting.await.unwrap();
    assert_eq!(got.len(), 3);
    assert!(started.elapsed() < Duration::from_secs(10), "woken by the resume: {:?}", started.elapsed());

    // Redrive through B puts A's view of the dead tasks back to ready.
    let r = b.admin.redrive_tasks(pb::RedriveTasksRequest { queue: "q".into(), ..Default::default() }).await;
    assert_eq!(r.unwrap().into_inner().redriven, 2);
    let c = info(&mut a).await.counts.unwrap();
    assert_eq!((c.ready, c.dead), (2, 0));
    a.running.shutdown().await.unwrap();
    b.running.shutdown().await.unwrap();
}
