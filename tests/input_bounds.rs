//! Bounds on values from the network, through real gRPC: sizes copied into
//! every record (`worker_id`, `content_type`) and every duration and time a
//! client sends (`max_delay`, the year 10000, protobuf's own duration range).
//! Each bad value is `INVALID_ARGUMENT` naming its field, never a wrapped
//! number or a panic, and the server keeps serving.

mod common;
mod stream_client;

use common::{bad_fields, reason, secs, state};
use stream_client::{open_failure, req, subscribe};
use taskbroker::pb;
use taskbroker::pb::stream_request::Msg as Req;
use taskbroker::pb::TaskState;
use tonic::Code;

fn assert_invalid(r: Result<impl std::fmt::Debug, tonic::Status>, field: &str) {
    let s = r.expect_err("the call should have failed");
    assert_eq!((s.code(), reason(&s).as_str()), (Code::InvalidArgument, "INVALID_ARGUMENT"), "{s:?}");
    assert_eq!(bad_fields(&s), [field], "{s:?}");
}

fn enqueue(queue: &str) -> pb::EnqueueRequest {
    pb::EnqueueRequest { queue: queue.into(), kind: "k".into(), ..Default::default() }
}

#[tokio::test]
async fn a_long_worker_id_is_refused_by_lease_and_subscribe_and_nothing_is_leased() {
    let mut s = common::start().await;
    let t = s.enqueue("w", "k").await;
    // One such Lease(max_tasks = 1000) once copied 1 MiB into each leased record.
    for len in [257, 1 << 20] {
        let lease = pb::LeaseRequest {
            queues: vec!["w".into()],
            max_tasks: 1000,
            worker_id: "w".repeat(len),
            ..Default::default()
        };
        assert_invalid(s.worker.lease(lease).await, "worker_id");
        let sub = pb::Subscribe { worker_id: "w".repeat(len), ..subscribe(&["w"], 10) };
        let status = open_failure(&s.worker, vec![req(Req::Subscribe(sub))]).await;
        assert_invalid(Err::<(), _>(status), "worker_id");
    }
    assert_eq!(state(&s.get(&t.id).await), TaskState::Ready, "nothing was leased");
    let ok = pb::LeaseRequest { queues: vec!["w".into()], worker_id: "w".repeat(256), ..Default::default() };
    assert_eq!(s.worker.lease(ok).await.unwrap().into_inner().tasks.len(), 1, "256 bytes is fine");
    s.shutdown().await;
}

#[tokio::test]
async fn a_long_content_type_is_refused() {
    let mut s = common::start().await;
    let long = pb::EnqueueRequest { content_type: "x".repeat(257), ..enqueue("c") };
    assert_invalid(s.producer.enqueue(long).await, "content_type");
    let ok = s.enqueue_req(pb::EnqueueRequest { content_type: "x".repeat(256), ..enqueue("c") }).await;
    assert_eq!(ok.content_type.len(), 256);
    assert_eq!(s.lease(&["c"], 10).await.len(), 1, "only the valid one was stored");
    s.shutdown().await;
}

/// `delay`, `scheduled_time` and Nack `retry_after` are bounded by `max_delay`.
#[tokio::test]
async fn delays_and_times_beyond_max_delay_are_invalid() {
    let mut s = common::start_manual("max_delay = \"1h\"\n").await;
    let now_secs = (common::T0 / 1000) as i64;
    let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
    assert_invalid(
        s.producer.enqueue(pb::EnqueueRequest { delay: Some(secs(3601)), ..enqueue("d") }).await,
        "delay",
    );
    let late = pb::EnqueueRequest { scheduled_time: at(now_secs + 3601), ..enqueue("d") };
    assert_invalid(s.producer.enqueue(late).await, "scheduled_time");
    let t = s.enqueue_req(pb::EnqueueRequest { delay: Some(secs(3600)), ..enqueue("d") }).await;
    assert_eq!(state(&t), TaskState::Scheduled);
    let t = s.enqueue_req(pb::EnqueueRequest { scheduled_time: at(now_secs + 3600), ..enqueue("d") }).await;
    assert_eq!(state(&t), TaskState::Scheduled);

    let t = s.enqueue("n", "k").await;
    let held = s.lease(&["n"], 1).await.remove(0);
    let nack = |retry_after| pb::NackRequest {
        task_id: t.id.clone(),
        lease_id: held.lease_id.clone(),
        retry_after,
        ..Default::default()
    };
    assert_invalid(s.worker.nack(nack(Some(secs(3601)))).await, "retry_after");
    let task = s.worker.nack(nack(Some(secs(3600)))).await.unwrap().into_inner().task.unwrap();
    assert_eq!(state(&task), TaskState::Scheduled);
    s.shutdown().await;
}

/// Numbers that once wrapped or panicked: an 18446744073709552 s delay was
/// 384 ms through a truncating cast; `scheduled_time` seconds above 1.8e16
/// overflowed `seconds * 1000`; `retry_after` near u64::MAX overflowed.
#[tokio::test]
async fn huge_durations_and_times_are_invalid_not_wrapped() {
    let mut s = common::start().await;
    let huge = [18_446_744_073_709_552, i64::MAX, 315_576_000_001];
    for seconds in huge {
        let delay = pb::EnqueueRequest { delay: Some(secs(seconds)), ..enqueue("h") };
        assert_invalid(s.producer.enqueue(delay).await, "delay");
        let when = Some(prost_types::Timestamp { seconds, nanos: 0 });
        assert_invalid(
            s.producer.enqueue(pb::EnqueueRequest { scheduled_time: when, ..enqueue("h") }).await,
            "scheduled_time",
        );
    }
    // The year 10000 is out of range even with a large max_delay.
    let y10k = Some(prost_types::Timestamp { seconds: 253_402_300_800, nanos: 0 });
    assert_invalid(
        s.producer.enqueue(pb::EnqueueRequest { scheduled_time: y10k, ..enqueue("h") }).await,
        "scheduled_time",
    );

    let t = s.enqueue("h", "k").await;
    let held = s.lease(&["h"], 1).await.remove(0);
    for seconds in huge.into_iter().chain([366 * 24 * 3600 + 1]) {
        let nack = pb::NackRequest {
            task_id: t.id.clone(),
            lease_id: held.lease_id.clone(),
            retry_after: Some(secs(seconds)),
            ..Default::default()
        };
        assert_invalid(s.worker.nack(nack).await, "retry_after");
        let extend = pb::ExtendLeaseRequest {
            task_id: t.id.clone(),
            lease_id: held.lease_id.clone(),
            extend_by: Some(secs(seconds)),
        };
        assert_invalid(s.worker.extend_lease(extend).await, "extend_by");
        let lease = pb::LeaseRequest {
            queues: vec!["h".into()],
            lease_duration: Some(secs(seconds)),
            wait: Some(secs(seconds)),
            ..Default::default()
        };
        let e = s.worker.lease(lease).await.expect_err("huge lease_duration and wait");
        assert_eq!(bad_fields(&e), ["lease_duration", "wait"], "{e:?}");
    }
    assert!(s.lease(&["h"], 10).await.is_empty(), "no bad enqueue was stored");
    let now = s.get(&t.id).await;
    assert_eq!((state(&now), now.attempt), (TaskState::Leased, 1), "the lease is untouched");
    s.ack(&held).await.unwrap();
    s.shutdown().await;
}
