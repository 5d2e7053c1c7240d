//! Flow control through a real server (memory and embedded stores): caps
//! hold under concurrent stream workers, permits come back when a stream
//! closes or a lease expires, a semaphore caps the sum of its queues, keys
//! take turns, a rate limit paces deliveries, and nothing saturated blocks
//! what can go. (Two replicas over one Redis: `tests/redis_flow.rs`.)

mod common;
mod flow_workers;
mod stream_client;

use std::time::{Duration, Instant};

use common::{bad_fields, secs, start_with, Options, TestServer};
use flow_workers::{drain, enqueue_many};
use stream_client::{open, subscribe, task_of, Worker, QUIET, WAIT};
use taskbroker::config::StorageKind;
use taskbroker::pb;
use taskbroker::pb::stream_response::Msg as Resp;

async fn server(storage: StorageKind, config: &'static str) -> TestServer {
    start_with(Options { storage, config, ..Options::default() }).await
}

/// The next task pushed to `w` (past settlement answers).
async fn next_task(w: &mut Worker) -> pb::LeasedTask {
    loop {
        if let Resp::Task(t) = w.next().await {
            return t;
        }
    }
}

/// Tasks pushed to `w` until nothing more comes for [`QUIET`].
async fn pushed(w: &mut Worker) -> Vec<pb::LeasedTask> {
    let mut out = Vec::new();
    while let Ok(msg) = tokio::time::timeout(QUIET, w.next()).await {
        if let Resp::Task(t) = msg {
            out.push(t);
        }
    }
    out
}

