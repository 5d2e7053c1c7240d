//! Periodic schedules through the broker: firing on an injected clock,
//! exactly once with several replicas on one store, across a restart, by
//! each catch-up policy, and how config and runtime schedules meet.
//! (Redis replicas: `tests/redis_schedules.rs`; the RPCs: `tests/admin.rs`.)

use std::sync::Arc;
use std::time::Duration;

use taskbroker::broker::session::StreamLimits;
use taskbroker::broker::{Broker, BrokerError, BrokerSettings};
use taskbroker::config::Config;
use taskbroker::core::clock::{Clock, ManualClock};
use taskbroker::core::queue::QueueRegistry;
use taskbroker::core::schedule::{Schedule, ScheduleSource};
use taskbroker::core::task::TaskState;
use taskbroker::store::embedded::EmbeddedStore;
use taskbroker::store::memory::MemoryStore;
use taskbroker::store::Store;

/// 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600_000;
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

fn config(toml: &str) -> Config {
    let config = Config::from_toml(toml).unwrap();
    config.validate().unwrap();
    config
}

/// A broker on `store` (one replica; several share a store).
fn replica(store: Arc<dyn Store>, registry: &QueueRegistry, clock: Arc<ManualClock>) -> Broker {
    strict_replica(store, registry, clock, false)
}

fn strict_replica(
    store: Arc<dyn Store>,
    registry: &QueueRegistry,
    clock: Arc<ManualClock>,
    strict: bool,
) -> Broker {
    let settings = BrokerSettings {
        queues: registry.clone(),
        strict_queues: strict,
        max_payload_bytes: 1 << 20,
        max_delay: Duration::from_secs(3600),
        streams: StreamLimits { outbound_bytes: 1 << 20, stall_timeout: Duration::from_secs(60) },
    };
    Broker::new(store, clock as Arc<dyn Clock>, settings)
}

/// Tasks of `queue` held by the store, in creation order.
async fn tasks(store: &dyn Store, queue: &str) -> Vec<taskbroker::core::task::Task> {
    store.list_tasks(queue, TaskState::Ready, None, 1000).await.unwrap()
}

#[tokio::test]
async fn two_replicas_on_one_store_fire_each_due_time_once() {
    let config = config(
        r#"
        [[schedules]]
        name = "tick"
        every = "1m"
        queue = "ticks"
        kind = "tick"
        payload = "hello"
        headers = { source = "cron" }
        "#,
    );
    let registry = QueueRegistry::new(config.policies());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(registry.clone()));
    let clock = Arc::new(ManualClock::new(T0));
    let (a, b) =
        (replica(store.clone(), &registry, clock.clone()), replica(store.clone(), &registry, clock.clone()));
    a.declare_schedules(&config.schedules()).await.unwrap();
    b.declare_schedules(&config.schedules()).await.unwrap();
    assert_eq!(a.fire_schedules().await.unwrap(), 0, "nothing is due at the start");
    for _ in 0..5 {
        clock.advance(MIN);
        let (fa, fb) = tokio::join!(a.fire_schedules(), b.fire_schedules());
        assert_eq!(fa.unwrap() + fb.unwrap(), 1, "one replica creates the due time's task");
    }
    let fired = tasks(&*store, "ticks").await;
    let keys: Vec<_> = fired.iter().map(|t| t.dedup_key.clone()).collect();
    let expected: Vec<_> = (1..=5).map(|i| format!("schedule:tick:{}", T0 + i * 60_000)).collect();
    assert_eq!(keys, expected);
    assert_eq!((fired[0].kind.as_str(), fired[0].payload.as_slice()), ("tick", b"hello".as_slice()));
    assert_eq!(fired[0].headers.get("source").map(String::as_str), Some("cron"));
    let listed = a.list_schedules().await.unwrap();
    assert_eq!(listed[0].stored.last_fired, Some(T0 + 5 * 60_000));
    assert_eq!(listed[0].next_run, Some(T0 + 6 * 60_000));
}

/// A broker down from 01:00:30 to 04:30 owes the 02:00, 03:00 and 04:00 runs.
#[tokio::test]
async fn a_restarted_broker_catches_up_as_each_policy_says() {
    let config = config(
        r#"
        [[schedules]]
        name = "none"
        cron = "0 * * * *"
        queue = "none"
        kind = "k"
        catch_up = "none"

        [[schedules]]
        name = "one"
        cron = "0 * * * *"
        queue = "one"
        kind = "k"

        [[schedules]]
        name = "all"
        cron = "0 * * * *"
        queue = "all"
        kind = "k"
        catch_up = "all"
        "#,
    );
    let dir = tempfile::tempdir().unwrap();
    let registry = QueueRegistry::new(config.policies());
    let clock = Arc::new(ManualClock::new(T0));
    {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path(), registry.clone()).unwrap());
        let broker = replica(store.clone(), &registry, clock.clone());
        broker.declare_schedules(&config.schedules()).await.unwrap();
        clock.advance(HOUR + Duration::from_secs(30));
        assert_eq!(broker.fire_schedules().await.unwrap(), 3, "01:00, once each");
    }
    clock.advance(3 * HOUR + 29 * MIN + Duration::from_secs(30));
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path(), registry.clone()).unwrap());
    let broker = replica(store.clone(), &registry, clock.clone());
    broker.declare_schedules(&config.schedules()).await.unwrap();
    broker.fire_schedules().await.unwrap();
    let due = |hours: u64| format!("{}", T0 + hours * 3_600_000);
    let keys = |tasks: Vec<taskbroker::core::task::Task>| -> Vec<String> {
        // Tasks created in one pass share a creation time: order by due time.
        let mut keys: Vec<String> =
            tasks.into_iter().map(|t| t.dedup_key.rsplit(':').next().unwrap().to_owned()).collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(tasks(&*store, "none").await), [due(1)], "none: the missed runs skipped");
    assert_eq!(keys(tasks(&*store, "one").await), [due(1), due(4)], "one: the latest missed run");
    assert_eq!(keys(tasks(&*store, "all").await), [due(1), due(2), due(3), due(4)], "all: every missed run");
    // The skip is recorded: 'none' fires again on time at 05:00, not before.
    assert_eq!(broker.fire_schedules().await.unwrap(), 0);
    clock.advance(30 * MIN + Duration::from_secs(30));
    assert_eq!(broker.fire_schedules().await.unwrap(), 3);
    assert_eq!(keys(tasks(&*store, "none").await), [due(1), due(5)]);
}

