//! Several real broker processes (`taskbroker serve --storage redis`) on one
//! redis-server (the 10k drain also on a three-node Redis Cluster): what one
//! replica does reaches the streams, long-polls and
//! stream leases of the others; a replica killed with `kill -9` loses nothing
//! but time; a Redis crash and restart loses nothing acknowledged, fails calls
//! with `UNAVAILABLE` meanwhile and needs no broker restart.
//!
//! Every test starts its own redis-server (`common/redis.rs`, a free port and
//! a temporary directory) and its own broker processes, reads each one's port
//! from its `listening on ADDR` line, and kills all of them when it ends
//! (Drop guards), passed or failed. Every wait is bounded.
//!
//! Waits are for signals (a pushed task, a health change, a command seen by
//! Redis's MONITOR), except where real time is the point: leases that expire
//! on Redis's clock (the `kill -9` test's 2 s leases), a Redis outage held
//! for [`OUTAGE_MIN`], and the quiet second after the 10k drain in which a
//! late redelivery would show.
#![cfg(unix)]

#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;
#[path = "common/serve.rs"]
mod serve;
mod stream_client;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use redis_server::{Monitor, RedisCluster, RedisServer};
use serve::{ServeProcess, CALL_TIMEOUT};
use stream_client::{id, open, task_of, FAILED_PRECONDITION, WAIT};
use taskbroker::pb;
use taskbroker::pb::enqueue_result::Result as ItemResult;
use taskbroker::pb::producer_service_client::ProducerServiceClient;
use taskbroker::pb::stream_response::Msg as Resp;
use taskbroker::pb::worker_service_client::WorkerServiceClient;
use taskbroker::pb::{SettleOperation, TaskState};
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::time::timeout;
use tonic::transport::Channel;
use tonic::{Code, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// How soon what one replica made ready must reach a waiting worker on another.
const PROMPT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// Harness: broker processes on one Redis.
// ---------------------------------------------------------------------------

/// A `taskbroker serve --storage redis` process. Dropping it kills the
/// process; on a panic it also prints the tail of its log.
struct Replica {
    name: &'static str,
    process: ServeProcess,
    /// Its data directory (unused by the Redis store) and its log.
    _dir: TempDir,
}

impl Replica {
    /// Starts a replica on `redis` and waits until it serves.
    async fn start(name: &'static str, redis: &RedisServer) -> Replica {
        Replica::start_on(name, &["--redis-url", &redis.url()]).await
    }

    /// Starts a replica with these Redis flags (`--redis-url ...`).
    async fn start_on(name: &'static str, redis_args: &[&str]) -> Replica {
        let dir = tempfile::tempdir().expect("a temporary directory for the broker");
        let data = dir.path().join("data");
        let data = data.to_str().expect("a UTF-8 temporary path");
        let mut args = vec!["--storage", "redis", "--data-dir", data];
        args.extend_from_slice(redis_args);
        let process = ServeProcess::start(name, &args, &dir.path().join("broker.log")).await;
        Replica { name, process, _dir: dir }
    }
}

impl std::ops::Deref for Replica {
    type Target = ServeProcess;

    fn deref(&self) -> &ServeProcess {
        &self.process
    }
}

impl std::ops::DerefMut for Replica {
    fn deref_mut(&mut self) -> &mut ServeProcess {
        &mut self.process
    }
}

async fn start_replicas(redis: &RedisServer, names: &[&'static str]) -> Vec<Replica> {
    let mut out = Vec::new();
    for name in names {
        out.push(Replica::start(name, redis).await);
    }
    out
}

// ---------------------------------------------------------------------------
// Small helpers.
// ---------------------------------------------------------------------------

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: s, nanos: 0 })
}

fn state(t: &pb::Task) -> TaskState {
    TaskState::try_from(t.state).unwrap_or(TaskState::Unspecified)
}

fn system_time(t: &prost_types::Timestamp) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32)
}

/// A strict subscription with a window of `window` and `lease` seconds per lease.
fn subscription(queue: &str, window: u32, lease: i64, worker_id: &str) -> pb::Subscribe {
    pb::Subscribe {
        queues: vec![queue.into()],
        max_in_flight: window,
        lease_duration: secs(lease),
        worker_id: worker_id.into(),
        ..Default::default()
    }
}

fn request(queue: &str, payload: String) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        queue: queue.into(),
        kind: "replica.test".into(),
        payload: payload.into_bytes(),
        ..Default::default()
    }
}

async fn enqueue(client: &mut ProducerServiceClient<Channel>, queue: &str, payload: &str) -> pb::Task {
    client
        .enqueue(request(queue, payload.into()))
        .await
        .unwrap_or_else(|s| panic!("Enqueue on {queue}: {s:?}"))
        .into_inner()
        .task
        .expect("Enqueue returns the task")
}

async fn get(client: &mut ProducerServiceClient<Channel>, task_id: &str) -> Result<pb::Task, tonic::Status> {
    let resp =
        client.get_task(pb::GetTaskRequest { task_id: task_id.into(), include_dependencies: false }).await?;
    Ok(resp.into_inner().task.expect("GetTask returns the task"))
}

/// Opens a health Watch of service `""` on `replica`.
async fn watch_health(replica: &Replica) -> Streaming<HealthCheckResponse> {
    replica
        .health()
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap_or_else(|s| panic!("health Watch on {}: {s:?}", replica.name))
        .into_inner()
}

