//! Graceful shutdown of the real binary (SIGTERM): readiness turns
//! NOT_SERVING first, streams are told to drain, and a stream that never
//! closes is ended when `shutdown_grace` runs out, its task released at once.
//!
//! The grace period is real time by nature (a timeout in the broker process);
//! the tests set it to 1-2 s and bound everything else by signals.
#![cfg(unix)]

#[path = "common/serve.rs"]
mod serve;
mod stream_client;

use std::path::Path;
use std::time::{Duration, Instant};

use serve::ServeProcess;
use stream_client::{id, open, subscribe, task_of};
use taskbroker::pb;
use taskbroker::pb::stream_response::Msg as Resp;
use tonic_health::pb::health_check_response::ServingStatus;

/// How long, past the grace, a broker may take to release what streams hold
/// and exit (it gives streams 2 s, then stops them).
const AFTER_GRACE: Duration = Duration::from_secs(10);

/// A config file with `shutdown_grace = GRACE` in `dir`; its path as text.
fn grace_config(dir: &Path, grace: &str) -> String {
    let file = dir.join("taskbroker.toml");
    std::fs::write(&file, format!("shutdown_grace = \"{grace}\"\n")).unwrap();
    file.to_str().unwrap().to_owned()
}

fn state(t: &pb::Task) -> pb::TaskState {
    pb::TaskState::try_from(t.state).unwrap_or(pb::TaskState::Unspecified)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_not_serving_while_streams_drain() {
    let dir = tempfile::tempdir().unwrap();
    let config = grace_config(dir.path(), "2s");
    let args = ["--storage", "memory", "--config", &config];
    let mut broker = ServeProcess::start("broker", &args, &dir.path().join("broker.log")).await;
    let mut health = broker.watch_health().await;
    broker.health_becomes(&mut health, ServingStatus::Serving, Duration::from_secs(5)).await;
    // A stream holding a task keeps the broker in its drain.
    let mut stream = open(&broker.worker(), subscribe(&["held"], 1)).await;
    let enqueue = pb::EnqueueRequest { queue: "held".into(), kind: "k".into(), ..Default::default() };
    broker.producer().enqueue(enqueue).await.unwrap();
    let held = stream.task().await;

    broker.sigterm();
    broker.health_becomes(&mut health, ServingStatus::NotServing, Duration::from_secs(5)).await;
    match stream.next().await {
        Resp::Draining(_) => {}
        other => panic!("expected draining after NOT_SERVING, got {other:?}"),
    }
    // The drain lets the stream settle what it holds, then the broker exits.
    stream.ack(&held).await;
    stream.settled_ok(id(&held), pb::SettleOperation::Ack).await;
    stream.close_requests();
    broker.exits_cleanly(Duration::from_secs(2) + AFTER_GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_closes_is_ended_when_the_grace_runs_out_and_its_task_released() {
    const GRACE: Duration = Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let config = grace_config(dir.path(), "1s");
    let data = dir.path().join("data");
    let args = ["--storage", "embedded", "--data-dir", data.to_str().unwrap(), "--config", &config];
    let log = dir.path().join("broker.log");
    let mut broker = ServeProcess::start("broker", &args, &log).await;
    // A stream holds a task under an hour-long lease and ignores the drain.
    let mut sub = subscribe(&["stuck"], 1);
    sub.lease_duration = Some(prost_types::Duration { seconds: 3600, nanos: 0 });
    let mut stream = open(&broker.worker(), sub).await;
    let enqueue = pb::EnqueueRequest { queue: "stuck".into(), kind: "k".into(), ..Default::default() };
    let task = broker.producer().enqueue(enqueue).await.unwrap().into_inner().task.unwrap();
    assert_eq!(id(&stream.task().await), task.id);

    let stopping = Instant::now();
    broker.sigterm();
    match stream.next().await {
        Resp::Draining(_) => {}
        other => panic!("expected draining, got {other:?}"),
    }
    // The broker ends the stream once the grace is over (the client keeps
    // its side open), and exits.
    let ended = stream.ends_within(GRACE + AFTER_GRACE).await;
    let ended_after = stopping.elapsed();
    assert!(
        ended_after >= GRACE,
        "the stream was ended {ended_after:?} after SIGTERM, before the grace was over"
    );
    broker.exits_cleanly(AFTER_GRACE).await;
    eprintln!(
        "stream ended ({ended:?}) {ended_after:?} after SIGTERM; exited {:?} after",
        stopping.elapsed()
    );
    drop(broker);

    // The task went back when its stream was ended (attempt counted), not
    // after its hour-long lease.
    let broker = ServeProcess::start("restarted", &args, &log).await;
    let t = broker
        .producer()
        .get_task(pb::GetTaskRequest { task_id: task.id.clone(), include_dependencies: false })
        .await;
    let t = t.unwrap().into_inner().task.unwrap();
    assert_eq!((state(&t), t.attempt), (pb::TaskState::Ready, 1), "the held task after the shutdown");
    let mut again = open(&broker.worker(), subscribe(&["stuck"], 1)).await;
    let redelivered = again.task().await;
    assert_eq!((task_of(&redelivered).id.as_str(), task_of(&redelivered).attempt), (task.id.as_str(), 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_worker_acks_during_the_grace_and_a_lease_then_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = grace_config(dir.path(), "30s");
    let data = dir.path().join("data");
    let args = ["--storage", "embedded", "--data-dir", data.to_str().unwrap(), "--config", &config];
    let log = dir.path().join("broker.log");
    let mut broker = ServeProcess::start("broker", &args, &log).await;
    let mut health = broker.watch_health().await;
    let mut producer = broker.producer();
    let mut worker = broker.worker();
    let mut enqueue = async |kind: &str| {
        let req = pb::EnqueueRequest { queue: "unary".into(), kind: kind.into(), ..Default::default() };
        producer.enqueue(req).await.unwrap().into_inner().task.unwrap()
    };
    let held = enqueue("held").await;
    let waiting = enqueue("waiting").await;
    let lease = |wait: i64| pb::LeaseRequest {
        queues: vec!["unary".into()],
        max_tasks: 1,
        lease_duration: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
        wait: Some(prost_types::Duration { seconds: wait, nanos: 0 }),
        worker_id: "unary-worker".into(),
    };
    let leased = worker.lease(lease(0)).await.unwrap().into_inner().tasks;
    assert_eq!(leased.iter().map(|t| task_of(t).id.as_str()).collect::<Vec<_>>(), [held.id.as_str()]);

    let stopping = Instant::now();
    broker.sigterm();
    broker.health_becomes(&mut health, ServingStatus::NotServing, Duration::from_secs(5)).await;
    // Draining: a Lease answers at once with nothing, though a task is ready
    // and it would wait 10 s for one.
    let asked = Instant::now();
    let none = worker.lease(lease(10)).await.expect("Lease during the grace").into_inner().tasks;
    assert!(none.is_empty(), "a Lease during the grace leased {none:?}");
    assert!(asked.elapsed() < Duration::from_secs(2), "the Lease waited {:?}", asked.elapsed());
    // The worker settles what it holds over its open connection.
    let ack = pb::AckRequest {
        task_id: held.id.clone(),
        lease_id: leased[0].lease_id.clone(),
        result: b"ok".to_vec(),
    };
    worker.ack(ack).await.expect("Ack during the grace");
    // Nothing held, no stream open: the broker exits without using its 30 s grace.
    broker.exits_cleanly(Duration::from_secs(10)).await;
    eprintln!("exited {:?} after SIGTERM (grace 30s)", stopping.elapsed());
    drop(broker);

    // The acked task stays acked (one delivery); the other was never leased.
    let broker = ServeProcess::start("restarted", &args, &log).await;
    let get = async |id: &str| {
        let req = pb::GetTaskRequest { task_id: id.into(), include_dependencies: false };
        broker.producer().get_task(req).await.unwrap().into_inner().task.unwrap()
    };
    let t = get(&held.id).await;
    assert_eq!((state(&t), t.attempt, t.result.as_slice()), (pb::TaskState::Succeeded, 1, &b"ok"[..]));
    let t = get(&waiting.id).await;
    assert_eq!((state(&t), t.attempt), (pb::TaskState::Ready, 0), "no lease during the grace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_unary_workers_still_hold_when_the_grace_runs_out_goes_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = grace_config(dir.path(), "1s");
    let data = dir.path().join("data");
    let args = ["--storage", "embedded", "--data-dir", data.to_str().unwrap(), "--config", &config];
    let log = dir.path().join("broker.log");
    let mut broker = ServeProcess::start("broker", &args, &log).await;
    let tasks = (0..200)
        .map(|i| pb::EnqueueRequest { queue: "kept".into(), kind: format!("k{i}"), ..Default::default() })
        .collect();
    broker.producer().enqueue_batch(pb::EnqueueBatchRequest { tasks }).await.unwrap();
    let req = pb::LeaseRequest {
        queues: vec!["kept".into()],
        max_tasks: 200,
        lease_duration: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
        ..Default::default()
    };
    let leased = broker.worker().lease(req).await.unwrap().into_inner().tasks;
    assert_eq!(leased.len(), 200);
    let stopping = Instant::now();
    broker.sigterm();
    broker.exits_cleanly(Duration::from_secs(1) + AFTER_GRACE).await;
    eprintln!("200 held tasks: exited {:?} after SIGTERM (grace 1s)", stopping.elapsed());
    drop(broker);
    // All 200 went back when the grace ran out, not after their hour-long lease.
    let broker = ServeProcess::start("restarted", &args, &log).await;
    for t in &leased {
        let req = pb::GetTaskRequest { task_id: task_of(t).id.clone(), include_dependencies: false };
        let t = broker.producer().get_task(req).await.unwrap().into_inner().task.unwrap();
        assert_eq!((state(&t), t.attempt), (pb::TaskState::Ready, 1), "{}", t.kind);
    }
}
