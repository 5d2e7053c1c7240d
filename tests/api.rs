//! The broker's behaviour through real gRPC: ordering, long-polling, leases,
//! retries, delays, dedup, retention, routing, concurrency, health and
//! reflection. Error paths and limits are in `api_errors.rs`.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{secs, state, TestServer, T0};
use taskbroker::config::StorageKind;
use taskbroker::pb;
use taskbroker::pb::TaskState;
use tonic::transport::Channel;

/// A timestamp `ms` milliseconds after the manual clock's start.
fn at(ms: u64) -> prost_types::Timestamp {
    let t = T0 + ms;
    prost_types::Timestamp { seconds: (t / 1000) as i64, nanos: ((t % 1000) * 1_000_000) as i32 }
}

fn task(t: &pb::LeasedTask) -> &pb::Task {
    t.task.as_ref().unwrap()
}

fn ids(tasks: &[pb::LeasedTask]) -> Vec<String> {
    tasks.iter().map(|t| task(t).id.clone()).collect()
}

async fn enqueue_p(s: &mut TestServer, queue: &str, kind: &str, priority: u32) -> pb::Task {
    s.enqueue_req(pb::EnqueueRequest {
        queue: queue.into(),
        kind: kind.into(),
        priority: Some(priority),
        ..Default::default()
    })
    .await
}

