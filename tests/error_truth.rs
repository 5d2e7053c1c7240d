//! Errors that tell the truth: a record the store cannot read is `INTERNAL`
//! (retrying will not mend it; no `RetryInfo`), an outage is `UNAVAILABLE`
//! with `RetryInfo`, and neither hands the backend's own text (hosts, keys,
//! script errors) to the client.

use std::sync::Arc;
use std::time::Duration;

use taskbroker::app;
use taskbroker::config::{Config, StorageKind};
use taskbroker::core::clock::SystemClock;
use taskbroker::pb;
use taskbroker::pb::producer_service_client::ProducerServiceClient;
use tonic::Code;
use tonic_types::StatusExt;

#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;
use redis_server::RedisServer;

#[tokio::test]
async fn corruption_is_internal_and_an_outage_is_unavailable_and_neither_leaks_backend_text() {
    let mut redis = RedisServer::start();
    let mut config = Config { storage: StorageKind::Redis, redis_url: redis.url(), ..Config::default() };
    config.listen = "127.0.0.1:0".into();
    config.validate().unwrap();
    let running = app::start(&config, Arc::new(SystemClock)).await.unwrap();
    let mut producer = ProducerServiceClient::connect(format!("http://{}", running.addr)).await.unwrap();
    let enqueue = pb::EnqueueRequest { queue: "q".into(), kind: "k".into(), ..Default::default() };
    let task = producer.enqueue(enqueue).await.unwrap().into_inner().task.unwrap();

    // The task's body (which only Rust decodes) overwritten with garbage.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    redis::cmd("HSET").arg("tb:{q}:body").arg(&task.id).arg("garbage").query::<()>(&mut conn).unwrap();
    let get = pb::GetTaskRequest { task_id: task.id.clone(), include_dependencies: false };
    let err = producer.get_task(get.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    let details = err.get_error_details();
    assert_eq!(details.error_info().unwrap().reason, "INTERNAL");
    assert!(details.retry_info().is_none(), "corruption is not retried blindly");
    assert!(!err.message().contains("corrupt") && !err.message().contains("body"), "{}", err.message());

    // Redis gone: UNAVAILABLE, retry later, and no connection text.
    redis.kill();
    let err =
        tokio::time::timeout(Duration::from_secs(10), producer.get_task(get)).await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let details = err.get_error_details();
    assert_eq!(details.error_info().unwrap().reason, "STORAGE_UNAVAILABLE");
    assert_eq!(details.retry_info().unwrap().retry_delay, Some(Duration::from_secs(1)));
    let port = redis.port().to_string();
    assert!(
        !err.message().contains(&port) && !err.message().to_lowercase().contains("redis"),
        "{}",
        err.message()
    );
    running.shutdown().await.unwrap();
}
