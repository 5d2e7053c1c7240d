use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::core::queue::QueuePolicy;

fn policies() -> Policies {
    let emails = QueuePolicy { default_priority: 3, max_attempts: 2, ..QueuePolicy::default() };
    let declared = [("default".to_string(), QueuePolicy::default()), ("emails".to_string(), emails)];
    Policies::new(declared.into_iter().collect(), QueuePolicy::default())
}

fn routes() -> Vec<Route> {
    vec![Route {
        kind: "email.*".into(),
        headers: BTreeMap::new(),
        queue: "emails".into(),
        priority: Some(7),
        semaphores: Vec::new(),
    }]
}

fn rules<'a>(p: &'a Policies, r: &'a [Route], strict: bool) -> Rules<'a> {
    Rules {
        policies: p,
        routes: r,
        strict_queues: strict,
        max_payload_bytes: 10,
        max_delay: Duration::from_secs(3600),
    }
}

fn input(kind: &str) -> EnqueueInput {
    EnqueueInput { kind: kind.into(), ..Default::default() }
}

fn fields(e: BrokerError) -> Vec<String> {
    match e {
        BrokerError::Invalid(v) => v.into_iter().map(|v| v.field).collect(),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn routes_then_default_queue() {
    let (p, r) = (policies(), routes());
    let rules = rules(&p, &r, false);
    let t = rules.enqueue(input("email.send"), 1_000).unwrap();
    assert_eq!((t.queue.as_str(), t.priority, t.max_attempts), ("emails", 7, 2));
    let t = rules.enqueue(input("report"), 1_000).unwrap();
    assert_eq!((t.queue.as_str(), t.priority), ("default", 0));
}

#[test]
fn explicit_values_win_over_routes_and_defaults() {
    let (p, r) = (policies(), routes());
    let rules = rules(&p, &r, false);
    let i = EnqueueInput {
        queue: "other".into(),
        priority: Some(1),
        max_attempts: Some(9),
        ..input("email.send")
    };
    let t = rules.enqueue(i, 1_000).unwrap();
    assert_eq!((t.queue.as_str(), t.priority, t.max_attempts), ("other", 1, 9));
    let i = EnqueueInput { queue: "emails".into(), ..input("x") };
    assert_eq!(rules.enqueue(i, 0).unwrap().priority, 3, "queue default priority");
}

#[test]
fn delay_and_scheduled_time_set_the_due_time() {
    let (p, r) = (policies(), routes());
    let rules = rules(&p, &r, false);
    let i = EnqueueInput { delay: Some(Duration::from_secs(5)), ..input("k") };
    assert_eq!(rules.enqueue(i, 1_000).unwrap().scheduled_time, 6_000);
    let i = EnqueueInput { scheduled_time: Some(9_000), ..input("k") };
    assert_eq!(rules.enqueue(i, 1_000).unwrap().scheduled_time, 9_000);
}

#[test]
fn every_bad_field_is_named() {
    let (p, r) = (policies(), routes());
    let rules = rules(&p, &r, false);
    let headers = (0..65).map(|i| (format!("h{i}"), String::new())).collect();
    let bad = EnqueueInput {
        queue: "bad queue".into(),
        kind: String::new(),
        payload: vec![0; 11],
        priority: Some(10),
        headers,
        delay: Some(Duration::from_secs(1)),
        scheduled_time: Some(1),
        max_attempts: Some(0),
        ..Default::default()
    };
    let f = fields(rules.enqueue(bad, 0).unwrap_err());
    for name in ["kind", "queue", "priority", "payload", "headers", "scheduled_time", "max_attempts"] {
        assert!(f.iter().any(|x| x == name), "missing {name} in {f:?}");
    }
}

#[test]
fn strict_queues_refuse_undeclared_ones() {
    let (p, r) = (policies(), routes());
    let rules = rules(&p, &r, true);
    let i = EnqueueInput { queue: "nope".into(), ..input("k") };
    assert_eq!(rules.enqueue(i, 0).unwrap_err(), BrokerError::QueueNotFound("nope".into()));
    let lease = LeaseInput { queues: vec!["emails".into(), "nope".into()], ..Default::default() };
    assert_eq!(rules.lease(&lease).unwrap_err(), BrokerError::QueueNotFound("nope".into()));
}

#[test]
fn lease_limits() {
    let (p, r) = (policies(), routes());
    let rules = rules(&p, &r, false);
    let ok = LeaseInput { queues: vec!["a".into()], ..Default::default() };
    assert_eq!(rules.lease(&ok).unwrap(), 1, "max_tasks 0 means 1");
    let bad = LeaseInput {
        queues: vec!["a".into(), "b c".into()],
        max_tasks: 1001,
        lease_duration: Some(Duration::from_millis(500)),
        wait: Some(Duration::from_secs(61)),
        worker_id: String::new(),
        deadline: None,
        access: Default::default(),
    };
    assert_eq!(fields(rules.lease(&bad).unwrap_err()), ["queues[1]", "max_tasks", "lease_duration", "wait"]);
    let none = LeaseInput::default();
    assert_eq!(fields(rules.lease(&none).unwrap_err()), ["queues"]);
}

#[test]
fn worker_id_and_content_type_are_bounded() {
    let (p, r) = (policies(), routes());
    let rules = rules(&p, &r, false);
    let long = "w".repeat(MAX_NAME + 1);
    let lease = LeaseInput { queues: vec!["a".into()], worker_id: long.clone(), ..Default::default() };
    assert_eq!(fields(rules.lease(&lease).unwrap_err()), ["worker_id"]);
    let at_limit = LeaseInput { worker_id: "w".repeat(MAX_NAME), ..lease };
    assert!(rules.lease(&at_limit).is_ok());
    let sub = SubscribeInput { queues: vec!["a".into()], worker_id: long.clone(), ..Default::default() };
    assert_eq!(fields(rules.subscribe(sub).unwrap_err()), ["worker_id"]);
    let enqueue = EnqueueInput { content_type: long, ..input("k") };
    assert_eq!(fields(rules.enqueue(enqueue, 0).unwrap_err()), ["content_type"]);
}

#[test]
fn delays_and_times_ahead_are_bounded_by_max_delay() {
    let (p, r) = (policies(), routes());
    let rules = rules(&p, &r, false);
    let hour = Duration::from_secs(3600);
    let now = 1_000;
    let i = EnqueueInput { delay: Some(hour), ..input("k") };
    assert_eq!(rules.enqueue(i, now).unwrap().scheduled_time, now + 3_600_000);
    // 18446744073709552 s once wrapped to 384 ms through `as_millis() as u64`.
    for over in [hour + Duration::from_millis(1), Duration::from_secs(18_446_744_073_709_552), Duration::MAX]
    {
        let i = EnqueueInput { delay: Some(over), ..input("k") };
        assert_eq!(fields(rules.enqueue(i, now).unwrap_err()), ["delay"], "{over:?}");
        assert_eq!(fields(rules.retry_after(over).unwrap_err()), ["retry_after"]);
    }
    assert_eq!(rules.retry_after(hour).unwrap(), 3_600_000);
    let i = EnqueueInput { scheduled_time: Some(now + 3_600_000), ..input("k") };
    assert!(rules.enqueue(i, now).is_ok());
    let i = EnqueueInput { scheduled_time: Some(now + 3_600_001), ..input("k") };
    assert_eq!(fields(rules.enqueue(i, now).unwrap_err()), ["scheduled_time"]);
    let i = EnqueueInput { scheduled_time: Some(u64::MAX), ..input("k") };
    assert_eq!(fields(rules.enqueue(i, u64::MAX - 5).unwrap_err()), ["scheduled_time"]);
    // The past is fine: due at once.
    let i = EnqueueInput { scheduled_time: Some(5), ..input("k") };
    assert_eq!(rules.enqueue(i, now).unwrap().scheduled_time, 5);
}

#[test]
fn semaphores_are_checked_and_merged_with_the_routes_and_the_queues() {
    let browsers = QueuePolicy { semaphores: vec!["gpu".into()], ..QueuePolicy::default() };
    let declared = [("default".to_string(), QueuePolicy::default()), ("browsers".to_string(), browsers)];
    let sems = BTreeMap::from([("selenium".to_string(), 5), ("gpu".to_string(), 1), ("dns".to_string(), 9)]);
    let p = Policies::new(declared.into_iter().collect(), QueuePolicy::default()).with_semaphores(sems);
    let r = vec![Route {
        kind: "browse.*".into(),
        headers: BTreeMap::new(),
        queue: "browsers".into(),
        priority: None,
        semaphores: vec!["selenium".into()],
    }];
    let rules = rules(&p, &r, false);
    let routed = EnqueueInput { semaphores: vec!["dns".into(), "gpu".into()], ..input("browse.page") };
    let task = rules.enqueue(routed, 0).unwrap();
    assert_eq!(task.queue, "browsers");
    assert_eq!(task.semaphores, ["dns", "gpu", "selenium"], "sorted, once each: own, route's, queue's");

    let unknown = EnqueueInput { semaphores: vec!["nope".into()], ..input("k") };
    assert_eq!(fields(rules.enqueue(unknown, 0).unwrap_err()), ["semaphores"]);
    let many = EnqueueInput { semaphores: vec!["dns".into(); 9], ..input("k") };
    assert_eq!(fields(rules.enqueue(many, 0).unwrap_err()), ["semaphores"]);
    let key = EnqueueInput { concurrency_key: "k".repeat(129), ..input("k") };
    assert_eq!(fields(rules.enqueue(key, 0).unwrap_err()), ["concurrency_key"]);
    let key = EnqueueInput { concurrency_key: "k".repeat(128), ..input("k") };
    assert_eq!(rules.enqueue(key, 0).unwrap().concurrency_key.len(), 128);
}