/// The health Check of service `""`.
async fn check_health(replica: &Replica) -> ServingStatus {
    let status = replica
        .health()
        .check(HealthCheckRequest { service: String::new() })
        .await
        .unwrap_or_else(|s| panic!("health Check on {}: {s:?}", replica.name))
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown)
}

// ---------------------------------------------------------------------------
// 1. Wake-ups cross replicas.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_through_a_reaches_an_idle_stream_and_a_long_poll_lease_on_b_promptly() {
    let redis = RedisServer::start();
    let replicas = start_replicas(&redis, &["A", "B"]).await;
    let (a, b) = (&replicas[0], &replicas[1]);
    let mut producer_a = a.producer();

    // An idle stream on B: subscribed, nothing to push.
    let mut stream_b = open(&b.worker(), subscription("to-stream", 1, 30, "stream-on-b")).await;
    stream_b.assert_quiet().await;
    let sent = Instant::now();
    let task = enqueue(&mut producer_a, "to-stream", "for the stream").await;
    let pushed = stream_b.task_within(PROMPT).await;
    let latency = sent.elapsed();
    let t = task_of(&pushed);
    assert_eq!((t.id.as_str(), state(t), t.attempt), (task.id.as_str(), TaskState::Leased, 1));
    assert_eq!(t.payload, b"for the stream");
    stream_b.ack(&pushed).await;
    stream_b.settled_ok(id(&pushed), SettleOperation::Ack).await;
    eprintln!("A's enqueue reached B's idle stream in {latency:?}");

    // A long-poll Lease on B, parked on an empty queue: B's lease script has
    // run on Redis and found nothing (B registers for wake-ups before it
    // tries), so from then on only A's event can answer the poll.
    let mut monitor = Monitor::start(redis.port()).await;
    let mut worker_b = b.worker();
    let poll = tokio::spawn(async move {
        worker_b
            .lease(pb::LeaseRequest {
                queues: vec!["to-poll".into()],
                max_tasks: 1,
                lease_duration: secs(30),
                wait: secs(20),
                worker_id: "poll-on-b".into(),
            })
            .await
    });
    monitor.wait_for("tb:{to-poll}:", WAIT).await;
    drop(monitor);
    assert!(!poll.is_finished(), "the long-poll on an empty queue returned early: {:?}", poll.await);
    let sent = Instant::now();
    let task = enqueue(&mut producer_a, "to-poll", "for the poll").await;
    let leased = timeout(PROMPT, poll)
        .await
        .unwrap_or_else(|_| panic!("B's long-poll was not answered within {PROMPT:?} of A's enqueue"))
        .expect("long-poll task")
        .expect("Lease on B")
        .into_inner()
        .tasks;
    let latency = sent.elapsed();
    assert_eq!(leased.len(), 1, "one task leased: {leased:?}");
    let t = task_of(&leased[0]);
    assert_eq!((t.id.as_str(), state(t), t.attempt), (task.id.as_str(), TaskState::Leased, 1));
    eprintln!("A's enqueue answered B's long-poll in {latency:?}");
}

// ---------------------------------------------------------------------------
// 2. Many streams on three replicas drain one queue exactly once.
// ---------------------------------------------------------------------------

const DRAIN_TASKS: usize = 10_000;
const DRAIN_WORKERS: usize = 8;
const DRAIN_WINDOW: u32 = 32;
/// Long enough that no lease expires during the test.
const DRAIN_LEASE: i64 = 60;
/// Bound on the whole drain (2 shared cores, 3 brokers and Redis on them).
const DRAIN_WITHIN: Duration = Duration::from_secs(300);
/// How long workers keep listening after the last ack, to catch late redeliveries.
const DRAIN_AFTER: Duration = Duration::from_secs(1);

/// One push of a task to a stream.
struct Delivery {
    worker: usize,
    attempt: u32,
    lease_id: String,
}

#[derive(Default)]
struct Drain {
    deliveries: Mutex<HashMap<String, Vec<Delivery>>>,
    /// Anything a worker saw that must not happen (settle errors, lost leases).
    problems: Mutex<Vec<String>>,
}

