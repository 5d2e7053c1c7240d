//! Storage faults as clients see them, through the real binary over gRPC:
//! the embedded store failing to commit, Redis refusing writes for lack of
//! memory, and Redis gone. Each answer carries the reason the README's Errors
//! table names (and `RetryInfo` where it says so), readiness follows storage
//! health, and the process keeps serving.
#![cfg(unix)]

#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;
#[path = "common/serve.rs"]
mod serve;

use std::time::Duration;

use redis_server::RedisServer;
use serve::ServeProcess;
use taskbroker::pb;
use tokio::process::Command;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

/// How soon readiness must follow storage health (the server looks every second).
const HEALTH_WITHIN: Duration = Duration::from_secs(10);
/// The wait clients are told to leave before retrying after UNAVAILABLE.
const RETRY_DELAY: Duration = Duration::from_secs(1);

fn reason(s: &tonic::Status) -> String {
    s.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default()
}

/// UNAVAILABLE, reason STORAGE_UNAVAILABLE, with a RetryInfo of 1 s.
fn assert_storage_unavailable(s: &tonic::Status, what: &str) {
    assert_eq!((s.code(), reason(s).as_str()), (Code::Unavailable, "STORAGE_UNAVAILABLE"), "{what}: {s:?}");
    let retry = s.get_error_details().retry_info().and_then(|r| r.retry_delay);
    assert_eq!(retry, Some(RETRY_DELAY), "{what}: RetryInfo in {s:?}");
}

fn request(queue: &str, payload: Vec<u8>) -> pb::EnqueueRequest {
    pb::EnqueueRequest { queue: queue.into(), kind: "fault.test".into(), payload, ..Default::default() }
}

