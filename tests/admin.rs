//! AdminService over real gRPC: every RPC and its error cases, on the memory
//! and the embedded store (Redis: tests/admin_redis.rs and the store
//! conformance suite).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{bad_fields, reason, secs, TestServer};
use taskbroker::config::StorageKind;
use taskbroker::pb;
use tonic::Code;

const CONFIG: &str = r#"
[queues.q]
lease_duration = "10s"
max_attempts = 3

[queues.emails]
default_priority = 3

[[routes]]
kind = "email.*"
headers = { tenant = "acme" }
queue = "acme"
priority = 7

[[routes]]
kind = "email.*"
queue = "emails"
"#;

async fn server(storage: StorageKind) -> TestServer {
    common::start_with(common::Options { storage, config: CONFIG, manual_clock: true, config_file: true })
        .await
}

async fn info(s: &mut TestServer, queue: &str) -> pb::QueueInfo {
    s.admin.get_queue(pb::GetQueueRequest { queue: queue.into() }).await.unwrap().into_inner()
}

async fn nack_dead(s: &mut TestServer, t: &pb::LeasedTask) {
    s.worker
        .nack(pb::NackRequest {
            task_id: t.task.as_ref().unwrap().id.clone(),
            lease_id: t.lease_id.clone(),
            error: "boom".into(),
            retry_after: None,
            no_retry: true,
        })
        .await
        .unwrap();
}

/// Enqueue 10, lease 4, ack 2, nack 1 to dead, let 1 lease expire.
async fn scripted(s: &mut TestServer) {
    for _ in 0..10 {
        s.enqueue("q", "k").await;
    }
    let leased = s.lease(&["q"], 4).await;
    assert_eq!(leased.len(), 4);
    s.ack(&leased[0]).await.unwrap();
    s.ack(&leased[1]).await.unwrap();
    nack_dead(s, &leased[2]).await;
    // The fourth's lease (10s) runs out.
    s.advance(Duration::from_secs(11)).await;
}

async fn counts_and_totals_follow_a_scripted_sequence(storage: StorageKind) {
    let mut s = server(storage).await;
    scripted(&mut s).await;
    let q = info(&mut s, "q").await;
    let c = q.counts.unwrap();
    assert_eq!(
        (c.scheduled, c.ready, c.leased, c.succeeded, c.dead, c.canceled),
        (0, 7, 0, 2, 1, 0),
        "7 ready (6 never leased + 1 expired), 2 succeeded, 1 dead"
    );
    let t = q.totals.unwrap();
    assert_eq!((t.enqueued, t.delivered, t.acked, t.nacked, t.dead, t.expired), (10, 4, 2, 1, 1, 1));
    assert!(q.declared && !q.paused);
    let settings = q.settings.unwrap();
    assert_eq!((settings.max_attempts, settings.lease_duration), (3, Some(secs(10))));
    assert_eq!(q.oldest_ready_time.unwrap().seconds, (common::T0 / 1000) as i64, "waiting since the start");
    let all = s.admin.list_queues(pb::ListQueuesRequest {}).await.unwrap().into_inner().queues;
    let names: Vec<&str> = all.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["default", "emails", "q"], "declared ones and those holding tasks, by name");
    s.shutdown().await;
}

#[tokio::test]
async fn counts_and_totals_follow_a_scripted_sequence_memory() {
    counts_and_totals_follow_a_scripted_sequence(StorageKind::Memory).await;
}

#[tokio::test]
async fn counts_and_totals_follow_a_scripted_sequence_embedded() {
    counts_and_totals_follow_a_scripted_sequence(StorageKind::Embedded).await;
}

