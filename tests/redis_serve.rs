//! `taskbroker serve --storage redis` as an operator configures it: the
//! start-up warnings about Redis settings that lose tasks, and the
//! `TASKBROKER_REDIS_*` variables standing in for the flags.
#![cfg(unix)]

#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;
#[path = "common/serve.rs"]
mod serve;

use redis_server::{RedisCluster, RedisSentinel, RedisServer, SENTINEL_MASTER};
use serve::ServeProcess;
use taskbroker::pb;

const EVICTION: &str = "REDIS MAY EVICT TASKS";
const NO_PERSISTENCE: &str = "REDIS PERSISTENCE IS OFF";
const SNAPSHOTS_ONLY: &str = "Redis persists by snapshots only";

/// The log of a broker started on the Redis at `url`, once it serves.
async fn startup_log(url: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let broker =
        ServeProcess::start("broker", &["--storage", "redis", "--redis-url", url], &dir.path().join("log"))
            .await;
    broker.log_text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_warns_when_redis_may_evict_or_lose_tasks() {
    // AOF on, noeviction (the test servers' settings): nothing to warn about.
    let safe = RedisServer::start();
    let log = startup_log(&safe.url()).await;
    for warning in [EVICTION, NO_PERSISTENCE, SNAPSHOTS_ONLY] {
        assert!(!log.contains(warning), "{warning:?} on a safe Redis:\n{log}");
    }

    let unsafe_redis =
        RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru", "--appendonly", "no", "--save", ""]);
    let log = startup_log(&unsafe_redis.url()).await;
    let eviction =
        log.lines().find(|l| l.contains(EVICTION)).unwrap_or_else(|| panic!("no eviction warning:\n{log}"));
    assert!(eviction.contains("WARN") && eviction.contains("allkeys-lru"), "{eviction}");
    let off = log
        .lines()
        .find(|l| l.contains(NO_PERSISTENCE))
        .unwrap_or_else(|| panic!("no persistence warning:\n{log}"));
    assert!(off.contains("WARN"), "{off}");

    let snapshots = RedisServer::start_with(&["--appendonly", "no", "--save", "3600 1"]);
    let log = startup_log(&snapshots.url()).await;
    assert!(log.contains(SNAPSHOTS_ONLY) && !log.contains(NO_PERSISTENCE), "snapshots only:\n{log}");
    assert!(!log.contains(EVICTION), "noeviction:\n{log}");
}

/// Starts `taskbroker serve` configured by these variables only (no flags
/// but the listen address), enqueues through it and returns the task.
async fn serve_by_env(vars: &[(&str, &str)]) -> (ServeProcess, pb::Task) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = serve::command::<&str>(&[]);
    cmd.env("TASKBROKER_STORAGE", "redis").envs(vars.iter().copied());
    let broker = ServeProcess::spawn("broker", cmd, &dir.path().join("log")).await;
    let request = pb::EnqueueRequest { queue: "by-env".into(), kind: "k".into(), ..Default::default() };
    let task = broker.producer().enqueue(request).await.expect("enqueue").into_inner().task.unwrap();
    (broker, task)
}

/// Whether the Redis at `url` registered the queue `by-env`.
async fn has_queue(url: &str) -> bool {
    let mut conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SISMEMBER").arg("tb:queues").arg("by-env").query_async(&mut conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taskbroker_redis_url_names_the_redis() {
    let (used, other) = (RedisServer::start(), RedisServer::start());
    let (_broker, _) = serve_by_env(&[("TASKBROKER_REDIS_URL", &used.url())]).await;
    assert!(has_queue(&used.url()).await, "the task went to TASKBROKER_REDIS_URL");
    assert!(!has_queue(&other.url()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taskbroker_redis_cluster_reads_the_url_as_seed_nodes() {
    let cluster = RedisCluster::start();
    // Without cluster mode this comma-separated list is no URL at all.
    let seeds = cluster.urls().join(",");
    let (_broker, _) =
        serve_by_env(&[("TASKBROKER_REDIS_URL", &seeds), ("TASKBROKER_REDIS_CLUSTER", "true")]).await;
    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let registered: bool =
        redis::cmd("SISMEMBER").arg("tb:queues").arg("by-env").query_async(&mut conn).await.unwrap();
    assert!(registered, "the queue is registered in the cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taskbroker_redis_sentinel_names_the_master_behind_the_sentinels() {
    let setup = RedisSentinel::start();
    let (_broker, _) = serve_by_env(&[
        ("TASKBROKER_REDIS_URL", &setup.sentinel_url()),
        ("TASKBROKER_REDIS_SENTINEL", SENTINEL_MASTER),
    ])
    .await;
    assert!(has_queue(&setup.master.url()).await, "the task went to the master the sentinel names");
}
