//! `WorkerService.Stream` through real gRPC streams over loopback: credits,
//! wake-ups, strict preference, releases on disconnect, lost leases, settle
//! errors and protocol violations. Weighted shares, many streams, WatchTask,
//! EnqueueStream and the drain on shutdown are in `stream_more.rs`.

mod common;
mod stream_client;

use std::collections::HashSet;
use std::time::Duration;

use common::{secs, state, T0};
use stream_client::{
    code, id, open, open_failure, req, subscribe, task_of, FAILED_PRECONDITION, INVALID_ARGUMENT, WAIT,
};
use taskbroker::pb;
use taskbroker::pb::stream_request::Msg as Req;
use taskbroker::pb::stream_response::Msg as Resp;
use taskbroker::pb::{SettleOperation, TaskState};
use tokio::time::timeout;

/// How soon a task that became ready must reach an idle stream.
const PROMPT: Duration = Duration::from_secs(1);

/// A timestamp `ms` milliseconds after the manual clock's start.
fn at(ms: u64) -> prost_types::Timestamp {
    let t = T0 + ms;
    prost_types::Timestamp { seconds: (t / 1000) as i64, nanos: ((t % 1000) * 1_000_000) as i32 }
}

const RETRY_CONFIG: &str = r#"
[queues.wake]
retry_backoff = { initial = "5s", max = "1m", multiplier = 2.0, jitter = 0.0 }
"#;

