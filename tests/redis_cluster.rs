//! Two real broker processes (`taskbroker serve --storage redis
//! --redis-cluster`) on a private three-node Redis Cluster: queues spread over
//! the nodes, what one replica enqueues reaches a stream on the other, and
//! each replica settles and reads tasks the other created (the queue is found
//! from the task id, with no global index).
//!
//! The cluster and the brokers are this test's own (free ports, temporary
//! directories) and are killed when it ends, passed or failed.
#![cfg(unix)]

#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;
#[path = "common/serve.rs"]
mod serve;
mod stream_client;

use std::collections::HashSet;
use std::time::Duration;

use redis_server::RedisCluster;
use serve::ServeProcess;
use stream_client::{id, open, task_of, WAIT};
use taskbroker::pb;
use taskbroker::pb::{SettleOperation, TaskState};
use tempfile::TempDir;
use tokio::time::timeout;

/// How soon what one replica made ready must reach a waiting worker on another.
const PROMPT: Duration = Duration::from_secs(2);
const QUEUES: [&str; 6] = ["emails", "images", "reports", "billing", "search", "audit"];

async fn start(name: &str, cluster: &RedisCluster, dir: &TempDir) -> ServeProcess {
    let seeds = cluster.urls().join(",");
    let data = dir.path().join(name);
    let args = [
        "--storage",
        "redis",
        "--redis-cluster",
        "--redis-url",
        &seeds,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    ServeProcess::start(name, &args, &dir.path().join(format!("{name}.log"))).await
}

/// Keys held by the node on `port`.
async fn dbsize(url: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = timeout(WAIT, client.get_multiplexed_async_connection()).await.unwrap().unwrap();
    timeout(WAIT, redis::cmd("DBSIZE").query_async(&mut conn)).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_a_redis_cluster_share_queues_spread_over_its_nodes() {
    let cluster = RedisCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let a = start("A", &cluster, &dir).await;
    let b = start("B", &cluster, &dir).await;

    // An idle stream on B over every queue.
    let sub = pb::Subscribe {
        queues: QUEUES.iter().map(|q| q.to_string()).collect(),
        max_in_flight: 16,
        lease_duration: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
        worker_id: "stream-on-b".into(),
        ..Default::default()
    };
    let mut stream_b = open(&b.worker(), sub).await;
    stream_b.assert_quiet().await;

    // One task per queue through A; each reaches B's stream promptly.
    let mut producer_a = a.producer();
    let mut enqueued = HashSet::new();
    for queue in QUEUES {
        let req = pb::EnqueueRequest {
            queue: queue.into(),
            kind: "cluster.test".into(),
            payload: queue.as_bytes().to_vec(),
            ..Default::default()
        };
        let task = producer_a.enqueue(req).await.unwrap_or_else(|s| panic!("Enqueue on {queue}: {s:?}"));
        enqueued.insert(task.into_inner().task.unwrap().id);
        let pushed = stream_b.task_within(PROMPT).await;
        let t = task_of(&pushed);
        assert_eq!((t.queue.as_str(), t.payload.as_slice()), (queue, queue.as_bytes()));
        assert!(enqueued.contains(&t.id), "B was pushed a task A did not enqueue: {t:?}");
        stream_b.ack(&pushed).await;
        stream_b.settled_ok(id(&pushed), SettleOperation::Ack).await;
    }

    // A reads what B settled, for tasks in every queue.
    for task_id in &enqueued {
        let got = a
            .producer()
            .get_task(pb::GetTaskRequest { task_id: task_id.clone(), include_dependencies: false })
            .await
            .unwrap();
        let state = got.into_inner().task.unwrap().state;
        assert_eq!(TaskState::try_from(state).unwrap(), TaskState::Succeeded, "{task_id} on A");
    }

    // The queues' keys are spread over the cluster, not piled on one node.
    let mut nodes_with_keys = 0;
    for url in cluster.urls() {
        if dbsize(&url).await > 0 {
            nodes_with_keys += 1;
        }
    }
    assert!(nodes_with_keys >= 2, "the queues' keys sit on {nodes_with_keys} of 3 nodes");
}
