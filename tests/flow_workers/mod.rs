//! Stream workers for the flow-control tests: each holds what it is pushed
//! for a moment of "work", then acks; together they report the most tasks
//! held at once (a lower bound of what the broker had LEASED at that moment:
//! a task counts from its arrival until its ack is sent).
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use taskbroker::pb;
use taskbroker::pb::stream_response::Msg as Resp;
use taskbroker::pb::worker_service_client::WorkerServiceClient;
use tokio::time::timeout;
use tonic::transport::Channel;

use crate::stream_client::{open, subscribe};

/// What a run of workers saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Most tasks held at once, across every worker.
    pub max_held: usize,
    /// Distinct tasks acked (a task given back when a stream closes and
    /// delivered again counts once).
    pub done: usize,
}

/// Runs `workers` stream workers (round-robin over `clients`), each with a
/// window of `window`, on `queues` until `total` tasks are acked; each task
/// is held for `work`. Panics if that takes longer than `within`.
pub async fn drain(
    clients: &[WorkerServiceClient<Channel>],
    queues: &[&str],
    workers: usize,
    window: u32,
    total: usize,
    work: Duration,
    within: Duration,
) -> Seen {
    let held = Arc::new(AtomicUsize::new(0));
    let max_held = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(Mutex::new(HashSet::new()));
    let deadline = Instant::now() + within;
    let mut tasks = Vec::new();
    for i in 0..workers {
        let client = clients[i % clients.len()].clone();
        let sub = subscribe(queues, window);
        let (held, max_held, done, ids) = (held.clone(), max_held.clone(), done.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut w = open(&client, sub).await;
            while done.load(Ordering::SeqCst) < total {
                let left = deadline.saturating_duration_since(Instant::now());
                let msg = match timeout(left.min(Duration::from_millis(200)), w.next_within(left)).await {
                    Ok(m) => m,
                    Err(_) => continue,
                };
                if let Resp::Task(t) = msg {
                    let now_held = held.fetch_add(1, Ordering::SeqCst) + 1;
                    max_held.fetch_max(now_held, Ordering::SeqCst);
                    tokio::time::sleep(work).await;
                    held.fetch_sub(1, Ordering::SeqCst);
                    w.ack(&t).await;
                    let mut ids = ids.lock().unwrap();
                    ids.insert(t.task.as_ref().expect("a task").id.clone());
                    done.store(ids.len(), Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("a worker panicked");
    }
    Seen { max_held: max_held.load(Ordering::SeqCst), done: done.load(Ordering::SeqCst) }
}

/// `n` tasks for `queue` in one batch.
pub async fn enqueue_many(
    producer: &mut pb::producer_service_client::ProducerServiceClient<Channel>,
    queue: &str,
    key: &str,
    n: usize,
) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let tasks = chunk
            .iter()
            .map(|_| pb::EnqueueRequest {
                queue: queue.into(),
                kind: "flow".into(),
                concurrency_key: key.into(),
                ..Default::default()
            })
            .collect();
        producer.enqueue_batch(pb::EnqueueBatchRequest { tasks }).await.expect("batch enqueued");
    }
}
