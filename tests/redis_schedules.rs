//! Schedules over one Redis shared by three broker replicas, on an injected
//! clock: every due time enqueues exactly one task while the replicas race
//! each pass, while one of them is restarted, and after all of them were
//! down (catch-up).
//!
//! The replicas are in-process brokers, each with its own `RedisStore` (its
//! own connections), firing concurrently on a multi-threaded runtime; the
//! test starts its own redis-server.

#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis_server::RedisServer;
use taskbroker::broker::session::StreamLimits;
use taskbroker::broker::{Broker, BrokerSettings};
use taskbroker::config::Config;
use taskbroker::core::clock::{Clock, ManualClock};
use taskbroker::core::queue::QueueRegistry;
use taskbroker::core::task::TaskState;
use taskbroker::store::redis::RedisStore;
use taskbroker::store::Store;

/// 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600_000;
const MIN: u64 = 60_000;

const CONFIG: &str = r#"
[[schedules]]
name = "tick"
every = "1m"
queue = "ticks"
kind = "tick"
catch_up = "all"

[[schedules]]
name = "five"
cron = "*/5 * * * *"
timezone = "Europe/Berlin"
queue = "fives"
kind = "five"
"#;

/// A replica: a broker on its own connection to `redis`, started as
/// `serve` does (declaring the config's schedules).
async fn start(redis: &RedisServer, config: &Config, clock: &Arc<ManualClock>) -> Broker {
    let registry = QueueRegistry::new(config.policies());
    let store = RedisStore::connect(&redis.url(), registry.clone(), false).await.unwrap();
    let settings = BrokerSettings {
        queues: registry,
        strict_queues: false,
        max_payload_bytes: 1 << 20,
        max_delay: Duration::from_secs(3600),
        streams: StreamLimits { outbound_bytes: 1 << 20, stall_timeout: Duration::from_secs(60) },
    };
    let broker = Broker::new(Arc::new(store), clock.clone() as Arc<dyn Clock>, settings);
    broker.declare_schedules(&config.schedules()).await.unwrap();
    broker
}

/// One pass on every running replica at once; the tasks they created.
async fn pass(replicas: &[Option<Broker>]) -> usize {
    let passes: Vec<_> = replicas
        .iter()
        .flatten()
        .map(|b| {
            let b = b.clone();
            tokio::spawn(async move { b.fire_schedules().await.unwrap() })
        })
        .collect();
    let mut created = 0;
    for p in passes {
        created += p.await.unwrap();
    }
    created
}

/// Due times (ms) of the tasks in `queue`, by how many tasks each has.
async fn fired(store: &dyn Store, queue: &str) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for t in store.list_tasks(queue, TaskState::Ready, None, 1000).await.unwrap() {
        let due: u64 = t.dedup_key.rsplit(':').next().unwrap().parse().unwrap();
        *out.entry(due).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_fire_each_due_time_once_through_a_restart_and_an_outage() {
    let redis = RedisServer::start();
    let config = Config::from_toml(CONFIG).unwrap();
    config.validate().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let mut replicas = vec![
        Some(start(&redis, &config, &clock).await),
        Some(start(&redis, &config, &clock).await),
        Some(start(&redis, &config, &clock).await),
    ];
    let mut created = 0;
    for minute in 1..=30 {
        clock.advance(Duration::from_millis(MIN));
        match minute {
            // Replica c stops (its store and connections dropped) ...
            8 => replicas[2] = None,
            // ... and comes back: a new process would declare the config again.
            11 => replicas[2] = Some(start(&redis, &config, &clock).await),
            _ => {}
        }
        // Minutes 20 to 22: every replica is down.
        if (20..=22).contains(&minute) {
            continue;
        }
        created += pass(&replicas).await;
        // A second pass at the same time finds nothing owed.
        assert_eq!(pass(&replicas).await, 0, "minute {minute}: a due time fired twice");
    }
    let probe =
        RedisStore::connect(&redis.url(), QueueRegistry::new(config.policies()), false).await.unwrap();
    let ticks = fired(&probe, "ticks").await;
    let expected: BTreeMap<u64, usize> = (1..=30).map(|m| (T0 + m * MIN, 1)).collect();
    assert_eq!(ticks, expected, "every minute once, the outage's caught up (catch_up = all)");
    // */5 with catch_up = one: 5, 10, 15, then 20 fired late at 23 (the only
    // run missed), 25, 30.
    let fives = fired(&probe, "fives").await;
    let expected: BTreeMap<u64, usize> =
        [5, 10, 15, 20, 25, 30].into_iter().map(|m| (T0 + m * MIN, 1)).collect();
    assert_eq!(fives, expected);
    assert_eq!(created, 36, "each created task counted by exactly one replica");
    let listed = replicas[0].as_ref().unwrap().list_schedules().await.unwrap();
    let last: Vec<_> =
        listed.iter().map(|s| (s.stored.schedule.name.as_str(), s.stored.last_fired)).collect();
    assert_eq!(last, [("five", Some(T0 + 30 * MIN)), ("tick", Some(T0 + 30 * MIN))]);
}
