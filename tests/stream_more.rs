//! More streaming through real gRPC over loopback: weighted shares, many
//! streams on one queue, WatchTask, EnqueueStream, the drain on shutdown, the
//! worker's own drain, and two races around lost and released leases.

mod common;
mod stream_client;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{secs, state, TestServer};
use stream_client::{code, id, open, subscribe, task_of, Worker, INVALID_ARGUMENT, WAIT};
use taskbroker::config::StorageKind;
use taskbroker::pb;
use taskbroker::pb::stream_request::Msg;
use taskbroker::pb::stream_response::Msg as Resp;
use taskbroker::pb::{SettleOperation, TaskState};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;

/// Enqueues `n` tasks on `queue` in batches; returns their ids.
async fn fill(s: &mut TestServer, queue: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < n {
        let tasks = (ids.len()..n.min(ids.len() + 1000))
            .map(|i| pb::EnqueueRequest { queue: queue.into(), kind: format!("k{i}"), ..Default::default() })
            .collect();
        let results = s.producer.enqueue_batch(pb::EnqueueBatchRequest { tasks }).await.unwrap().into_inner();
        for r in results.results {
            let Some(pb::enqueue_result::Result::Task(t)) = r.result else { panic!("item failed: {r:?}") };
            ids.push(t.id);
        }
    }
    ids
}