/// A stream worker: acks every task pushed to it and counts confirmed acks
/// into `acked`, until `stop`.
async fn drain_worker(
    n: usize,
    client: WorkerServiceClient<Channel>,
    drain: Arc<Drain>,
    acked: Arc<watch::Sender<usize>>,
    mut stop: watch::Receiver<bool>,
    opened: tokio::sync::mpsc::Sender<()>,
) -> usize {
    let mut w = open(&client, subscription("drain", DRAIN_WINDOW, DRAIN_LEASE, &format!("drain-{n}"))).await;
    let _ = opened.send(()).await;
    drop(opened);
    let mut mine = 0;
    loop {
        let msg = tokio::select! {
            _ = stop.wait_for(|s| *s) => return mine,
            m = w.next_within(DRAIN_WITHIN) => m,
        };
        match msg {
            Resp::Task(lt) => {
                let t = task_of(&lt);
                let d = Delivery { worker: n, attempt: t.attempt, lease_id: lt.lease_id.clone() };
                drain.deliveries.lock().unwrap().entry(t.id.clone()).or_default().push(d);
                w.ack(&lt).await;
            }
            Resp::Settled(s) => {
                if s.error.is_some() || s.operation != SettleOperation::Ack as i32 {
                    drain.problems.lock().unwrap().push(format!("worker {n}: {s:?}"));
                } else {
                    mine += 1;
                    acked.send_modify(|c| *c += 1);
                }
            }
            other => drain.problems.lock().unwrap().push(format!("worker {n}: unexpected {other:?}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_stream_workers_on_three_replicas_drain_10k_tasks_without_duplicates_or_losses() {
    let redis = RedisServer::start();
    let replicas = start_replicas(&redis, &["A", "B", "C"]).await;
    drain_10k(&replicas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_drain_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let seeds = cluster.urls().join(",");
    let mut replicas = Vec::new();
    for name in ["A", "B", "C"] {
        replicas.push(Replica::start_on(name, &["--redis-cluster", "--redis-url", &seeds]).await);
    }
    drain_10k(&replicas).await;
}

/// 8 stream workers spread over `replicas` drain 10k tasks enqueued through
/// them: every task delivered once, acked once, SUCCEEDED through every replica.
async fn drain_10k(replicas: &[Replica]) {
    let drain = Arc::new(Drain::default());
    let (acked, mut acked_rx) = watch::channel(0usize);
    let acked = Arc::new(acked);
    let (stop, stop_rx) = watch::channel(false);
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel(DRAIN_WORKERS);
    let mut workers = Vec::new();
    for n in 0..DRAIN_WORKERS {
        let client = replicas[n % replicas.len()].worker();
        let job = drain_worker(n, client, drain.clone(), acked.clone(), stop_rx.clone(), opened_tx.clone());
        workers.push(tokio::spawn(job));
    }
    drop(opened_tx);
    for _ in 0..DRAIN_WORKERS {
        timeout(WAIT * 2, opened_rx.recv()).await.expect("every stream opens").expect("a worker opened");
    }

    // 10 batches of 1000, through the replicas in turn, while the workers drain.
    let started = Instant::now();
    let mut ids = Vec::with_capacity(DRAIN_TASKS);
    for (b, chunk) in (0..DRAIN_TASKS).collect::<Vec<_>>().chunks(1000).enumerate() {
        let tasks = chunk.iter().map(|i| request("drain", format!("task {i}"))).collect();
        let results = replicas[b % replicas.len()]
            .producer()
            .enqueue_batch(pb::EnqueueBatchRequest { tasks })
            .await
            .unwrap_or_else(|s| panic!("EnqueueBatch {b}: {s:?}"))
            .into_inner()
            .results;
        assert_eq!(results.len(), chunk.len(), "one result per item");
        for r in results {
            match r.result {
                Some(ItemResult::Task(t)) => ids.push(t.id),
                other => panic!("batch {b} item: {other:?}"),
            }
        }
    }
    let enqueued_in = started.elapsed();

    // (A bool at once: a held watch::Ref would block the workers' counting.)
    let all_acked =
        timeout(DRAIN_WITHIN, acked_rx.wait_for(|n| *n >= DRAIN_TASKS)).await.is_ok_and(|r| r.is_ok());
    let drained_in = started.elapsed();
    // Listen a little longer for anything delivered after the last ack.
    tokio::time::sleep(DRAIN_AFTER).await;
    stop.send_replace(true);
    let mut per_worker = Vec::new();
    for w in workers {
        per_worker.push(timeout(WAIT * 2, w).await.expect("workers stop").expect("worker task"));
    }
    let total = *acked_rx.borrow();
    assert!(all_acked, "only {total} of {DRAIN_TASKS} tasks acked within {DRAIN_WITHIN:?}");
    eprintln!("enqueued in {enqueued_in:?}, all acked after {drained_in:?}; acks per worker {per_worker:?}");

    let problems = drain.problems.lock().unwrap().clone();
    assert!(
        problems.is_empty(),
        "{} problems, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
    let deliveries = std::mem::take(&mut *drain.deliveries.lock().unwrap());
    let expected: HashSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(expected.len(), DRAIN_TASKS, "task ids are unique");
    let strangers: Vec<_> = deliveries.keys().filter(|id| !expected.contains(id.as_str())).collect();
    assert!(strangers.is_empty(), "delivered tasks that were never enqueued: {strangers:?}");
    let mut duplicates: Vec<String> = deliveries
        .iter()
        .filter(|(_, d)| d.len() > 1 || d[0].attempt != 1)
        .map(|(id, d)| {
            let each: Vec<_> = d
                .iter()
                .map(|d| format!("worker {} attempt {} lease {}", d.worker, d.attempt, d.lease_id))
                .collect();
            format!("{id}: {each:?}")
        })
        .collect();
    duplicates.sort();
    assert!(
        duplicates.is_empty(),
        "{} tasks delivered more than once under 60 s leases, e.g. {:?}",
        duplicates.len(),
        &duplicates[..duplicates.len().min(10)]
    );
    assert_eq!(deliveries.len(), DRAIN_TASKS, "every task was delivered");
    assert_eq!(total, DRAIN_TASKS, "one confirmed ack per task");
    for (r, replica) in replicas.iter().enumerate() {
        let via: usize = (r..DRAIN_WORKERS).step_by(replicas.len()).map(|w| per_worker[w]).sum();
        assert!(via > 0, "no task went through the streams on replica {}", replica.name);
    }

    // Every task is SUCCEEDED, read through every replica (a third each).
    let mut checks = Vec::new();
    for (r, replica) in replicas.iter().enumerate() {
        let mut client = replica.producer();
        let mine: Vec<String> = ids.iter().skip(r).step_by(replicas.len()).cloned().collect();
        checks.push(tokio::spawn(async move {
            let mut wrong = Vec::new();
            for id in mine {
                match get(&mut client, &id).await {
                    Ok(t) if state(&t) == TaskState::Succeeded && t.attempt == 1 => {}
                    Ok(t) => wrong.push(format!("{id}: {:?} attempt {}", state(&t), t.attempt)),
                    Err(s) => wrong.push(format!("{id}: {:?} {}", s.code(), s.message())),
                }
            }
            wrong
        }));
    }
    let mut wrong = Vec::new();
    for c in checks {
        wrong.extend(timeout(Duration::from_secs(120), c).await.expect("GetTask checks finish").unwrap());
    }
    assert!(
        wrong.is_empty(),
        "{} tasks not SUCCEEDED at the end, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
}

// ---------------------------------------------------------------------------
// 3. A replica killed while its streams hold leases.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_replica_whose_streams_hold_leases_hands_its_tasks_to_streams_on_the_others_after_expiry()
{
    const HELD: usize = 6;
    const LEASE: i64 = 2;
    let redis = RedisServer::start();
    let mut replicas = start_replicas(&redis, &["A", "B", "C"]).await;

    // Two streams on A take every task under 2 s leases.
    let mut on_a = [
        open(&replicas[0].worker(), subscription("orphans", 3, LEASE, "a-1")).await,
        open(&replicas[0].worker(), subscription("orphans", 3, LEASE, "a-2")).await,
    ];
    let tasks = (0..HELD).map(|i| request("orphans", format!("orphan {i}"))).collect();
    let enqueued: HashSet<String> = replicas[1]
        .producer()
        .enqueue_batch(pb::EnqueueBatchRequest { tasks })
        .await
        .expect("EnqueueBatch through B")
        .into_inner()
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(ItemResult::Task(t)) => t.id,
            other => panic!("enqueue: {other:?}"),
        })
        .collect();
    // id -> (lease id, lease deadline)
    let mut held: HashMap<String, (String, SystemTime)> = HashMap::new();
    for w in &mut on_a {
        for _ in 0..HELD / 2 {
            let lt = w.task().await;
            let t = task_of(&lt);
            assert_eq!(t.attempt, 1, "first delivery");
            let deadline = system_time(lt.lease_expire_time.as_ref().expect("lease_expire_time"));
            assert!(held.insert(t.id.clone(), (lt.lease_id.clone(), deadline)).is_none(), "{} twice", t.id);
        }
    }
    assert_eq!(held.keys().cloned().collect::<HashSet<_>>(), enqueued, "A's streams hold every task");

    // Streams on the survivors wait for work; then A dies without releasing anything.
    let mut on_b = open(&replicas[1].worker(), subscription("orphans", 10, 30, "b")).await;
    let mut on_c = open(&replicas[2].worker(), subscription("orphans", 10, 30, "c")).await;
    replicas[0].kill9().await;
    let killed = Instant::now();
    drop(on_a);

    // After the 2 s leases run out, each task comes back once, to B or C.
    let within = Duration::from_secs(LEASE as u64) + Duration::from_secs(10);
    let mut back: HashMap<String, (&str, pb::LeasedTask)> = HashMap::new();
    let outcome = timeout(within, async {
        while back.len() < HELD {
            let (via, msg) = tokio::select! {
                m = on_b.next_within(within * 2) => ("B", m),
                m = on_c.next_within(within * 2) => ("C", m),
            };
            let lt = match msg {
                Resp::Task(lt) => lt,
                other => panic!("stream on {via} got {other:?} instead of a redelivered task"),
            };
            let t = task_of(&lt).clone();
            let (old_lease, deadline) =
                held.get(&t.id).unwrap_or_else(|| panic!("{via} got task {} that A did not hold", t.id));
            assert!(
                SystemTime::now() >= *deadline,
                "task {} came back to {via} before its lease expired",
                t.id
            );
            assert_eq!((t.attempt, state(&t)), (2, TaskState::Leased), "task {} redelivered to {via}", t.id);
            assert_ne!(&lt.lease_id, old_lease, "a redelivery carries a new lease id");
            if let Some((first, _)) = back.insert(t.id.clone(), (via, lt)) {
                panic!("task {} redelivered twice (to {first}, then to {via})", t.id);
            }
        }
    })
    .await;
    assert!(
        outcome.is_ok(),
        "only {} of {HELD} tasks held by the killed replica came back within {within:?}: {:?}",
        back.len(),
        back.keys().collect::<Vec<_>>()
    );
    let via: BTreeMap<&str, usize> = back.values().fold(BTreeMap::new(), |mut m, (via, _)| {
        *m.entry(*via).or_default() += 1;
        m
    });
    eprintln!("all {HELD} came back {:?} after the kill, via {via:?}", killed.elapsed());

    // The survivors settle them.
    for (id, (via, lt)) in &back {
        let w = if *via == "B" { &mut on_b } else { &mut on_c };
        w.ack(lt).await;
        w.settled_ok(id, SettleOperation::Ack).await;
    }
    let mut producer = replicas[2].producer();
    for id in held.keys() {
        let t = get(&mut producer, id).await.expect("GetTask");
        assert_eq!((state(&t), t.attempt), (TaskState::Succeeded, 2), "task {id} at the end");
    }
    replicas[1].assert_running();
    replicas[2].assert_running();
}

// ---------------------------------------------------------------------------
// 3b. A replica shut down gracefully while its streams hold leases.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_a_replica_hands_what_its_streams_held_to_a_stream_on_another_replica_before_the_leases_expire(
) {
    const HELD: usize = 4;
    const LEASE: i64 = 60;
    let redis = RedisServer::start();
    let mut replicas = start_replicas(&redis, &["A", "B"]).await;

    let mut on_a = open(&replicas[0].worker(), subscription("handover", HELD as u32, LEASE, "a")).await;
    let mut producer_b = replicas[1].producer();
    let mut held: HashMap<String, String> = HashMap::new();
    for i in 0..HELD {
        enqueue(&mut producer_b, "handover", &format!("handover {i}")).await;
    }
    for _ in 0..HELD {
        let lt = on_a.task().await;
        held.insert(id(&lt).to_owned(), lt.lease_id.clone());
    }
    let mut on_b = open(&replicas[1].worker(), subscription("handover", HELD as u32, LEASE, "b")).await;
    on_b.assert_quiet().await;

    // A drains: its stream is told, and the worker (settling nothing) closes it.
    let stopping = Instant::now();
    replicas[0].sigterm();
    match on_a.next().await {
        Resp::Draining(_) => {}
        other => panic!("expected draining from A, got {other:?}"),
    }
    on_a.close_requests();

    // What A's stream held goes back at once (not after the 60 s leases) and B's stream gets it.
    let mut back: HashMap<String, pb::LeasedTask> = HashMap::new();
    while back.len() < HELD {
        let lt = on_b.task_within(Duration::from_secs(10)).await;
        let t = task_of(&lt).clone();
        let old = held.get(&t.id).unwrap_or_else(|| panic!("B got {} which A did not hold", t.id));
        assert_eq!(t.attempt, 2, "task {} handed over", t.id);
        assert_ne!(&lt.lease_id, old, "a new lease id");
        assert!(back.insert(t.id.clone(), lt).is_none(), "task {} handed over twice", t.id);
    }
    eprintln!("all {HELD} handed over {:?} after SIGTERM", stopping.elapsed());
    for (id, lt) in &back {
        on_b.ack(lt).await;
        on_b.settled_ok(id, SettleOperation::Ack).await;
    }
    replicas[0].exits_cleanly(Duration::from_secs(30)).await;
    replicas[1].assert_running();
}

// ---------------------------------------------------------------------------
// 4. Redis killed and restarted under load.
// ---------------------------------------------------------------------------

const OUTAGE_PRODUCERS: usize = 4;
/// Redis is killed once this many enqueues are acknowledged.
const KILL_AFTER: usize = 300;

/// Redis stays down at least this long.
const OUTAGE_MIN: Duration = Duration::from_secs(3);

const BEFORE: u8 = 0;
const DOWN: u8 = 1;
const BACK: u8 = 2;

/// An enqueue the broker acknowledged.
struct Acked {
    id: String,
    request: pb::EnqueueRequest,
    /// BEFORE, DOWN or BACK: when it was acknowledged.
    phase: u8,
}

struct Outage {
    phase: AtomicU8,
    acked: Mutex<Vec<Acked>>,
    /// (phase, code) -> calls.
    codes: Mutex<BTreeMap<(u8, String), usize>>,
    /// Other codes than OK and UNAVAILABLE, with what failed.
    unexpected: Mutex<Vec<String>>,
    /// Acknowledged enqueues so far; acknowledged per replica after Redis came back.
    progress: watch::Sender<(usize, [usize; 2])>,
    /// UNAVAILABLE answers so far.
    unavailable: watch::Sender<usize>,
}

impl Outage {
    fn new() -> Self {
        Self {
            phase: AtomicU8::new(BEFORE),
            acked: Mutex::default(),
            codes: Mutex::default(),
            unexpected: Mutex::default(),
            progress: watch::channel((0, [0, 0])).0,
            unavailable: watch::channel(0).0,
        }
    }

    /// Records a call's outcome code.
    fn code(&self, phase: u8, what: &str, code: Code, message: &str) {
        *self.codes.lock().unwrap().entry((phase, format!("{code:?}"))).or_default() += 1;
        match code {
            Code::Ok => {}
            Code::Unavailable => self.unavailable.send_modify(|n| *n += 1),
            _ => self.unexpected.lock().unwrap().push(format!("{what} (phase {phase}): {code:?} {message}")),
        }
    }

    fn acked(&self, replica: usize, phase: u8, acked: Vec<Acked>) {
        let n = acked.len();
        self.acked.lock().unwrap().extend(acked);
        self.progress.send_modify(|(total, back)| {
            *total += n;
            if phase == BACK {
                back[replica] += n;
            }
        });
    }
}

fn outage_request(p: usize, n: usize, i: usize) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        queue: format!("outage-{}", p % 2),
        kind: "outage.test".into(),
        payload: format!("p{p} n{n} i{i}").into_bytes(),
        request_id: format!("outage-{p}-{n}-{i}"),
        ..Default::default()
    }
}

/// Enqueues through replica `replica` (single calls and batches, alternating)
/// until `stop`, recording every outcome; pauses briefly after a failure.
async fn outage_producer(
    p: usize,
    replica: usize,
    mut client: ProducerServiceClient<Channel>,
    outage: Arc<Outage>,
    stop: watch::Receiver<bool>,
) {
    let mut n = 0;
    while !*stop.borrow() {
        n += 1;
        let phase = outage.phase.load(Ordering::SeqCst);
        let failed = if n % 2 == 0 {
            let req = outage_request(p, n, 0);
            match client.enqueue(req.clone()).await {
                Ok(resp) => {
                    let task = resp.into_inner().task.expect("Enqueue returns the task");
                    outage.code(phase, "Enqueue", Code::Ok, "");
                    outage.acked(replica, phase, vec![Acked { id: task.id, request: req, phase }]);
                    false
                }
                Err(s) => {
                    outage.code(phase, &format!("producer {p} Enqueue"), s.code(), s.message());
                    true
                }
            }
        } else {
            let reqs: Vec<_> = (0..1 + n % 20).map(|i| outage_request(p, n, i)).collect();
            match client.enqueue_batch(pb::EnqueueBatchRequest { tasks: reqs.clone() }).await {
                Ok(resp) => {
                    outage.code(phase, "EnqueueBatch", Code::Ok, "");
                    let results = resp.into_inner().results;
                    assert_eq!(results.len(), reqs.len(), "one result per item");
                    let mut acked = Vec::new();
                    for (req, r) in reqs.into_iter().zip(results) {
                        match r.result {
                            Some(ItemResult::Task(t)) => acked.push(Acked { id: t.id, request: req, phase }),
                            Some(ItemResult::Error(e)) => {
                                let what = format!("producer {p} batch item {}", req.request_id);
                                outage.code(phase, &what, Code::from(e.code), &e.message);
                            }
                            None => panic!("a batch item without a result"),
                        }
                    }
                    outage.acked(replica, phase, acked);
                    false
                }
                Err(s) => {
                    outage.code(phase, &format!("producer {p} EnqueueBatch"), s.code(), s.message());
                    true
                }
            }
        };
        if failed {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Reads `CONFIG GET name` from the Redis at `url`.
async fn redis_config(url: &str, name: &str) -> String {
    let client = redis::Client::open(url).expect("a redis url");
    let mut conn = timeout(WAIT, client.get_multiplexed_async_connection())
        .await
        .expect("connect to redis in time")
        .expect("connect to redis");
    let pair: Vec<String> = timeout(WAIT, redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut conn))
        .await
        .expect("CONFIG GET answered in time")
        .expect("CONFIG GET");
    pair.get(1).cloned().unwrap_or_default()
}

/// Enqueue through `from`, long-poll Lease and Ack through `to`; each must succeed.
async fn enqueue_lease_ack(from: &Replica, to: &Replica, queue: &str) -> String {
    let task = enqueue(&mut from.producer(), queue, "after the outage").await;
    let mut worker = to.worker();
    let leased = worker
        .lease(pb::LeaseRequest {
            queues: vec![queue.into()],
            max_tasks: 1,
            lease_duration: secs(30),
            wait: secs(10),
            worker_id: format!("after-outage-{}", to.name),
        })
        .await
        .unwrap_or_else(|s| panic!("Lease on {} after Redis came back: {s:?}", to.name))
        .into_inner()
        .tasks;
    assert_eq!(leased.len(), 1, "{} leases the task {} enqueued: {leased:?}", to.name, from.name);
    assert_eq!(id(&leased[0]), task.id);
    worker
        .ack(pb::AckRequest {
            task_id: task.id.clone(),
            lease_id: leased[0].lease_id.clone(),
            result: b"ok".to_vec(),
        })
        .await
        .unwrap_or_else(|s| panic!("Ack on {} after Redis came back: {s:?}", to.name));
    task.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigkill_and_restart_keeps_acknowledged_enqueues_answers_unavailable_meanwhile_and_the_same_replicas_serve_again(
) {
    let mut redis = RedisServer::start_fsync_always();
    assert_eq!(redis_config(&redis.url(), "appendonly").await, "yes");
    assert_eq!(redis_config(&redis.url(), "appendfsync").await, "always");
    let mut replicas = start_replicas(&redis, &["A", "B"]).await;
    let mut health = Vec::new();
    for r in &replicas {
        let mut w = watch_health(r).await;
        r.health_becomes(&mut w, ServingStatus::Serving, WAIT).await;
        health.push(w);
    }

    let outage = Arc::new(Outage::new());
    let (stop, stop_rx) = watch::channel(false);
    let mut producers = Vec::new();
    for p in 0..OUTAGE_PRODUCERS {
        let r = p % replicas.len();
        let job = outage_producer(p, r, replicas[r].producer(), outage.clone(), stop_rx.clone());
        producers.push(tokio::spawn(job));
    }

    // Kill Redis mid-load.
    let mut progress = outage.progress.subscribe();
    timeout(Duration::from_secs(60), progress.wait_for(|(n, _)| *n >= KILL_AFTER))
        .await
        .unwrap_or_else(|_| panic!("{KILL_AFTER} enqueues not acknowledged within 60 s"))
        .unwrap();
    outage.phase.store(DOWN, Ordering::SeqCst);
    redis.kill();
    let killed_at = Instant::now();
    let acked_before = outage.acked.lock().unwrap().len();

    // Calls fail with UNAVAILABLE and readiness goes NOT_SERVING on both replicas.
    timeout(Duration::from_secs(15), outage.unavailable.subscribe().wait_for(|n| *n > 0))
        .await
        .expect("an UNAVAILABLE answer within 15 s of the kill")
        .unwrap();
    for (r, w) in replicas.iter().zip(&mut health) {
        r.health_becomes(w, ServingStatus::NotServing, Duration::from_secs(15)).await;
        assert_eq!(check_health(r).await, ServingStatus::NotServing, "Check on {} during the outage", r.name);
    }
    let not_serving_after = killed_at.elapsed();
    // The other calls too, on both replicas.
    let known = outage.acked.lock().unwrap()[0].id.clone();
    for r in &replicas {
        let got = r
            .producer()
            .get_task(pb::GetTaskRequest { task_id: known.clone(), include_dependencies: false })
            .await;
        let code = got.as_ref().err().map_or(Code::Ok, |s| s.code());
        outage.code(DOWN, &format!("GetTask on {}", r.name), code, &format!("{got:?}"));
        assert_eq!(code, Code::Unavailable, "GetTask on {} during the outage: {got:?}", r.name);
        let leased = r
            .worker()
            .lease(pb::LeaseRequest { queues: vec!["outage-0".into()], max_tasks: 1, ..Default::default() })
            .await;
        let code = leased.as_ref().err().map_or(Code::Ok, |s| s.code());
        outage.code(DOWN, &format!("Lease on {}", r.name), code, &format!("{leased:?}"));
        assert_eq!(code, Code::Unavailable, "Lease on {} during the outage: {leased:?}", r.name);
    }

    // A real outage: long enough for the replicas' reconnection backoffs to grow.
    tokio::time::sleep(OUTAGE_MIN.saturating_sub(killed_at.elapsed())).await;

    // Redis comes back on the same port and directory, reloading its AOF.
    outage.phase.store(BACK, Ordering::SeqCst);
    redis.restart();
    let restarted_at = Instant::now();
    for (r, w) in replicas.iter().zip(&mut health) {
        r.health_becomes(w, ServingStatus::Serving, Duration::from_secs(15)).await;
        assert_eq!(check_health(r).await, ServingStatus::Serving, "Check on {} after the restart", r.name);
    }
    let serving_after = restarted_at.elapsed();
    // The same processes take enqueues again, through both replicas.
    let served = timeout(Duration::from_secs(30), progress.wait_for(|(_, back)| back.iter().all(|n| *n > 0)))
        .await
        .is_ok_and(|r| r.is_ok());
    let seen = *progress.borrow();
    assert!(served, "a replica's producers acknowledged nothing within 30 s of Redis's restart: {seen:?}");
    stop.send_replace(true);
    for p in producers {
        timeout(CALL_TIMEOUT + WAIT, p).await.expect("producers stop").expect("producer task");
    }
    let (a_to_b, b_to_a) = (
        enqueue_lease_ack(&replicas[0], &replicas[1], "after").await,
        enqueue_lease_ack(&replicas[1], &replicas[0], "after").await,
    );
    for (r, id) in [(0, &a_to_b), (1, &b_to_a)] {
        let t = get(&mut replicas[r].producer(), id).await.expect("GetTask");
        assert_eq!((state(&t), t.result.as_slice()), (TaskState::Succeeded, &b"ok"[..]), "task {id}");
    }
    for r in &mut replicas {
        r.assert_running();
    }

    let codes = outage.codes.lock().unwrap().clone();
    eprintln!(
        "{acked_before} acknowledged before the kill; NOT_SERVING {not_serving_after:?} after it; SERVING \
         {serving_after:?} after the restart; calls by (phase, code): {codes:?}"
    );
    let unexpected = outage.unexpected.lock().unwrap().clone();
    assert!(unexpected.is_empty(), "only OK and UNAVAILABLE are allowed, got {unexpected:?}");
    assert!(codes.keys().any(|(_, c)| c == "Unavailable"), "no UNAVAILABLE seen: {codes:?}");

    // Everything acknowledged (before the kill, or after the restart) is there, as sent.
    let acked = std::mem::take(&mut *outage.acked.lock().unwrap());
    let mut wrong = Vec::new();
    let mut clients: Vec<_> = replicas.iter().map(|r| r.producer()).collect();
    for (i, a) in acked.iter().enumerate() {
        let n = clients.len();
        match get(&mut clients[i % n], &a.id).await {
            Ok(t) => {
                let as_sent = (state(&t), &t.queue, &t.payload, t.attempt)
                    == (TaskState::Ready, &a.request.queue, &a.request.payload, 0);
                if !as_sent {
                    wrong.push(format!(
                        "{} (phase {}): {:?} in {} attempt {}",
                        a.id,
                        a.phase,
                        state(&t),
                        t.queue,
                        t.attempt
                    ));
                }
            }
            Err(s) => wrong.push(format!("{} (phase {}): {:?} {}", a.id, a.phase, s.code(), s.message())),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} acknowledged enqueues lost or changed by the Redis crash, e.g. {:?}",
        wrong.len(),
        acked.len(),
        &wrong[..wrong.len().min(10)]
    );
}

// ---------------------------------------------------------------------------
// 5. Cancel through one replica, lease held on another.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_through_a_of_a_task_leased_by_a_stream_on_b_pushes_lease_lost_canceled_to_that_stream() {
    let redis = RedisServer::start();
    let replicas = start_replicas(&redis, &["A", "B"]).await;
    let (a, b) = (&replicas[0], &replicas[1]);
    let mut producer_a = a.producer();

    let mut stream_b = open(&b.worker(), subscription("cancel", 1, 60, "stream-on-b")).await;
    let task = enqueue(&mut producer_a, "cancel", "to be canceled").await;
    let held = stream_b.task_within(PROMPT).await;
    assert_eq!(id(&held), task.id);

    let sent = Instant::now();
    let canceled = producer_a
        .cancel_task(pb::CancelTaskRequest { task_id: task.id.clone() })
        .await
        .expect("CancelTask through A")
        .into_inner()
        .task
        .expect("CancelTask returns the task");
    assert_eq!(state(&canceled), TaskState::Canceled);
    let lost = match stream_b.next_within(PROMPT).await {
        Resp::LeaseLost(l) => l,
        other => panic!("expected lease_lost on B's stream, got {other:?}"),
    };
    let latency = sent.elapsed();
    assert_eq!(
        (lost.task_id.as_str(), lost.lease_id.as_str(), lost.reason.as_str()),
        (task.id.as_str(), held.lease_id.as_str(), "canceled")
    );
    eprintln!("A's cancel reached B's stream as lease_lost in {latency:?}");

    // The lease is dead for good, and the stream's credit is free again.
    stream_b.ack(&held).await;
    let s = stream_b.settled().await;
    assert_eq!(
        (s.task_id.as_str(), s.error.as_ref().map(|e| e.code)),
        (task.id.as_str(), Some(FAILED_PRECONDITION)),
        "ack of a canceled task: {s:?}"
    );
    let next = enqueue(&mut producer_a, "cancel", "next").await;
    assert_eq!(id(&stream_b.task_within(PROMPT).await), next.id, "the freed credit takes the next task");
}

// ---------------------------------------------------------------------------
// 6. Streams live through a Redis restart.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_open_on_b_through_a_redis_restart_is_pushed_what_a_enqueues_after_it() {
    let mut redis = RedisServer::start_fsync_always();
    let replicas = start_replicas(&redis, &["A", "B"]).await;
    let (a, b) = (&replicas[0], &replicas[1]);
    let mut health_b = watch_health(b).await;
    b.health_becomes(&mut health_b, ServingStatus::Serving, WAIT).await;
    let mut health_a = watch_health(a).await;
    a.health_becomes(&mut health_a, ServingStatus::Serving, WAIT).await;

    let mut stream_b = open(&b.worker(), subscription("through", 1, 30, "stream-on-b")).await;
    let mut probe_b = open(&b.worker(), subscription("probe", 100, 30, "probe-on-b")).await;
    stream_b.assert_quiet().await;
    probe_b.assert_quiet().await;

    redis.kill();
    // Both replicas must see the outage before Redis returns; otherwise a
    // replica whose health never left SERVING has no change left to report.
    a.health_becomes(&mut health_a, ServingStatus::NotServing, Duration::from_secs(15)).await;
    b.health_becomes(&mut health_b, ServingStatus::NotServing, Duration::from_secs(15)).await;
    redis.restart();
    a.health_becomes(&mut health_a, ServingStatus::Serving, Duration::from_secs(15)).await;
    b.health_becomes(&mut health_b, ServingStatus::Serving, Duration::from_secs(15)).await;

    // B's health says its commands work again; its event subscription comes
    // back on its own backoff (up to 2 s). Probe: A enqueues to a queue that
    // only B's idle probe stream takes, until one is pushed to it. An idle
    // stream is woken only through B's subscription (A's event, or the
    // wake-up of every queue B sends itself once resubscribed).
    let probing = Instant::now();
    'probe: loop {
        assert!(
            probing.elapsed() < Duration::from_secs(20),
            "B heard nothing from A within 20 s of the restart"
        );
        enqueue(&mut a.producer(), "probe", "are you listening?").await;
        while let Some(msg) = probe_b.next_or_quiet().await {
            if matches!(msg, Resp::Task(_)) {
                break 'probe;
            }
        }
    }
    eprintln!("B heard A again {:?} after Redis was back", probing.elapsed());
    let sent = Instant::now();
    let task = enqueue(&mut a.producer(), "through", "after the restart").await;
    let pushed = match stream_b.next_within(PROMPT).await {
        Resp::Task(t) => t,
        other => panic!("expected the task on B's stream, got {other:?}"),
    };
    assert_eq!(id(&pushed), task.id);
    eprintln!("pushed {:?} after A's enqueue", sent.elapsed());
    stream_b.ack(&pushed).await;
    stream_b.settled_ok(&task.id, SettleOperation::Ack).await;
}

// ---------------------------------------------------------------------------
// 7. WatchTask across replicas.
// ---------------------------------------------------------------------------

/// The next state a WatchTask stream reports, within [`PROMPT`].
async fn next_state(name: &str, watch: &mut Streaming<pb::WatchTaskResponse>) -> TaskState {
    let msg = timeout(PROMPT, watch.message())
        .await
        .unwrap_or_else(|_| panic!("the watch on {name} reported nothing within {PROMPT:?}"))
        .unwrap_or_else(|s| panic!("the watch on {name} failed: {s:?}"))
        .unwrap_or_else(|| panic!("the watch on {name} ended early"));
    state(msg.task.as_ref().expect("WatchTask responses carry the task"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_task_on_b_sees_every_state_of_a_task_leased_and_acked_through_a() {
    let redis = RedisServer::start();
    let replicas = start_replicas(&redis, &["A", "B"]).await;
    let (a, b) = (&replicas[0], &replicas[1]);

    let task = enqueue(&mut a.producer(), "watched", "to be watched").await;
    let mut watch = b
        .producer()
        .watch_task(pb::WatchTaskRequest { task_id: task.id.clone() })
        .await
        .expect("WatchTask on B")
        .into_inner();
    assert_eq!(next_state("B", &mut watch).await, TaskState::Ready);

    // Leased by a stream on A, acked on it (the stream's batched ack path).
    let mut stream_a = open(&a.worker(), subscription("watched", 1, 30, "stream-on-a")).await;
    let held = stream_a.task_within(PROMPT).await;
    assert_eq!(id(&held), task.id);
    assert_eq!(next_state("B", &mut watch).await, TaskState::Leased);
    stream_a.ack(&held).await;
    stream_a.settled_ok(&task.id, SettleOperation::Ack).await;
    assert_eq!(next_state("B", &mut watch).await, TaskState::Succeeded);
    let end = timeout(PROMPT, watch.message()).await.expect("the watch ends after a final state");
    assert!(matches!(end, Ok(None)), "the watch ends after SUCCEEDED: {end:?}");
}
