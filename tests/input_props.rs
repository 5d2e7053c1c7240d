//! Property tests over everything that turns client or operator input into
//! broker values: the request converters and validators (`enqueue_input` +
//! `Rules::enqueue`, `lease_input` + `Rules::lease`, `Rules::subscribe`,
//! `Rules::retry_after`) and the config parser. Arbitrary input never panics
//! and always gives a value within the documented bounds or an error naming
//! a field (a config path).

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use taskbroker::broker::validate::{Rules, SubscribeInput, MAX_BATCH, MAX_IN_FLIGHT, MAX_NAME};
use taskbroker::broker::BrokerError;
use taskbroker::config::Config;
use taskbroker::core::queue::{Policies, QueuePolicy};
use taskbroker::core::routing::Route;
use taskbroker::core::MAX_TIME;
use taskbroker::grpc::caller::Caller;
use taskbroker::grpc::convert;
use taskbroker::pb;

/// Short valid names mostly, sometimes anything (long, empty, any Unicode).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[a-z][a-z0-9.]{0,6}", 1 => ".{0,300}", 1 => Just("x".repeat(MAX_NAME + 1))]
}

/// Small, boundary and huge values, negative ones included.
fn seconds() -> impl Strategy<Value = i64> {
    prop_oneof![
        0i64..100_000,
        Just(315_576_000_000),
        Just(253_402_300_800),
        Just(18_446_744_073_709_552),
        any::<i64>()
    ]
}

fn nanos() -> impl Strategy<Value = i32> {
    prop_oneof![Just(0), 0..1_000_000_000, any::<i32>()]
}

fn duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
    proptest::option::of(
        (seconds(), nanos()).prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
    )
}

fn timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    proptest::option::of(
        (seconds(), nanos()).prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
    )
}

fn small_u32() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..12, 990u32..1010, any::<u32>()]
}

fn enqueue_request() -> impl Strategy<Value = pb::EnqueueRequest> {
    let headers = proptest::collection::hash_map(text(), text(), 0..4);
    (
        (text(), text(), proptest::collection::vec(any::<u8>(), 0..40), text()),
        (proptest::option::of(small_u32()), headers, duration(), timestamp()),
        (proptest::option::of(small_u32()), text(), text()),
    )
        .prop_map(
            |((queue, kind, payload, content_type), (priority, headers, delay, scheduled_time), rest)| {
                let (max_attempts, dedup_key, request_id) = rest;
                pb::EnqueueRequest {
                    queue,
                    kind,
                    payload,
                    content_type,
                    priority,
                    headers,
                    delay,
                    scheduled_time,
                    max_attempts,
                    concurrency_key: dedup_key.chars().rev().collect(),
                    semaphores: Vec::new(),
                    dedup_key,
                    request_id,
                    ..Default::default()
                }
            },
        )
}

fn policies() -> Policies {
    let declared =
        [("default".to_string(), QueuePolicy::default()), ("a".to_string(), QueuePolicy::default())];
    Policies::new(declared.into_iter().collect(), QueuePolicy::default())
}

fn routes() -> Vec<Route> {
    vec![Route {
        kind: "r*".into(),
        headers: BTreeMap::new(),
        queue: "a".into(),
        priority: Some(9),
        semaphores: Vec::new(),
    }]
}

fn rules<'a>(policies: &'a Policies, routes: &'a [Route], strict: bool, max_delay: Duration) -> Rules<'a> {
    Rules { policies, routes, strict_queues: strict, max_payload_bytes: 32, max_delay }
}

fn max_delay() -> impl Strategy<Value = Duration> {
    prop_oneof![Just(Duration::from_secs(366 * 86_400)), (1u64..10_000_000).prop_map(Duration::from_millis)]
}

fn now() -> impl Strategy<Value = u64> {
    prop_oneof![Just(1_767_225_600_000u64), 0..MAX_TIME, any::<u64>()]
}

/// An error must be INVALID_ARGUMENT naming only `allowed` fields, or
/// QUEUE_NOT_FOUND when queues are strict.
fn check_error(e: BrokerError, allowed: &[&str], strict: bool) -> Result<(), TestCaseError> {
    match e {
        BrokerError::Invalid(v) => {
            prop_assert!(!v.is_empty());
            for v in v {
                let name = v.field.split('[').next().unwrap_or_default();
                prop_assert!(allowed.contains(&name), "unexpected field {:?}", v.field);
                prop_assert!(!v.description.is_empty());
            }
        }
        BrokerError::QueueNotFound(_) if strict => {}
        other => prop_assert!(false, "unexpected error {other:?}"),
    }
    Ok(())
}

