//! Error paths through real gRPC: stale and foreign leases, cancel, strict
//! queues, batch failures, every bad input of the README's Errors table (code,
//! ErrorInfo reason and the BadRequest field), oversized messages.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{bad_fields, reason, secs, state, TestServer};
use taskbroker::pb;
use taskbroker::pb::TaskState;
use tonic::Code;

/// The error of a call expected to fail.
fn err<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Status {
    r.expect_err("the call should have failed")
}

fn assert_code_reason(s: &tonic::Status, code: Code, why: &str) {
    assert_eq!((s.code(), reason(s).as_str()), (code, why), "status: {s:?}");
}

/// INVALID_ARGUMENT with reason INVALID_ARGUMENT, naming `field`.
fn assert_invalid(s: &tonic::Status, field: &str) {
    assert_code_reason(s, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert!(bad_fields(s).iter().any(|f| f == field), "{field} not in {:?}: {s:?}", bad_fields(s));
}

/// A per-item `google.rpc.Status` as a tonic status, to read its details.
fn item_status(e: &tonic_types::Status) -> tonic::Status {
    use prost::Message;
    let details = tonic::codegen::Bytes::from(e.encode_to_vec());
    tonic::Status::with_details(Code::from(e.code), e.message.clone(), details)
}

async fn ack(s: &mut TestServer, id: &str, lease_id: &str) -> Result<(), tonic::Status> {
    let req = pb::AckRequest { task_id: id.into(), lease_id: lease_id.into(), result: vec![] };
    s.worker.ack(req).await.map(|_| ())
}

async fn nack(s: &mut TestServer, id: &str, lease_id: &str) -> Result<(), tonic::Status> {
    let req = pb::NackRequest { task_id: id.into(), lease_id: lease_id.into(), ..Default::default() };
    s.worker.nack(req).await.map(|_| ())
}

async fn extend(s: &mut TestServer, id: &str, lease_id: &str) -> Result<(), tonic::Status> {
    let req =
        pb::ExtendLeaseRequest { task_id: id.into(), lease_id: lease_id.into(), extend_by: Some(secs(60)) };
    s.worker.extend_lease(req).await.map(|_| ())
}

async fn cancel(s: &mut TestServer, id: &str) -> Result<pb::Task, tonic::Status> {
    s.producer
        .cancel_task(pb::CancelTaskRequest { task_id: id.into() })
        .await
        .map(|r| r.into_inner().task.unwrap())
}

#[tokio::test]
async fn stale_lease_after_redelivery_is_rejected_with_lease_mismatch_and_task_untouched() {
    let mut s = common::start_manual("").await;
    let t = s.enqueue("q", "k").await;
    let old = s.lease(&["q"], 1).await.remove(0);
    s.advance(Duration::from_secs(31)).await;
    let new = s.lease(&["q"], 1).await.remove(0);
    assert_ne!(new.lease_id, old.lease_id);

    assert_code_reason(
        &err(ack(&mut s, &t.id, &old.lease_id).await),
        Code::FailedPrecondition,
        "LEASE_MISMATCH",
    );
    assert_code_reason(
        &err(nack(&mut s, &t.id, &old.lease_id).await),
        Code::FailedPrecondition,
        "LEASE_MISMATCH",
    );
    assert_code_reason(
        &err(extend(&mut s, &t.id, &old.lease_id).await),
        Code::FailedPrecondition,
        "LEASE_MISMATCH",
    );
    let now = s.get(&t.id).await;
    assert_eq!((state(&now), now.attempt, now.last_error.as_str()), (TaskState::Leased, 2, ""));
    // The new holder still holds it.
    extend(&mut s, &t.id, &new.lease_id).await.unwrap();
    s.ack(&new).await.unwrap();
    assert_eq!(state(&s.get(&t.id).await), TaskState::Succeeded);
    s.shutdown().await;
}

#[tokio::test]
async fn garbage_lease_id_is_lease_mismatch_and_empty_lease_id_is_invalid() {
    let mut s = common::start().await;
    let t = s.enqueue("q", "k").await;
    let held = s.lease(&["q"], 1).await.remove(0);
    for garbage in ["not-a-lease", "999999999"] {
        assert_code_reason(
            &err(ack(&mut s, &t.id, garbage).await),
            Code::FailedPrecondition,
            "LEASE_MISMATCH",
        );
        assert_code_reason(
            &err(nack(&mut s, &t.id, garbage).await),
            Code::FailedPrecondition,
            "LEASE_MISMATCH",
        );
        assert_code_reason(
            &err(extend(&mut s, &t.id, garbage).await),
            Code::FailedPrecondition,
            "LEASE_MISMATCH",
        );
    }
    assert_invalid(&err(ack(&mut s, &t.id, "").await), "lease_id");
    assert_invalid(&err(nack(&mut s, &t.id, "").await), "lease_id");
    assert_invalid(&err(extend(&mut s, &t.id, "").await), "lease_id");
    assert_eq!(state(&s.get(&t.id).await), TaskState::Leased);
    s.ack(&held).await.unwrap();
    s.shutdown().await;
}

#[tokio::test]
async fn cancel_of_ready_or_scheduled_task_is_canceled_and_never_delivered() {
    let mut s = common::start_manual("").await;
    let ready = s.enqueue("q", "k").await;
    let scheduled = s
        .enqueue_req(pb::EnqueueRequest {
            queue: "q".into(),
            kind: "k".into(),
            delay: Some(secs(10)),
            ..Default::default()
        })
        .await;
    assert_eq!(state(&scheduled), TaskState::Scheduled);
    for id in [&ready.id, &scheduled.id] {
        assert_eq!(state(&cancel(&mut s, id).await.unwrap()), TaskState::Canceled);
    }
    s.advance(Duration::from_secs(11)).await;
    assert!(s.lease(&["q"], 10).await.is_empty());
    for id in [&ready.id, &scheduled.id] {
        assert_eq!(state(&s.get(id).await), TaskState::Canceled);
    }
    s.shutdown().await;
}

#[tokio::test]
async fn cancel_of_leased_task_makes_its_holders_ack_nack_and_extend_task_canceled() {
    let mut s = common::start_manual("").await;
    let t = s.enqueue("q", "k").await;
    let held = s.lease(&["q"], 1).await.remove(0);
    assert_eq!(state(&cancel(&mut s, &t.id).await.unwrap()), TaskState::Canceled);
    assert_code_reason(&err(s.ack(&held).await), Code::FailedPrecondition, "TASK_CANCELED");
    assert_code_reason(
        &err(extend(&mut s, &t.id, &held.lease_id).await),
        Code::FailedPrecondition,
        "TASK_CANCELED",
    );
    assert_code_reason(
        &err(nack(&mut s, &t.id, &held.lease_id).await),
        Code::FailedPrecondition,
        "TASK_CANCELED",
    );
    assert_eq!(state(&s.get(&t.id).await), TaskState::Canceled, "the nack did not revive it");
    // Its lease running out does not bring it back.
    s.advance(Duration::from_secs(31)).await;
    assert!(s.lease(&["q"], 1).await.is_empty());
    assert_eq!(state(&s.get(&t.id).await), TaskState::Canceled);
    s.shutdown().await;
}

#[tokio::test]
async fn cancel_of_succeeded_unknown_or_malformed_task_fails() {
    let mut s = common::start().await;
    let t = s.enqueue("q", "k").await;
    let held = s.lease(&["q"], 1).await.remove(0);
    s.ack(&held).await.unwrap();
    assert_code_reason(&err(cancel(&mut s, &t.id).await), Code::FailedPrecondition, "TASK_FINISHED");
    assert_eq!(state(&s.get(&t.id).await), TaskState::Succeeded);
    assert_code_reason(
        &err(cancel(&mut s, "01ARZ3NDEKTSV4RRFFQ69G5FAV").await),
        Code::NotFound,
        "TASK_NOT_FOUND",
    );
    assert_invalid(&err(cancel(&mut s, "not-a-task-id").await), "task_id");
    s.shutdown().await;
}

#[tokio::test]
async fn strict_queues_refuse_undeclared_queues_with_queue_not_found() {
    let mut s = common::start_manual("strict_queues = true\n[queues.jobs]\n").await;
    let e = err(s
        .producer
        .enqueue(pb::EnqueueRequest { queue: "nope".into(), kind: "k".into(), ..Default::default() })
        .await);
    assert_code_reason(&e, Code::NotFound, "QUEUE_NOT_FOUND");
    let e = err(s
        .worker
        .lease(pb::LeaseRequest { queues: vec!["jobs".into(), "nope".into()], ..Default::default() })
        .await);
    assert_code_reason(&e, Code::NotFound, "QUEUE_NOT_FOUND");
    // Declared queues (and "default") still work.
    let t = s.enqueue("jobs", "k").await;
    s.enqueue("", "k").await;
    assert_eq!(s.lease(&["jobs", "default"], 10).await.len(), 2);
    assert_eq!(state(&s.get(&t.id).await), TaskState::Leased);
    s.shutdown().await;
}

#[tokio::test]
async fn enqueue_batch_fails_only_the_bad_item_and_keeps_request_order() {
    let mut s = common::start().await;
    let item = |kind: &str| pb::EnqueueRequest { queue: "b".into(), kind: kind.into(), ..Default::default() };
    let tasks = vec![item("first"), item(""), item("third")];
    let results =
        s.producer.enqueue_batch(pb::EnqueueBatchRequest { tasks }).await.unwrap().into_inner().results;
    assert_eq!(results.len(), 3);
    use pb::enqueue_result::Result as R;
    let kinds: Vec<_> = results
        .iter()
        .map(|r| match r.result.as_ref().unwrap() {
            R::Task(t) => Ok(t.kind.clone()),
            R::Error(e) => Err(e.code),
        })
        .collect();
    assert_eq!(kinds, [Ok("first".to_string()), Err(Code::InvalidArgument as i32), Ok("third".to_string())]);
    match results[1].result.as_ref().unwrap() {
        R::Error(e) => assert_invalid(&item_status(e), "kind"),
        R::Task(t) => panic!("the bad item was enqueued: {t:?}"),
    }
    assert_eq!(s.lease(&["b"], 10).await.len(), 2);
    s.shutdown().await;
}

#[tokio::test]
async fn enqueue_batch_of_zero_or_over_1000_items_is_invalid() {
    let mut s = common::start().await;
    let e = err(s.producer.enqueue_batch(pb::EnqueueBatchRequest { tasks: vec![] }).await);
    assert_invalid(&e, "tasks");
    let item = pb::EnqueueRequest { queue: "b".into(), kind: "k".into(), ..Default::default() };
    let e = err(s.producer.enqueue_batch(pb::EnqueueBatchRequest { tasks: vec![item; 1001] }).await);
    assert_invalid(&e, "tasks");
    assert!(s.lease(&["b"], 10).await.is_empty(), "nothing was enqueued");
    s.shutdown().await;
}

fn negative() -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: -1, nanos: 0 })
}