#[tokio::test]
async fn credits_cap_unsettled_tasks_at_the_window_and_each_ack_or_credit_admits_exactly_that_many() {
    let mut s = common::start().await;
    let mut enqueued = HashSet::new();
    for i in 0..10 {
        enqueued.insert(s.enqueue("credits", &format!("k{i}")).await.id);
    }
    let mut w = open(&s.worker, subscribe(&["credits"], 3)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(w.task().await);
    }
    w.assert_quiet().await; // no 4th before an ack
    let mut delivered: Vec<String> = held.iter().map(|t| id(t).to_owned()).collect();

    // Each confirmed ack admits exactly one more.
    for _ in 0..3 {
        let done = held.remove(0);
        w.ack(&done).await;
        w.settled_ok(id(&done), SettleOperation::Ack).await;
        let next = w.task().await;
        delivered.push(id(&next).to_owned());
        held.push(next);
        w.assert_quiet().await;
    }
    assert_eq!(held.len(), 3);

    // A credit of 2 widens the window by exactly 2.
    w.credit(2).await;
    for _ in 0..2 {
        let next = w.task().await;
        delivered.push(id(&next).to_owned());
        held.push(next);
    }
    w.assert_quiet().await;
    assert_eq!((held.len(), delivered.len()), (5, 8));

    // Settle everything: the last 2 arrive, and the window (now 5) is never exceeded.
    for t in &held {
        w.ack(t).await;
    }
    let mut unsettled = held.len();
    let mut settled = 0;
    while settled < 10 - 3 {
        match w.next().await {
            Resp::Task(t) => {
                unsettled += 1;
                assert!(unsettled <= 5, "{unsettled} unsettled tasks pushed with a window of 5");
                w.ack(&t).await;
                delivered.push(id(&t).to_owned());
            }
            Resp::Settled(st) => {
                assert_eq!(code(&st), 0, "{st:?}");
                unsettled -= 1;
                settled += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    w.assert_quiet().await;
    assert_eq!(delivered.len(), 10, "no task delivered twice");
    assert_eq!(delivered.into_iter().collect::<HashSet<_>>(), enqueued);
    for id in &enqueued {
        assert_eq!(state(&s.get(id).await), TaskState::Succeeded);
    }
    drop(w);
    s.shutdown().await;
}

#[tokio::test]
async fn idle_stream_is_pushed_a_task_as_soon_as_it_is_enqueued_comes_due_or_its_retry_is_due() {
    let mut s = common::start_manual(RETRY_CONFIG).await;
    let mut w = open(&s.worker, subscribe(&["wake"], 1)).await;
    w.assert_quiet().await;

    // Enqueued while the stream idles.
    let now = s.enqueue("wake", "now").await;
    let got = w.task_within(PROMPT).await;
    assert_eq!(id(&got), now.id);
    w.ack(&got).await;
    w.settled_ok(&now.id, SettleOperation::Ack).await;

    // A delayed task: nothing until the clock reaches it.
    let later = s
        .enqueue_req(pb::EnqueueRequest {
            queue: "wake".into(),
            kind: "later".into(),
            delay: Some(secs(10)),
            ..Default::default()
        })
        .await;
    assert_eq!(state(&later), TaskState::Scheduled);
    w.assert_quiet().await;
    s.advance(Duration::from_secs(10)).await;
    let got = w.task_within(PROMPT).await;
    assert_eq!((id(&got), task_of(&got).attempt), (later.id.as_str(), 1));

    // A nack schedules a retry after the queue's 5s backoff; it is pushed when due.
    w.nack(&got, "flaky").await;
    w.settled_ok(&later.id, SettleOperation::Nack).await;
    assert_eq!(state(&s.get(&later.id).await), TaskState::Scheduled);
    w.assert_quiet().await;
    s.advance(Duration::from_secs(5)).await;
    let again = w.task_within(PROMPT).await;
    assert_eq!((id(&again), task_of(&again).attempt), (later.id.as_str(), 2));
    assert_ne!(again.lease_id, got.lease_id);
    drop(w);
    s.shutdown().await;
}

/// Takes the next task, acks it, waits for the confirmation; returns its id.
async fn take_and_ack(w: &mut stream_client::Worker) -> String {
    let t = w.task().await;
    w.ack(&t).await;
    w.settled_ok(id(&t), SettleOperation::Ack).await;
    id(&t).to_owned()
}

#[tokio::test]
async fn strict_stream_takes_its_own_queue_first_and_helps_the_shared_one_only_when_own_is_empty() {
    let mut s = common::start().await;
    let own1 = s.enqueue("own", "k").await.id;
    let shared1 = s.enqueue("shared", "k").await.id;
    let own2 = s.enqueue("own", "k").await.id;
    let shared2 = s.enqueue("shared", "k").await.id;
    let mut w = open(&s.worker, subscribe(&["own", "shared"], 1)).await;

    assert_eq!(take_and_ack(&mut w).await, own1);
    assert_eq!(take_and_ack(&mut w).await, own2);
    // `own` is empty: help `shared`.
    let helping = w.task().await;
    assert_eq!(id(&helping), shared1);
    // New `own` work beats the older `shared` task.
    let own3 = s.enqueue("own", "k").await.id;
    w.assert_quiet().await;
    w.ack(&helping).await;
    w.settled_ok(&shared1, SettleOperation::Ack).await;
    assert_eq!(take_and_ack(&mut w).await, own3);
    assert_eq!(take_and_ack(&mut w).await, shared2);
    w.assert_quiet().await;
    drop(w);
    s.shutdown().await;
}

#[tokio::test]
async fn closed_stream_releases_its_tasks_at_once_to_another_stream_and_to_lease_with_an_incremented_attempt()
{
    let mut s = common::start().await;
    let mut enqueued = HashSet::new();
    for _ in 0..3 {
        enqueued.insert(s.enqueue("dc", "k").await.id);
    }
    let mut first = open(&s.worker, subscribe(&["dc"], 3)).await;
    for _ in 0..3 {
        let t = first.task().await;
        assert_eq!(task_of(&t).attempt, 1);
    }
    let mut second = open(&s.worker, subscribe(&["dc"], 3)).await;
    second.assert_quiet().await; // the first stream holds everything

    drop(first); // request sender and response stream
    let mut got = HashSet::new();
    for _ in 0..3 {
        let t = second.task_within(Duration::from_secs(1)).await;
        assert_eq!(task_of(&t).attempt, 2, "{t:?}");
        got.insert(id(&t).to_owned());
    }
    assert_eq!(got, enqueued);

    // Again, to a waiting unary Lease.
    drop(second);
    let mut leased = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while leased.len() < 3 {
        let call = s.worker.lease(pb::LeaseRequest {
            queues: vec!["dc".into()],
            max_tasks: 3,
            wait: Some(secs(1)),
            ..Default::default()
        });
        let tasks = tokio::time::timeout_at(deadline, call)
            .await
            .expect("released within 1s")
            .unwrap()
            .into_inner()
            .tasks;
        for t in tasks {
            assert_eq!(task_of(&t).attempt, 3, "{t:?}");
            leased.insert(id(&t).to_owned());
        }
    }
    assert_eq!(leased, enqueued);
    s.shutdown().await;
}

#[tokio::test]
async fn poison_task_whose_stream_dies_on_every_attempt_ends_dead_after_max_attempts() {
    let mut s = common::start().await;
    let poison = s
        .enqueue_req(pb::EnqueueRequest {
            queue: "poison".into(),
            kind: "k".into(),
            max_attempts: Some(3),
            ..Default::default()
        })
        .await;
    let mut watch = s
        .producer
        .watch_task(pb::WatchTaskRequest { task_id: poison.id.clone() })
        .await
        .unwrap()
        .into_inner();
    for attempt in 1..=3 {
        let mut w = open(&s.worker, subscribe(&["poison"], 1)).await;
        let t = w.task().await;
        assert_eq!((id(&t), task_of(&t).attempt), (poison.id.as_str(), attempt));
        drop(w); // the worker crashes with the task
    }
    let dead = timeout(WAIT, async {
        loop {
            let t =
                watch.message().await.unwrap().expect("watch ends only after a final state").task.unwrap();
            if matches!(state(&t), TaskState::Succeeded | TaskState::Dead | TaskState::Canceled) {
                return t;
            }
        }
    })
    .await
    .expect("task reached a final state");
    assert_eq!((state(&dead), dead.attempt), (TaskState::Dead, 3), "{dead:?}");
    assert!(dead.last_error.contains("stream closed"), "last_error: {:?}", dead.last_error);
    let mut w = open(&s.worker, subscribe(&["poison"], 1)).await;
    w.assert_quiet().await;
    drop(w);
    s.shutdown().await;
}

#[tokio::test]
async fn expired_lease_pushes_lease_lost_and_frees_the_credit() {
    let mut s = common::start_manual("").await;
    let mut enqueued = HashSet::new();
    for _ in 0..2 {
        enqueued.insert(s.enqueue("exp", "k").await.id);
    }
    let sub = pb::Subscribe { lease_duration: Some(secs(10)), ..subscribe(&["exp"], 1) };
    let mut w = open(&s.worker, sub).await;
    let held = w.task().await;
    assert_eq!(held.lease_expire_time, Some(at(10_000)));
    s.advance(Duration::from_secs(9)).await;
    w.assert_quiet().await;
    s.advance(Duration::from_secs(2)).await;
    let lost = w.lease_lost().await;
    assert_eq!(
        (lost.task_id.as_str(), lost.lease_id.as_str(), lost.reason.as_str()),
        (id(&held), held.lease_id.as_str(), "expired")
    );
    // The window has room again: a task is pushed under a new lease.
    let next = w.task().await;
    assert!(enqueued.contains(id(&next)));
    assert_ne!(next.lease_id, held.lease_id);
    // The lost lease cannot be settled any more.
    w.ack(&held).await;
    let st = w.settled().await;
    assert_eq!((st.task_id.as_str(), code(&st)), (id(&held), FAILED_PRECONDITION), "{st:?}");
    drop(w);
    s.shutdown().await;
}

#[tokio::test]
async fn canceling_a_leased_task_pushes_lease_lost_canceled_and_frees_the_credit() {
    let mut s = common::start().await;
    let first = s.enqueue("cancel", "k").await.id;
    let second = s.enqueue("cancel", "k").await.id;
    let mut w = open(&s.worker, subscribe(&["cancel"], 1)).await;
    let held = w.task().await;
    assert_eq!(id(&held), first);
    w.assert_quiet().await;
    s.producer.cancel_task(pb::CancelTaskRequest { task_id: first.clone() }).await.unwrap();
    let lost = w.lease_lost().await;
    assert_eq!(
        (lost.task_id.as_str(), lost.lease_id.as_str(), lost.reason.as_str()),
        (first.as_str(), held.lease_id.as_str(), "canceled")
    );
    assert_eq!(id(&w.task().await), second);
    drop(w);
    s.shutdown().await;
}

#[tokio::test]
async fn ack_with_a_stale_or_garbage_lease_gets_failed_precondition_in_settled_and_the_stream_goes_on() {
    let mut s = common::start().await;
    let first = s.enqueue("settle", "k").await.id;
    let second = s.enqueue("settle", "k").await.id;
    let mut w = open(&s.worker, subscribe(&["settle"], 1)).await;
    let held = w.task().await;
    assert_eq!(id(&held), first);
    let stale = (held.lease_id.parse::<u64>().unwrap() + 1000).to_string();
    for lease in ["garbage", stale.as_str()] {
        w.ack_with(&first, lease, Vec::new()).await;
        let st = w.settled().await;
        assert_eq!(
            (st.task_id.as_str(), st.lease_id.as_str(), st.operation, code(&st)),
            (first.as_str(), lease, SettleOperation::Ack as i32, FAILED_PRECONDITION),
            "{st:?}"
        );
        assert!(st.error.as_ref().unwrap().message.to_lowercase().contains("lease"), "{st:?}");
    }
    // The failed acks freed nothing, and the task is still leased.
    w.assert_quiet().await;
    assert_eq!(state(&s.get(&first).await), TaskState::Leased);
    // The stream goes on: the real lease settles and the next task comes.
    w.ack(&held).await;
    w.settled_ok(&first, SettleOperation::Ack).await;
    assert_eq!(id(&w.task().await), second);
    assert_eq!(state(&s.get(&first).await), TaskState::Succeeded);
    drop(w);
    s.shutdown().await;
}

#[tokio::test]
async fn settle_error_on_the_held_lease_keeps_the_task_in_the_window() {
    let mut s = common::start().await;
    let first = s.enqueue("keep", "k").await.id;
    let second = s.enqueue("keep", "k").await.id;
    let mut w = open(&s.worker, subscribe(&["keep"], 1)).await;
    let held = w.task().await;
    assert_eq!(id(&held), first);
    // extend_by must be 1s-12h: rejected, but the lease is still good.
    w.extend(&held, 0).await;
    let st = w.settled().await;
    assert_eq!(
        (st.task_id.as_str(), st.operation, code(&st)),
        (first.as_str(), SettleOperation::Extend as i32, INVALID_ARGUMENT),
        "{st:?}"
    );
    w.assert_quiet().await; // the window is still full
    w.ack(&held).await;
    w.settled_ok(&first, SettleOperation::Ack).await;
    assert_eq!(id(&w.task().await), second);
    drop(w);
    s.shutdown().await;
}

#[tokio::test]
async fn extend_over_the_stream_answers_settled_with_the_new_deadline_and_keeps_the_lease() {
    let mut s = common::start_manual("").await;
    let t = s.enqueue("ext", "k").await.id;
    let sub = pb::Subscribe { lease_duration: Some(secs(10)), ..subscribe(&["ext"], 1) };
    let mut w = open(&s.worker, sub).await;
    let held = w.task().await;
    assert_eq!(held.lease_expire_time, Some(at(10_000)));
    s.advance(Duration::from_secs(4)).await;
    w.extend(&held, 20).await;
    let st = w.settled_ok(&t, SettleOperation::Extend).await;
    assert_eq!((st.lease_id.as_str(), st.lease_expire_time), (held.lease_id.as_str(), Some(at(24_000))));
    // Past the first deadline: still held, no lease_lost.
    s.advance(Duration::from_secs(10)).await;
    w.assert_quiet().await;
    assert_eq!(state(&s.get(&t).await), TaskState::Leased);
    // Past the new one: lost.
    s.advance(Duration::from_secs(10)).await;
    assert_eq!(w.lease_lost().await.reason, "expired");
    drop(w);
    s.shutdown().await;
}

#[tokio::test]
async fn stream_whose_first_message_is_not_subscribe_fails_with_invalid_argument() {
    let s = common::start().await;
    let ack = req(Req::Ack(pb::AckRequest { task_id: "x".into(), lease_id: "1".into(), result: vec![] }));
    let status = open_failure(&s.worker, vec![ack]).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let status = open_failure(&s.worker, vec![pb::StreamRequest { msg: None }]).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn subscribe_with_a_bad_queue_name_fails_with_invalid_argument() {
    let s = common::start().await;
    let status = open_failure(&s.worker, vec![req(Req::Subscribe(subscribe(&["bad queue!"], 1)))]).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(common::bad_fields(&status), ["queues[0]"]);
    s.shutdown().await;
}

#[tokio::test]
async fn second_subscribe_ends_the_stream_with_invalid_argument_and_releases_its_tasks() {
    let mut s = common::start().await;
    let t = s.enqueue("twice", "k").await.id;
    let mut w = open(&s.worker, subscribe(&["twice"], 1)).await;
    assert_eq!(id(&w.task().await), t);
    w.send(Req::Subscribe(subscribe(&["twice"], 1))).await;
    let status = w.ends_with_error().await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    // What it held went back at once.
    let mut other = open(&s.worker, subscribe(&["twice"], 1)).await;
    let again = other.task_within(PROMPT).await;
    assert_eq!((id(&again), task_of(&again).attempt), (t.as_str(), 2));
    drop((w, other));
    s.shutdown().await;
}
