//! The credentials and database in `redis_url` reach the master a Sentinel
//! names: a master with `requirepass` behind a real redis-sentinel (master,
//! replica and sentinel sharing one password) serves the store, in the
//! database the URL names. The sentinel used to get them and the master did
//! not (NOAUTH).
#![cfg(unix)]

#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;

use std::collections::BTreeMap;

use redis_server::{RedisSentinel, SENTINEL_MASTER};
use taskbroker::core::queue::{Policies, QueuePolicy};
use taskbroker::core::task::NewTask;
use taskbroker::store::redis::{RedisStore, Target};
use taskbroker::store::Store;

const PASSWORD: &str = "tb-s3cret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_protected_master_behind_a_sentinel_gets_the_urls_password_and_database() {
    let setup = RedisSentinel::start_with_password(Some(PASSWORD));
    let port = setup.sentinel_url().trim_start_matches("redis://127.0.0.1:").trim_end_matches('/').to_owned();
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}/3");
    let target = Target::Sentinel { sentinels: vec![url], master: SENTINEL_MASTER.into() };
    let policies = std::sync::Arc::new(Policies::new(BTreeMap::new(), QueuePolicy::default()));
    let store = RedisStore::open(&target, policies, false).await.expect("opens through the sentinel");
    let task = NewTask {
        depends_on: Vec::new(),
        on_dependency_failure: Default::default(),
        expire_time: None,
        queue: "auth".into(),
        kind: "k".into(),
        payload: Vec::new(),
        content_type: String::new(),
        priority: 0,
        headers: BTreeMap::new(),
        max_attempts: 3,
        scheduled_time: 0,
        dedup_key: String::new(),
        request_id: String::new(),
        concurrency_key: String::new(),
        semaphores: Vec::new(),
    };
    let enqueued = store.enqueue(vec![task], 1_767_225_600_000).await.unwrap().remove(0);
    assert_eq!(store.get(enqueued.task.id).await.unwrap().kind, "k");

    // The task is in database 3 of the master, and nothing is in database 0.
    let db = |n: u8| format!("redis://:{PASSWORD}@127.0.0.1:{}/{n}", setup.master.port());
    let mut three = redis::Client::open(db(3)).unwrap().get_multiplexed_async_connection().await.unwrap();
    let mut zero = redis::Client::open(db(0)).unwrap().get_multiplexed_async_connection().await.unwrap();
    let in_three: usize = redis::cmd("DBSIZE").query_async(&mut three).await.unwrap();
    let in_zero: usize = redis::cmd("DBSIZE").query_async(&mut zero).await.unwrap();
    assert!(in_three > 0 && in_zero == 0, "database 3 has {in_three} keys, database 0 {in_zero}");
}