fn millis(ms: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: 0, nanos: ms * 1_000_000 })
}

/// The README's Errors table, INVALID_ARGUMENT row, one case per bad input
/// and call that takes it.
#[tokio::test]
async fn every_bad_input_is_invalid_argument_naming_its_field_and_the_server_keeps_serving() {
    let mut s = common::start().await;
    let ok = || pb::EnqueueRequest { queue: "q".into(), kind: "k".into(), ..Default::default() };
    let too_many_headers: HashMap<_, _> = (0..65).map(|i| (format!("h{i}"), "v".to_string())).collect();
    let at = Some(prost_types::Timestamp { seconds: 1_900_000_000, nanos: 0 });
    let year_10000 = Some(prost_types::Timestamp { seconds: 253_402_300_800, nanos: 0 });
    let bad_enqueues = [
        ("kind", pb::EnqueueRequest { kind: String::new(), ..ok() }),
        ("queue", pb::EnqueueRequest { queue: "no spaces!".into(), ..ok() }),
        ("queue", pb::EnqueueRequest { queue: "q".repeat(129), ..ok() }),
        ("priority", pb::EnqueueRequest { priority: Some(10), ..ok() }),
        ("headers", pb::EnqueueRequest { headers: too_many_headers, ..ok() }),
        ("payload", pb::EnqueueRequest { payload: vec![0; (1 << 20) + 1], ..ok() }),
        ("scheduled_time", pb::EnqueueRequest { delay: Some(secs(10)), scheduled_time: at, ..ok() }),
        ("max_attempts", pb::EnqueueRequest { max_attempts: Some(0), ..ok() }),
        ("delay", pb::EnqueueRequest { delay: negative(), ..ok() }),
        ("delay", pb::EnqueueRequest { delay: Some(secs(366 * 24 * 3600 + 1)), ..ok() }),
        ("scheduled_time", pb::EnqueueRequest { scheduled_time: year_10000, ..ok() }),
        ("content_type", pb::EnqueueRequest { content_type: "x".repeat(257), ..ok() }),
    ];
    for (field, req) in bad_enqueues {
        assert_invalid(&err(s.producer.enqueue(req.clone()).await), field);
        // The same item in a batch fails alone, with the same details.
        let results = s.producer.enqueue_batch(pb::EnqueueBatchRequest { tasks: vec![req] }).await;
        match results.unwrap().into_inner().results[0].result.as_ref().unwrap() {
            pb::enqueue_result::Result::Error(e) => assert_invalid(&item_status(e), field),
            pb::enqueue_result::Result::Task(t) => panic!("bad {field} enqueued in a batch: {t:?}"),
        }
    }
    let item = ok();
    assert_invalid(&err(s.producer.enqueue_batch(pb::EnqueueBatchRequest { tasks: vec![] }).await), "tasks");
    let over = pb::EnqueueBatchRequest { tasks: vec![item; 1001] };
    assert_invalid(&err(s.producer.enqueue_batch(over).await), "tasks");

    let lease = || pb::LeaseRequest { queues: vec!["q".into()], ..Default::default() };
    let bad_leases = [
        ("queues", pb::LeaseRequest { queues: vec![], ..lease() }),
        ("queues[1]", pb::LeaseRequest { queues: vec!["q".into(), "bad name".into()], ..lease() }),
        ("max_tasks", pb::LeaseRequest { max_tasks: 1001, ..lease() }),
        ("lease_duration", pb::LeaseRequest { lease_duration: millis(500), ..lease() }),
        ("lease_duration", pb::LeaseRequest { lease_duration: Some(secs(12 * 3600 + 1)), ..lease() }),
        ("lease_duration", pb::LeaseRequest { lease_duration: negative(), ..lease() }),
        ("wait", pb::LeaseRequest { wait: Some(secs(61)), ..lease() }),
        ("wait", pb::LeaseRequest { wait: negative(), ..lease() }),
        ("worker_id", pb::LeaseRequest { worker_id: "w".repeat(257), ..lease() }),
    ];
    for (field, req) in bad_leases {
        assert_invalid(&err(s.worker.lease(req).await), field);
    }

    // Calls that name a task: a malformed or missing id, an empty lease id,
    // a bad duration.
    let t = s.enqueue("q", "k").await;
    let held = s.lease(&["q"], 1).await.remove(0);
    let lease_id = held.lease_id.clone();
    for bad_id in ["not-a-task-id", ""] {
        let get = s
            .producer
            .get_task(pb::GetTaskRequest { task_id: bad_id.into(), include_dependencies: false })
            .await;
        assert_invalid(&err(get), "task_id");
        assert_invalid(&err(cancel(&mut s, bad_id).await), "task_id");
        let watch = s.producer.watch_task(pb::WatchTaskRequest { task_id: bad_id.into() }).await;
        assert_invalid(&err(watch.map(|_| ())), "task_id");
        assert_invalid(&err(ack(&mut s, bad_id, &lease_id).await), "task_id");
        assert_invalid(&err(nack(&mut s, bad_id, &lease_id).await), "task_id");
        assert_invalid(&err(extend(&mut s, bad_id, &lease_id).await), "task_id");
    }
    assert_invalid(&err(ack(&mut s, &t.id, "").await), "lease_id");
    let extend_by =
        |extend_by| pb::ExtendLeaseRequest { task_id: t.id.clone(), lease_id: lease_id.clone(), extend_by };
    for by in [millis(500), Some(secs(12 * 3600 + 1)), negative(), None] {
        assert_invalid(&err(s.worker.extend_lease(extend_by(by)).await), "extend_by");
    }
    for retry_after in [negative(), Some(secs(366 * 24 * 3600 + 1))] {
        let nack = pb::NackRequest {
            task_id: t.id.clone(),
            lease_id: lease_id.clone(),
            retry_after,
            ..Default::default()
        };
        assert_invalid(&err(s.worker.nack(nack).await), "retry_after");
    }

    // Still serving, nothing bad was stored, the lease is untouched, and a
    // payload of exactly the limit is fine.
    let now = s.get(&t.id).await;
    assert_eq!((state(&now), now.attempt), (TaskState::Leased, 1));
    s.ack(&held).await.unwrap();
    let t = s.enqueue_req(pb::EnqueueRequest { payload: vec![0; 1 << 20], ..ok() }).await;
    assert_eq!(state(&t), TaskState::Ready);
    assert_eq!(s.lease(&["q"], 10).await.len(), 1, "none of the bad enqueues was stored");
    s.shutdown().await;
}

