//! The Redis store on a Sentinel-managed Redis (a master, its replica, one
//! sentinel, all this test's own): the master is killed, the sentinel promotes
//! the replica, and the same store finds the new master by itself: what was
//! replicated before the crash is there, calls work again, and events flow
//! again on the new master.
#![cfg(unix)]

#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_server::{RedisSentinel, SENTINEL_MASTER};
use taskbroker::core::queue::{Policies, QueuePolicy};
use taskbroker::core::task::{NewTask, TaskState};
use taskbroker::store::redis::{RedisStore, Target};
use taskbroker::store::{LeaseSpec, Store, StoreError, StoreEvent};

const NOW: u64 = 1_767_225_600_000;

fn policies() -> Arc<Policies> {
    Arc::new(Policies::new(BTreeMap::new(), QueuePolicy::default()))
}

fn task(queue: &str, payload: &str) -> NewTask {
    NewTask {
        depends_on: Vec::new(),
        on_dependency_failure: Default::default(),
        expire_time: None,
        queue: queue.into(),
        kind: "sentinel.test".into(),
        payload: payload.as_bytes().to_vec(),
        content_type: String::new(),
        priority: 0,
        headers: BTreeMap::new(),
        max_attempts: 3,
        scheduled_time: 0,
        dedup_key: String::new(),
        request_id: String::new(),
        concurrency_key: String::new(),
        semaphores: Vec::new(),
    }
}

async fn open(setup: &RedisSentinel) -> RedisStore {
    let target = Target::Sentinel { sentinels: vec![setup.sentinel_url()], master: SENTINEL_MASTER.into() };
    RedisStore::open(&target, policies(), false).await.expect("connects through the sentinel")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_master_dies_the_store_follows_the_sentinel_to_the_promoted_replica() {
    let mut setup = RedisSentinel::start();
    let store = open(&setup).await;
    let before: Vec<_> = store
        .enqueue((0..20).map(|i| task("jobs", &format!("before {i}"))).collect(), NOW)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.task.id)
        .collect();
    // Replication is asynchronous: make sure the replica has the tasks
    // before the master dies (what WAIT is for).
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", setup.master.port())).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let replicas: i64 = redis::cmd("WAIT").arg(1).arg(5000).query_async(&mut raw).await.unwrap();
    assert_eq!(replicas, 1, "the replica acknowledged the writes");
    let mut events = store.events().expect("the redis store has events");

    setup.master.kill();
    let killed = Instant::now();

    // Calls fail with UNAVAILABLE until the sentinel has promoted the replica
    // and the store has found it; then they work again, no restart needed.
    loop {
        match store.enqueue(vec![task("jobs", "after")], NOW).await {
            Ok(_) => break,
            Err(StoreError::Unavailable(_)) => {
                assert!(killed.elapsed() < Duration::from_secs(30), "no working master 30 s after the crash");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("while failing over: {e:?}"),
        }
    }
    eprintln!("writes worked again {:?} after the master died", killed.elapsed());
    assert_eq!(setup.master_port(), Some(setup.replica.port()), "the sentinel promoted the replica");

    for id in &before {
        assert_eq!(store.get(*id).await.unwrap().state, TaskState::Ready, "{id} survived the failover");
    }
    let leased = store.lease(LeaseSpec::strict(&["jobs".to_string()], 100, None, "w"), NOW).await.unwrap();
    assert_eq!(leased.len(), 21, "the 20 replicated tasks and the one enqueued after");

    // Events come from the new master too: another replica's enqueue wakes this one.
    let other = open(&setup).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    'heard: loop {
        assert!(Instant::now() < deadline, "no event from the new master within 20 s");
        other.enqueue(vec![task("wake", "x")], NOW).await.unwrap();
        let until = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(ev) = tokio::time::timeout_at(until, events.recv()).await {
            if matches!(ev, Ok(StoreEvent::Ready(ref q, _)) if q == "wake") {
                break 'heard;
            }
        }
    }
    eprintln!("events flowed again {:?} after the master died", killed.elapsed());
}

/// The roles swap behind the store's back without its connection closing:
/// the master becomes a read-only replica, which answers writes with
/// `READONLY`, and the sentinel names the other node. The store must take
/// `READONLY` as "not the master any more" and ask the sentinel again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_turns_replica_answers_readonly_and_the_store_asks_the_sentinel_again() {
    let setup = RedisSentinel::start();
    let store = open(&setup).await;
    let before = store.enqueue(vec![task("jobs", "before")], NOW).await.unwrap().pop().unwrap().task.id;
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", setup.master.port())).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let replicas: i64 = redis::cmd("WAIT").arg(1).arg(5000).query_async(&mut raw).await.unwrap();
    assert_eq!(replicas, 1, "the replica acknowledged the writes");

    // Swap: promote the replica, demote the master (no connection is closed:
    // REPLICAOF keeps clients), and point the sentinel at the new master.
    let (old, new) = (setup.master.port(), setup.replica.port());
    assert_eq!(setup.replica.command("REPLICAOF NO ONE").as_deref(), Some("+OK"));
    assert_eq!(setup.master.command(&format!("REPLICAOF 127.0.0.1 {new}")).as_deref(), Some("+OK"));
    for command in [
        format!("SENTINEL REMOVE {SENTINEL_MASTER}"),
        format!("SENTINEL MONITOR {SENTINEL_MASTER} 127.0.0.1 {new} 1"),
    ] {
        assert_eq!(setup.sentinel_command(&command).as_deref(), Some("+OK"), "{command}");
    }
    assert_eq!(setup.master_port(), Some(new), "the sentinel names the promoted node");
    let demoted: String = redis::cmd("ROLE").query_async::<Vec<redis::Value>>(&mut raw).await.map_or_else(
        |e| format!("{e}"),
        |role| match role.first() {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        },
    );
    assert_eq!(demoted, "slave", "port {old} is a replica now");

    // The store's open connection meets READONLY, then reaches the new master.
    let started = Instant::now();
    let mut refusals = Vec::new();
    let after = loop {
        if started.elapsed() > Duration::from_secs(20) {
            let last = refusals.last();
            panic!("no write 20 s after the swap: {} refusals, the last {last:?}", refusals.len());
        }
        match store.enqueue(vec![task("after", "after the swap")], NOW).await {
            Ok(mut done) => break done.pop().unwrap().task.id,
            Err(StoreError::Unavailable(why)) => {
                refusals.push(why);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("while the roles swapped: {e:?}"),
        }
    };
    eprintln!("writes worked again {:?} after the swap; refused with {refusals:?}", started.elapsed());
    // redis-rs words it "ReadOnly: You can't write against a read only replica."
    assert!(
        refusals.iter().any(|r| r.contains("read only replica")),
        "the old master answered READONLY: {refusals:?}"
    );
    // The write is on the new master, and the old one has it through replication.
    let promoted = redis::Client::open(format!("redis://127.0.0.1:{new}/")).unwrap();
    let mut promoted = promoted.get_multiplexed_async_connection().await.unwrap();
    let there: bool = redis::cmd("HEXISTS")
        .arg("tb:{after}:meta")
        .arg(after.to_string())
        .query_async(&mut promoted)
        .await
        .unwrap();
    assert!(there, "the task written after the swap is on the new master");
    assert_eq!(store.get(before).await.unwrap().state, TaskState::Ready);
}