const ENQUEUE_FIELDS: &[&str] = &[
    "queue",
    "kind",
    "payload",
    "content_type",
    "priority",
    "headers",
    "delay",
    "scheduled_time",
    "max_attempts",
    "dedup_key",
    "request_id",
    "concurrency_key",
    "semaphores",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn enqueue_never_panics_and_bounds_what_it_accepts(
        req in enqueue_request(), now in now(), strict in any::<bool>(), max_delay in max_delay()
    ) {
        let (p, r) = (policies(), routes());
        let rules = rules(&p, &r, strict, max_delay);
        let had_time = req.scheduled_time.is_some();
        match convert::enqueue_input(req, &Caller::default()).and_then(|i| rules.enqueue(i, now)) {
            Ok(t) => {
                prop_assert!(!t.kind.is_empty() && t.kind.len() <= MAX_NAME);
                prop_assert!(t.content_type.len() <= MAX_NAME);
                prop_assert!(t.priority <= 9 && t.max_attempts >= 1 && t.payload.len() <= 32);
                prop_assert!(t.concurrency_key.len() <= 128 && t.semaphores.len() <= 8);
                if had_time {
                    prop_assert!(t.scheduled_time < MAX_TIME);
                }
                let latest = now.saturating_add(max_delay.as_millis() as u64);
                prop_assert!(t.scheduled_time <= latest.max(now), "{} past {latest}", t.scheduled_time);
            }
            Err(e) => check_error(e, ENQUEUE_FIELDS, strict)?,
        }
    }

    #[test]
    fn lease_never_panics_and_takes_1_to_1000(
        queues in proptest::collection::vec(text(), 0..4),
        max_tasks in small_u32(),
        lease_duration in duration(),
        wait in duration(),
        worker_id in text(),
        strict in any::<bool>(),
    ) {
        let (p, r) = (policies(), routes());
        let rules = rules(&p, &r, strict, Duration::from_secs(60));
        let req = pb::LeaseRequest { queues, max_tasks, lease_duration, wait, worker_id };
        let allowed = ["queues", "max_tasks", "lease_duration", "wait", "worker_id"];
        match convert::lease_input(req, &Caller::default()).and_then(|i| rules.lease(&i).map(|n| (n, i))) {
            Ok((n, input)) => {
                prop_assert!((1..=MAX_BATCH).contains(&n));
                prop_assert!(input.worker_id.len() <= MAX_NAME);
                prop_assert!(input.wait.is_none_or(|w| w <= Duration::from_secs(60)));
                let lease = input.lease_duration.unwrap_or(Duration::from_secs(1));
                prop_assert!((Duration::from_secs(1)..=Duration::from_secs(12 * 3600)).contains(&lease));
            }
            Err(e) => check_error(e, &allowed, strict)?,
        }
    }

    #[test]
    fn subscribe_never_panics_and_bounds_the_window(
        queues in proptest::collection::vec(text(), 0..4),
        weighted in any::<bool>(),
        weights in proptest::collection::btree_map(text(), any::<u32>(), 0..3),
        max_in_flight in prop_oneof![0u32..20, 9_990u32..10_010, any::<u32>()],
        lease_duration in duration(),
        worker_id in text(),
        strict in any::<bool>(),
    ) {
        let (p, r) = (policies(), routes());
        let rules = rules(&p, &r, strict, Duration::from_secs(60));
        let allowed = ["queues", "lease_duration", "worker_id", "max_in_flight", "weights", "max_tasks", "wait"];
        let sub = convert::duration_field("lease_duration", lease_duration).and_then(|lease_duration| {
            rules.subscribe(SubscribeInput { queues, weighted, weights, max_in_flight, lease_duration, worker_id, access: Default::default() })
        });
        match sub {
            Ok(s) => {
                prop_assert!((1..=MAX_IN_FLIGHT).contains(&s.max_in_flight));
                prop_assert!(s.worker_id.len() <= MAX_NAME && !s.queues.is_empty());
                prop_assert!(s.lease_duration.is_none_or(|ms| (1_000..=12 * 3_600_000).contains(&ms)));
            }
            Err(e) => check_error(e, &allowed, strict)?,
        }
    }

    #[test]
    fn retry_after_never_panics(seconds in seconds(), nanos in nanos(), max_delay in max_delay()) {
        let (p, r) = (policies(), routes());
        let rules = rules(&p, &r, false, max_delay);
        let d = Some(prost_types::Duration { seconds, nanos });
        match convert::duration_field("retry_after", d).and_then(|d| rules.retry_after(d.unwrap())) {
            Ok(ms) => prop_assert!(ms <= max_delay.as_millis() as u64),
            Err(e) => check_error(e, &["retry_after"], false)?,
        }
    }
}