#[tokio::test]
async fn message_over_max_message_bytes_is_out_of_range_and_the_server_keeps_serving() {
    let mut s =
        common::start_with(common::Options { config: "max_message_bytes = 2000000\n", ..Default::default() })
            .await;
    let big = pb::EnqueueRequest {
        queue: "q".into(),
        kind: "k".into(),
        payload: vec![7; 3_000_000],
        ..Default::default()
    };
    let e = err(s.producer.enqueue(big).await);
    // tonic rejects the frame before the broker sees it: OUT_OF_RANGE, not RESOURCE_EXHAUSTED.
    assert_eq!(e.code(), Code::OutOfRange, "status: {e:?}");
    let t = s.enqueue("q", "k").await;
    assert_eq!(state(&t), TaskState::Ready);
    s.shutdown().await;
}

#[tokio::test]
async fn unknown_dependencies_are_dependency_not_found_with_their_ids_and_bad_ones_invalid() {
    let mut s = common::start().await;
    let known = s.enqueue("q", "k").await;
    let ghost = "01ARZ3NDEKTSV4RRFFQ69G5FAV".to_string();
    let req = |deps: Vec<String>| pb::EnqueueRequest {
        queue: "q".into(),
        kind: "k".into(),
        depends_on: deps,
        ..Default::default()
    };
    let refused = err(s.producer.enqueue(req(vec![known.id.clone(), ghost.clone()])).await);
    assert_code_reason(&refused, Code::FailedPrecondition, "DEPENDENCY_NOT_FOUND");
    use tonic_types::StatusExt;
    let info = refused.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.metadata.get("task_ids"), Some(&ghost));
    assert!(refused.message().contains(&ghost), "{refused:?}");
    // In a batch, only the item naming it fails.
    let tasks = vec![req(vec![known.id.clone()]), req(vec![ghost.clone()])];
    let results =
        s.producer.enqueue_batch(pb::EnqueueBatchRequest { tasks }).await.unwrap().into_inner().results;
    use pb::enqueue_result::Result as R;
    assert!(matches!(results[0].result, Some(R::Task(_))), "{results:?}");
    match results[1].result.as_ref().unwrap() {
        R::Error(e) => assert_code_reason(&item_status(e), Code::FailedPrecondition, "DEPENDENCY_NOT_FOUND"),
        R::Task(t) => panic!("enqueued with an unknown dependency: {t:?}"),
    }
    assert_invalid(&err(s.producer.enqueue(req(vec!["nope".into()])).await), "depends_on[0]");
    let too_many = (0..1001).map(|_| known.id.clone()).collect();
    assert_invalid(&err(s.producer.enqueue(req(too_many)).await), "depends_on");
    let both = pb::EnqueueRequest {
        ttl: Some(secs(5)),
        expire_time: Some(prost_types::Timestamp { seconds: 4_000_000_000, nanos: 0 }),
        ..req(vec![])
    };
    assert_invalid(&err(s.producer.enqueue(both).await), "expire_time");
    let past = pb::EnqueueRequest {
        expire_time: Some(prost_types::Timestamp { seconds: 1, nanos: 0 }),
        ..req(vec![])
    };
    assert_invalid(&err(s.producer.enqueue(past).await), "expire_time");
    let before_due = pb::EnqueueRequest { ttl: Some(secs(5)), delay: Some(secs(10)), ..req(vec![]) };
    assert_invalid(&err(s.producer.enqueue(before_due).await), "ttl");
    s.shutdown().await;
}
