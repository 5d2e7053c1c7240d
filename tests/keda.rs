//! The KEDA external scaler, called with KEDA's own proto (vendored
//! unchanged): metric values are the queue's depth, and StreamIsActive flips
//! within a second of the first enqueue and of the last ack.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{bad_fields, TestServer};
use taskbroker::keda::external_scaler_client::ExternalScalerClient;
use taskbroker::keda::{GetMetricsRequest, ScaledObjectRef};
use tonic::transport::Channel;
use tonic::Code;

const PROMPT: Duration = Duration::from_secs(1);

fn object(meta: &[(&str, &str)]) -> ScaledObjectRef {
    ScaledObjectRef {
        name: "workers".into(),
        namespace: "default".into(),
        scaler_metadata: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>(),
    }
}

async fn scaler(s: &TestServer) -> ExternalScalerClient<Channel> {
    ExternalScalerClient::connect(format!("http://{}", s.addr)).await.unwrap()
}

async fn metric(k: &mut ExternalScalerClient<Channel>, meta: &[(&str, &str)]) -> (String, i64) {
    let request = GetMetricsRequest { scaled_object_ref: Some(object(meta)), metric_name: String::new() };
    let v = k.get_metrics(request).await.unwrap().into_inner().metric_values.remove(0);
    assert_eq!(v.metric_value as f64, v.metric_value_float);
    (v.metric_name, v.metric_value)
}

#[tokio::test]
async fn metrics_are_the_queue_depth_ready_plus_leased() {
    let mut s = common::start().await;
    let mut k = scaler(&s).await;
    let spec = k.get_metric_spec(object(&[("queue", "emails")])).await.unwrap().into_inner();
    assert_eq!(spec.metric_specs[0].metric_name, "taskbroker-emails");
    assert_eq!((spec.metric_specs[0].target_size, spec.metric_specs[0].target_size_float), (10, 10.0));
    let spec = k.get_metric_spec(object(&[("queue", "emails"), ("targetPerReplica", "2.5")])).await.unwrap();
    assert_eq!(spec.into_inner().metric_specs[0].target_size_float, 2.5);

    assert_eq!(
        metric(&mut k, &[("queue", "emails")]).await,
        ("taskbroker-emails".into(), 0),
        "no queue yet: 0"
    );
    for _ in 0..5 {
        s.enqueue("emails", "k").await;
    }
    s.enqueue("sms", "k").await;
    let leased = s.lease(&["emails"], 2).await;
    s.ack(&leased[0]).await.unwrap();
    assert_eq!(metric(&mut k, &[("queue", "emails")]).await.1, 4, "3 ready + 1 leased");
    assert_eq!(metric(&mut k, &[("queue", "emails"), ("includeLeased", "false")]).await.1, 3);
    assert_eq!(metric(&mut k, &[("queues", "emails,sms")]).await, ("taskbroker-emails-sms".into(), 5));
    assert!(k.is_active(object(&[("queue", "emails")])).await.unwrap().into_inner().result);
    let quiet = object(&[("queue", "emails"), ("activationThreshold", "4")]);
    assert!(!k.is_active(quiet).await.unwrap().into_inner().result, "4 is not above 4");

    let e = k.get_metric_spec(object(&[])).await.unwrap_err();
    assert_eq!((e.code(), bad_fields(&e)), (Code::InvalidArgument, vec!["scalerMetadata.queue".to_string()]));
    let e = k.is_active(object(&[("queue", "q"), ("targetPerReplica", "x")])).await.unwrap_err();
    assert_eq!(bad_fields(&e), vec!["scalerMetadata.targetPerReplica".to_string()]);
    s.shutdown().await;
}

#[tokio::test]
async fn stream_is_active_flips_within_a_second_of_the_first_enqueue_and_the_last_ack() {
    let mut s = common::start().await;
    let mut k = scaler(&s).await;
    let mut active = k.stream_is_active(object(&[("queue", "jobs")])).await.unwrap().into_inner();
    assert!(!next(&mut active).await, "an empty queue is inactive");
    s.enqueue("jobs", "k").await;
    assert!(next(&mut active).await, "active after the first enqueue");
    let leased = s.lease(&["jobs"], 1).await;
    s.ack(&leased[0]).await.unwrap();
    assert!(!next(&mut active).await, "inactive after the last ack");
    s.shutdown().await;
}

/// The next activity pushed, within [`PROMPT`].
async fn next(active: &mut tonic::Streaming<taskbroker::keda::IsActiveResponse>) -> bool {
    let got = tokio::time::timeout(PROMPT, active.message()).await;
    got.expect("a change is pushed within 1 s").unwrap().expect("the stream stays open").result
}
