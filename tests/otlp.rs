//! Distributed traces, received by an in-process OTLP trace receiver
//! (opentelemetry-proto's tonic server): one task sent with a client
//! `traceparent` yields, in the client's trace, the Enqueue server span, the
//! `send` span, the `receive` and `settle` spans, and `taskbroker work`'s
//! `process` span with the task id.
#![cfg(unix)]

#[path = "common/serve.rs"]
mod serve;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use serve::ServeProcess;
use taskbroker::pb;
use tokio::sync::Notify;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// Spans received, with the service name of their resource.
#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    arrived: Arc<Notify>,
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    AnyValue::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        self.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    })
}

/// Waits (at most 20 s) until a span named `name` has arrived; returns it.
async fn span_named(r: &Received, name: &str) -> (String, Span) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let arrived = r.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        if let Some(s) = r.spans.lock().unwrap().iter().find(|(_, s)| s.name == name) {
            return s.clone();
        }
        let names: Vec<String> = r
            .spans
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s)| format!("{} {:?}", s.name, s.attributes.iter().map(|a| &a.key).collect::<Vec<_>>()))
            .collect();
        tokio::select! {
            _ = arrived => {}
            _ = tokio::time::sleep_until(deadline) => panic!("no span {name:?} within 20 s; got {names:?}"),
        }
    }
}

/// An OTLP trace receiver on 127.0.0.1:0: what it receives, and its endpoint.
async fn receiver() -> (Received, String) {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(received.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    (received, endpoint)
}

fn otel_env(cmd: &mut tokio::process::Command, endpoint: &str) {
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_SDK_DISABLED");
}

#[tokio::test]
async fn one_trace_runs_from_the_producer_through_the_broker_to_the_worker() {
    let (received, endpoint) = receiver().await;

    let dir = tempfile::tempdir().unwrap();
    let mut cmd = serve::command(&["--storage", "memory"]);
    otel_env(&mut cmd, &endpoint);
    let broker = ServeProcess::spawn("broker", cmd, &dir.path().join("broker.log")).await;

    let mut request = tonic::Request::new(pb::EnqueueRequest {
        queue: "q".into(),
        kind: "k".into(),
        payload: b"hi".to_vec(),
        ..Default::default()
    });
    let parent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    request.metadata_mut().insert("traceparent", parent.parse().unwrap());
    let task = broker.producer().enqueue(request).await.unwrap().into_inner().task.unwrap();
    assert_eq!(&task.headers["traceparent"][3..35], CLIENT_TRACE, "the task keeps the client's trace");
    assert_ne!(&task.headers["traceparent"][36..52], CLIENT_SPAN, "its parent is the broker's send span");

    // A worker process runs the task and exits on SIGTERM, flushing its spans.
    let mut work = tokio::process::Command::new(serve::BIN);
    serve::clean(&mut work);
    work.args(["work", "--queue", "q", "--server", &format!("http://{}", broker.addr), "--", "cat"]);
    otel_env(&mut work, &endpoint);
    let mut work = work.stdin(std::process::Stdio::null()).kill_on_drop(true).spawn().unwrap();
    let settle = span_named(&received, "settle q").await;
    let _ = std::process::Command::new("kill").args(["-TERM", &work.id().unwrap().to_string()]).status();
    let _ = tokio::time::timeout(Duration::from_secs(10), work.wait()).await;

    let (service, enqueue) = span_named(&received, "taskbroker.v1.ProducerService/Enqueue").await;
    assert_eq!(service, "taskbroker", "OTEL_SERVICE_NAME defaults to taskbroker");
    assert_eq!(hex(&enqueue.trace_id), CLIENT_TRACE);
    assert_eq!(hex(&enqueue.parent_span_id), CLIENT_SPAN, "the server span is the client's child");
    let (_, send) = span_named(&received, "send q").await;
    assert_eq!(hex(&send.trace_id), CLIENT_TRACE);
    assert_eq!(send.parent_span_id, enqueue.span_id);
    assert_eq!(attr(&send, "messaging.message.id").as_deref(), Some(task.id.as_str()));
    assert_eq!(attr(&send, "messaging.destination.name").as_deref(), Some("q"));
    assert_eq!(attr(&send, "messaging.system").as_deref(), Some("taskbroker"));
    let (_, receive) = span_named(&received, "receive q").await;
    assert_eq!(hex(&receive.trace_id), CLIENT_TRACE);
    assert_eq!(receive.parent_span_id, send.span_id, "delivery continues from the send span");
    let (_, settle) = settle;
    assert_eq!(hex(&settle.trace_id), CLIENT_TRACE);
    assert_eq!(attr(&settle, "taskbroker.outcome").as_deref(), Some("ack"));
    let (_, process) = span_named(&received, "process q").await;
    assert_eq!(hex(&process.trace_id), CLIENT_TRACE, "the worker's span is in the producer's trace");
    assert_eq!(process.parent_span_id, send.span_id);
    assert_eq!(process.links.len(), 1, "linked to the creation context");
    assert_eq!(attr(&process, "messaging.message.id").as_deref(), Some(task.id.as_str()));
    drop(broker);
}

#[tokio::test]
async fn the_call_span_names_the_principal_and_never_the_token() {
    let (received, endpoint) = receiver().await;

    let dir = tempfile::tempdir().unwrap();
    let token = "tbk_span-test-token";
    let hash = taskbroker::security::authn::hex(&taskbroker::security::authn::token_hash(token));
    let config = dir.path().join("taskbroker.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nenabled = true\n[[auth.principals]]\nname = \"billing-api\"\ntoken_sha256 = \"{hash}\"\n\
             grants = [{{ actions = [\"enqueue\"], queues = [\"*\"] }}]\n"
        ),
    )
    .unwrap();
    let mut cmd = serve::command(&["--storage", "memory", "--config", config.to_str().unwrap()]);
    otel_env(&mut cmd, &endpoint);
    let broker = ServeProcess::spawn("broker", cmd, &dir.path().join("broker.log")).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", broker.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer: tonic::metadata::AsciiMetadataValue = format!("Bearer {token}").parse().unwrap();
    let mut producer = pb::producer_service_client::ProducerServiceClient::with_interceptor(
        channel,
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        },
    );
    let req = pb::EnqueueRequest { queue: "q".into(), kind: "k".into(), ..Default::default() };
    producer.enqueue(req).await.unwrap();
    let (_, enqueue) = span_named(&received, "taskbroker.v1.ProducerService/Enqueue").await;
    assert_eq!(attr(&enqueue, "principal").as_deref(), Some("billing-api"));
    let everything = format!("{:?}", received.spans.lock().unwrap());
    assert!(!everything.contains(token), "the token is in no span");
    drop(broker);
}