fn runtime(name: &str) -> Schedule {
    Schedule {
        name: name.into(),
        every: Some(60_000),
        queue: "q".into(),
        kind: "k".into(),
        ..Schedule::default()
    }
}

#[tokio::test]
async fn a_reload_replaces_config_schedules_and_keeps_runtime_ones() {
    let registry = QueueRegistry::new(config("").policies());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(registry.clone()));
    let clock = Arc::new(ManualClock::new(T0));
    let broker = replica(store, &registry, clock.clone());
    let first = config(
        "[[schedules]]\nname = \"a\"\nevery = \"1m\"\nkind = \"k\"\n\n[[schedules]]\nname = \"b\"\nevery = \"1m\"\nkind = \"k\"\n",
    );
    broker.declare_schedules(&first.schedules()).await.unwrap();
    broker.put_schedule(runtime("c")).await.unwrap();
    // Config names are the file's: the API cannot change or delete them.
    let refused = broker.put_schedule(runtime("a")).await.unwrap_err();
    assert_eq!(refused, BrokerError::ScheduleFromConfig("a".into()));
    assert_eq!(broker.delete_schedule("a").await.unwrap_err(), BrokerError::ScheduleFromConfig("a".into()));
    // A reload that drops b and changes a's interval.
    clock.advance(MIN);
    let second = config("[[schedules]]\nname = \"a\"\nevery = \"5m\"\nkind = \"k2\"\n");
    broker.declare_schedules(&second.schedules()).await.unwrap();
    let listed = broker.list_schedules().await.unwrap();
    let names: Vec<_> =
        listed.iter().map(|s| (s.stored.schedule.name.as_str(), s.stored.schedule.source)).collect();
    assert_eq!(names, [("a", ScheduleSource::Config), ("c", ScheduleSource::Runtime)]);
    assert_eq!(listed[0].stored.schedule.kind, "k2");
    assert_eq!(listed[0].stored.schedule.since, T0 + 60_000, "a new interval counts from the reload");
    // The config taking a runtime schedule's name takes it over.
    let third = config("[[schedules]]\nname = \"c\"\nevery = \"1m\"\nkind = \"k\"\n");
    broker.declare_schedules(&third.schedules()).await.unwrap();
    let listed = broker.list_schedules().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].stored.schedule.source, ScheduleSource::Config);
    // Runtime schedules are deleted through the API only.
    broker.put_schedule(runtime("d")).await.unwrap();
    broker.delete_schedule("d").await.unwrap();
    assert_eq!(broker.delete_schedule("d").await.unwrap_err(), BrokerError::ScheduleNotFound("d".into()));
}

#[tokio::test]
async fn a_bad_runtime_schedule_is_refused_field_by_field() {
    let registry = QueueRegistry::new(config("").policies());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(registry.clone()));
    let broker = replica(store, &registry, Arc::new(ManualClock::new(T0)));
    let bad = Schedule { cron: "61 * * * *".into(), every: None, kind: String::new(), ..runtime("x") };
    let BrokerError::Invalid(violations) = broker.put_schedule(bad).await.unwrap_err() else {
        panic!("invalid")
    };
    let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(fields, ["cron", "kind"]);
    let too_big = Schedule { payload: vec![0; 2 << 20], ..runtime("x") };
    let BrokerError::Invalid(violations) = broker.put_schedule(too_big).await.unwrap_err() else {
        panic!("invalid")
    };
    assert_eq!(violations[0].field, "payload");
}

#[tokio::test]
async fn a_trigger_enqueues_now_and_leaves_the_due_times_alone() {
    let registry = QueueRegistry::new(config("").policies());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(registry.clone()));
    let clock = Arc::new(ManualClock::new(T0));
    let broker = replica(store.clone(), &registry, clock.clone());
    broker.put_schedule(runtime("c")).await.unwrap();
    clock.advance(Duration::from_secs(10));
    let task = broker.trigger_schedule("c").await.unwrap();
    assert_eq!((task.queue.as_str(), task.kind.as_str()), ("q", "k"));
    assert_eq!(broker.list_schedules().await.unwrap()[0].stored.last_fired, None);
    clock.advance(MIN);
    assert_eq!(broker.fire_schedules().await.unwrap(), 1, "the 00:01 run still fires");
    assert_eq!(tasks(&*store, "q").await.len(), 2);
    assert_eq!(
        broker.trigger_schedule("nope").await.unwrap_err(),
        BrokerError::ScheduleNotFound("nope".into())
    );
}