#[tokio::test]
async fn unknown_and_malformed_queues_are_refused_precisely() {
    let mut s = server(StorageKind::Memory).await;
    let e = s.admin.get_queue(pb::GetQueueRequest { queue: "nowhere".into() }).await.unwrap_err();
    assert_eq!((e.code(), reason(&e)), (Code::NotFound, "QUEUE_NOT_FOUND".into()));
    let e = s.admin.pause_queue(pb::PauseQueueRequest { queue: "nowhere".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = s.admin.get_queue(pb::GetQueueRequest { queue: "bad name!".into() }).await.unwrap_err();
    assert_eq!((e.code(), bad_fields(&e)), (Code::InvalidArgument, vec!["queue".to_string()]));
    s.enqueue("made-on-first-use", "k").await;
    let q = info(&mut s, "made-on-first-use").await;
    assert!(!q.declared);
    s.shutdown().await;
}

#[tokio::test]
async fn pause_stops_delivery_and_resume_wakes_a_waiting_worker_at_once() {
    let mut s = common::start_with(common::Options { config: CONFIG, ..Default::default() }).await;
    s.enqueue("q", "k").await;
    let paused = s.admin.pause_queue(pb::PauseQueueRequest { queue: "q".into() }).await.unwrap().into_inner();
    assert!(paused.paused);
    assert!(s.lease(&["q"], 10).await.is_empty(), "a paused queue delivers nothing");
    s.enqueue("q", "k").await;
    assert_eq!(info(&mut s, "q").await.counts.unwrap().ready, 2, "enqueues are still accepted");
    let mut worker = s.worker.clone();
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        let request = pb::LeaseRequest {
            queues: vec!["q".into()],
            max_tasks: 10,
            wait: Some(secs(20)),
            ..Default::default()
        };
        worker.lease(request).await.unwrap().into_inner().tasks
    });
    // The long-poll is parked on the queue before the resume.
    while s.broker.waited_queues() == 0 {
        tokio::task::yield_now().await;
    }
    let resumed =
        s.admin.resume_queue(pb::ResumeQueueRequest { queue: "q".into() }).await.unwrap().into_inner();
    assert!(!resumed.paused);
    let got = waiting.await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(started.elapsed() < Duration::from_secs(5), "woken by the resume, not by the wait running out");
    s.shutdown().await;
}

#[tokio::test]
async fn purge_removes_the_named_states_only_and_refuses_leased() {
    let mut s = server(StorageKind::Memory).await;
    scripted(&mut s).await;
    let leased = s.lease(&["q"], 1).await;
    assert_eq!(leased.len(), 1);
    for states in [vec![], vec![pb::TaskState::Leased as i32], vec![0]] {
        let e = s.admin.purge_queue(pb::PurgeQueueRequest { queue: "q".into(), states }).await.unwrap_err();
        assert_eq!((e.code(), bad_fields(&e)), (Code::InvalidArgument, vec!["states".to_string()]));
    }
    let states = vec![pb::TaskState::Dead as i32, pb::TaskState::Succeeded as i32];
    let r = s.admin.purge_queue(pb::PurgeQueueRequest { queue: "q".into(), states }).await.unwrap();
    assert_eq!(r.into_inner().purged, 3);
    let c = info(&mut s, "q").await.counts.unwrap();
    assert_eq!((c.ready, c.leased, c.succeeded, c.dead), (6, 1, 0, 0));
    let states = vec![pb::TaskState::Ready as i32];
    let r = s.admin.purge_queue(pb::PurgeQueueRequest { queue: "q".into(), states }).await.unwrap();
    assert_eq!(r.into_inner().purged, 6);
    s.ack(&leased[0]).await.expect("the leased task was left alone and can be acked");
    s.shutdown().await;
}

async fn page(s: &mut TestServer, state: pb::TaskState, size: u32, token: &str) -> pb::ListTasksResponse {
    let request = pb::ListTasksRequest {
        queue: "q".into(),
        state: state as i32,
        page_size: size,
        page_token: token.into(),
    };
    s.admin.list_tasks(request).await.unwrap().into_inner()
}

#[tokio::test]
async fn list_tasks_pages_oldest_first_without_repeats_under_concurrent_enqueues() {
    let mut s = common::start_with(common::Options { config: CONFIG, ..Default::default() }).await;
    for _ in 0..250 {
        s.enqueue("q", "k").await;
    }
    let (mut seen, mut ids, mut token, mut pages) = (HashSet::new(), Vec::new(), String::new(), 0);
    loop {
        let p = page(&mut s, pb::TaskState::Ready, 100, &token).await;
        pages += 1;
        for t in &p.tasks {
            assert!(seen.insert(t.id.clone()), "task {} returned twice", t.id);
            ids.push(t.id.clone());
        }
        // Work arrives while the operator pages.
        for _ in 0..30 {
            s.enqueue("q", "k").await;
        }
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
        assert!(pages < 50, "paging must end");
    }
    assert!(ids.len() >= 250);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first");
    let default = page(&mut s, pb::TaskState::Ready, 0, "").await;
    assert_eq!(default.tasks.len(), 100, "page_size 0 is 100");
    for (size, token, field) in [(1001, "", "page_size"), (10, "garbage", "page_token")] {
        let request = pb::ListTasksRequest {
            queue: "q".into(),
            state: pb::TaskState::Ready as i32,
            page_size: size,
            page_token: token.into(),
        };
        let e = s.admin.list_tasks(request).await.unwrap_err();
        assert_eq!((e.code(), bad_fields(&e)), (Code::InvalidArgument, vec![field.to_string()]));
    }
    let request = pb::ListTasksRequest { queue: "q".into(), ..Default::default() };
    let e = s.admin.list_tasks(request).await.unwrap_err();
    assert_eq!(bad_fields(&e), vec!["state".to_string()]);
    s.shutdown().await;
}