fn lease(queue: &str, max_tasks: u32) -> pb::LeaseRequest {
    pb::LeaseRequest { queues: vec![queue.into()], max_tasks, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_answers_unavailable_turns_readiness_not_serving_and_keeps_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("broker.log");
    // A file-size limit (RLIMIT_FSIZE) makes the database's writes fail with
    // EFBIG once it grows past a few MB: a full disk for this process only.
    // SIGXFSZ is ignored, as a disk-full broker would not be killed either.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"trap '' XFSZ; ulimit -f 16384 && exec "$0" "$@""#)
        .arg(serve::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--storage", "embedded", "--data-dir"])
        .arg(&data);
    serve::clean(&mut cmd);
    let broker = ServeProcess::spawn("broker", cmd, &log).await;
    let mut health = broker.watch_health().await;
    broker.health_becomes(&mut health, ServingStatus::Serving, HEALTH_WITHIN).await;

    let mut producer = broker.producer();
    let mut acknowledged = Vec::new();
    let failure = loop {
        assert!(acknowledged.len() < 64, "64 MB of payloads were committed under the file-size limit");
        match producer.enqueue(request("big", vec![b'x'; 1_000_000])).await {
            Ok(r) => acknowledged.push(r.into_inner().task.unwrap().id),
            Err(s) => break s,
        }
    };
    assert!(!acknowledged.is_empty(), "the store worked before the limit: {failure:?}");
    assert_storage_unavailable(&failure, "the enqueue whose commit failed");
    // The store refuses everything from then on, reads of the table aside.
    let small =
        producer.enqueue(request("small", b"x".to_vec())).await.expect_err("enqueue after the failure");
    assert_storage_unavailable(&small, "a small enqueue after the failure");
    let leased = broker.worker().lease(lease("big", 1)).await.expect_err("lease after the failure");
    assert_storage_unavailable(&leased, "a lease after the failure");
    broker.health_becomes(&mut health, ServingStatus::NotServing, HEALTH_WITHIN).await;
    let mut broker = broker;
    broker.assert_running();
    broker.kill9().await;
    drop(broker);

    // What was acknowledged is on disk: a broker without the limit has it all.
    let data_arg = data.to_str().unwrap();
    let broker =
        ServeProcess::start("restarted", &["--storage", "embedded", "--data-dir", data_arg], &log).await;
    // (A lease answer holds a few MB of payloads at most: lease until empty.)
    let mut back: Vec<String> = Vec::new();
    loop {
        let tasks = broker.worker().lease(lease("big", 100)).await.unwrap().into_inner().tasks;
        if tasks.is_empty() {
            break;
        }
        back.extend(tasks.into_iter().map(|t| t.task.unwrap().id));
    }
    back.sort();
    assert_eq!(back, acknowledged, "every acknowledged enqueue, and only those, after the restart");
}

/// Runs a command (`args`) on the Redis at `url`; its reply.
async fn redis_cmd(url: &str, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect to redis");
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await.unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

async fn used_memory(url: &str) -> u64 {
    let info = match redis_cmd(url, &["INFO", "memory"]).await {
        redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("INFO memory: {other:?}"),
    };
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_answers_storage_full_and_workers_still_drain() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let broker = ServeProcess::start(
        "broker",
        &["--storage", "redis", "--redis-url", &redis.url()],
        &dir.path().join("log"),
    )
    .await;
    let mut producer = broker.producer();
    producer.enqueue(request("full", b"first".to_vec())).await.expect("an enqueue before the limit");
    // A limit just above what Redis uses now (with noeviction, Redis's default).
    let limit = (used_memory(&redis.url()).await + (1 << 20)).to_string();
    redis_cmd(&redis.url(), &["CONFIG", "SET", "maxmemory", &limit]).await;
    assert_eq!(
        redis_cmd(&redis.url(), &["CONFIG", "GET", "maxmemory-policy"]).await,
        redis::Value::Array(vec![
            redis::Value::BulkString(b"maxmemory-policy".to_vec()),
            redis::Value::BulkString(b"noeviction".to_vec())
        ])
    );

    let mut stored = 1;
    let full = loop {
        assert!(stored < 500, "Redis took 16 MB past a 1 MB limit");
        match producer.enqueue(request("full", vec![b'x'; 32 * 1024])).await {
            Ok(_) => stored += 1,
            Err(s) => break s,
        }
    };
    assert_eq!((full.code(), reason(&full).as_str()), (Code::ResourceExhausted, "STORAGE_FULL"), "{full:?}");
    // Workers drain a full Redis: lease, extend, ack and nack still work.
    let mut worker = broker.worker();
    let tasks = worker.lease(lease("full", 2)).await.expect("lease when full").into_inner().tasks;
    assert_eq!(tasks.len(), 2);
    let (a, b) = (&tasks[0], &tasks[1]);
    let id = |t: &pb::LeasedTask| t.task.as_ref().unwrap().id.clone();
    let extend = pb::ExtendLeaseRequest {
        task_id: id(a),
        lease_id: a.lease_id.clone(),
        extend_by: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
    };
    worker.extend_lease(extend).await.expect("extend when full");
    worker
        .ack(pb::AckRequest { task_id: id(a), lease_id: a.lease_id.clone(), result: vec![] })
        .await
        .expect("ack when full");
    let nack = pb::NackRequest { task_id: id(b), lease_id: b.lease_id.clone(), ..Default::default() };
    worker.nack(nack).await.expect("nack when full");
    let again = producer.enqueue(request("full", vec![b'x'; 32 * 1024])).await.expect_err("still full");
    assert_eq!(reason(&again), "STORAGE_FULL", "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gone_answers_storage_unavailable_with_retry_info_and_readiness_follows() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = ServeProcess::start(
        "broker",
        &["--storage", "redis", "--redis-url", &redis.url()],
        &dir.path().join("log"),
    )
    .await;
    let mut health = broker.watch_health().await;
    broker.health_becomes(&mut health, ServingStatus::Serving, HEALTH_WITHIN).await;
    let mut producer = broker.producer();
    let task =
        producer.enqueue(request("gone", b"before".to_vec())).await.unwrap().into_inner().task.unwrap();

    redis.kill();
    let enqueue =
        producer.enqueue(request("gone", b"during".to_vec())).await.expect_err("enqueue without Redis");
    assert_storage_unavailable(&enqueue, "Enqueue");
    let get = producer
        .get_task(pb::GetTaskRequest { task_id: task.id.clone(), include_dependencies: false })
        .await
        .expect_err("get");
    assert_storage_unavailable(&get, "GetTask");
    let leased = broker.worker().lease(lease("gone", 1)).await.expect_err("lease without Redis");
    assert_storage_unavailable(&leased, "Lease");
    broker.health_becomes(&mut health, ServingStatus::NotServing, HEALTH_WITHIN).await;
    broker.assert_running();

    redis.restart();
    broker.health_becomes(&mut health, ServingStatus::Serving, HEALTH_WITHIN).await;
    let got = producer
        .get_task(pb::GetTaskRequest { task_id: task.id.clone(), include_dependencies: false })
        .await
        .expect("get after");
    assert_eq!(got.into_inner().task.unwrap().payload, b"before");
}

/// Worker streams retrying their lease during the outage below.
const OUTAGE_STREAMS: usize = 20;
/// How long the outage lasts.
const OUTAGE: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_outage_logs_at_most_one_warning_a_second_however_many_streams_retry() {
    use pb::stream_request::Msg as Req;
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = ServeProcess::start(
        "broker",
        &["--storage", "redis", "--redis-url", &redis.url()],
        &dir.path().join("log"),
    )
    .await;
    let mut health = broker.watch_health().await;
    broker.health_becomes(&mut health, ServingStatus::Serving, HEALTH_WITHIN).await;
    // Streams holding one task each, a second one waiting in their queue.
    let mut producer = broker.producer();
    let mut streams = Vec::new();
    for i in 0..OUTAGE_STREAMS {
        let queue = format!("outage-{i}");
        for _ in 0..2 {
            producer.enqueue(request(&queue, b"x".to_vec())).await.unwrap();
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let subscribe = pb::Subscribe {
            queues: vec![queue],
            max_in_flight: 1,
            worker_id: format!("w{i}"),
            ..Default::default()
        };
        tx.send(pb::StreamRequest { msg: Some(Req::Subscribe(subscribe)) }).await.unwrap();
        let mut stream = broker
            .worker()
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = tokio::time::timeout(HEALTH_WITHIN, stream.message()).await.expect("a task").unwrap();
        assert!(matches!(first.and_then(|m| m.msg), Some(pb::stream_response::Msg::Task(_))));
        streams.push((tx, stream));
    }
    let before = broker.log_text().lines().count();
    redis.kill();
    // Each stream gets room for one more task: it tries to lease, and retries
    // every second while the store fails.
    for (tx, _) in &streams {
        tx.send(pb::StreamRequest { msg: Some(Req::Credit(pb::Credit { count: 1 })) }).await.unwrap();
    }
    broker.health_becomes(&mut health, ServingStatus::NotServing, HEALTH_WITHIN).await;
    tokio::time::sleep(OUTAGE).await;
    broker.assert_running();
    let log = broker.log_text();
    let warnings: Vec<&str> = log.lines().skip(before).filter(|l| l.contains("WARN")).collect();
    // One a second for storage failures, plus the event subscription's
    // (backing off to one per 2 s) and readiness changing.
    let allowed = 2 * OUTAGE.as_secs() as usize + 4;
    assert!(
        warnings.len() <= allowed,
        "{} warnings in a {OUTAGE:?} outage with {OUTAGE_STREAMS} streams (at most {allowed}), e.g. {:?}",
        warnings.len(),
        &warnings[..warnings.len().min(5)]
    );
    eprintln!("{} warnings logged in a {OUTAGE:?} outage with {OUTAGE_STREAMS} streams", warnings.len());
}
