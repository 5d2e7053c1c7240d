//! Durability through `kill -9` of the real binary: whatever the broker
//! acknowledged must be there after a restart on the same data directory.
//!
//! Each test runs `taskbroker serve --storage embedded` as a child process,
//! reads its port from the `listening on ADDR` line, works against it over
//! gRPC, SIGKILLs it, and starts a new process on the same data directory.
//!
//! Real time is used where it is the behaviour under test: leases taken
//! before the crash expire on the restarted broker's system clock
//! ([`SHORT_LEASE`]); everything else waits for answers, not for time.
#![cfg(unix)]

#[path = "common/serve.rs"]
mod serve;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio::time::timeout;
use tonic::transport::Channel;
use tonic::Code;

use serve::{ServeProcess, CALL_TIMEOUT, EXIT_TIMEOUT};
use taskbroker::pb;
use taskbroker::pb::enqueue_result::Result as ItemResult;
use taskbroker::pb::producer_service_client::ProducerServiceClient;

/// Starts a broker on the embedded store in `data_dir`, its stderr appended
/// to `log`, and waits until it serves.
async fn start_broker(data_dir: &Path, log: &Path) -> ServeProcess {
    let data_dir = data_dir.to_str().expect("a UTF-8 temporary path");
    ServeProcess::start("broker", &["--storage", "embedded", "--data-dir", data_dir], log).await
}

fn state(t: &pb::Task) -> pb::TaskState {
    pb::TaskState::try_from(t.state).unwrap_or(pb::TaskState::Unspecified)
}

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: s, nanos: 0 })
}

fn system_time(t: &prost_types::Timestamp) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32)
}

/// A Lease of one task from `queue` for `seconds`, long-polling for `wait`.
fn lease_one(queue: &str, seconds: i64, wait: Option<prost_types::Duration>) -> pb::LeaseRequest {
    pb::LeaseRequest {
        queues: vec![queue.into()],
        max_tasks: 1,
        lease_duration: secs(seconds),
        wait,
        worker_id: String::new(),
    }
}

async fn get(client: &mut ProducerServiceClient<Channel>, id: &str) -> pb::Task {
    client
        .get_task(pb::GetTaskRequest { task_id: id.into(), include_dependencies: false })
        .await
        .unwrap_or_else(|s| panic!("GetTask {id}: {s:?}"))
        .into_inner()
        .task
        .expect("GetTask returns the task")
}

// ---------------------------------------------------------------------------
// Acknowledged enqueues survive kill -9.
// ---------------------------------------------------------------------------

/// Concurrent producers.
const PRODUCERS: usize = 4;
/// Producers stop after this many acknowledged tasks...
const TARGET: usize = 3000;
/// ...or after this long.
const PRODUCE_FOR: Duration = Duration::from_secs(3);
/// The broker is killed once this many are acknowledged (or half the time is gone).
const KILL_AFTER: usize = 1000;
/// Largest batch a producer sends.
const MAX_BATCH: usize = 40;

/// A task the broker acknowledged, with the request that created it.
struct Acked {
    id: String,
    request: pb::EnqueueRequest,
}

#[derive(Default)]
struct Shared {
    acked: Mutex<Vec<Acked>>,
    count: AtomicUsize,
    /// Set just before SIGKILL: failures after it are expected.
    killed: AtomicBool,
    /// Failures while the broker was alive (there should be none).
    early_errors: Mutex<Vec<String>>,
    /// Calls that failed because of the kill.
    failed_by_kill: AtomicUsize,
}

impl Shared {
    fn record(&self, progress: &watch::Sender<usize>, acked: Vec<Acked>) {
        let n = acked.len();
        self.acked.lock().unwrap().extend(acked);
        let total = self.count.fetch_add(n, Ordering::SeqCst) + n;
        progress.send_replace(total);
    }

    /// Files a failed call (the producer then stops).
    fn failed(&self, what: String) {
        if self.killed.load(Ordering::SeqCst) {
            self.failed_by_kill.fetch_add(1, Ordering::SeqCst);
        } else {
            self.early_errors.lock().unwrap().push(what);
        }
    }
}

