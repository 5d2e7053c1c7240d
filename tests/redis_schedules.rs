//! Schedules over one Redis shared by three broker replicas: every due time
//! enqueues exactly one task while the replicas race each pass, while one
//! of them is restarted, and after all of them were down (catch-up).
//!
//! The first test's replicas are in-process brokers, each with its own
//! `RedisStore` (its own connections), firing concurrently on a
//! multi-threaded runtime. The second runs three real `taskbroker serve`
//! processes on the wall clock (real time is the point there: their own
//! loops fire) and restarts one of them. Each test starts its own
//! redis-server.
#![cfg(unix)]

#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;
#[path = "common/serve.rs"]
mod serve;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis_server::RedisServer;
use serve::ServeProcess;
use taskbroker::broker::session::StreamLimits;
use taskbroker::broker::{Broker, BrokerSettings};
use taskbroker::config::Config;
use taskbroker::core::clock::{Clock, ManualClock};
use taskbroker::core::queue::QueueRegistry;
use taskbroker::core::task::TaskState;
use taskbroker::pb;
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

/// A `taskbroker serve --storage redis` process with `config`.
async fn serve(
    name: &str,
    redis: &RedisServer,
    config: &std::path::Path,
    dir: &tempfile::TempDir,
) -> ServeProcess {
    let data = dir.path().join(format!("data-{name}"));
    let url = redis.url();
    let args: [&std::ffi::OsStr; 10] = [
        "--storage".as_ref(),
        "redis".as_ref(),
        "--redis-url".as_ref(),
        url.as_ref(),
        "--admin-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
    ];
    ServeProcess::start(name, &args, &dir.path().join(format!("{name}.log"))).await
}

/// Leases and acks ticks through `replica` until `more` new due times have
/// been seen; adds each task's due time to `seen`.
async fn collect(replica: &ServeProcess, seen: &mut Vec<u64>, more: usize) {
    let mut worker = replica.worker();
    let target = seen.len() + more;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < target {
        assert!(tokio::time::Instant::now() < deadline, "ticks stopped coming: {seen:?}");
        let request = pb::LeaseRequest {
            queues: vec!["ticks".into()],
            max_tasks: 100,
            wait: Some(prost_types::Duration { seconds: 3, nanos: 0 }),
            worker_id: "collector".into(),
            ..Default::default()
        };
        let leased = worker.lease(request).await.unwrap().into_inner().tasks;
        for t in leased {
            let task = t.task.clone().unwrap();
            seen.push(task.dedup_key.rsplit(':').next().unwrap().parse().unwrap());
            let ack = pb::AckRequest { task_id: task.id, lease_id: t.lease_id, result: Vec::new() };
            worker.ack(ack).await.unwrap();
        }
    }
}

/// Ticks are acked as they come, so a due time fired again later would make
/// a second task (the dedup window is 0: a finished task's dedup key no
/// longer counts). Replicas racing on one due time are also held back by
/// the dedup key of its still-ready task; the store conformance suite
/// (`each_due_time_fires_once`) checks the fired record alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_serve_processes_fire_every_second_once_while_one_restarts() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("taskbroker.toml");
    std::fs::write(
        &config,
        "[[schedules]]\nname = \"tick\"\nevery = \"1s\"\nqueue = \"ticks\"\nkind = \"tick\"\ncatch_up = \"all\"\n",
    )
    .unwrap();
    let a = serve("a", &redis, &config, &dir).await;
    let mut b = serve("b", &redis, &config, &dir).await;
    let mut c = serve("c", &redis, &config, &dir).await;
    let mut seen = Vec::new();
    collect(&a, &mut seen, 3).await;
    c.sigterm();
    c.exits_cleanly(Duration::from_secs(20)).await;
    collect(&a, &mut seen, 3).await;
    let mut c = serve("c2", &redis, &config, &dir).await;
    collect(&a, &mut seen, 3).await;
    for r in [&mut b, &mut c] {
        r.sigterm();
        r.exits_cleanly(Duration::from_secs(20)).await;
    }
    let mut a = a;
    a.sigterm();
    a.exits_cleanly(Duration::from_secs(20)).await;
    // What was fired but not leased yet.
    let probe = RedisStore::connect(&redis.url(), QueueRegistry::new(Config::default().policies()), false)
        .await
        .unwrap();
    for t in probe.list_tasks("ticks", TaskState::Ready, None, 1000).await.unwrap() {
        seen.push(t.dedup_key.rsplit(':').next().unwrap().parse().unwrap());
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "a due time fired twice: {seen:?}");
    assert!(sorted.len() >= 9, "{sorted:?}");
    assert!(sorted.windows(2).all(|w| w[1] - w[0] == 1000), "every second once, none missed: {sorted:?}");
}