async fn cap_of_5_holds_under_20_stream_workers(storage: StorageKind) {
    let mut s = server(storage, "[queues.selenium]\nmax_in_flight = 5").await;
    enqueue_many(&mut s.producer, "selenium", "", 150).await;
    let seen = drain(
        &[s.worker.clone()],
        &["selenium"],
        20,
        1,
        150,
        Duration::from_millis(50),
        Duration::from_secs(60),
    )
    .await;
    println!("{storage:?}: 20 stream workers, max_in_flight = 5: most held at once = {}", seen.max_held);
    assert_eq!(seen.done, 150);
    assert!(seen.max_held <= 5, "cap exceeded: {} held at once", seen.max_held);
    assert_eq!(seen.max_held, 5, "the cap was reached (the test had teeth)");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_of_5_is_never_exceeded_by_20_stream_workers_on_the_embedded_store() {
    cap_of_5_holds_under_20_stream_workers(StorageKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_of_5_is_never_exceeded_by_20_stream_workers_on_the_memory_store() {
    cap_of_5_holds_under_20_stream_workers(StorageKind::Memory).await;
}

#[tokio::test]
async fn a_killed_stream_gives_its_5_permits_back_at_once() {
    let mut s = server(StorageKind::Embedded, "[queues.selenium]\nmax_in_flight = 5").await;
    enqueue_many(&mut s.producer, "selenium", "", 10).await;
    let mut holder = open(&s.worker, subscribe(&["selenium"], 10)).await;
    assert_eq!(pushed(&mut holder).await.len(), 5, "the cap");
    let mut waiting = open(&s.worker, subscribe(&["selenium"], 10)).await;
    assert!(pushed(&mut waiting).await.is_empty(), "saturated: the second worker waits");
    let killed = Instant::now();
    drop(holder);
    for _ in 0..5 {
        next_task(&mut waiting).await;
    }
    println!("5 permits back {:?} after the stream closed", killed.elapsed());
    assert!(pushed(&mut waiting).await.is_empty(), "and no more than 5");
    s.shutdown().await;
}

#[tokio::test]
async fn unary_leases_give_their_permits_back_when_they_expire_and_wake_a_long_poll() {
    let mut s = start_with(Options {
        config: "[queues.selenium]\nmax_in_flight = 5\nlease_duration = \"10s\"",
        manual_clock: true,
        ..Options::default()
    })
    .await;
    enqueue_many(&mut s.producer, "selenium", "", 10).await;
    assert_eq!(s.lease(&["selenium"], 10).await.len(), 5);
    assert!(s.lease(&["selenium"], 10).await.is_empty(), "the killed worker holds all 5 permits");
    let mut worker = s.worker.clone();
    let poll = tokio::spawn(async move {
        let req = pb::LeaseRequest {
            queues: vec!["selenium".into()],
            max_tasks: 10,
            wait: Some(secs(30)),
            ..Default::default()
        };
        worker.lease(req).await.unwrap().into_inner().tasks
    });
    tokio::task::yield_now().await;
    s.advance(Duration::from_secs(10)).await;
    let got = tokio::time::timeout(WAIT, poll).await.expect("the long-poll was woken").unwrap();
    assert_eq!(got.len(), 5, "the expired leases' permits came back");
    s.shutdown().await;
}

#[tokio::test]
async fn a_semaphore_shared_by_two_queues_caps_their_sum() {
    let config = r#"
        [semaphores.selenium]
        limit = 3
        [queues.checkout]
        semaphores = ["selenium"]
        [queues.search]
        semaphores = ["selenium"]
    "#;
    let mut s = server(StorageKind::Embedded, config).await;
    enqueue_many(&mut s.producer, "checkout", "", 10).await;
    enqueue_many(&mut s.producer, "search", "", 10).await;
    let held = s.lease(&["checkout", "search"], 10).await;
    assert_eq!(held.len(), 3, "a unary worker takes all 3 permits");
    assert_eq!(task_of(&held[0]).semaphores, ["selenium"]);
    let mut a = open(&s.worker, subscribe(&["checkout"], 10)).await;
    let mut b = open(&s.worker, subscribe(&["search"], 10)).await;
    let (got_a, got_b) = tokio::join!(pushed(&mut a), pushed(&mut b));
    assert_eq!(got_a.len() + got_b.len(), 0, "no permit left for either queue");
    s.ack(&held[0]).await.unwrap();
    s.ack(&held[1]).await.unwrap();
    let (more_a, more_b) = tokio::join!(pushed(&mut a), pushed(&mut b));
    assert_eq!(more_a.len() + more_b.len(), 2, "the two permits that came back woke the waiting streams");
    s.shutdown().await;
}

#[tokio::test]
async fn key_b_is_delivered_within_the_first_few_after_1000_of_key_a() {
    let mut s = server(StorageKind::Memory, "[queues.tenants]\nper_key_max_in_flight = 1").await;
    enqueue_many(&mut s.producer, "tenants", "a", 1000).await;
    enqueue_many(&mut s.producer, "tenants", "b", 10).await;
    let mut w = open(&s.worker, subscribe(&["tenants"], 1)).await;
    let mut keys = String::new();
    for _ in 0..6 {
        let t = next_task(&mut w).await;
        keys.push_str(&task_of(&t).concurrency_key);
        w.ack(&t).await;
    }
    assert_eq!(keys, "ababab", "keys take turns");
    // A window of 10: never more than 1 per key (one a, one b) at once.
    let mut wide = open(&s.worker, subscribe(&["tenants"], 10)).await;
    drop(w);
    let held = pushed(&mut wide).await;
    let mut held_keys: Vec<_> = held.iter().map(|t| task_of(t).concurrency_key.clone()).collect();
    held_keys.sort();
    assert_eq!(held_keys, ["a", "b"]);
    s.shutdown().await;
}

#[tokio::test]
async fn a_saturated_key_or_queue_does_not_stop_other_keys_or_other_queues() {
    let config = r#"
        [queues.tenants]
        per_key_max_in_flight = 1
        [queues.capped]
        max_in_flight = 1
    "#;
    let mut s = server(StorageKind::Embedded, config).await;
    enqueue_many(&mut s.producer, "tenants", "a", 5).await;
    enqueue_many(&mut s.producer, "tenants", "b", 1).await;
    enqueue_many(&mut s.producer, "capped", "", 5).await;
    enqueue_many(&mut s.producer, "other", "", 3).await;
    let mut w = open(&s.worker, subscribe(&["tenants", "capped", "other"], 50)).await;
    let got = pushed(&mut w).await;
    let count = |q: &str| got.iter().filter(|t| task_of(t).queue == q).count();
    assert_eq!((count("tenants"), count("capped"), count("other")), (2, 1, 3));
    s.shutdown().await;
}

#[tokio::test]
async fn a_rate_limit_of_50_per_second_with_burst_10_paces_deliveries() {
    let mut s = server(StorageKind::Memory, "[queues.paced]\nrate_limit = \"50/s\"\nrate_burst = 10").await;
    enqueue_many(&mut s.producer, "paced", "", 400).await;
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..4 {
        workers.push(open(&s.worker, subscribe(&["paced"], 100)).await);
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
    println!("rate 50/s burst 10 over 4 s: {delivered} deliveries (most allowed 210)");
    assert!(delivered <= 50 * 4 + 10, "{delivered}");
    assert!(delivered >= 168, "at least 80% of 210 while work waits: {delivered}");
    s.shutdown().await;
}

#[tokio::test]
async fn unknown_semaphores_and_long_keys_are_invalid_arguments() {
    let mut s = server(StorageKind::Memory, "[semaphores.selenium]\nlimit = 5").await;
    let req = pb::EnqueueRequest {
        kind: "k".into(),
        semaphores: vec!["selenium".into(), "nope".into()],
        ..Default::default()
    };
    let err = s.producer.enqueue(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(bad_fields(&err), ["semaphores"]);
    let req = pb::EnqueueRequest { kind: "k".into(), concurrency_key: "x".repeat(129), ..Default::default() };
    assert_eq!(bad_fields(&s.producer.enqueue(req).await.unwrap_err()), ["concurrency_key"]);
    let req = pb::EnqueueRequest {
        kind: "k".into(),
        concurrency_key: "tenant-1".into(),
        semaphores: vec!["selenium".into()],
        ..Default::default()
    };
    let t = s.enqueue_req(req).await;
    let got = s.get(&t.id).await;
    assert_eq!(
        (got.concurrency_key.as_str(), got.semaphores.as_slice()),
        ("tenant-1", &["selenium".to_owned()][..])
    );
    s.shutdown().await;
}
