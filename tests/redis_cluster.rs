//! Two real broker processes (`taskbroker serve --storage redis
//! --redis-cluster`) on a private three-node Redis Cluster: queues spread over
//! the nodes, what one replica enqueues reaches a stream on the other, and
//! each replica settles and reads tasks the other created (the queue is found
//! from the task id, with no global index).
//!
//! Dependencies across slots: released on the other replica, and completed
//! by another replica when the one that should have delivered the events
//! could not.
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
use taskbroker::core::queue::{Policies, QueuePolicy};
use taskbroker::core::task::{NewTask, TaskId, TaskState as CoreState};
use taskbroker::pb;
use taskbroker::pb::{SettleOperation, TaskState};
use taskbroker::store::redis::{RedisStore, Target};
use taskbroker::store::{LeaseSpec, Store};
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

/// Two replicas over the cluster: a task of one queue waits on a task of
/// another (another slot); the ack through one replica releases it to a
/// stream on the other, which reads its dependency's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_across_slots_releases_its_dependent_on_the_other_replica() {
    let cluster = RedisCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let a = start("A", &cluster, &dir).await;
    let b = start("B", &cluster, &dir).await;
    let (header_q, callback_q) = ("emails", "reports");
    let enqueue = |queue: &str, depends_on: Vec<String>| pb::EnqueueRequest {
        queue: queue.into(),
        kind: "chord".into(),
        depends_on,
        ..Default::default()
    };
    let header = a.producer().enqueue(enqueue(header_q, vec![])).await.unwrap().into_inner().task.unwrap();
    let callback = b
        .producer()
        .enqueue(enqueue(callback_q, vec![header.id.clone()]))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(TaskState::try_from(callback.state).unwrap(), TaskState::Waiting);

    let sub = pb::Subscribe {
        queues: vec![callback_q.into()],
        max_in_flight: 4,
        lease_duration: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
        worker_id: "stream-on-b".into(),
        ..Default::default()
    };
    let mut stream_b = open(&b.worker(), sub).await;
    stream_b.assert_quiet().await;

    let lease = pb::LeaseRequest { queues: vec![header_q.into()], max_tasks: 1, ..Default::default() };
    let held = a.worker().lease(lease).await.unwrap().into_inner().tasks.remove(0);
    let ack =
        pb::AckRequest { task_id: header.id.clone(), lease_id: held.lease_id, result: b"part".to_vec() };
    a.worker().ack(ack).await.unwrap();

    let pushed = stream_b.task_within(PROMPT).await;
    assert_eq!(task_of(&pushed).id, callback.id, "the released dependent reached the other replica's stream");
    let req = pb::GetTaskRequest { task_id: callback.id.clone(), include_dependencies: true };
    let got = b.producer().get_task(req).await.unwrap().into_inner();
    let deps: Vec<_> = got.dependencies.iter().map(|d| (d.id.clone(), d.result.clone())).collect();
    assert_eq!(deps, [(header.id.clone(), b"part".to_vec())]);
}

const NOW: u64 = 1_767_225_600_000;

fn policies() -> std::sync::Arc<Policies> {
    std::sync::Arc::new(Policies::new(Default::default(), QueuePolicy::default()))
}

fn new_task(queue: &str, depends_on: Vec<TaskId>) -> NewTask {
    NewTask {
        queue: queue.into(),
        kind: "k".into(),
        payload: Vec::new(),
        content_type: String::new(),
        priority: 0,
        headers: Default::default(),
        max_attempts: 3,
        scheduled_time: 0,
        dedup_key: String::new(),
        request_id: String::new(),
        concurrency_key: String::new(),
        semaphores: Vec::new(),
        depends_on,
        on_dependency_failure: Default::default(),
        expire_time: None,
    }
}

async fn replica(cluster: &RedisCluster) -> RedisStore {
    RedisStore::open(&Target::Cluster(cluster.urls()), policies(), false).await.unwrap()
}