/// Top-level config keys; every validation error starts with one of them.
const KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "storage",
    "redis_url",
    "redis_cluster",
    "redis_sentinel",
    "strict_queues",
    "max_payload_bytes",
    "max_message_bytes",
    "max_delay",
    "shutdown_grace",
];
const QUEUE_KEYS: &[&str] =
    &["lease_duration", "max_attempts", "default_priority", "retention", "dedup_window", "retry_backoff"];

/// A TOML value: numbers (huge and negative too), strings, durations, bools,
/// an inline backoff table.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0i64..20).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "[0-9]{1,25}(ms|s|m|h|days|years|ns)".prop_map(|d| format!("{d:?}")),
        prop_oneof![
            Just("memory"),
            Just("redis"),
            Just("redis://:pw@127.0.0.1:6379"),
            Just("127.0.0.1:0"),
            Just("")
        ]
        .prop_map(|s| format!("{s:?}")),
        ".{0,20}".prop_map(|s| format!("{s:?}")),
        ("[0-9]{1,12}(ms|s|h)", "[0-9]{1,12}(ms|s|h)", -2.0f64..5.0, -1.0f64..2.0).prop_map(
            |(i, m, mul, j)| {
                format!("{{ initial = {i:?}, max = {m:?}, multiplier = {mul:?}, jitter = {j:?} }}")
            }
        ),
    ]
}

fn config_text() -> impl Strategy<Value = String> {
    let top = proptest::collection::vec((proptest::sample::select(KEYS), toml_value()), 0..6);
    let queue =
        (text(), proptest::collection::vec((proptest::sample::select(QUEUE_KEYS), toml_value()), 0..4));
    let queues = proptest::collection::vec(queue, 0..3);
    let route = (text(), text(), proptest::option::of(toml_value()));
    let routes = proptest::collection::vec(route, 0..3);
    (top, queues, routes).prop_map(|(top, queues, routes)| {
        let mut text = String::new();
        let mut seen = std::collections::HashSet::new();
        for (k, v) in top {
            if seen.insert(k) {
                text += &format!("{k} = {v}\n");
            }
        }
        for (name, settings) in queues {
            text += &format!("[queues.{name:?}]\n");
            let mut seen = std::collections::HashSet::new();
            for (k, v) in settings {
                if seen.insert(k) {
                    text += &format!("{k} = {v}\n");
                }
            }
        }
        for (kind, queue, priority) in routes {
            text += &format!("[[routes]]\nkind = {kind:?}\nqueue = {queue:?}\n");
            if let Some(p) = priority {
                text += &format!("priority = {p}\n");
            }
        }
        text
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_config_parser_never_panics_and_names_a_path(text in prop_oneof![config_text(), ".{0,200}"]) {
        match Config::from_toml(&text) {
            Err(e) => prop_assert!(!e.is_empty()),
            Ok(config) => match config.validate() {
                Ok(()) => {
                    // A valid config resolves without panicking.
                    let _ = (config.policies(), config.routes(), config.redis_target());
                }
                Err(errors) => {
                    prop_assert!(!errors.is_empty());
                    for e in errors {
                        let (path, what) = e.split_once(": ").unwrap_or(("", ""));
                        let top = path.split(['.', '[']).next().unwrap_or_default();
                        prop_assert!(KEYS.contains(&top) || top == "queues" || top == "routes", "no path: {e:?}");
                        prop_assert!(!what.is_empty(), "no problem: {e:?}");
                        prop_assert!(!e.contains(":pw@"), "a password in an error: {e:?}");
                    }
                }
            },
        }
    }
}
