//! Request metadata read by the server's one middleware stack: the trace
//! context a producer's call carries becomes the task's, and a long-poll
//! answers before the client's deadline.
mod common;

use std::time::{Duration, Instant};

use taskbroker::pb;
use tonic::Request;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn with_trace<T>(message: T, parent: &str) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut().insert("traceparent", parent.parse().unwrap());
    req.metadata_mut().insert("tracestate", "vendor=1".parse().unwrap());
    req
}

#[tokio::test]
async fn the_callers_trace_context_travels_with_the_task() {
    let mut s = common::start().await;
    let req = pb::EnqueueRequest { queue: "q".into(), kind: "k".into(), ..Default::default() };
    let task = s.producer.enqueue(with_trace(req, PARENT)).await.unwrap().into_inner().task.unwrap();
    assert_eq!(task.headers.get("traceparent").map(String::as_str), Some(PARENT));
    assert_eq!(task.headers.get("tracestate").map(String::as_str), Some("vendor=1"));
    let leased = s.lease(&["q"], 1).await;
    let delivered = leased[0].task.as_ref().unwrap();
    assert_eq!(delivered.headers.get("traceparent").map(String::as_str), Some(PARENT), "given to the worker");

    // Batches and streams too; a malformed traceparent is ignored.
    let batch = pb::EnqueueBatchRequest {
        tasks: vec![pb::EnqueueRequest { queue: "q".into(), kind: "k".into(), ..Default::default() }],
    };
    let out = s.producer.enqueue_batch(with_trace(batch.clone(), PARENT)).await.unwrap().into_inner();
    let Some(pb::enqueue_result::Result::Task(t)) = &out.results[0].result else { panic!("{out:?}") };
    assert_eq!(t.headers.get("traceparent").map(String::as_str), Some(PARENT));
    let out = s.producer.enqueue_batch(with_trace(batch, "00-nonsense")).await.unwrap().into_inner();
    let Some(pb::enqueue_result::Result::Task(t)) = &out.results[0].result else { panic!("{out:?}") };
    assert!(t.headers.is_empty(), "{:?}", t.headers);
}

#[tokio::test]
async fn a_traceparent_the_producer_put_in_the_headers_wins() {
    let mut s = common::start().await;
    let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let req = pb::EnqueueRequest {
        queue: "q".into(),
        kind: "k".into(),
        headers: [("traceparent".to_string(), own.to_string())].into(),
        ..Default::default()
    };
    let task = s.producer.enqueue(with_trace(req, PARENT)).await.unwrap().into_inner().task.unwrap();
    assert_eq!(task.headers.get("traceparent").map(String::as_str), Some(own));
    assert!(!task.headers.contains_key("tracestate"), "the call's tracestate belongs to the call's parent");
}

#[tokio::test]
async fn a_long_poll_answers_empty_before_the_clients_deadline() {
    let mut s = common::start().await;
    let mut req = Request::new(pb::LeaseRequest {
        queues: vec!["empty".into()],
        wait: Some(common::secs(30)),
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let tasks = s.worker.lease(req).await.expect("an empty answer, not DEADLINE_EXCEEDED").into_inner().tasks;
    assert!(tasks.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered within the deadline: {:?}",
        started.elapsed()
    );
}