/// Resolution events outlive the replica that should have delivered them:
/// replica A acks a dependency while the dependent's outbox is held by a
/// deliverer that died (its lock left behind), so A answers without having
/// resolved anything; once the lock lapses, replica B's timer sweep
/// delivers the events, and delivering them again (a deliverer that died
/// after applying, before removing) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolution_interrupted_on_one_replica_is_completed_exactly_once_by_another() {
    let cluster = RedisCluster::start();
    let (a, b) = (replica(&cluster).await, replica(&cluster).await);
    let new = new_task;
    let dep = a.enqueue(vec![new("emails", vec![])], NOW).await.unwrap().remove(0).task;
    let other = a.enqueue(vec![new("images", vec![])], NOW).await.unwrap().remove(0).task;
    let waiter = a.enqueue(vec![new("reports", vec![dep.id, other.id])], NOW).await.unwrap().remove(0).task;
    assert_eq!(waiter.state, CoreState::Waiting);

    // A deliverer of the dependency's queue died holding its outbox lock.
    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let lock = "tb:{emails}:outbox_lock";
    let mut set = redis::cmd("SET");
    set.arg(lock).arg("dead-replica").arg("PX").arg(60_000);
    set.query_async::<()>(&mut conn).await.unwrap();

    let spec = |q: &str, n| LeaseSpec::strict(&[q.to_string()], n, None, "w");
    let held = a.lease(spec("emails", 1), NOW).await.unwrap().remove(0);
    a.ack(dep.id, held.lease.as_ref().unwrap().id, b"r".to_vec(), NOW).await.unwrap();
    let waiting = b.get(waiter.id).await.unwrap();
    assert_eq!(waiting.pending_dependencies, [dep.id, other.id], "A could not deliver the end event");
    let outbox: Vec<String> =
        redis::cmd("LRANGE").arg("tb:{emails}:outbox").arg(0).arg(-1).query_async(&mut conn).await.unwrap();
    assert_eq!(outbox.len(), 1, "the end event waits in the outbox: {outbox:?}");

    // The dead deliverer's lock lapses (as its PX would make it); B's timer
    // sweep completes the work.
    redis::cmd("DEL").arg(lock).query_async::<()>(&mut conn).await.unwrap();
    b.promote_due(NOW).await.unwrap();
    let resolved = a.get(waiter.id).await.unwrap();
    assert_eq!((resolved.state, resolved.pending_dependencies), (CoreState::Waiting, vec![other.id]));
    let left: i64 = redis::cmd("LLEN").arg("tb:{emails}:outbox").query_async(&mut conn).await.unwrap();
    assert_eq!(left, 0);

    // Delivered again (as by a deliverer that died after applying it, before
    // removing it): nothing changes; a count would have released the task.
    redis::cmd("RPUSH").arg("tb:{emails}:outbox").arg(&outbox[0]).query_async::<()>(&mut conn).await.unwrap();
    a.promote_due(NOW).await.unwrap();
    let left: i64 = redis::cmd("LLEN").arg("tb:{emails}:outbox").query_async(&mut conn).await.unwrap();
    assert_eq!(left, 0, "the replayed event was delivered");
    let after = b.get(waiter.id).await.unwrap();
    assert_eq!((after.state, after.pending_dependencies), (CoreState::Waiting, vec![other.id]));
    assert!(b.lease(spec("reports", 5), NOW).await.unwrap().is_empty());

    // The other dependency's ack releases it, once.
    let held = b.lease(spec("images", 1), NOW).await.unwrap().remove(0);
    b.ack(other.id, held.lease.as_ref().unwrap().id, Vec::new(), NOW).await.unwrap();
    assert_eq!(a.get(waiter.id).await.unwrap().state, CoreState::Ready);
    assert_eq!(a.lease(spec("reports", 5), NOW).await.unwrap().len(), 1);
}

/// The registration of a new dependent is left undelivered by the replica
/// that enqueued it (its dependent's outbox held by a dead deliverer): the
/// task answers WAITING on a dependency that already SUCCEEDED, and another
/// replica's sweep completes the registration and releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_interrupted_on_one_replica_is_completed_by_another() {
    let cluster = RedisCluster::start();
    let (a, b) = (replica(&cluster).await, replica(&cluster).await);
    let dep = a.enqueue(vec![new_task("emails", vec![])], NOW).await.unwrap().remove(0).task;
    let held =
        a.lease(LeaseSpec::strict(&["emails".to_string()], 1, None, "w"), NOW).await.unwrap().remove(0);
    a.ack(dep.id, held.lease.as_ref().unwrap().id, b"r".to_vec(), NOW).await.unwrap();

    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let lock = "tb:{reports}:outbox_lock";
    let mut set = redis::cmd("SET");
    set.arg(lock).arg("dead-replica").arg("PX").arg(60_000);
    set.query_async::<()>(&mut conn).await.unwrap();
    let waiter = a.enqueue(vec![new_task("reports", vec![dep.id])], NOW).await.unwrap().remove(0).task;
    assert_eq!((waiter.state, waiter.pending_dependencies.clone()), (CoreState::Waiting, vec![dep.id]));

    redis::cmd("DEL").arg(lock).query_async::<()>(&mut conn).await.unwrap();
    b.promote_due(NOW).await.unwrap();
    let released = a.get(waiter.id).await.unwrap();
    assert_eq!((released.state, released.pending_dependencies), (CoreState::Ready, vec![]));
    // And the dependency is now read by it: kept past its retention.
    b.purge_finished(NOW + 25 * 3600 * 1000).await.unwrap();
    assert_eq!(b.get(dep.id).await.unwrap().result, b"r");
}