fn request(p: usize, n: usize, i: usize) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        queue: format!("crash-{}", p % 2),
        kind: "crash.test".into(),
        payload: format!("payload p{p} n{n} i{i}").into_bytes(),
        priority: Some(((p + n + i) % 10) as u32),
        request_id: format!("req-{p}-{n}-{i}"),
        ..Default::default()
    }
}

/// Enqueues (unary and batches, alternating) until the target, the deadline,
/// or the first failure.
async fn produce(
    p: usize,
    mut client: ProducerServiceClient<Channel>,
    shared: Arc<Shared>,
    progress: watch::Sender<usize>,
    deadline: Instant,
) {
    let mut n = 0;
    while shared.count.load(Ordering::SeqCst) < TARGET && Instant::now() < deadline {
        n += 1;
        if n % 2 == 0 {
            let req = request(p, n, 0);
            match client.enqueue(req.clone()).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    let task = resp.task.expect("Enqueue returns the task");
                    assert!(!resp.deduplicated, "a fresh request_id is not deduplicated");
                    shared.record(&progress, vec![Acked { id: task.id, request: req }]);
                }
                Err(s) => return shared.failed(format!("producer {p} Enqueue: {s:?}")),
            }
        } else {
            let size = 1 + (n * 7 + p) % MAX_BATCH;
            let reqs: Vec<_> = (0..size).map(|i| request(p, n, i)).collect();
            match client.enqueue_batch(pb::EnqueueBatchRequest { tasks: reqs.clone() }).await {
                Ok(resp) => {
                    let results = resp.into_inner().results;
                    assert_eq!(results.len(), size, "one result per item");
                    let mut acked = Vec::new();
                    for (req, r) in reqs.into_iter().zip(results) {
                        match r.result {
                            Some(ItemResult::Task(t)) => acked.push(Acked { id: t.id, request: req }),
                            other => shared
                                .early_errors
                                .lock()
                                .unwrap()
                                .push(format!("producer {p} batch item {}: {other:?}", req.request_id)),
                        }
                    }
                    shared.record(&progress, acked);
                }
                Err(s) => return shared.failed(format!("producer {p} EnqueueBatch: {s:?}")),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_enqueues_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("broker.log");
    let mut server = start_broker(&data, &log).await;

    let shared = Arc::new(Shared::default());
    let (progress, mut watch_progress) = watch::channel(0usize);
    let start = Instant::now();
    let deadline = start + PRODUCE_FOR;
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let client = server.producer();
        producers.push(tokio::spawn(produce(p, client, shared.clone(), progress.clone(), deadline)));
    }
    drop(progress);

    // Kill mid-stream: once KILL_AFTER are acknowledged, or half the time is gone.
    let _ = timeout(PRODUCE_FOR / 2, watch_progress.wait_for(|&n| n >= KILL_AFTER)).await;
    assert!(
        producers.iter().any(|p| !p.is_finished()),
        "the producers finished before the kill ({} acknowledged; errors: {:?})",
        shared.count.load(Ordering::SeqCst),
        shared.early_errors.lock().unwrap()
    );
    shared.killed.store(true, Ordering::SeqCst);
    server.kill9().await;
    let killed_at = start.elapsed();
    for p in producers {
        timeout(CALL_TIMEOUT + EXIT_TIMEOUT, p)
            .await
            .expect("producers stop after the kill")
            .expect("producer task");
    }
    drop(server);

    let early = shared.early_errors.lock().unwrap().clone();
    assert!(early.is_empty(), "calls failed while the broker was alive: {early:?}");
    let acked = std::mem::take(&mut *shared.acked.lock().unwrap());
    assert!(!acked.is_empty(), "nothing was acknowledged before the kill");
    let ids: HashSet<&str> = acked.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids.len(), acked.len(), "task ids are unique");
    eprintln!(
        "killed after {killed_at:?}: {} tasks acknowledged, {} calls failed by the kill",
        acked.len(),
        shared.failed_by_kill.load(Ordering::SeqCst)
    );

    // Restart on the same data: every acknowledged task is there, READY, as sent.
    let server = start_broker(&data, &log).await;
    let mut client = server.producer();
    let mut wrong = Vec::new();
    for a in &acked {
        match client.get_task(pb::GetTaskRequest { task_id: a.id.clone(), include_dependencies: false }).await
        {
            Ok(resp) => {
                let t = resp.into_inner().task.expect("GetTask returns the task");
                let expected =
                    (pb::TaskState::Ready, &a.request.queue, &a.request.payload, a.request.priority);
                if (state(&t), &t.queue, &t.payload, Some(t.priority)) != expected || t.attempt != 0 {
                    wrong.push(format!("{}: {:?} attempt {} in {}", a.id, state(&t), t.attempt, t.queue));
                }
            }
            Err(s) => wrong.push(format!("{}: {:?} {}", a.id, s.code(), s.message())),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} acknowledged tasks lost or changed after kill -9, e.g. {:?}",
        wrong.len(),
        acked.len(),
        &wrong[..wrong.len().min(10)]
    );

    // Request ids survive too: a client retrying after the crash gets the same task back.
    for chunk in acked.chunks(500) {
        let tasks = chunk.iter().map(|a| a.request.clone()).collect();
        let results = client
            .enqueue_batch(pb::EnqueueBatchRequest { tasks })
            .await
            .expect("EnqueueBatch after restart")
            .into_inner()
            .results;
        for (a, r) in chunk.iter().zip(results) {
            match r.result {
                Some(ItemResult::Task(t)) => {
                    assert!(r.deduplicated && t.id == a.id, "retry of {} after restart: got {} ", a.id, t.id)
                }
                other => panic!("retry of {}: {other:?}", a.id),
            }
        }
    }

    // And the recovered store takes new writes.
    let fresh =
        client.enqueue(request(99, 0, 0)).await.expect("Enqueue after restart").into_inner().task.unwrap();
    assert!(!ids.contains(fresh.id.as_str()));
    assert_eq!(get(&mut client, &fresh.id).await.id, fresh.id);
}