#[tokio::test]
async fn redrive_puts_dead_tasks_back_with_attempt_zero_and_skips_the_rest() {
    let mut s = server(StorageKind::Memory).await;
    for _ in 0..5 {
        s.enqueue("q", "k").await;
    }
    let leased = s.lease(&["q"], 5).await;
    for t in &leased[..4] {
        nack_dead(&mut s, t).await;
    }
    s.ack(&leased[4]).await.unwrap();
    let dead = page(&mut s, pb::TaskState::Dead, 10, "").await.tasks;
    assert_eq!(dead.len(), 4);
    assert!(dead.iter().all(|t| t.last_error == "boom"));
    let succeeded = leased[4].task.as_ref().unwrap().id.clone();
    let request = pb::RedriveTasksRequest {
        queue: "q".into(),
        task_ids: vec![dead[0].id.clone(), succeeded.clone()],
        limit: 0,
    };
    let r = s.admin.redrive_tasks(request).await.unwrap().into_inner();
    assert_eq!(r.redriven, 1, "the succeeded task is skipped, not an error");
    let t = s.get(&dead[0].id).await;
    assert_eq!((common::state(&t), t.attempt, t.last_error.as_str()), (pb::TaskState::Ready, 0, "boom"));
    let request = pb::RedriveTasksRequest { queue: "q".into(), task_ids: vec![], limit: 2 };
    assert_eq!(s.admin.redrive_tasks(request).await.unwrap().into_inner().redriven, 2);
    let request = pb::RedriveTasksRequest { queue: "q".into(), task_ids: vec![], limit: 0 };
    assert_eq!(s.admin.redrive_tasks(request).await.unwrap().into_inner().redriven, 1);
    assert_eq!(s.lease(&["q"], 10).await.len(), 4, "redriven tasks are delivered again");
    let request = pb::RedriveTasksRequest { queue: "q".into(), task_ids: vec!["x".into()], limit: 0 };
    let e = s.admin.redrive_tasks(request).await.unwrap_err();
    assert_eq!(bad_fields(&e), vec!["task_ids[0]".to_string()]);
    s.shutdown().await;
}

