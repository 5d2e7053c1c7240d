//! Prometheus metrics: `/metrics` scraped over HTTP from the admin port and
//! parsed with a Prometheus text parser; exact values after a scripted
//! sequence (enqueue 10, lease 4, ack 2, nack 1 to dead, let 1 expire).

mod common;

use std::time::Duration;

use common::TestServer;
use prometheus_parse::{Sample, Scrape, Value};
use taskbroker::pb;

const CONFIG: &str = "[queues.q]\nlease_duration = \"10s\"\nmax_attempts = 3\n";

async fn scrape(s: &TestServer) -> Scrape {
    let response = common::http::get(s.admin_addr, "/metrics").await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(response.header("content-type").is_some_and(|t| t.starts_with("application/openmetrics-text")));
    Scrape::parse(response.body.lines().map(|l| Ok(l.to_owned()))).expect("valid Prometheus text")
}

fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "one sample {name}{labels:?}, found {found:?}");
    match &found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{name} is {other:?}"),
    }
}

fn histogram_count(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {name}{labels:?}"));
    match &found.value {
        Value::Histogram(buckets) => buckets.last().map_or(0, |b| b.count as u64),
        other => panic!("{name} is {other:?}"),
    }
}

#[tokio::test]
async fn metrics_count_a_scripted_sequence_exactly() {
    let mut s =
        common::start_with(common::Options { config: CONFIG, manual_clock: true, ..Default::default() })
            .await;
    for _ in 0..10 {
        s.enqueue("q", "k").await;
    }
    let leased = s.lease(&["q"], 4).await;
    s.ack(&leased[0]).await.unwrap();
    s.ack(&leased[1]).await.unwrap();
    let nack = pb::NackRequest {
        task_id: leased[2].task.as_ref().unwrap().id.clone(),
        lease_id: leased[2].lease_id.clone(),
        error: "boom".into(),
        retry_after: None,
        no_retry: true,
    };
    s.worker.nack(nack).await.unwrap();
    // A stale settlement: the acked task's lease again.
    assert!(s.ack(&leased[0]).await.is_err());
    s.advance(Duration::from_secs(11)).await;
    let dep = leased[3].task.as_ref().unwrap().id.clone();
    let waiting = pb::EnqueueRequest {
        queue: "w".into(),
        kind: "k".into(),
        depends_on: vec![dep],
        ..Default::default()
    };
    s.enqueue_req(waiting).await;

    let m = scrape(&s).await;
    let q = [("queue", "q")];
    assert_eq!(value(&m, "taskbroker_tasks_enqueued_total", &q), 10.0);
    assert_eq!(value(&m, "taskbroker_tasks_delivered_total", &q), 4.0);
    assert_eq!(value(&m, "taskbroker_tasks_acked_total", &q), 2.0);
    assert_eq!(value(&m, "taskbroker_tasks_nacked_total", &q), 1.0);
    assert_eq!(value(&m, "taskbroker_tasks_dead_total", &q), 1.0);
    assert_eq!(value(&m, "taskbroker_leases_expired_total", &q), 1.0);
    assert_eq!(value(&m, "taskbroker_stale_settlements_total", &q), 1.0);
    for (state, n) in [("ready", 7.0), ("leased", 0.0), ("succeeded", 2.0), ("dead", 1.0), ("scheduled", 0.0)]
    {
        assert_eq!(value(&m, "taskbroker_queue_tasks", &[("queue", "q"), ("state", state)]), n, "{state}");
    }
    assert_eq!(value(&m, "taskbroker_queue_tasks", &[("queue", "w"), ("state", "waiting")]), 1.0);
    assert_eq!(value(&m, "taskbroker_queue_oldest_ready_age_seconds", &q), 11.0, "waiting since the start");
    assert_eq!(value(&m, "taskbroker_queue_paused", &q), 0.0);
    assert_eq!(histogram_count(&m, "taskbroker_task_wait_seconds", &q), 4);
    assert_eq!(
        histogram_count(&m, "taskbroker_task_run_seconds", &[("queue", "q"), ("outcome", "acked")]),
        2
    );
    assert_eq!(
        histogram_count(&m, "taskbroker_task_run_seconds", &[("queue", "q"), ("outcome", "expired")]),
        1
    );
    let lease = [("method", "taskbroker.v1.WorkerService/Lease"), ("code", "OK")];
    assert_eq!(value(&m, "taskbroker_grpc_requests_total", &lease), 1.0);
    let stale = [("method", "taskbroker.v1.WorkerService/Ack"), ("code", "FAILED_PRECONDITION")];
    assert_eq!(value(&m, "taskbroker_grpc_requests_total", &stale), 1.0);
    assert_eq!(value(&m, "taskbroker_streams_open", &[]), 0.0);
    s.shutdown().await;
}

#[tokio::test]
async fn unknown_methods_do_not_mint_labels() {
    let s = common::start().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    for i in 0..3 {
        grpc.ready().await.unwrap();
        let path = format!("/made.up.Service/Method{i}").parse().unwrap();
        let codec = tonic_prost::ProstCodec::<pb::GetTaskRequest, pb::GetTaskResponse>::default();
        let e =
            grpc.unary(tonic::Request::new(pb::GetTaskRequest::default()), path, codec).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented);
    }
    let m = scrape(&s).await;
    assert_eq!(
        value(&m, "taskbroker_grpc_requests_total", &[("method", "unknown"), ("code", "UNIMPLEMENTED")]),
        3.0
    );
    assert!(!m.samples.iter().any(|x| x.labels.get("method").is_some_and(|v| v.contains("made.up"))));
    s.shutdown().await;
}
