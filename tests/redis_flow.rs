//! Flow control across two broker processes (`taskbroker serve --storage
//! redis`) on one redis-server: the cap and the rate limit hold for the two
//! together, not for each, and keys take turns whichever replica delivers. Every process and the Redis are this test's own
//! (killed on drop).
#![cfg(unix)]

mod flow_workers;
#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;
#[path = "common/serve.rs"]
mod serve;
mod stream_client;

use std::time::{Duration, Instant};

use flow_workers::{drain, enqueue_many};
use redis_server::RedisServer;
use serve::ServeProcess;
use stream_client::{open, subscribe, task_of};
use taskbroker::pb::stream_response::Msg as Resp;
use tempfile::TempDir;

/// Two replicas on `redis` with `config` (TOML); the directory holds the
/// file and the logs.
async fn replicas(redis: &RedisServer, config: &str) -> (ServeProcess, ServeProcess, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("taskbroker.toml");
    std::fs::write(&file, config).unwrap();
    let file = file.to_str().unwrap().to_owned();
    let url = redis.url();
    let args = ["--storage", "redis", "--redis-url", &url, "--config", &file];
    let a = ServeProcess::start("A", &args, &dir.path().join("a.log")).await;
    let b = ServeProcess::start("B", &args, &dir.path().join("b.log")).await;
    (a, b, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_of_5_is_never_exceeded_by_20_stream_workers_on_two_replicas() {
    let redis = RedisServer::start();
    let (a, b, _dir) = replicas(&redis, "[queues.selenium]\nmax_in_flight = 5\n").await;
    enqueue_many(&mut a.producer(), "selenium", "", 150).await;
    let seen = drain(
        &[a.worker(), b.worker()],
        &["selenium"],
        20,
        1,
        150,
        Duration::from_millis(50),
        Duration::from_secs(60),
    )
    .await;
    println!(
        "two replicas on one Redis, 20 stream workers, max_in_flight = 5: most held at once = {}",
        seen.max_held
    );
    assert_eq!(seen.done, 150);
    assert!(seen.max_held <= 5, "cap exceeded: {} held at once", seen.max_held);
    assert_eq!(seen.max_held, 5, "the cap was reached (the test had teeth)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_of_50_per_second_is_shared_by_two_replicas() {
    let redis = RedisServer::start();
    let (a, b, _dir) = replicas(&redis, "[queues.paced]\nrate_limit = \"50/s\"\nrate_burst = 10\n").await;
    enqueue_many(&mut a.producer(), "paced", "", 400).await;
    let start = Instant::now();
    let mut workers = Vec::new();
    for client in [a.worker(), b.worker(), a.worker(), b.worker()] {
        workers.push(open(&client, subscribe(&["paced"], 100)).await);
    }
    let window = Duration::from_secs(4);
    let counts = futures_util::future::join_all(workers.iter_mut().map(|w| async move {
        let mut n = 0usize;
        loop {
            let left = window.saturating_sub(start.elapsed());
            match tokio::time::timeout(left, w.next()).await {
                Ok(Resp::Task(t)) => {
                    n += 1;
                    w.ack(&t).await;
                }
                Ok(_) => {}
                Err(_) => return n,
            }
        }
    }))
    .await;
    let delivered: usize = counts.iter().sum();
    println!(
        "two replicas, rate 50/s burst 10 over 4 s: {delivered} deliveries {counts:?} (most allowed 210)"
    );
    assert!(delivered <= 50 * 4 + 10, "{delivered}");
    assert!(delivered >= 168, "at least 80% of 210 while work waits: {delivered}");
    assert!(counts[0] + counts[2] > 0 && counts[1] + counts[3] > 0, "both replicas delivered: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_shared_by_two_queues_caps_their_sum_across_two_replicas() {
    let redis = RedisServer::start();
    let config = "[semaphores.selenium]\nlimit = 3\n[queues.checkout]\nsemaphores = [\"selenium\"]\n\
                  [queues.search]\nsemaphores = [\"selenium\"]\n";
    let (a, b, _dir) = replicas(&redis, config).await;
    enqueue_many(&mut a.producer(), "checkout", "", 60).await;
    enqueue_many(&mut b.producer(), "search", "", 60).await;
    let seen = drain(
        &[a.worker(), b.worker()],
        &["checkout", "search"],
        20,
        1,
        120,
        Duration::from_millis(50),
        Duration::from_secs(60),
    )
    .await;
    println!(
        "two replicas, semaphore limit 3 over two queues, 20 workers: most held at once = {}",
        seen.max_held
    );
    assert_eq!(seen.done, 120);
    assert!(seen.max_held <= 3, "semaphore exceeded: {} held at once", seen.max_held);
    assert_eq!(seen.max_held, 3, "the limit was reached (the test had teeth)");
}

/// Per-key cap 1 and one worker: key B's tasks, enqueued after 1,000 of key
/// A's on one replica, go every other delivery on the other (round-robin,
/// not FIFO with saturated keys passed over: B sits past the lease's scan
/// window of the FIFO list).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_b_is_delivered_within_the_first_few_after_1000_of_key_a_across_two_replicas() {
    let redis = RedisServer::start();
    let (a, b, _dir) = replicas(&redis, "[queues.tenants]\nper_key_max_in_flight = 1\n").await;
    enqueue_many(&mut a.producer(), "tenants", "a", 1000).await;
    enqueue_many(&mut a.producer(), "tenants", "b", 10).await;
    let mut w = open(&b.worker(), subscribe(&["tenants"], 1)).await;
    let mut keys = String::new();
    while keys.len() < 6 {
        if let Resp::Task(t) = w.next().await {
            keys.push_str(&task_of(&t).concurrency_key);
            w.ack(&t).await;
        }
    }
    assert_eq!(keys, "ababab", "keys take turns");
}