async fn nack(
    s: &mut TestServer,
    t: &pb::LeasedTask,
    error: &str,
    retry_after: Option<prost_types::Duration>,
    no_retry: bool,
) -> pb::Task {
    s.worker
        .nack(pb::NackRequest {
            task_id: task(t).id.clone(),
            lease_id: t.lease_id.clone(),
            error: error.into(),
            retry_after,
            no_retry,
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap()
}

async fn channel(s: &TestServer) -> Channel {
    Channel::from_shared(format!("http://{}", s.addr)).unwrap().connect().await.unwrap()
}

#[tokio::test]
async fn lease_delivers_higher_priority_first_and_fifo_within_a_priority() {
    let mut s = common::start().await;
    let a = enqueue_p(&mut s, "q", "a", 0).await;
    let b = enqueue_p(&mut s, "q", "b", 5).await;
    let c = enqueue_p(&mut s, "q", "c", 9).await;
    let d = enqueue_p(&mut s, "q", "d", 5).await;
    let e = enqueue_p(&mut s, "q", "e", 0).await;
    let leased = s.lease(&["q"], 10).await;
    assert_eq!(ids(&leased), [c.id, b.id, d.id, a.id, e.id]);
    s.shutdown().await;
}

#[tokio::test]
async fn lease_prefers_queues_in_order_and_fills_the_rest_from_later_queues() {
    let mut s = common::start().await;
    let q1: Vec<_> = [s.enqueue("q1", "k").await.id, s.enqueue("q1", "k").await.id].into();
    let mut q2 = Vec::new();
    for _ in 0..3 {
        q2.push(s.enqueue("q2", "k").await.id);
    }
    s.enqueue("q3", "k").await;
    // q1 is drained first, q2 fills the rest; q3 is not reached.
    let leased = s.lease(&["q1", "q2", "q3"], 4).await;
    assert_eq!(ids(&leased), [q1[0].clone(), q1[1].clone(), q2[0].clone(), q2[1].clone()]);
    // An empty queue first in line: the first queue with ready work wins.
    let leased = s.lease(&["empty", "q2", "q3"], 1).await;
    assert_eq!(ids(&leased), [q2[2].clone()]);
    s.shutdown().await;
}

#[tokio::test]
async fn long_poll_lease_returns_as_soon_as_a_task_is_enqueued() {
    let mut s = common::start().await;
    let mut worker = s.worker.clone();
    let mut waiting = tokio::spawn(async move {
        worker
            .lease(pb::LeaseRequest {
                queues: vec!["lp".into()],
                max_tasks: 1,
                wait: Some(secs(30)),
                ..Default::default()
            })
            .await
    });
    // Nothing is ready: the call is parked, not answered empty.
    assert!(tokio::time::timeout(Duration::from_millis(300), &mut waiting).await.is_err());
    let t = s.enqueue("lp", "k").await;
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting Lease returned long before its 30s wait")
        .unwrap()
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(ids(&got), [t.id]);
    s.shutdown().await;
}

#[tokio::test]
async fn long_poll_lease_with_nothing_ready_returns_empty_after_the_wait() {
    let mut s = common::start().await;
    let wait = Duration::from_millis(200);
    let started = std::time::Instant::now();
    let got = s
        .worker
        .lease(pb::LeaseRequest {
            queues: vec!["idle".into()],
            wait: Some(prost_types::Duration { seconds: 0, nanos: 200_000_000 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(got.is_empty());
    assert!(started.elapsed() >= wait, "returned after {:?}", started.elapsed());
    s.shutdown().await;
}

#[tokio::test]
async fn expired_lease_is_redelivered_with_a_new_lease_id_then_dead_after_max_attempts() {
    let mut s = common::start_manual("").await;
    let t = s
        .enqueue_req(pb::EnqueueRequest {
            queue: "q".into(),
            kind: "k".into(),
            max_attempts: Some(2),
            ..Default::default()
        })
        .await;
    let first = s.lease(&["q"], 1).await.remove(0);
    assert_eq!(task(&first).attempt, 1);
    s.advance(Duration::from_secs(31)).await; // default lease_duration is 30s
    let back = s.get(&t.id).await;
    assert_eq!((state(&back), back.attempt), (TaskState::Ready, 1));

    let second = s.lease(&["q"], 1).await.remove(0);
    assert_eq!(task(&second).id, t.id);
    assert_eq!(task(&second).attempt, 2);
    assert_ne!(second.lease_id, first.lease_id);
    s.advance(Duration::from_secs(31)).await;
    let dead = s.get(&t.id).await;
    assert_eq!(state(&dead), TaskState::Dead);
    assert!(dead.last_error.contains("expired"), "last_error: {:?}", dead.last_error);
    assert!(s.lease(&["q"], 1).await.is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn extend_lease_pushes_the_deadline_out_and_keeps_the_task_leased() {
    let mut s = common::start_manual("").await;
    let t = s.enqueue("q", "k").await;
    let leased = s
        .worker
        .lease(pb::LeaseRequest {
            queues: vec!["q".into()],
            lease_duration: Some(secs(10)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks
        .remove(0);
    assert_eq!(leased.lease_expire_time, Some(at(10_000)));
    s.advance(Duration::from_secs(8)).await;
    let extended = s
        .worker
        .extend_lease(pb::ExtendLeaseRequest {
            task_id: t.id.clone(),
            lease_id: leased.lease_id.clone(),
            extend_by: Some(secs(20)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(extended.lease_expire_time, Some(at(28_000)));
    // Past the original 10s deadline, before the new one.
    s.advance(Duration::from_secs(10)).await;
    let now = s.get(&t.id).await;
    assert_eq!((state(&now), now.attempt), (TaskState::Leased, 1));
    s.ack(&leased).await.unwrap();
    assert_eq!(state(&s.get(&t.id).await), TaskState::Succeeded);
    s.shutdown().await;
}

const RETRY_CONFIG: &str = r#"
[queues.retry]
max_attempts = 3
retry_backoff = { initial = "5s", max = "1m", multiplier = 2.0, jitter = 0.0 }
"#;

#[tokio::test]
async fn nack_without_retry_after_schedules_the_queue_backoff_then_ready() {
    let mut s = common::start_manual(RETRY_CONFIG).await;
    let t = s.enqueue("retry", "k").await;
    let leased = s.lease(&["retry"], 1).await.remove(0);
    let nacked = nack(&mut s, &leased, "flaky", None, false).await;
    assert_eq!(state(&nacked), TaskState::Scheduled);
    assert_eq!(nacked.scheduled_time, Some(at(5_000)));
    assert_eq!(nacked.last_error, "flaky");
    s.advance(Duration::from_millis(4_999)).await;
    assert!(s.lease(&["retry"], 1).await.is_empty());
    s.advance(Duration::from_millis(1)).await;
    assert_eq!(state(&s.get(&t.id).await), TaskState::Ready);
    let again = s.lease(&["retry"], 1).await.remove(0);
    assert_eq!((task(&again).id.as_str(), task(&again).attempt), (t.id.as_str(), 2));
    // The second failure waits initial * multiplier.
    let nacked = nack(&mut s, &again, "flaky", None, false).await;
    assert_eq!(nacked.scheduled_time, Some(at(5_000 + 10_000)));
    s.shutdown().await;
}

#[tokio::test]
async fn nack_with_retry_after_uses_it_instead_of_the_backoff() {
    let mut s = common::start_manual(RETRY_CONFIG).await;
    let t = s.enqueue("retry", "k").await;
    let leased = s.lease(&["retry"], 1).await.remove(0);
    let nacked = nack(&mut s, &leased, "later", Some(secs(42)), false).await;
    assert_eq!(state(&nacked), TaskState::Scheduled);
    assert_eq!(nacked.scheduled_time, Some(at(42_000)));
    s.advance(Duration::from_secs(41)).await;
    assert!(s.lease(&["retry"], 1).await.is_empty());
    s.advance(Duration::from_secs(1)).await;
    assert_eq!(ids(&s.lease(&["retry"], 1).await), [t.id]);
    s.shutdown().await;
}

#[tokio::test]
async fn nack_with_no_retry_makes_the_task_dead_with_its_error() {
    let mut s = common::start_manual(RETRY_CONFIG).await;
    let t = s.enqueue("retry", "k").await;
    let leased = s.lease(&["retry"], 1).await.remove(0);
    let nacked = nack(&mut s, &leased, "poison", None, true).await;
    assert_eq!((state(&nacked), nacked.last_error.as_str()), (TaskState::Dead, "poison"));
    let got = s.get(&t.id).await;
    assert_eq!((state(&got), got.last_error.as_str(), got.attempt), (TaskState::Dead, "poison", 1));
    s.advance(Duration::from_secs(600)).await;
    assert!(s.lease(&["retry"], 1).await.is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn nack_on_the_last_attempt_makes_the_task_dead() {
    let mut s = common::start_manual(RETRY_CONFIG).await;
    let t = s
        .enqueue_req(pb::EnqueueRequest {
            queue: "retry".into(),
            kind: "k".into(),
            max_attempts: Some(2),
            ..Default::default()
        })
        .await;
    let first = s.lease(&["retry"], 1).await.remove(0);
    assert_eq!(state(&nack(&mut s, &first, "one", None, false).await), TaskState::Scheduled);
    s.advance(Duration::from_secs(5)).await;
    let second = s.lease(&["retry"], 1).await.remove(0);
    assert_eq!(task(&second).attempt, 2);
    let nacked = nack(&mut s, &second, "two", None, false).await;
    assert_eq!((state(&nacked), nacked.last_error.as_str()), (TaskState::Dead, "two"));
    assert_eq!(state(&s.get(&t.id).await), TaskState::Dead);
    s.shutdown().await;
}

#[tokio::test]
async fn delay_makes_a_scheduled_task_that_is_leasable_only_when_due() {
    let mut s = common::start_manual("").await;
    let t = s
        .enqueue_req(pb::EnqueueRequest {
            queue: "q".into(),
            kind: "k".into(),
            delay: Some(secs(10)),
            ..Default::default()
        })
        .await;
    assert_eq!((state(&t), t.scheduled_time), (TaskState::Scheduled, Some(at(10_000))));
    s.advance(Duration::from_millis(9_999)).await;
    assert!(s.lease(&["q"], 1).await.is_empty());
    assert_eq!(state(&s.get(&t.id).await), TaskState::Scheduled);
    s.advance(Duration::from_millis(1)).await;
    assert_eq!(state(&s.get(&t.id).await), TaskState::Ready);
    assert_eq!(ids(&s.lease(&["q"], 1).await), [t.id]);
    s.shutdown().await;
}

#[tokio::test]
async fn scheduled_time_makes_a_scheduled_task_that_is_leasable_only_when_due() {
    let mut s = common::start_manual("").await;
    let t = s
        .enqueue_req(pb::EnqueueRequest {
            queue: "q".into(),
            kind: "k".into(),
            scheduled_time: Some(at(60_000)),
            ..Default::default()
        })
        .await;
    assert_eq!((state(&t), t.scheduled_time), (TaskState::Scheduled, Some(at(60_000))));
    s.advance(Duration::from_secs(59)).await;
    assert!(s.lease(&["q"], 1).await.is_empty());
    s.advance(Duration::from_secs(1)).await;
    assert_eq!(state(&s.get(&t.id).await), TaskState::Ready);
    assert_eq!(ids(&s.lease(&["q"], 1).await), [t.id]);
    s.shutdown().await;
}

fn dedup(queue: &str, key: &str) -> pb::EnqueueRequest {
    pb::EnqueueRequest { queue: queue.into(), kind: "k".into(), dedup_key: key.into(), ..Default::default() }
}

async fn enqueue_full(s: &mut TestServer, req: pb::EnqueueRequest) -> (pb::Task, bool) {
    let r = s.producer.enqueue(req).await.unwrap().into_inner();
    (r.task.unwrap(), r.deduplicated)
}

#[tokio::test]
async fn dedup_key_returns_the_unfinished_task_of_the_same_queue_only() {
    let mut s = common::start().await;
    let (first, d) = enqueue_full(&mut s, dedup("a", "key")).await;
    assert!(!d);
    let (again, d) = enqueue_full(&mut s, dedup("a", "key")).await;
    assert_eq!((again.id.as_str(), d), (first.id.as_str(), true));
    // Still deduplicated while leased (unfinished).
    let leased = s.lease(&["a"], 1).await.remove(0);
    let (again, d) = enqueue_full(&mut s, dedup("a", "key")).await;
    assert_eq!((again.id.as_str(), d), (first.id.as_str(), true));
    // Another queue does not share the key.
    let (other, d) = enqueue_full(&mut s, dedup("b", "key")).await;
    assert!(!d);
    assert_ne!(other.id, first.id);
    // Finished, and the queue's dedup_window is 0: a new task.
    s.ack(&leased).await.unwrap();
    let (fresh, d) = enqueue_full(&mut s, dedup("a", "key")).await;
    assert!(!d);
    assert_ne!(fresh.id, first.id);
    s.shutdown().await;
}

#[tokio::test]
async fn dedup_key_matches_a_finished_task_only_within_the_dedup_window() {
    let mut s = common::start_manual("[queues.windowed]\ndedup_window = \"1m\"\n").await;
    let (first, _) = enqueue_full(&mut s, dedup("windowed", "key")).await;
    let leased = s.lease(&["windowed"], 1).await.remove(0);
    s.ack(&leased).await.unwrap();
    s.advance(Duration::from_secs(59)).await;
    let (again, d) = enqueue_full(&mut s, dedup("windowed", "key")).await;
    assert_eq!((again.id.as_str(), d, state(&again)), (first.id.as_str(), true, TaskState::Succeeded));
    s.advance(Duration::from_secs(1)).await;
    let (fresh, d) = enqueue_full(&mut s, dedup("windowed", "key")).await;
    assert!(!d);
    assert_ne!(fresh.id, first.id);
    assert_eq!(state(&fresh), TaskState::Ready);
    s.shutdown().await;
}

#[tokio::test]
async fn repeated_request_id_returns_the_first_task_deduplicated() {
    let mut s = common::start().await;
    let req = |kind: &str| pb::EnqueueRequest {
        queue: "q".into(),
        kind: kind.into(),
        request_id: "req-1".into(),
        ..Default::default()
    };
    let (first, d) = enqueue_full(&mut s, req("one")).await;
    assert!(!d);
    let (again, d) = enqueue_full(&mut s, req("two")).await;
    assert_eq!((again.id.as_str(), again.kind.as_str(), d), (first.id.as_str(), "one", true));
    assert_eq!(s.lease(&["q"], 10).await.len(), 1, "only one task was created");
    s.shutdown().await;
}

#[tokio::test]
async fn ack_stores_the_result_and_the_task_is_removed_after_retention() {
    let mut s = common::start_manual("[queues.short]\nretention = \"1m\"\n").await;
    let t = s.enqueue("short", "k").await;
    let leased = s.lease(&["short"], 1).await.remove(0);
    s.worker
        .ack(pb::AckRequest {
            task_id: t.id.clone(),
            lease_id: leased.lease_id.clone(),
            result: b"done".to_vec(),
        })
        .await
        .unwrap();
    let got = s.get(&t.id).await;
    assert_eq!((state(&got), got.result.as_slice()), (TaskState::Succeeded, &b"done"[..]));
    s.advance(Duration::from_secs(59)).await;
    assert_eq!(state(&s.get(&t.id).await), TaskState::Succeeded);
    s.advance(Duration::from_secs(2)).await;
    let gone = s
        .producer
        .get_task(pb::GetTaskRequest { task_id: t.id.clone(), include_dependencies: false })
        .await
        .unwrap_err();
    assert_eq!((gone.code(), common::reason(&gone).as_str()), (tonic::Code::NotFound, "TASK_NOT_FOUND"));
    s.shutdown().await;
}

const ROUTES: &str = r#"
[[routes]]
kind = "email.*"
headers = { tenant = "acme" }
queue = "emails"
priority = 7
"#;

#[tokio::test]
async fn routes_pick_queue_and_priority_explicit_queue_wins_and_unmatched_go_to_default() {
    let mut s = common::start_with(common::Options { config: ROUTES, ..Default::default() }).await;
    let req = |queue: &str, kind: &str, tenant: &str| pb::EnqueueRequest {
        queue: queue.into(),
        kind: kind.into(),
        headers: [("tenant".to_string(), tenant.to_string())].into(),
        ..Default::default()
    };
    let routed = s.enqueue_req(req("", "email.send", "acme")).await;
    assert_eq!((routed.queue.as_str(), routed.priority), ("emails", 7));
    let explicit = s.enqueue_req(req("other", "email.send", "acme")).await;
    assert_eq!((explicit.queue.as_str(), explicit.priority), ("other", 0));
    let wrong_header = s.enqueue_req(req("", "email.send", "globex")).await;
    assert_eq!((wrong_header.queue.as_str(), wrong_header.priority), ("default", 0));
    let wrong_kind = s.enqueue_req(req("", "sms.send", "acme")).await;
    assert_eq!((wrong_kind.queue.as_str(), wrong_kind.priority), ("default", 0));
    // An explicit priority beats the route's.
    let prio = s.enqueue_req(pb::EnqueueRequest { priority: Some(2), ..req("", "email.x", "acme") }).await;
    assert_eq!((prio.queue.as_str(), prio.priority), ("emails", 2));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_workers_drain_every_task_exactly_once() {
    let mut s = common::start().await;
    let mut enqueued = HashSet::new();
    for batch in 0..2 {
        let tasks = (0..1000)
            .map(|i| pb::EnqueueRequest {
                queue: "drain".into(),
                kind: format!("k{batch}-{i}"),
                ..Default::default()
            })
            .collect();
        let results = s.producer.enqueue_batch(pb::EnqueueBatchRequest { tasks }).await.unwrap().into_inner();
        for r in results.results {
            let Some(pb::enqueue_result::Result::Task(t)) = r.result else { panic!("item failed: {r:?}") };
            enqueued.insert(t.id);
        }
    }
    assert_eq!(enqueued.len(), 2000);

    let workers: Vec<_> = (0..8)
        .map(|w| {
            let mut worker = s.worker.clone();
            tokio::spawn(async move {
                let mut delivered = Vec::new();
                loop {
                    let tasks = worker
                        .lease(pb::LeaseRequest {
                            queues: vec!["drain".into()],
                            max_tasks: 10,
                            worker_id: format!("w{w}"),
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .tasks;
                    if tasks.is_empty() {
                        return delivered;
                    }
                    for t in tasks {
                        let id = task(&t).id.clone();
                        worker
                            .ack(pb::AckRequest { task_id: id.clone(), lease_id: t.lease_id, result: vec![] })
                            .await
                            .unwrap();
                        delivered.push(id);
                    }
                }
            })
        })
        .collect();
    let mut delivered = Vec::new();
    for w in workers {
        delivered.extend(w.await.unwrap());
    }
    let unique: HashSet<_> = delivered.iter().cloned().collect();
    assert_eq!(delivered.len(), 2000, "no task delivered twice");
    assert_eq!(unique, enqueued, "every task delivered");
    for id in &enqueued {
        assert_eq!(state(&s.get(id).await), TaskState::Succeeded);
    }
    s.shutdown().await;
}

#[tokio::test]
async fn grpc_health_reports_the_server_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let s = common::start().await;
    let mut health = HealthClient::new(channel(&s).await);
    for service in ["", "taskbroker.v1.ProducerService", "taskbroker.v1.WorkerService"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "service {service:?}");
    }
    s.shutdown().await;
}

/// The services a reflection client of `$version` lists.
macro_rules! list_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut client = ServerReflectionClient::new($channel);
        let mut stream = client.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
        match stream.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                l.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }};
}

#[tokio::test]
async fn server_reflection_v1_and_v1alpha_list_the_broker_services() {
    let s = common::start().await;
    let v1 = list_services!(v1, channel(&s).await);
    let v1alpha = list_services!(v1alpha, channel(&s).await);
    for (version, names) in [("v1", v1), ("v1alpha", v1alpha)] {
        for service in ["taskbroker.v1.ProducerService", "taskbroker.v1.WorkerService"] {
            assert!(names.iter().any(|n| n == service), "{version} lists {names:?}, missing {service}");
        }
    }
    s.shutdown().await;
}

#[tokio::test]
async fn embedded_store_serves_enqueue_lease_ack_and_nack() {
    let mut s = common::start_with(common::Options {
        storage: StorageKind::Embedded,
        config: RETRY_CONFIG,
        manual_clock: true,
        ..Default::default()
    })
    .await;
    let a = s.enqueue("retry", "a").await;
    let b = enqueue_p(&mut s, "retry", "b", 5).await;
    let leased = s.lease(&["retry"], 2).await;
    assert_eq!(ids(&leased), [b.id.clone(), a.id.clone()]);
    s.ack(&leased[0]).await.unwrap();
    assert_eq!(state(&s.get(&b.id).await), TaskState::Succeeded);
    let nacked = nack(&mut s, &leased[1], "again", None, false).await;
    assert_eq!((state(&nacked), nacked.scheduled_time), (TaskState::Scheduled, Some(at(5_000))));
    s.advance(Duration::from_secs(5)).await;
    let again = s.lease(&["retry"], 1).await.remove(0);
    assert_eq!((task(&again).id.as_str(), task(&again).attempt), (a.id.as_str(), 2));
    let dead = nack(&mut s, &again, "give up", None, true).await;
    assert_eq!(state(&dead), TaskState::Dead);
    assert_eq!(s.get(&a.id).await.last_error, "give up");
    s.shutdown().await;
}

#[tokio::test]
async fn a_dependent_waits_then_a_parked_worker_gets_it_with_its_dependencies_results() {
    let mut s = common::start().await;
    let header = s.enqueue("header", "part").await;
    let chord = s
        .enqueue_req(pb::EnqueueRequest {
            queue: "callback".into(),
            kind: "join".into(),
            depends_on: vec![header.id.clone()],
            ..Default::default()
        })
        .await;
    assert_eq!((state(&chord), chord.pending_dependencies), (TaskState::Waiting, 1));
    assert_eq!(chord.depends_on, std::slice::from_ref(&header.id));
    // A worker parked on the dependent's queue is woken by the ack in the
    // other queue that releases it.
    let mut worker = s.worker.clone();
    let mut waiting = tokio::spawn(async move {
        let wait = Some(secs(30));
        let req =
            pb::LeaseRequest { queues: vec!["callback".into()], max_tasks: 1, wait, ..Default::default() };
        worker.lease(req).await
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting).await.is_err(),
        "nothing to run yet"
    );
    let part = s.lease(&["header"], 1).await.remove(0);
    let ack = pb::AckRequest {
        task_id: header.id.clone(),
        lease_id: part.lease_id.clone(),
        result: b"42".to_vec(),
    };
    s.worker.ack(ack).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the parked Lease returned once the dependent was released")
        .unwrap()
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(ids(&got), std::slice::from_ref(&chord.id));
    let req = pb::GetTaskRequest { task_id: chord.id.clone(), include_dependencies: true };
    let got = s.producer.get_task(req).await.unwrap().into_inner();
    assert_eq!(got.task.unwrap().pending_dependencies, 0);
    let deps: Vec<_> = got.dependencies.iter().map(|d| (d.id.clone(), d.result.clone())).collect();
    assert_eq!(deps, [(header.id.clone(), b"42".to_vec())]);
    let plain = pb::GetTaskRequest { task_id: chord.id.clone(), include_dependencies: false };
    assert!(s.producer.get_task(plain).await.unwrap().into_inner().dependencies.is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn a_task_past_its_ttl_is_canceled_as_expired_not_delivered() {
    let mut s = common::start_manual("").await;
    let t = s
        .enqueue_req(pb::EnqueueRequest {
            queue: "ttl".into(),
            kind: "k".into(),
            ttl: Some(secs(10)),
            ..Default::default()
        })
        .await;
    assert_eq!(t.expire_time, Some(at(10_000)));
    s.advance(Duration::from_secs(10)).await;
    let expired = s.get(&t.id).await;
    assert_eq!((state(&expired), expired.last_error.as_str()), (TaskState::Canceled, "expired"));
    assert!(s.lease(&["ttl"], 1).await.is_empty());
    s.shutdown().await;
}