#[tokio::test]
async fn explain_route_names_the_rule_queue_and_priority() {
    let mut s = server(StorageKind::Memory).await;
    let explain = |queue: &str, kind: &str, headers: &[(&str, &str)]| {
        let request = pb::ExplainRouteRequest {
            queue: queue.into(),
            kind: kind.into(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let mut admin = s.admin.clone();
        async move { admin.explain_route(request).await.unwrap().into_inner() }
    };
    let r = explain("", "email.send", &[("tenant", "acme")]).await;
    assert_eq!((r.queue.as_str(), r.priority, r.route_index), ("acme", 7, 0));
    let r = explain("", "email.send", &[]).await;
    assert_eq!((r.queue.as_str(), r.priority, r.route_index), ("emails", 3, 1));
    let r = explain("", "sms.send", &[]).await;
    assert_eq!((r.queue.as_str(), r.route_index), ("default", -1));
    let r = explain("emails", "email.send", &[("tenant", "acme")]).await;
    assert_eq!((r.queue.as_str(), r.priority, r.route_index), ("emails", 3, -1));
    assert!(!r.explanation.is_empty());
    let e = s
        .admin
        .explain_route(pb::ExplainRouteRequest { queue: "bad name".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&e), vec!["queue".to_string()]);
    s.shutdown().await;
}

#[tokio::test]
async fn reload_applies_a_good_file_and_keeps_the_running_config_on_a_bad_one() {
    let mut s = server(StorageKind::Memory).await;
    let file = s.config_file();
    let changed = CONFIG
        .replace("max_attempts = 3", "max_attempts = 8")
        .replace("queue = \"emails\"", "queue = \"mail\"");
    std::fs::write(&file, format!("listen = \"127.0.0.1:1\"\n{changed}")).unwrap();
    let r = s.admin.reload_config(pb::ReloadConfigRequest {}).await.unwrap().into_inner();
    assert!(r.changes.contains(&"queues.q.max_attempts: 3 -> 8".to_string()), "{:?}", r.changes);
    assert!(
        r.changes.iter().any(|c| c.starts_with("listen:") && c.contains("needs a restart")),
        "{:?}",
        r.changes
    );
    assert_eq!(info(&mut s, "q").await.settings.unwrap().max_attempts, 8);
    let t = s.enqueue("q", "k").await;
    assert_eq!(t.max_attempts, 8, "new tasks get the reloaded setting");
    let routed = s.enqueue_req(pb::EnqueueRequest { kind: "email.x".into(), ..Default::default() }).await;
    assert_eq!(routed.queue, "mail", "the reloaded routes are in force");

    std::fs::write(&file, "[queues.q]\nmax_attempts = 0\n[queues.r]\nlease_duration = \"1ms\"\n").unwrap();
    let e = s.admin.reload_config(pb::ReloadConfigRequest {}).await.unwrap_err();
    assert_eq!((e.code(), reason(&e)), (Code::FailedPrecondition, "CONFIG_INVALID".into()));
    assert!(
        e.message().contains("queues.q.max_attempts") && e.message().contains("queues.r.lease_duration"),
        "{}",
        e.message()
    );
    assert_eq!(info(&mut s, "q").await.settings.unwrap().max_attempts, 8, "the running config stays");
    s.shutdown().await;
}

#[tokio::test]
async fn reload_without_a_config_file_is_a_failed_precondition() {
    let mut s = common::start().await;
    let e = s.admin.reload_config(pb::ReloadConfigRequest {}).await.unwrap_err();
    assert_eq!((e.code(), reason(&e)), (Code::FailedPrecondition, "CONFIG_INVALID".into()));
    s.shutdown().await;
}

#[tokio::test]
async fn a_reloaded_max_in_flight_takes_effect_without_a_restart() {
    let config = "[queues.cap]\nmax_in_flight = 1\n";
    let mut s = common::start_with(common::Options { config, config_file: true, ..Default::default() }).await;
    for _ in 0..3 {
        s.enqueue("cap", "k").await;
    }
    assert_eq!(s.lease(&["cap"], 10).await.len(), 1, "capped at 1");
    assert_eq!(info(&mut s, "cap").await.settings.unwrap().max_in_flight, 1);
    std::fs::write(s.config_file(), "[queues.cap]\nmax_in_flight = 3\nrate_limit = \"100/s\"\n").unwrap();
    let r = s.admin.reload_config(pb::ReloadConfigRequest {}).await.unwrap().into_inner();
    assert!(r.changes.contains(&"queues.cap.max_in_flight: 1 -> 3".to_string()), "{:?}", r.changes);
    let settings = info(&mut s, "cap").await.settings.unwrap();
    assert_eq!((settings.max_in_flight, settings.rate_limit.as_str()), (3, "100/s"));
    assert_eq!(s.lease(&["cap"], 10).await.len(), 2, "the new cap holds at once: 3 leased in all");
    s.shutdown().await;
}

#[tokio::test]
async fn waiting_tasks_are_counted_listed_and_purged_with_what_waits_on_them() {
    let mut s = server(StorageKind::Memory).await;
    let dep = s.enqueue("q", "k").await;
    let req = |deps: Vec<String>| pb::EnqueueRequest {
        queue: "q".into(),
        kind: "k".into(),
        depends_on: deps,
        ..Default::default()
    };
    let waiting = s.enqueue_req(req(vec![dep.id.clone()])).await;
    let next = s.enqueue_req(req(vec![waiting.id.clone()])).await;
    assert_eq!(info(&mut s, "q").await.counts.unwrap().waiting, 2);
    let listed = page(&mut s, pb::TaskState::Waiting, 10, "").await.tasks;
    let mut both = vec![waiting.id.clone(), next.id.clone()];
    both.sort();
    assert_eq!(listed.iter().map(|t| t.id.clone()).collect::<Vec<_>>(), both);
    let states = vec![pb::TaskState::Waiting as i32];
    let r = s.admin.purge_queue(pb::PurgeQueueRequest { queue: "q".into(), states }).await.unwrap();
    assert_eq!(r.into_inner().purged, 2);
    let c = info(&mut s, "q").await.counts.unwrap();
    assert_eq!((c.waiting, c.ready), (0, 1), "the dependency stays");
    s.shutdown().await;
}