// ---------------------------------------------------------------------------
// Leases and acks survive kill -9.
// ---------------------------------------------------------------------------

/// Leases that run out during the test (real time: the restarted broker's
/// reaper runs on the system clock), so their tasks come back.
const SHORT_LEASE: i64 = 2;
/// Leases that outlast any restart, so their tasks are always still out.
const LONG_LEASE: i64 = 3600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_acks_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("broker.log");
    let mut server = start_broker(&data, &log).await;
    let mut producer = server.producer();
    let mut worker = server.worker();

    let batch = |queue: &str, n: usize| pb::EnqueueBatchRequest {
        tasks: (0..n)
            .map(|i| pb::EnqueueRequest {
                queue: queue.into(),
                kind: "job".into(),
                payload: format!("{queue}-{i}").into_bytes(),
                ..Default::default()
            })
            .collect(),
    };
    producer.enqueue_batch(batch("work", 10)).await.unwrap();
    let idle: Vec<String> = producer
        .enqueue_batch(batch("idle", 3))
        .await
        .unwrap()
        .into_inner()
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(ItemResult::Task(t)) => t.id,
            other => panic!("enqueue: {other:?}"),
        })
        .collect();

    // Three tasks to ack, four held under 2 s leases (to come back after the
    // restart), three held under hour-long leases (still out after it).
    let mut lease = async |n: u32, seconds: i64| {
        let tasks = worker
            .lease(pb::LeaseRequest {
                queues: vec!["work".into()],
                max_tasks: n,
                lease_duration: secs(seconds),
                worker_id: "before-crash".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tasks;
        assert_eq!(tasks.len(), n as usize, "{n} tasks under {seconds} s leases");
        tasks
    };
    let to_ack = lease(3, 30).await;
    let to_hold = lease(4, SHORT_LEASE).await;
    let to_keep = lease(3, LONG_LEASE).await;
    let mut acked = HashMap::new();
    for lt in &to_ack {
        let id = lt.task.as_ref().unwrap().id.clone();
        let result = format!("result of {id}").into_bytes();
        worker
            .ack(pb::AckRequest {
                task_id: id.clone(),
                lease_id: lt.lease_id.clone(),
                result: result.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("ack {id}: {s:?}"));
        acked.insert(id, result);
    }
    // id -> (lease id, lease deadline)
    let deadlines = |tasks: &[pb::LeasedTask]| -> HashMap<String, (String, SystemTime)> {
        tasks
            .iter()
            .map(|lt| {
                let deadline = system_time(lt.lease_expire_time.as_ref().expect("lease_expire_time"));
                (lt.task.as_ref().unwrap().id.clone(), (lt.lease_id.clone(), deadline))
            })
            .collect()
    };
    let held = deadlines(&to_hold);
    let kept = deadlines(&to_keep);

    server.kill9().await;
    drop(server);
    let server = start_broker(&data, &log).await;
    let mut producer = server.producer();
    let mut worker = server.worker();

    for (id, result) in &acked {
        let t = get(&mut producer, id).await;
        assert_eq!(state(&t), pb::TaskState::Succeeded, "acked task {id} after restart");
        assert_eq!(&t.result, result, "acked task {id} keeps its result");
        assert_eq!(t.attempt, 1);
    }
    for id in &idle {
        let t = get(&mut producer, id).await;
        assert_eq!((state(&t), t.attempt), (pb::TaskState::Ready, 0), "never-leased task {id}");
    }
    // The hour-long leases are still out, whatever the restart took.
    for id in kept.keys() {
        let t = get(&mut producer, id).await;
        assert_eq!((state(&t), t.attempt), (pb::TaskState::Leased, 1), "task {id} held under a long lease");
    }

    // Once the leases expire the held tasks come back, and only they.
    let mut back: HashMap<String, pb::LeasedTask> = HashMap::new();
    let give_up = Instant::now() + Duration::from_secs(20);
    while back.len() < held.len() {
        assert!(Instant::now() < give_up, "only {} of {} held tasks came back", back.len(), held.len());
        let tasks = worker
            .lease(pb::LeaseRequest {
                queues: vec!["work".into()],
                max_tasks: 10,
                lease_duration: secs(30),
                wait: secs(10),
                worker_id: "after-crash".into(),
            })
            .await
            .expect("long-poll Lease")
            .into_inner()
            .tasks;
        for lt in tasks {
            let t = lt.task.clone().unwrap();
            let (old_lease, deadline) = held
                .get(&t.id)
                .unwrap_or_else(|| panic!("task {} was delivered again but was not held", t.id));
            assert!(SystemTime::now() >= *deadline, "task {} came back before its lease expired", t.id);
            assert_eq!(t.attempt, 2, "task {} redelivered", t.id);
            assert_ne!(&lt.lease_id, old_lease, "a redelivery carries a new lease id");
            assert!(back.insert(t.id.clone(), lt).is_none(), "task {} delivered twice", t.id);
        }
    }
    let more = worker
        .lease(pb::LeaseRequest { queues: vec!["work".into()], max_tasks: 10, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(more.is_empty(), "neither acked tasks nor those under long leases are delivered again: {more:?}");

    // A lease from before the crash still holds: its worker extends and settles it.
    for (id, (lease_id, _)) in &kept {
        worker
            .extend_lease(pb::ExtendLeaseRequest {
                task_id: id.clone(),
                lease_id: lease_id.clone(),
                extend_by: secs(60),
            })
            .await
            .unwrap_or_else(|s| panic!("extend {id} with its pre-crash lease: {s:?}"));
        worker
            .ack(pb::AckRequest { task_id: id.clone(), lease_id: lease_id.clone(), result: b"kept".to_vec() })
            .await
            .unwrap_or_else(|s| panic!("ack {id} with its pre-crash lease: {s:?}"));
        let t = get(&mut producer, id).await;
        assert_eq!((state(&t), t.attempt, t.result.as_slice()), (pb::TaskState::Succeeded, 1, &b"kept"[..]));
    }

    // The pre-crash leases are fenced off; the new ones settle the tasks.
    for (id, (old_lease, _)) in &held {
        let err = worker
            .ack(pb::AckRequest { task_id: id.clone(), lease_id: old_lease.clone(), result: vec![] })
            .await
            .expect_err("ack with the pre-crash lease");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        let lt = &back[id];
        worker
            .ack(pb::AckRequest {
                task_id: id.clone(),
                lease_id: lt.lease_id.clone(),
                result: b"ok".to_vec(),
            })
            .await
            .unwrap_or_else(|s| panic!("ack {id} with the new lease: {s:?}"));
        let t = get(&mut producer, id).await;
        assert_eq!((state(&t), t.attempt, t.result.as_slice()), (pb::TaskState::Succeeded, 2, &b"ok"[..]));
    }
}

// ---------------------------------------------------------------------------
// Lease ids are never reused across a restart (fencing).
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_lease_ids_stay_fenced_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("broker.log");
    let mut server = start_broker(&data, &log).await;
    let mut producer = server.producer();
    let mut worker = server.worker();

    let task = producer
        .enqueue(pb::EnqueueRequest { queue: "fence".into(), kind: "job".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let lease = |wait| lease_one("fence", 30, wait);
    let first = worker.lease(lease(None)).await.unwrap().into_inner().tasks.pop().expect("leased");
    // The worker gives up on it: the task waits 1s for a retry and no lease is held.
    worker
        .nack(pb::NackRequest {
            task_id: task.id.clone(),
            lease_id: first.lease_id.clone(),
            error: "try again".into(),
            retry_after: secs(1),
            no_retry: false,
        })
        .await
        .unwrap();

    server.kill9().await;
    drop(server);
    let server = start_broker(&data, &log).await;
    let mut worker = server.worker();

    let second = worker.lease(lease(secs(10))).await.unwrap().into_inner().tasks.pop().expect("redelivered");
    assert_eq!(second.task.as_ref().unwrap().id, task.id);
    assert_eq!(second.task.as_ref().unwrap().attempt, 2);
    // A stale worker still holding the first lease id must not settle the new delivery.
    let stale = worker
        .ack(pb::AckRequest { task_id: task.id.clone(), lease_id: first.lease_id.clone(), result: vec![] })
        .await;
    assert!(
        matches!(&stale, Err(s) if s.code() == Code::FailedPrecondition),
        "ack with the pre-crash lease id {:?} (new lease id {:?}) was {stale:?}",
        first.lease_id,
        second.lease_id
    );
    assert_ne!(first.lease_id, second.lease_id, "a lease id is never handed out twice");
}

// A lease is answered before its own commit is on disk (a delivery a crash
// forgets is delivered again); its id must still never come back. A kill -9
// seldom loses the lease's write (it reaches the page cache at once), so
// both outcomes are checked here; the store's unit test
// `a_lease_whose_write_is_lost_comes_back_under_a_new_lease_id` cuts the
// lease's write off the log to check the lost case every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_a_crash_forgets_is_delivered_again_under_a_new_lease_id() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("broker.log");
    let mut server = start_broker(&data, &log).await;
    let mut producer = server.producer();
    let mut worker = server.worker();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let task = pb::EnqueueRequest { queue: "forget".into(), kind: "job".into(), ..Default::default() };
        ids.push(producer.enqueue(task).await.unwrap().into_inner().task.unwrap().id);
    }
    let lease = |wait| lease_one("forget", 3600, wait);
    // The first lease reserves a block of lease ids (durable); the second
    // one's own commit may not be on disk when the broker dies.
    let mut before = HashMap::new();
    for _ in 0..2 {
        let lt = worker.lease(lease(None)).await.unwrap().into_inner().tasks.pop().expect("leased");
        before.insert(lt.task.unwrap().id, lt.lease_id);
    }
    server.kill9().await;
    drop(server);
    let server = start_broker(&data, &log).await;
    let mut worker = server.worker();
    let mut producer = server.producer();

    for id in &ids {
        let t = get(&mut producer, id).await;
        match state(&t) {
            // Its lease reached the disk: still out, under the old id.
            pb::TaskState::Leased => assert_eq!(t.attempt, 1),
            // Forgotten: delivered again, under a new id.
            pb::TaskState::Ready => {
                assert_eq!(t.attempt, 0, "a forgotten delivery does not count");
                let again =
                    worker.lease(lease(secs(5))).await.unwrap().into_inner().tasks.pop().expect("again");
                assert_eq!(&again.task.as_ref().unwrap().id, id);
                assert_ne!(again.lease_id, before[id], "a lease id is never handed out twice");
            }
            other => panic!("task {id} is {other:?} after the restart"),
        }
        let stale =
            worker.ack(pb::AckRequest { task_id: id.clone(), lease_id: before[id].clone(), result: vec![] });
        let stale = stale.await;
        let lost = matches!(&stale, Err(s) if s.code() == Code::FailedPrecondition);
        assert!(
            lost || state(&t) == pb::TaskState::Leased,
            "an old lease id settled a new delivery: {stale:?}"
        );
    }
}
