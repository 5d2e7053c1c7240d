//! Every RPC × {no token, wrong token, a principal without the grant, a
//! principal with it}, over gRPC, with authentication on; then the details:
//! routed-queue enforcement, task ids of other queues, the error's ErrorInfo.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use common::secure::{self, Clients};
use taskbroker::keda;
use taskbroker::pb;
use taskbroker::security::authn::{hex, token_hash};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Principal name, its token, its grants (TOML).
const PRINCIPALS: &[(&str, &str, &str)] = &[
    ("root", "t-root", r#"{ actions = ["enqueue", "consume", "inspect", "admin"], queues = ["*"] }"#),
    ("producer", "t-producer", r#"{ actions = ["enqueue"], queues = ["q"] }"#),
    ("consumer", "t-consumer", r#"{ actions = ["consume"], queues = ["q"] }"#),
    ("inspector", "t-inspector", r#"{ actions = ["inspect"], queues = ["q"] }"#),
    ("admin", "t-admin", r#"{ actions = ["admin"], queues = ["*"] }"#),
    (
        "outsider",
        "t-outsider",
        r#"{ actions = ["enqueue", "consume", "inspect", "admin"], queues = ["other"] }"#,
    ),
];

fn config() -> String {
    let mut toml = String::from(
        "[[routes]]\nkind = \"routed.*\"\nqueue = \"secret\"\n\n[auth]\nenabled = true\nprotect_reflection = true\n",
    );
    for (name, token, grants) in PRINCIPALS {
        let hash = hex(&token_hash(token));
        toml.push_str(&format!(
            "[[auth.principals]]\nname = \"{name}\"\ntoken_sha256 = \"{hash}\"\ngrants = [{grants}]\n"
        ));
    }
    toml
}

struct World {
    channel: Channel,
}

impl World {
    fn as_(&self, token: Option<&str>) -> Clients {
        Clients::new(self.channel.clone(), token)
    }

    fn root(&self) -> Clients {
        self.as_(Some("t-root"))
    }

    /// A task enqueued into `queue` by root; its id.
    async fn task(&self, queue: &str) -> String {
        let req = pb::EnqueueRequest { queue: queue.into(), kind: "k".into(), ..Default::default() };
        self.root().producer.enqueue(req).await.unwrap().into_inner().task.unwrap().id
    }

    /// A runtime schedule of queue `q` put by root; its name.
    async fn schedule(&self) -> String {
        let name = ulid::Ulid::new().to_string();
        let req = pb::PutScheduleRequest { schedule: Some(hourly(&name)) };
        self.root().admin.put_schedule(req).await.unwrap();
        name
    }

    /// A task of `q` leased by root: (task id, lease id).
    async fn leased(&self) -> (String, String) {
        self.task("q").await;
        let req = pb::LeaseRequest { queues: vec!["q".into()], max_tasks: 1, ..Default::default() };
        let t = self.root().worker.lease(req).await.unwrap().into_inner().tasks.remove(0);
        (t.task.unwrap().id, t.lease_id)
    }
}

type Outcome = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;
type Call = fn(Arc<World>, Clients) -> Outcome;

/// A per-item error of a batch or stream as the status of the call.
fn item(status: tonic_types::Status) -> Status {
    Status::new(Code::from(status.code), status.message)
}

fn enqueue(queue: &str) -> pb::EnqueueRequest {
    pb::EnqueueRequest { queue: queue.into(), kind: "k".into(), ..Default::default() }
}

/// An hourly schedule of queue `q`.
fn hourly(name: &str) -> pb::Schedule {
    pb::Schedule {
        name: name.into(),
        cron: "0 * * * *".into(),
        queue: "q".into(),
        kind: "k".into(),
        ..Default::default()
    }
}

fn scaled(queue: &str) -> keda::ScaledObjectRef {
    keda::ScaledObjectRef {
        name: "w".into(),
        namespace: "ns".into(),
        scaler_metadata: [("queue".to_string(), queue.to_string())].into_iter().collect(),
    }
}

/// Each RPC, the principal that holds its grant, and the call.
fn cases() -> Vec<(&'static str, &'static str, Call)> {
    vec![
        ("Enqueue", "t-producer", |_, mut c| {
            Box::pin(async move { c.producer.enqueue(enqueue("q")).await.map(drop) })
        }),
        ("EnqueueBatch", "t-producer", |_, mut c| {
            Box::pin(async move {
                let r =
                    c.producer.enqueue_batch(pb::EnqueueBatchRequest { tasks: vec![enqueue("q")] }).await?;
                match r.into_inner().results.remove(0).result {
                    Some(pb::enqueue_result::Result::Error(e)) => Err(item(e)),
                    _ => Ok(()),
                }
            })
        }),
        ("EnqueueStream", "t-producer", |_, mut c| {
            Box::pin(async move {
                let mut out =
                    c.producer.enqueue_stream(futures_util::stream::iter([enqueue("q")])).await?.into_inner();
                match out.message().await?.and_then(|m| m.result) {
                    Some(pb::enqueue_stream_response::Result::Error(e)) => Err(item(e)),
                    _ => Ok(()),
                }
            })
        }),
        ("GetTask", "t-inspector", |w, mut c| {
            Box::pin(async move {
                let task_id = w.task("q").await;
                c.producer
                    .get_task(pb::GetTaskRequest { task_id, include_dependencies: false })
                    .await
                    .map(drop)
            })
        }),
        ("WatchTask", "t-inspector", |w, mut c| {
            Box::pin(async move {
                let task_id = w.task("q").await;
                let mut s = c.producer.watch_task(pb::WatchTaskRequest { task_id }).await?.into_inner();
                s.message().await.map(drop)
            })
        }),
        ("CancelTask", "t-producer", |w, mut c| {
            Box::pin(async move {
                let task_id = w.task("q").await;
                c.producer.cancel_task(pb::CancelTaskRequest { task_id }).await.map(drop)
            })
        }),
        ("Lease", "t-consumer", |_, mut c| {
            Box::pin(async move {
                let req = pb::LeaseRequest { queues: vec!["q".into()], ..Default::default() };
                c.worker.lease(req).await.map(drop)
            })
        }),
        ("Ack", "t-consumer", |w, mut c| {
            Box::pin(async move {
                let (task_id, lease_id) = w.leased().await;
                c.worker.ack(pb::AckRequest { task_id, lease_id, result: vec![] }).await.map(drop)
            })
        }),
        ("Nack", "t-consumer", |w, mut c| {
            Box::pin(async move {
                let (task_id, lease_id) = w.leased().await;
                c.worker.nack(pb::NackRequest { task_id, lease_id, ..Default::default() }).await.map(drop)
            })
        }),
        ("ExtendLease", "t-consumer", |w, mut c| {
            Box::pin(async move {
                let (task_id, lease_id) = w.leased().await;
                let extend_by = Some(prost_types::Duration { seconds: 30, nanos: 0 });
                c.worker.extend_lease(pb::ExtendLeaseRequest { task_id, lease_id, extend_by }).await.map(drop)
            })
        }),
        ("Stream", "t-consumer", |_, mut c| {
            Box::pin(async move {
                let sub = pb::Subscribe { queues: vec!["q".into()], max_in_flight: 1, ..Default::default() };
                let first = pb::StreamRequest { msg: Some(pb::stream_request::Msg::Subscribe(sub)) };
                let stream = futures_util::stream::iter([first]).chain(futures_util::stream::pending());
                c.worker.stream(stream).await.map(drop)
            })
        }),
        ("ListQueues", "t-inspector", |w, mut c| {
            Box::pin(async move {
                w.task("q").await;
                let queues = c.admin.list_queues(pb::ListQueuesRequest {}).await?.into_inner().queues;
                match queues.iter().any(|q| q.name == "q") {
                    true => Ok(()),
                    false => Err(Status::permission_denied("q is not listed")),
                }
            })
        }),
        ("GetQueue", "t-inspector", |w, mut c| {
            Box::pin(async move {
                w.task("q").await;
                c.admin.get_queue(pb::GetQueueRequest { queue: "q".into() }).await.map(drop)
            })
        }),
        ("ListTasks", "t-inspector", |_, mut c| {
            Box::pin(async move {
                let req = pb::ListTasksRequest {
                    queue: "q".into(),
                    state: pb::TaskState::Ready as i32,
                    ..Default::default()
                };
                c.admin.list_tasks(req).await.map(drop)
            })
        }),
        ("ExplainRoute", "t-inspector", |_, mut c| {
            Box::pin(async move {
                let req =
                    pb::ExplainRouteRequest { queue: "q".into(), kind: "k".into(), ..Default::default() };
                c.admin.explain_route(req).await.map(drop)
            })
        }),
        ("PauseQueue", "t-admin", |_, mut c| {
            Box::pin(async move {
                c.admin.pause_queue(pb::PauseQueueRequest { queue: "q".into() }).await.map(drop)
            })
        }),
        ("ResumeQueue", "t-admin", |_, mut c| {
            Box::pin(async move {
                c.admin.resume_queue(pb::ResumeQueueRequest { queue: "q".into() }).await.map(drop)
            })
        }),
        ("PurgeQueue", "t-admin", |_, mut c| {
            Box::pin(async move {
                let req =
                    pb::PurgeQueueRequest { queue: "q".into(), states: vec![pb::TaskState::Canceled as i32] };
                c.admin.purge_queue(req).await.map(drop)
            })
        }),
        ("RedriveTasks", "t-admin", |_, mut c| {
            Box::pin(async move {
                let req = pb::RedriveTasksRequest { queue: "q".into(), ..Default::default() };
                c.admin.redrive_tasks(req).await.map(drop)
            })
        }),
        ("ReloadConfig", "t-admin", |_, mut c| {
            // Started without a file: the granted call fails its precondition, after the check.
            Box::pin(async move { c.admin.reload_config(pb::ReloadConfigRequest {}).await.map(drop) })
        }),
        ("ListSchedules", "t-inspector", |w, mut c| {
            Box::pin(async move {
                let name = w.schedule().await;
                let listed =
                    c.admin.list_schedules(pb::ListSchedulesRequest {}).await?.into_inner().schedules;
                match listed.iter().any(|s| s.name == name) {
                    true => Ok(()),
                    false => Err(Status::permission_denied("the schedule of q is not listed")),
                }
            })
        }),
        ("PutSchedule", "t-admin", |_, mut c| {
            Box::pin(async move {
                let req = pb::PutScheduleRequest { schedule: Some(hourly(&ulid::Ulid::new().to_string())) };
                c.admin.put_schedule(req).await.map(drop)
            })
        }),
        ("TriggerSchedule", "t-admin", |w, mut c| {
            Box::pin(async move {
                let name = w.schedule().await;
                c.admin.trigger_schedule(pb::TriggerScheduleRequest { name }).await.map(drop)
            })
        }),
        ("DeleteSchedule", "t-admin", |w, mut c| {
            Box::pin(async move {
                let name = w.schedule().await;
                c.admin.delete_schedule(pb::DeleteScheduleRequest { name }).await.map(drop)
            })
        }),
        ("ExternalScaler.GetMetrics", "t-inspector", |w, _| {
            Box::pin(async move {
                let req = keda::GetMetricsRequest {
                    scaled_object_ref: Some(scaled("q")),
                    metric_name: String::new(),
                };
                scaler(&w, CURRENT.with(|t| t.get())).get_metrics(req).await.map(drop)
            })
        }),
    ]
}

thread_local! {
    /// The token of the case being run (the scaler client is built apart).
    static CURRENT: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

fn scaler(
    w: &World,
    token: Option<&'static str>,
) -> keda::external_scaler_client::ExternalScalerClient<common::secure::Authed> {
    keda::external_scaler_client::ExternalScalerClient::with_interceptor(
        w.channel.clone(),
        common::secure::Bearer::new(token),
    )
}

use futures_util::StreamExt;

#[tokio::test(flavor = "current_thread")]
async fn every_rpc_refuses_strangers_and_the_ungranted_and_serves_the_granted() {
    let running = secure::start(&config()).await;
    let world = Arc::new(World { channel: secure::connect(running.addr, None).await.unwrap() });
    let mut failures = Vec::new();
    for (rpc, granted, call) in cases() {
        for (who, token) in [
            ("no token", None),
            ("wrong token", Some("t-nobody")),
            ("outsider", Some("t-outsider")),
            ("granted", Some(granted)),
        ] {
            CURRENT.with(|t| t.set(token));
            let outcome = call(world.clone(), world.as_(token)).await;
            let code = outcome.as_ref().err().map(Status::code);
            let ok = match who {
                "no token" | "wrong token" => code == Some(Code::Unauthenticated),
                "outsider" => code == Some(Code::PermissionDenied),
                _ => !matches!(code, Some(Code::Unauthenticated | Code::PermissionDenied)),
            };
            if !ok {
                failures.push(format!("{rpc} with {who}: {outcome:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Health is open to all; reflection is protected here (protect_reflection).
    let mut health = tonic_health::pb::health_client::HealthClient::new(world.channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect("health is open");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn enqueue_is_checked_against_the_queue_the_task_is_routed_to() {
    let running = secure::start(&config()).await;
    let world = World { channel: secure::connect(running.addr, None).await.unwrap() };
    let mut producer = world.as_(Some("t-producer"));
    let routed = pb::EnqueueRequest { kind: "routed.invoice".into(), ..Default::default() };
    let status = producer.producer.enqueue(routed).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let info = status.get_error_details().error_info().cloned().expect("ErrorInfo");
    assert_eq!(info.reason, "PERMISSION_DENIED");
    assert_eq!(info.metadata.get("action").map(String::as_str), Some("enqueue"));
    assert_eq!(
        info.metadata.get("queue").map(String::as_str),
        Some("secret"),
        "the routed queue, not the asked one"
    );
    // Naming its own queue explicitly works; the route only applies without one.
    producer
        .producer
        .enqueue(pb::EnqueueRequest {
            queue: "q".into(),
            kind: "routed.invoice".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn task_ids_of_other_queues_cannot_be_probed() {
    let running = secure::start(&config()).await;
    let world = World { channel: secure::connect(running.addr, None).await.unwrap() };
    let theirs = world.task("other").await;
    let unknown = ulid::Ulid::new().to_string();
    let mut inspector = world.as_(Some("t-inspector"));
    let forbidden = inspector
        .producer
        .get_task(pb::GetTaskRequest { task_id: theirs.clone(), include_dependencies: false })
        .await
        .unwrap_err();
    let missing = inspector
        .producer
        .get_task(pb::GetTaskRequest { task_id: unknown.clone(), include_dependencies: false })
        .await
        .unwrap_err();
    assert_eq!((forbidden.code(), missing.code()), (Code::PermissionDenied, Code::PermissionDenied));
    let (a, b) = (
        forbidden.get_error_details().error_info().cloned().unwrap(),
        missing.get_error_details().error_info().cloned().unwrap(),
    );
    assert_eq!(a.metadata.get("queue"), None, "the task's queue is not told");
    let keys = |m: &std::collections::HashMap<String, String>| {
        m.keys().cloned().collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(keys(&a.metadata), keys(&b.metadata));
    assert_eq!(forbidden.message().replace(&theirs, "ID"), missing.message().replace(&unknown, "ID"));
    // Root may look everywhere: for it an unknown id is just NOT_FOUND.
    let status = world
        .root()
        .producer
        .get_task(pb::GetTaskRequest { task_id: unknown, include_dependencies: false })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stream_may_not_settle_tasks_of_queues_it_may_not_consume() {
    let running = secure::start(&config()).await;
    let world = World { channel: secure::connect(running.addr, None).await.unwrap() };
    // root leases a task of "other"; the consumer of "q" tries to ack it over its stream.
    world.task("other").await;
    let req = pb::LeaseRequest { queues: vec!["other".into()], max_tasks: 1, ..Default::default() };
    let leased = world.root().worker.lease(req).await.unwrap().into_inner().tasks.remove(0);
    let t = (leased.task.unwrap().id, leased.lease_id);
    let mut consumer = world.as_(Some("t-consumer"));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let sub = pb::Subscribe { queues: vec!["q".into()], max_in_flight: 1, ..Default::default() };
    tx.send(pb::StreamRequest { msg: Some(pb::stream_request::Msg::Subscribe(sub)) }).await.unwrap();
    let ack = pb::AckRequest { task_id: t.0.clone(), lease_id: t.1.clone(), result: vec![] };
    tx.send(pb::StreamRequest { msg: Some(pb::stream_request::Msg::Ack(ack)) }).await.unwrap();
    let mut events =
        consumer.worker.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let settled = loop {
        let m = events.message().await.unwrap().expect("an answer");
        if let Some(pb::stream_response::Msg::Settled(s)) = m.msg {
            break s;
        }
    };
    assert_eq!(settled.task_id, t.0);
    let error = settled.error.expect("refused");
    assert_eq!(Code::from(error.code), Code::PermissionDenied);
    let task = world
        .root()
        .producer
        .get_task(pb::GetTaskRequest { task_id: t.0, include_dependencies: false })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(task.state, pb::TaskState::Leased as i32, "the foreign ack settled nothing");
    running.shutdown().await.unwrap();
}

/// A ListServices call over reflection v1 with `token`.
async fn reflect(channel: Channel, token: Option<&str>) -> Result<(), Status> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut client = ServerReflectionClient::with_interceptor(channel, common::secure::Bearer::new(token));
    let mut stream = client.server_reflection_info(tokio_stream::iter([req])).await?.into_inner();
    stream.message().await.map(drop)
}

#[tokio::test]
async fn reflection_is_open_unless_protected() {
    let running = secure::start(&config()).await;
    let channel = secure::connect(running.addr, None).await.unwrap();
    let refused = reflect(channel.clone(), None).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "protect_reflection = true");
    reflect(channel, Some("t-inspector")).await.expect("any principal may reflect");
    running.shutdown().await.unwrap();

    let open =
        secure::start(&config().replace("protect_reflection = true", "protect_reflection = false")).await;
    reflect(secure::connect(open.addr, None).await.unwrap(), None).await.expect("open by default");
    open.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_producer_cannot_depend_on_tasks_it_may_not_read() {
    let running = secure::start(&config()).await;
    let world = World { channel: secure::connect(running.addr, None).await.unwrap() };
    let theirs = world.task("other").await;
    let mine = world.task("q").await;
    let unknown = ulid::Ulid::new().to_string();
    let mut producer = world.as_(Some("t-producer"));
    let depends = |ids: Vec<String>| pb::EnqueueRequest {
        queue: "q".into(),
        kind: "k".into(),
        depends_on: ids,
        ..Default::default()
    };
    let forbidden = producer.producer.enqueue(depends(vec![theirs.clone()])).await.unwrap_err();
    let missing = producer.producer.enqueue(depends(vec![unknown.clone()])).await.unwrap_err();
    for (status, id) in [(&forbidden, &theirs), (&missing, &unknown)] {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "DEPENDENCY_NOT_FOUND");
        assert_eq!(info.metadata.get("task_ids"), Some(id), "another queue's task looks unknown");
    }
    producer.producer.enqueue(depends(vec![mine])).await.expect("a task of its own queue");
    running.shutdown().await.unwrap();
}