#[tokio::test]
async fn weighted_stream_shares_deliveries_by_weight_and_starves_no_queue() {
    let mut s = common::start().await;
    let a: HashSet<_> = fill(&mut s, "wa", 2000).await.into_iter().collect();
    let b: HashSet<_> = fill(&mut s, "wb", 2000).await.into_iter().collect();
    let sub = pb::Subscribe {
        mode: pb::SubscribeMode::Weighted as i32,
        weights: [("wa".to_string(), 3), ("wb".to_string(), 1)].into(),
        ..subscribe(&["wa", "wb"], 8)
    };
    let mut w = open(&s.worker, sub).await;
    let mut order = Vec::new(); // true: from `wa`
    timeout(Duration::from_secs(60), async {
        while order.len() < 2000 {
            match w.next().await {
                Resp::Task(t) => {
                    let from_a = t.task.as_ref().unwrap().queue == "wa";
                    assert!(if from_a { a.contains(id(&t)) } else { b.contains(id(&t)) });
                    order.push(from_a);
                    w.ack(&t).await; // ack as it goes, without waiting for `settled`
                }
                Resp::Settled(st) => assert_eq!(code(&st), 0, "{st:?}"),
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("2000 deliveries within 60s");
    let from_a = order.iter().filter(|x| **x).count();
    let share = from_a as f64 / order.len() as f64;
    assert!((0.675..=0.825).contains(&share), "wa got {from_a} of {} ({share:.3})", order.len());
    // Not starved anywhere along the way: both queues in every run of 100.
    for (i, chunk) in order.chunks(100).enumerate() {
        let a_here = chunk.iter().filter(|x| **x).count();
        assert!(a_here > 0 && a_here < chunk.len(), "deliveries {}..: wa got {a_here} of 100", i * 100);
    }
    drop(w);
    s.shutdown().await;
}

/// What a stream of the many-streams test reports.
enum Seen {
    Delivered(usize, String),
    Settled(usize, String),
}

/// Acks every task it is pushed, reporting deliveries and confirmations.
async fn acking_worker(n: usize, mut w: Worker, report: mpsc::UnboundedSender<Seen>) {
    loop {
        match w.next_within(Duration::from_secs(60)).await {
            Resp::Task(t) => {
                if report.send(Seen::Delivered(n, id(&t).to_owned())).is_err() {
                    return;
                }
                w.ack(&t).await;
            }
            Resp::Settled(st) => {
                assert_eq!(code(&st), 0, "{st:?}");
                if report.send(Seen::Settled(n, st.task_id)).is_err() {
                    return;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_on_one_queue_share_its_tasks_and_each_is_delivered_once() {
    let mut s = common::start().await;
    let (report, mut seen) = mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for n in 0..4 {
        let w = open(&s.worker, subscribe(&["many"], 4)).await;
        workers.push(tokio::spawn(acking_worker(n, w, report.clone())));
    }
    let enqueued: HashSet<_> = fill(&mut s, "many", 500).await.into_iter().collect();

    let mut holder: HashMap<String, usize> = HashMap::new();
    let mut delivered: Vec<String> = Vec::new();
    let mut per_stream = [0usize; 4];
    let mut settled = 0;
    timeout(Duration::from_secs(60), async {
        while settled < 500 {
            match seen.recv().await.unwrap() {
                Seen::Delivered(n, task) => {
                    if let Some(other) = holder.insert(task.clone(), n) {
                        panic!("task {task} pushed to stream {n} while stream {other} holds it");
                    }
                    per_stream[n] += 1;
                    delivered.push(task);
                }
                Seen::Settled(n, task) => {
                    assert_eq!(holder.remove(&task), Some(n), "settled {task} on stream {n}");
                    settled += 1;
                }
            }
        }
    })
    .await
    .expect("500 tasks settled within 60s");
    // Nothing more is delivered.
    if let Ok(Some(Seen::Delivered(n, task))) = timeout(stream_client::QUIET, seen.recv()).await {
        panic!("task {task} delivered again to stream {n}");
    }
    assert_eq!(delivered.len(), 500, "no task delivered twice");
    assert_eq!(delivered.iter().cloned().collect::<HashSet<_>>(), enqueued);
    assert!(per_stream.iter().all(|&n| n > 0), "every stream got a share: {per_stream:?}");
    for w in workers {
        w.abort();
        assert!(w.await.unwrap_err().is_cancelled());
    }
    s.shutdown().await;
}

/// The next WatchTask message's task.
async fn watched(stream: &mut tonic::Streaming<pb::WatchTaskResponse>) -> pb::Task {
    timeout(WAIT, stream.message())
        .await
        .expect("watch message")
        .unwrap()
        .expect("watch still open")
        .task
        .unwrap()
}

#[tokio::test]
async fn watch_task_sees_ready_then_leased_then_succeeded_with_the_result_then_ends() {
    let mut s = common::start().await;
    let t = s.enqueue("watched", "k").await;
    let mut stream =
        s.producer.watch_task(pb::WatchTaskRequest { task_id: t.id.clone() }).await.unwrap().into_inner();
    let ready = watched(&mut stream).await;
    assert_eq!((ready.id.as_str(), state(&ready)), (t.id.as_str(), TaskState::Ready));

    let leased = s.lease(&["watched"], 1).await.remove(0);
    let seen = watched(&mut stream).await;
    assert_eq!((state(&seen), seen.attempt), (TaskState::Leased, 1));

    s.worker
        .ack(pb::AckRequest { task_id: t.id.clone(), lease_id: leased.lease_id, result: b"42".to_vec() })
        .await
        .unwrap();
    let done = watched(&mut stream).await;
    assert_eq!((state(&done), done.result.as_slice()), (TaskState::Succeeded, &b"42"[..]));
    watch_ends(&mut stream, "SUCCEEDED").await;
    s.shutdown().await;
}

/// Reads the end of a WatchTask stream: no more messages.
async fn watch_ends(stream: &mut tonic::Streaming<pb::WatchTaskResponse>, after: &str) {
    let end = timeout(WAIT, stream.message())
        .await
        .unwrap_or_else(|_| panic!("the watch did not end after {after}"));
    assert!(matches!(end, Ok(None)), "expected the end of the stream after {after}, got {end:?}");
}

#[tokio::test]
async fn watch_task_ends_after_dead_and_after_canceled() {
    let mut s = common::start().await;
    // DEAD: a nack with no_retry, with its error.
    let t = s.enqueue("watched", "k").await;
    let mut dying =
        s.producer.watch_task(pb::WatchTaskRequest { task_id: t.id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&watched(&mut dying).await), TaskState::Ready);
    let leased = s.lease(&["watched"], 1).await.remove(0);
    assert_eq!(state(&watched(&mut dying).await), TaskState::Leased);
    let nack = pb::NackRequest {
        task_id: t.id.clone(),
        lease_id: leased.lease_id,
        error: "gave up".into(),
        no_retry: true,
        ..Default::default()
    };
    s.worker.nack(nack).await.unwrap();
    let dead = watched(&mut dying).await;
    assert_eq!((state(&dead), dead.last_error.as_str()), (TaskState::Dead, "gave up"));
    watch_ends(&mut dying, "DEAD").await;

    // CANCELED: a cancel of a waiting task.
    let t = s.enqueue("watched", "k").await;
    let mut canceled =
        s.producer.watch_task(pb::WatchTaskRequest { task_id: t.id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&watched(&mut canceled).await), TaskState::Ready);
    s.producer.cancel_task(pb::CancelTaskRequest { task_id: t.id.clone() }).await.unwrap();
    assert_eq!(state(&watched(&mut canceled).await), TaskState::Canceled);
    watch_ends(&mut canceled, "CANCELED").await;

    // A watch of a task that already finished: its state, then the end.
    let mut late = s.producer.watch_task(pb::WatchTaskRequest { task_id: t.id }).await.unwrap().into_inner();
    assert_eq!(state(&watched(&mut late).await), TaskState::Canceled);
    watch_ends(&mut late, "CANCELED, watched late").await;
    s.shutdown().await;
}

#[tokio::test]
async fn watch_task_of_an_unknown_id_is_not_found() {
    let mut s = common::start().await;
    let unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let status = match s.producer.watch_task(pb::WatchTaskRequest { task_id: unknown.into() }).await {
        Err(status) => status,
        Ok(r) => timeout(WAIT, r.into_inner().message()).await.unwrap().expect_err("no task to watch"),
    };
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_eq!(common::reason(&status), "TASK_NOT_FOUND");
    s.shutdown().await;
}

#[tokio::test]
async fn enqueue_stream_answers_1000_pipelined_requests_in_order_and_a_bad_item_alone_fails() {
    let mut s = common::start().await;
    const BAD: usize = 437;
    let request = |i: usize| pb::EnqueueRequest {
        queue: "piped".into(),
        kind: if i == BAD { String::new() } else { format!("k{i}") },
        payload: i.to_string().into_bytes(),
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel(64);
    let mut responses = s.producer.enqueue_stream(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let sender = tokio::spawn({
        let tx = tx.clone();
        async move {
            for i in 0..1000 {
                tx.send(request(i)).await.unwrap();
            }
        }
    });
    let mut next = async || timeout(WAIT, responses.message()).await.expect("a response").unwrap();
    let mut good = Vec::new();
    for i in 0..1000 {
        let r = next().await.expect("stream still open");
        match r.result {
            Some(pb::enqueue_stream_response::Result::Task(t)) if i != BAD => {
                // In order; the payload is not echoed (GetTask returns it, below).
                assert_eq!((t.kind.as_str(), t.payload.as_slice()), (format!("k{i}").as_str(), &b""[..]));
                good.push(t);
            }
            Some(pb::enqueue_stream_response::Result::Error(e)) if i == BAD => {
                assert_eq!(e.code, INVALID_ARGUMENT, "{e:?}");
            }
            other => panic!("response {i}: {other:?}"),
        }
    }
    timeout(WAIT, sender).await.unwrap().unwrap();
    // The stream goes on after the bad item, then ends when the client does.
    tx.send(request(1000)).await.unwrap();
    let last = next().await.expect("stream still open");
    assert!(
        matches!(last.result, Some(pb::enqueue_stream_response::Result::Task(ref t)) if t.kind == "k1000")
    );
    drop(tx);
    assert!(next().await.is_none(), "stream ends with the client's");

    assert_eq!(good.len(), 999);
    for t in &good {
        let got = s.get(&t.id).await;
        assert_eq!((got.kind.as_str(), state(&got)), (t.kind.as_str(), TaskState::Ready));
        let i: usize = t.kind[1..].parse().unwrap();
        assert_eq!(got.payload, request(i).payload, "{}", t.kind);
    }
    s.shutdown().await;
}

#[tokio::test]
async fn shutdown_drains_streams_settles_late_acks_and_loses_no_task() {
    let mut s =
        common::start_with(common::Options { storage: StorageKind::Embedded, ..Default::default() }).await;
    let ids = fill(&mut s, "drain", 5).await;
    let broker = s.broker.clone();
    let mut w = open(&s.worker, subscribe(&["drain"], 3)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(w.task().await);
    }
    let shutdown = tokio::spawn(s.shutdown());
    match w.next().await {
        Resp::Draining(_) => {}
        other => panic!("expected draining, got {other:?}"),
    }
    // Acks after draining still settle; no new task is pushed into the freed room.
    for t in &held[..2] {
        w.ack(t).await;
        w.settled_ok(id(t), SettleOperation::Ack).await;
    }
    w.assert_quiet().await;
    drop(w);
    timeout(Duration::from_secs(3), shutdown)
        .await
        .expect("shutdown completes once the stream ends, well before the 5s grace")
        .unwrap();

    use taskbroker::core::task::TaskState as Core;
    let acked: HashSet<_> = held[..2].iter().map(|t| id(t).to_owned()).collect();
    for task_id in &ids {
        let t = broker.get(task_id.parse().unwrap()).await.unwrap();
        let want = if acked.contains(task_id) { Core::Succeeded } else { Core::Ready };
        assert_eq!(t.state, want, "task {task_id}");
    }
}

#[tokio::test]
async fn worker_drain_stops_pushes_while_its_settlements_still_count() {
    let mut s = common::start().await;
    let ids = fill(&mut s, "wdrain", 4).await;
    let mut w = open(&s.worker, subscribe(&["wdrain"], 2)).await;
    let held = [w.task().await, w.task().await];
    w.send(Msg::Drain(pb::Drain {})).await;
    for t in &held {
        w.ack(t).await;
        w.settled_ok(id(t), SettleOperation::Ack).await;
    }
    w.assert_quiet().await; // room in the window, but no new task
    drop(w);
    for (n, task_id) in ids.iter().enumerate() {
        let want = if n < 2 { TaskState::Succeeded } else { TaskState::Ready };
        assert_eq!(state(&s.get(task_id).await), want);
    }
    s.shutdown().await;
}

#[tokio::test]

async fn expired_lease_gets_lease_lost_even_when_its_task_is_pushed_again_to_the_same_stream() {
    let mut s = common::start_manual("").await;
    let sub = pb::Subscribe { lease_duration: Some(secs(10)), ..subscribe(&["again"], 2) };
    let mut w = open(&s.worker, sub).await;
    // The race is inside the server (queue wake-up vs. lost-lease event); 20 rounds hit it.
    for round in 0..20 {
        let t = s.enqueue("again", "k").await.id;
        let first = w.task().await;
        assert_eq!(id(&first), t);
        s.advance(Duration::from_secs(11)).await;
        let (mut lost, mut again) = (None, None);
        while lost.is_none() || again.is_none() {
            match w.next_or_quiet().await {
                None => break,
                Some(Resp::LeaseLost(l)) => lost = Some(l),
                Some(Resp::Task(t2)) => again = Some(t2),
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
        let again = again.expect("the expired task is pushed again (the window has room)");
        assert_eq!((id(&again), task_of(&again).attempt), (t.as_str(), 2));
        let lost = lost.unwrap_or_else(|| {
            panic!(
                "round {round}: task pushed again under lease {} but no lease_lost for lease {}",
                again.lease_id, first.lease_id
            )
        });
        assert_eq!(
            (lost.task_id, lost.lease_id, lost.reason.as_str()),
            (t.clone(), first.lease_id, "expired")
        );
        w.ack(&again).await;
        w.settled_ok(&t, SettleOperation::Ack).await;
    }
    drop(w);
    s.shutdown().await;
}

#[tokio::test]

async fn stream_closed_while_its_first_batch_is_leased_releases_the_whole_batch() {
    let mut s =
        common::start_with(common::Options { storage: StorageKind::Embedded, ..Default::default() }).await;
    let enqueued: HashSet<_> = fill(&mut s, "gone", 100).await.into_iter().collect();
    // Close at once: the session is still committing the lease of all 100.
    drop(open(&s.worker, subscribe(&["gone"], 100)).await);
    let mut back = HashSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while back.len() < enqueued.len() {
        let call = s.worker.lease(pb::LeaseRequest {
            queues: vec!["gone".into()],
            max_tasks: 100,
            wait: Some(secs(1)),
            ..Default::default()
        });
        let Ok(r) = tokio::time::timeout_at(deadline, call).await else { break };
        back.extend(r.unwrap().into_inner().tasks.iter().map(|t| id(t).to_owned()));
    }
    assert_eq!(back.len(), enqueued.len(), "tasks leasable again within {WAIT:?} of the stream closing");
    s.shutdown().await;
}
