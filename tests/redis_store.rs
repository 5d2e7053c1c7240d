//! What only the Redis store has to show: it survives a Redis restart, fails
//! fast while Redis is away and comes back by itself, reports a full Redis,
//! tells other replicas what happened, lets several replicas sweep at once,
//! can run on Redis's clock, reads the key layout before round-robin, and
//! serves many keys in turn without reading them all. The shared behaviour
//! is in `store_conformance.rs`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use taskbroker::core::lease::LeaseError;
use taskbroker::core::queue::{Policies, QueuePolicy};
use taskbroker::core::retry::Backoff;
use taskbroker::core::task::{NewTask, Task, TaskId, TaskState};
use taskbroker::store::redis::RedisStore;
use taskbroker::store::{AckItem, LeaseSpec, NackSpec, Store, StoreError, StoreEvent};
use tokio::sync::broadcast;

#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;
use redis_server::RedisServer;
#[path = "common/proxy.rs"]
mod proxy;

const NOW: u64 = 1_767_225_600_000;
const SEC: u64 = 1_000;

fn policies() -> Arc<Policies> {
    let policy = QueuePolicy {
        lease_duration: Duration::from_secs(30),
        max_attempts: 10,
        retry_backoff: Backoff {
            initial: Duration::from_millis(700),
            max: Duration::from_secs(600),
            multiplier: 1.7,
            jitter: 0.3,
        },
        default_priority: 0,
        retention: Duration::from_secs(100),
        dedup_window: Duration::from_secs(10),
        max_in_flight: 0,
        per_key_max_in_flight: 0,
        rate_limit: None,
        semaphores: Vec::new(),
    };
    let semaphores = BTreeMap::from([("sel".to_owned(), 2)]);
    Arc::new(Policies::new(BTreeMap::new(), policy).with_semaphores(semaphores))
}

async fn connect(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.url(), policies(), false).await.expect("connects to redis")
}

fn new_task(queue: &str, payload: Vec<u8>) -> NewTask {
    NewTask {
        depends_on: Vec::new(),
        on_dependency_failure: Default::default(),
        expire_time: None,
        queue: queue.into(),
        kind: "k".into(),
        payload,
        content_type: String::new(),
        priority: 0,
        headers: BTreeMap::new(),
        max_attempts: 10,
        scheduled_time: 0,
        dedup_key: String::new(),
        request_id: String::new(),
        concurrency_key: String::new(),
        semaphores: Vec::new(),
    }
}

fn spec(queue: &str, max: usize) -> LeaseSpec {
    LeaseSpec::strict(&[queue.to_string()], max, None, "w")
}

fn lease_id(t: &Task) -> u64 {
    t.lease.as_ref().expect("a leased task").id
}

fn wall_clock() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Retries `op` until it succeeds, for at most `within`.
async fn eventually<T, F, Fut>(within: Duration, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + within;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("still failing after {within:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The next event matching `want`, skipping others, within 5 s.
async fn expect_event(rx: &mut broadcast::Receiver<StoreEvent>, want: &StoreEvent) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(ev)) if &ev == want => return,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("event channel: {e}"),
            Err(_) => panic!("no {want:?} within 5 s"),
        }
    }
}

#[tokio::test]
async fn binary_payloads_and_headers_survive_the_scripts() {
    let server = RedisServer::start();
    let s = connect(&server).await;
    let payload: Vec<u8> = (0..=255).chain((0..=255).rev()).collect();
    let headers: BTreeMap<String, String> =
        [("traceparent".into(), "00-4bf9-00f0-01".into()), ("ünïcødé".into(), "✓".into())].into();
    let t = NewTask { headers: headers.clone(), priority: 9, ..new_task("q", payload.clone()) };
    let created = s.enqueue(vec![t], NOW).await.unwrap().pop().unwrap().task;
    let l = s.lease(spec("q", 1), NOW).await.unwrap().pop().unwrap();
    let n = s.nack(l.id, lease_id(&l), nack(Some(0), 0.5), NOW).await.unwrap();
    let result: Vec<u8> = vec![0, 0xc4, 0xff, 0xa0];
    let l = s.lease(spec("q", 1), NOW).await.unwrap().pop().unwrap();
    let done = s.ack(l.id, lease_id(&l), result.clone(), NOW).await.unwrap();
    for t in [&created, &n, &l, &done, &s.get(created.id).await.unwrap()] {
        assert_eq!((&t.payload, &t.headers, t.priority), (&payload, &headers, 9));
    }
    assert_eq!(done.result, result);
}

fn nack(retry_after: Option<u64>, jitter_sample: f64) -> NackSpec {
    NackSpec { error: "boom".into(), retry_after, no_retry: false, jitter_sample }
}

#[tokio::test]
async fn backoff_in_lua_matches_the_core() {
    let server = RedisServer::start();
    let s = connect(&server).await;
    let backoff = policies().get("q").retry_backoff.clone();
    let t = s.enqueue(vec![new_task("q", vec![])], NOW).await.unwrap().pop().unwrap().task;
    let mut now = NOW;
    for (attempt, sample) in (1..10).zip([0.0, 0.999_999, 0.37, 0.5, 0.123_456_789, 0.9, 0.01, 0.77, 0.3333])
    {
        let l = s.lease(spec("q", 1), now).await.unwrap().pop().expect("the task again");
        assert_eq!(l.attempt, attempt);
        let n = s.nack(t.id, lease_id(&l), nack(None, sample), now).await.unwrap();
        assert_eq!(
            n.scheduled_time - now,
            backoff.delay(attempt, sample),
            "attempt {attempt}, sample {sample}"
        );
        now = n.scheduled_time;
        assert_eq!(s.promote_due(now).await.unwrap().count, 1);
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_a_redis_crash() {
    let mut server = RedisServer::start();
    let s = connect(&server).await;
    let mut created = Vec::new();
    for batch in 0..20 {
        let tasks = (0..50).map(|i| new_task(["a", "b"][i % 2], vec![batch as u8; 100])).collect();
        created.extend(s.enqueue(tasks, NOW).await.unwrap().into_iter().map(|e| e.task));
    }
    let leased = s.lease(spec("a", 10), NOW).await.unwrap();
    for t in &leased[..5] {
        s.ack(t.id, lease_id(t), b"done".to_vec(), NOW).await.unwrap();
    }
    let mut before = Vec::new();
    for t in &created {
        before.push(s.get(t.id).await.unwrap());
    }

    server.kill(); // SIGKILL, right after the last acknowledged write
    server.restart();

    // The same store reconnects by itself; a new one sees the same.
    let first = created[0].id;
    eventually(Duration::from_secs(15), || s.get(first)).await;
    let fresh = connect(&server).await;
    for t in &before {
        assert_eq!(&s.get(t.id).await.unwrap(), t);
        assert_eq!(&fresh.get(t.id).await.unwrap(), t);
    }
    let again = fresh.lease(spec("a", 1000), NOW).await.unwrap();
    assert_eq!(again.len(), 500 - 10, "every ready task is still there, once");
    let old = leased.iter().map(lease_id).max().unwrap();
    assert!(again.iter().all(|t| lease_id(t) > old), "lease ids never come back");
}

#[tokio::test]
async fn fails_fast_while_redis_is_down_and_recovers_by_itself() {
    let mut server = RedisServer::start();
    let s = connect(&server).await;
    let other = connect(&server).await;
    let t = s.enqueue(vec![new_task("q", vec![1])], NOW).await.unwrap().pop().unwrap().task;
    assert!(s.healthy().await);

    server.kill();
    let bound = Duration::from_secs(10);
    for round in 0..3 {
        let started = Instant::now();
        let calls: [Result<(), StoreError>; 5] = [
            tokio::time::timeout(bound, s.get(t.id)).await.expect("get returns").map(drop),
            tokio::time::timeout(bound, s.enqueue(vec![new_task("q", vec![])], NOW))
                .await
                .expect("enqueue returns")
                .map(drop),
            tokio::time::timeout(bound, s.lease(spec("q", 1), NOW)).await.expect("lease returns").map(drop),
            tokio::time::timeout(bound, s.ack(t.id, 1, vec![], NOW)).await.expect("ack returns").map(drop),
            tokio::time::timeout(bound, s.requeue_expired(NOW)).await.expect("reap returns").map(drop),
        ];
        for r in calls {
            assert!(matches!(r, Err(StoreError::Unavailable(_))), "round {round}: {r:?}");
        }
        assert!(started.elapsed() < bound, "five failing calls took {:?}", started.elapsed());
    }
    assert!(!tokio::time::timeout(bound, s.healthy()).await.unwrap());

    server.restart();
    let got = eventually(Duration::from_secs(15), || s.get(t.id)).await;
    assert_eq!(got.id, t.id);
    assert!(s.healthy().await);
    // Events flow again once the subscription is back.
    let mut rx = other.events().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(Instant::now() < deadline, "no event from the other replica after the restart");
        if s.enqueue(vec![new_task("back", vec![])], NOW).await.is_err() {
            continue;
        }
        let heard = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                match rx.recv().await {
                    Ok(StoreEvent::Ready(q, _)) if q == "back" => return true,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return false,
                }
            }
        })
        .await;
        if heard == Ok(true) {
            break;
        }
    }
}

#[tokio::test]
async fn a_full_redis_is_full_not_unavailable() {
    let server = RedisServer::start_with(&["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"]);
    let s = connect(&server).await;
    let mut stored = Vec::new();
    let mut outcome = None;
    for _ in 0..500 {
        match s.enqueue(vec![new_task("q", vec![7; 32 * 1024])], NOW).await {
            Ok(mut e) => stored.push(e.pop().unwrap().task),
            Err(e) => {
                outcome = Some(e);
                break;
            }
        }
    }
    let err = outcome.expect("redis fills up within 16 MB of payloads");
    assert!(matches!(err, StoreError::Full(_)), "{err:?}");
    assert!(!stored.is_empty(), "some tasks fit before it filled up");
    // Reads still work, and what was stored is intact.
    let last = stored.last().unwrap();
    assert!(s.get(last.id).await.unwrap() == *last);
    // Workers can still drain the queue: settling only shrinks Redis.
    let mut sp = spec("q", 2);
    sp.max_bytes = usize::MAX;
    let leased = s.lease(sp, NOW).await.expect("leasing works when full");
    assert_eq!(leased.len(), 2);
    s.extend(leased[0].id, lease_id(&leased[0]), 60 * SEC, NOW).await.expect("extend works when full");
    s.ack(leased[0].id, lease_id(&leased[0]), vec![], NOW).await.expect("ack works when full");
    s.nack(leased[1].id, lease_id(&leased[1]), nack(Some(0), 0.5), NOW).await.expect("nack works when full");
    let err = s.enqueue(vec![new_task("q", vec![7; 32 * 1024])], NOW).await.unwrap_err();
    assert!(matches!(err, StoreError::Full(_)), "{err:?}");
}

#[tokio::test]
async fn events_reach_the_other_replicas() {
    let server = RedisServer::start();
    let a = connect(&server).await;
    let b = connect(&server).await;
    let mut rx = b.events().expect("a shared store has events");

    let t = a.enqueue(vec![new_task("mail", vec![])], NOW).await.unwrap().pop().unwrap().task;
    expect_event(&mut rx, &StoreEvent::Ready("mail".into(), 1)).await;

    let l = a.lease(spec("mail", 1), NOW).await.unwrap().pop().unwrap();
    let swept = a.requeue_expired(NOW + 30 * SEC).await.unwrap();
    assert_eq!(swept.expired, [(t.id, lease_id(&l))]);
    expect_event(&mut rx, &StoreEvent::LeaseLost(t.id, lease_id(&l), false)).await;
    expect_event(&mut rx, &StoreEvent::Ready("mail".into(), 1)).await;

    let l = a.lease(spec("mail", 1), NOW + 30 * SEC).await.unwrap().pop().unwrap();
    a.cancel(t.id, NOW + 30 * SEC).await.unwrap();
    expect_event(&mut rx, &StoreEvent::LeaseLost(t.id, lease_id(&l), true)).await;

    let n = a.enqueue(vec![new_task("mail", vec![])], NOW).await.unwrap().pop().unwrap().task;
    let l = a.lease(spec("mail", 1), NOW).await.unwrap().pop().unwrap();
    a.nack(n.id, lease_id(&l), nack(Some(0), 0.5), NOW).await.unwrap();
    expect_event(&mut rx, &StoreEvent::Ready("mail".into(), 1)).await;

    // One event per batch, with the count of tasks it made ready.
    a.enqueue((0..3).map(|_| new_task("mail", vec![])).collect(), NOW).await.unwrap();
    expect_event(&mut rx, &StoreEvent::Ready("mail".into(), 3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reapers_handle_each_expired_lease_once() {
    let server = RedisServer::start();
    let a = Arc::new(connect(&server).await);
    let b = Arc::new(connect(&server).await);
    let mut leased = HashSet::new();
    for queue in ["x", "y"] {
        let tasks = (0..1500).map(|_| new_task(queue, vec![])).collect();
        a.enqueue(tasks, NOW).await.unwrap();
        let mut sp = spec(queue, 1500);
        sp.lease_duration = Some(SEC);
        for t in a.lease(sp, NOW).await.unwrap() {
            leased.insert((t.id, lease_id(&t)));
        }
    }
    assert_eq!(leased.len(), 3000);
    let (ra, rb) = tokio::join!(
        tokio::spawn({
            let a = a.clone();
            async move { a.requeue_expired(NOW + SEC).await.unwrap() }
        }),
        tokio::spawn({
            let b = b.clone();
            async move { b.requeue_expired(NOW + SEC).await.unwrap() }
        }),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let mut seen: Vec<(TaskId, u64)> = ra.expired.iter().chain(&rb.expired).copied().collect();
    assert_eq!(seen.len(), 3000, "a: {}, b: {}", ra.expired.len(), rb.expired.len());
    seen.sort();
    seen.dedup();
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), leased, "each expired lease exactly once");
    assert_eq!(ra.count + rb.count, 3000);
    let again = a.lease(spec("x", 2000), NOW + SEC).await.unwrap();
    assert_eq!(again.len(), 1500);
    assert!(again.iter().all(|t| t.attempt == 2 && t.state == TaskState::Leased));
}

#[tokio::test]
async fn server_time_mode_uses_the_redis_clock() {
    let server = RedisServer::start();
    let s = RedisStore::connect(&server.url(), policies(), true).await.unwrap();
    let near = |at: u64, expected: u64| at.abs_diff(expected) < 10 * SEC;
    // Callers' clocks are ignored, however wrong.
    let t = s.enqueue(vec![new_task("q", vec![])], 1).await.unwrap().pop().unwrap().task;
    assert!(near(t.create_time, wall_clock()), "created at {} (now {})", t.create_time, wall_clock());
    let l = s.lease(spec("q", 1), 1).await.unwrap().pop().unwrap();
    let deadline = l.lease.as_ref().unwrap().expire_time;
    assert!(near(deadline, wall_clock() + 30 * SEC));
    assert_eq!(s.requeue_expired(u64::MAX / 4).await.unwrap().count, 0, "not expired by Redis's clock");
    let until = s.extend(t.id, lease_id(&l), 60 * SEC, 1).await.unwrap();
    assert!(near(until, wall_clock() + 60 * SEC));
    let done = s.ack(t.id, lease_id(&l), vec![], u64::MAX / 4).await.unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    assert!(near(done.update_time, wall_clock()));
}

/// The ids of the `Changed` events `rx` hears up to `marker`'s (pub/sub
/// delivers in order, so everything published before the marker has arrived
/// by then); other events are skipped. Fails after 5 s without the marker.
async fn changes_before(rx: &mut broadcast::Receiver<StoreEvent>, marker: TaskId) -> Vec<TaskId> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut changed = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(StoreEvent::Changed(id))) if id == marker => return changed,
            Ok(Ok(StoreEvent::Changed(id))) => changed.push(id),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("event channel: {e}"),
            Err(_) => panic!("no marker event within 5 s; changes heard so far: {changed:?}"),
        }
    }
}

/// Publishes a `Changed` event after everything `s` did so far: a fresh task,
/// watched, then canceled. Returns its id, for [`changes_before`].
async fn marker(s: &RedisStore) -> TaskId {
    let m = s.enqueue(vec![new_task("marker", vec![])], NOW).await.unwrap().pop().unwrap().task;
    s.set_watched(m.id, true).await.unwrap();
    s.cancel(m.id, NOW).await.unwrap();
    m.id
}

#[tokio::test]
async fn only_watched_tasks_announce_their_changes() {
    let server = RedisServer::start();
    let a = connect(&server).await;
    let b = connect(&server).await;
    let mut rx = b.events().expect("a shared store has events");
    let mut tasks = a.enqueue(vec![new_task("w", vec![]), new_task("w", vec![])], NOW).await.unwrap();
    let (watched, other) = (tasks.remove(0).task, tasks.remove(0).task);
    // Two watches (two replicas); one ending leaves the task watched.
    b.set_watched(watched.id, true).await.unwrap();
    a.set_watched(watched.id, true).await.unwrap();
    a.set_watched(watched.id, false).await.unwrap();

    // Both change; only the watched one is announced, once per change.
    let leased = a.lease(spec("w", 2), NOW).await.unwrap();
    assert_eq!(leased.len(), 2);
    let held = |id: TaskId| leased.iter().find(|t| t.id == id).unwrap();
    a.nack(watched.id, lease_id(held(watched.id)), nack(Some(0), 0.5), NOW).await.unwrap();
    let acked =
        a.ack_many(vec![AckItem { id: other.id, lease_id: lease_id(held(other.id)), result: vec![] }], NOW);
    assert!(acked.await.unwrap().iter().all(|r| r.is_ok()));
    let m = marker(&a).await;
    assert_eq!(changes_before(&mut rx, m).await, [watched.id, watched.id], "leased, then ready again");

    // The last watch ends: its next changes (lease, ack) are not announced,
    // nor are any of a task never watched (enqueue, lease, cancel).
    b.set_watched(watched.id, false).await.unwrap();
    let l = a.lease(spec("w", 1), NOW).await.unwrap().pop().expect("the nacked task again");
    assert_eq!(l.id, watched.id);
    a.ack(watched.id, lease_id(&l), vec![], NOW).await.unwrap();
    let n = a.enqueue(vec![new_task("w", vec![])], NOW).await.unwrap().pop().unwrap().task;
    a.lease(spec("w", 1), NOW).await.unwrap();
    a.cancel(n.id, NOW).await.unwrap();
    let m = marker(&a).await;
    assert_eq!(changes_before(&mut rx, m).await, [], "unwatched tasks were announced");
}

/// Two queue names whose FNV-1a tags are equal (`src/store/redis/queues.rs`).
const SAME_TAG: [&str; 2] = ["q562789", "q779192"];

#[tokio::test]
async fn tasks_of_two_queues_sharing_a_tag_are_found_in_their_own_queue() {
    let server = RedisServer::start();
    let a = connect(&server).await;
    let one = a.enqueue(vec![new_task(SAME_TAG[0], b"one".to_vec())], NOW).await.unwrap().pop().unwrap().task;
    let two = a.enqueue(vec![new_task(SAME_TAG[1], b"two".to_vec())], NOW).await.unwrap().pop().unwrap().task;
    // The ids carry one tag (their low 32 bits): only the records tell the queues apart.
    assert_eq!(one.id.0 as u32, two.id.0 as u32, "the names no longer share a tag: pick two that do");

    // A replica that has seen neither queue resolves both ids.
    let b = connect(&server).await;
    for (t, queue, payload) in [(&one, SAME_TAG[0], b"one"), (&two, SAME_TAG[1], b"two")] {
        let got = b.get(t.id).await.unwrap();
        assert_eq!((got.queue.as_str(), got.payload.as_slice()), (queue, &payload[..]));
    }
    let l1 = b.lease(spec(SAME_TAG[0], 1), NOW).await.unwrap().pop().unwrap();
    let l2 = b.lease(spec(SAME_TAG[1], 1), NOW).await.unwrap().pop().unwrap();
    assert_eq!((l1.id, l2.id), (one.id, two.id));
    let c = connect(&server).await;
    c.extend(two.id, lease_id(&l2), 60 * SEC, NOW).await.unwrap();
    assert_eq!(c.ack(one.id, lease_id(&l1), b"r1".to_vec(), NOW).await.unwrap().state, TaskState::Succeeded);
    let dead = c.nack(two.id, lease_id(&l2), NackSpec { no_retry: true, ..nack(None, 0.5) }, NOW).await;
    assert_eq!(dead.unwrap().state, TaskState::Dead);
    assert_eq!(a.get(one.id).await.unwrap().result, b"r1");
    assert_eq!(a.get(two.id).await.unwrap().state, TaskState::Dead);
    // An id with the shared tag that neither queue holds is not found.
    let ghost = TaskId((TaskId::generate(NOW).0 & !u128::from(u32::MAX)) | u128::from(one.id.0 as u32));
    assert_eq!(c.get(ghost).await.unwrap_err(), StoreError::TaskNotFound(ghost));
}

#[tokio::test]
async fn ack_many_settles_each_item_alone_across_queues() {
    let server = RedisServer::start();
    let s = connect(&server).await;
    s.enqueue(vec![new_task("x", vec![]), new_task("y", vec![]), new_task("x", vec![])], NOW).await.unwrap();
    let mut leased = s.lease(spec("x", 2), NOW).await.unwrap();
    leased.extend(s.lease(spec("y", 1), NOW).await.unwrap());
    let item = |t: &Task, lease_id: u64| AckItem { id: t.id, lease_id, result: b"r".to_vec() };
    let unknown = TaskId::generate(NOW);
    let items = vec![
        item(&leased[2], lease_id(&leased[2])),
        item(&leased[0], lease_id(&leased[0]) + 100),
        AckItem { id: unknown, lease_id: 1, result: vec![] },
        item(&leased[0], lease_id(&leased[0])),
        item(&leased[1], lease_id(&leased[1])),
        item(&leased[1], lease_id(&leased[1])),
    ];
    // A second store: every queue is read from tb:index, not its cache.
    let other = connect(&server).await;
    let out = other.ack_many(items, NOW).await.unwrap();
    let summary: Vec<_> = out.into_iter().map(|r| r.map(|t| (t.id, t.state, t.result))).collect();
    assert_eq!(
        summary,
        vec![
            Ok((leased[2].id, TaskState::Succeeded, b"r".to_vec())),
            Err(StoreError::Lease(LeaseError::Mismatch)),
            Err(StoreError::TaskNotFound(unknown)),
            Ok((leased[0].id, TaskState::Succeeded, b"r".to_vec())),
            Ok((leased[1].id, TaskState::Succeeded, b"r".to_vec())),
            Err(StoreError::Lease(LeaseError::Mismatch)),
        ]
    );
}

#[tokio::test]
async fn a_redis_written_in_another_key_layout_is_refused_at_connect() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();

    // Layout 1 had a global task index and no layout key.
    let _: () = redis::cmd("HSET")
        .arg("tb:index")
        .arg("01KDZ8Q4G0000000000000000Z")
        .arg("q")
        .query_async(&mut raw)
        .await
        .unwrap();
    let err = RedisStore::connect(&server.url(), policies(), false).await.err().expect("refused");
    assert!(matches!(&err, StoreError::Unavailable(m) if m.contains("layout")), "{err:?}");

    // A layout from a newer version.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut raw).await.unwrap();
    let _: () = redis::cmd("SET").arg("tb:layout").arg("99").query_async(&mut raw).await.unwrap();
    let err = RedisStore::connect(&server.url(), policies(), false).await.err().expect("refused");
    assert!(matches!(&err, StoreError::Unavailable(m) if m.contains("tb:layout = 99")), "{err:?}");

    // An empty Redis is marked with this layout, and accepted from then on.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut raw).await.unwrap();
    drop(connect(&server).await);
    let layout: String = redis::cmd("GET").arg("tb:layout").query_async(&mut raw).await.unwrap();
    assert_eq!(layout, "3");
    drop(connect(&server).await);

    // Layout 2 (no key groups) is read as it is, and marked 3 so that builds
    // of layout 2 refuse it from then on.
    let _: () = redis::cmd("SET").arg("tb:layout").arg("2").query_async(&mut raw).await.unwrap();
    drop(connect(&server).await);
    let layout: String = redis::cmd("GET").arg("tb:layout").query_async(&mut raw).await.unwrap();
    assert_eq!(layout, "3");
}

#[tokio::test]
async fn connections_that_go_silent_without_closing_are_replaced() {
    let server = RedisServer::start();
    let proxy = proxy::Proxy::start(server.port()).await;
    let a = RedisStore::connect(&proxy.url(), policies(), false).await.expect("connects through the proxy");
    let b = connect(&server).await;
    let mut events = a.events().expect("the redis store has events");
    b.enqueue(vec![new_task("before", b"x".to_vec())], NOW).await.unwrap();
    expect_event(&mut events, &StoreEvent::Ready("before".into(), 1)).await;

    // A partition: A's connections stay open and carry nothing. Nothing
    // resets them, so only A's own checks can notice.
    proxy.silence_open_connections();
    let cut = Instant::now();

    // B's events reach A again once A has resubscribed on a new connection.
    let deadline = Instant::now() + Duration::from_secs(20);
    'heard: loop {
        assert!(Instant::now() < deadline, "A heard nothing of B within 20 s of the partition");
        b.enqueue(vec![new_task("after", b"y".to_vec())], NOW).await.unwrap();
        let until = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(ev) = tokio::time::timeout_at(until, events.recv()).await {
            match ev {
                Ok(StoreEvent::Ready(q, _)) if q == "after" => break 'heard,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event channel: {e}"),
            }
        }
    }
    eprintln!("events flowed again {:?} after the partition", cut.elapsed());

    // And A's calls work again: its command connection was replaced too.
    let t = b.enqueue(vec![new_task("after", b"z".to_vec())], NOW).await.unwrap().pop().unwrap().task;
    let got = eventually(Duration::from_secs(20), || a.get(t.id)).await;
    assert_eq!(got.payload, b"z");
    eprintln!("calls worked again {:?} after the partition", cut.elapsed());
}

#[tokio::test]
async fn rediss_urls_talk_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    let tls_port = redis_server::free_port().to_string();
    let server = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        cert_file.to_str().unwrap(),
        "--tls-key-file",
        key_file.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]);
    // A self-signed certificate: `#insecure` skips verifying it (tests and
    // development only; production Redis certificates are checked against the
    // system's roots).
    let url = format!("rediss://127.0.0.1:{tls_port}/#insecure");
    let store = RedisStore::connect(&url, policies(), false).await.expect("connects over TLS");
    let t = store.enqueue(vec![new_task("tls", b"secret".to_vec())], NOW).await.unwrap().pop().unwrap().task;
    assert_eq!(store.get(t.id).await.unwrap().payload, b"secret");
    // The same task through the plaintext port: one Redis, two transports.
    assert_eq!(connect(&server).await.get(t.id).await.unwrap().payload, b"secret");
    // A plaintext client on the TLS port gets nowhere.
    let plain = format!("redis://127.0.0.1:{tls_port}/");
    assert!(RedisStore::connect(&plain, policies(), false).await.is_err());
    // Without `#insecure` the certificate is checked against the system's
    // roots, and a self-signed one is refused.
    let checked = format!("rediss://127.0.0.1:{tls_port}/");
    let err = RedisStore::connect(&checked, policies(), false)
        .await
        .err()
        .expect("the self-signed certificate is refused");
    assert!(err.to_string().contains("certificate"), "refused for its certificate: {err}");
}

#[tokio::test]
async fn a_user_and_password_in_the_url_authenticate() {
    // Only user `tb` may do anything; the default (password-less) user is off.
    let server = RedisServer::start_with(&[
        "--user", "default", "off", "--user", "tb", "on", ">s3cret", "~*", "&*", "+@all",
    ]);
    let url = format!("redis://tb:s3cret@127.0.0.1:{}/", server.port());
    let a = RedisStore::connect(&url, policies(), false).await.expect("connects as tb");
    let b = RedisStore::connect(&url, policies(), false).await.expect("connects as tb");
    let mut events = b.events().unwrap();
    let t = a.enqueue(vec![new_task("auth", b"x".to_vec())], NOW).await.unwrap().pop().unwrap().task;
    assert_eq!(b.get(t.id).await.unwrap().payload, b"x");
    // The event subscription authenticates too.
    expect_event(&mut events, &StoreEvent::Ready("auth".into(), 1)).await;

    for (who, bad) in [
        ("a wrong password", format!("redis://tb:wrong@127.0.0.1:{}/", server.port())),
        ("no credentials", server.url()),
    ] {
        let refused = RedisStore::connect(&bad, policies(), false).await;
        assert!(matches!(refused, Err(StoreError::Unavailable(_))), "{who}: {:?}", refused.err());
    }
}

/// Redis loses the writes of a lease after the worker got it (a failover, a
/// power loss under `appendfsync everysec`): the task is READY again and the
/// queue's lease counter is back where it was. The next delivery must not get
/// the same lease id, or the first worker's stale Ack would settle the task
/// under the second worker's feet.
#[tokio::test]
async fn a_rolled_back_lease_counter_does_not_hand_a_lease_id_out_twice() {
    let server = RedisServer::start();
    let s = connect(&server).await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let mut seen = HashSet::new();
    for round in 0..20 {
        let task = s.enqueue(vec![new_task("q", b"p".to_vec())], NOW).await.unwrap().remove(0).task;
        let id = task.id.to_string();
        // What Redis holds before the lease, to roll back to.
        let counter: Option<u64> = redis::cmd("GET").arg("tb:{q}:lease").query(&mut conn).unwrap();
        let meta: Vec<u8> = redis::cmd("HGET").arg("tb:{q}:meta").arg(&id).query(&mut conn).unwrap();

        let first = s.lease(spec("q", 1), NOW).await.unwrap().remove(0);
        assert_eq!(first.id, task.id);
        // The lease's writes are lost.
        redis::pipe()
            .cmd("SET")
            .arg("tb:{q}:lease")
            .arg(counter.unwrap_or(0))
            .cmd("HSET")
            .arg("tb:{q}:meta")
            .arg(&id)
            .arg(meta)
            .cmd("ZREM")
            .arg("tb:{q}:leased")
            .arg(&id)
            .cmd("RPUSH")
            .arg("tb:{q}:ready:0")
            .arg(&id)
            .query::<()>(&mut conn)
            .unwrap();

        let second = s.lease(spec("q", 1), NOW).await.unwrap().remove(0);
        assert_eq!(second.id, task.id, "round {round}: the task is delivered again");
        assert_ne!(lease_id(&second), lease_id(&first), "round {round}: the same lease id twice");
        let stale = s.ack(task.id, lease_id(&first), vec![], NOW).await;
        assert_eq!(stale, Err(StoreError::Lease(LeaseError::Mismatch)), "round {round}: the stale Ack");
        s.ack(task.id, lease_id(&second), vec![], NOW).await.unwrap();
        assert!(seen.insert(lease_id(&first)) && seen.insert(lease_id(&second)), "lease ids never repeat");
        assert!(lease_id(&second) < 1 << 53, "exact as an f64 (the meta record) and a Lua number");
    }
}

/// Layout 2 (before round-robin) kept every READY task of a priority in one
/// list, keyed or not. Such tasks are still delivered, as the no-key group:
/// it takes its turn with the key groups enqueued since, first as it waited
/// longest; FIFO within it. A cancel finds a keyed task there too.
#[tokio::test]
async fn tasks_an_older_layout_left_in_one_ready_list_are_delivered_as_the_no_key_group() {
    let server = RedisServer::start();
    let s = connect(&server).await;
    let keyed = |key: &str| NewTask { concurrency_key: key.into(), ..new_task("q", b"p".to_vec()) };
    let mut old = Vec::new();
    for key in ["a", "a", "", "a"] {
        old.push(s.enqueue(vec![keyed(key)], NOW).await.unwrap().remove(0).task.id);
    }
    // What layout 2 held: one list per priority in READY order, no turns.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let ids: Vec<String> = old.iter().map(|id| id.to_string()).collect();
    redis::pipe()
        .cmd("DEL")
        .arg("tb:{q}:ready:0")
        .arg("tb:{q}:ready:0:k:a")
        .arg("tb:{q}:turn:0")
        .cmd("RPUSH")
        .arg("tb:{q}:ready:0")
        .arg(&ids)
        .query::<()>(&mut conn)
        .unwrap();

    let b = s.enqueue(vec![keyed("b"), keyed("b")], NOW).await.unwrap();
    s.cancel(old[1], NOW).await.unwrap();
    let got: Vec<TaskId> = s.lease(spec("q", 10), NOW).await.unwrap().iter().map(|t| t.id).collect();
    assert_eq!(got, [old[0], b[0].task.id, old[2], b[1].task.id, old[3]], "the old list takes turns with b");
    let ready: u64 =
        redis::cmd("EXISTS").arg("tb:{q}:ready:0").arg("tb:{q}:turn:0").query(&mut conn).unwrap();
    assert_eq!(ready, 0, "emptied lists leave nothing behind");
}

/// ExtendLease moves the lease in the queue's slot, then its semaphore
/// permits in the semaphore's slot. When the second step fails (here the
/// holders' key is made unusable; in production, a connection cut between
/// the two), the permit would lapse at the old deadline while the worker
/// runs on: the call fails, and extending again moves the permit too.
#[tokio::test]
async fn an_extension_whose_permits_could_not_follow_fails_and_can_be_repeated() {
    let server = RedisServer::start();
    let s = connect(&server).await;
    let task = NewTask { semaphores: vec!["sel".into()], ..new_task("q", b"p".to_vec()) };
    s.enqueue(vec![task], NOW).await.unwrap();
    let held = s.lease(spec("q", 1), NOW).await.unwrap().remove(0);
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let holders = "tb:{sem:sel}:holders";
    let before: Vec<(String, u64)> =
        redis::cmd("ZRANGE").arg(holders).arg(0).arg(-1).arg("WITHSCORES").query(&mut conn).unwrap();
    assert_eq!(before.len(), 1, "the lease holds one permit");
    redis::cmd("RENAME").arg(holders).arg("kept").query::<()>(&mut conn).unwrap();
    redis::cmd("SET").arg(holders).arg("not a sorted set").query::<()>(&mut conn).unwrap();

    let failed = s.extend(held.id, lease_id(&held), 60 * SEC, NOW + SEC).await;
    assert!(matches!(failed, Err(StoreError::Unavailable(_))), "{failed:?}");

    redis::cmd("RENAME").arg("kept").arg(holders).query::<()>(&mut conn).unwrap();
    let deadline = s.extend(held.id, lease_id(&held), 60 * SEC, NOW + 2 * SEC).await.unwrap();
    let after: Vec<(String, u64)> =
        redis::cmd("ZRANGE").arg(holders).arg(0).arg(-1).arg("WITHSCORES").query(&mut conn).unwrap();
    assert_eq!(after, [(before[0].0.clone(), deadline)], "the permit lapses with the extended lease");
}

/// A ready list holding a task that is not READY (a replica of layout 2,
/// still running during an upgrade, cancels a keyed task without finding it
/// in its key's list): the lease drops the entry instead of delivering a
/// canceled task.
#[tokio::test]
async fn a_listed_task_that_is_not_ready_is_dropped_not_delivered() {
    let server = RedisServer::start();
    let s = connect(&server).await;
    let canceled = s.enqueue(vec![new_task("q", b"p".to_vec())], NOW).await.unwrap().remove(0).task.id;
    let ready = s.enqueue(vec![new_task("q", b"p".to_vec())], NOW).await.unwrap().remove(0).task.id;
    s.cancel(canceled, NOW).await.unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    redis::cmd("LPUSH").arg("tb:{q}:ready:0").arg(canceled.to_string()).query::<()>(&mut conn).unwrap();

    let got: Vec<TaskId> = s.lease(spec("q", 10), NOW).await.unwrap().iter().map(|t| t.id).collect();
    assert_eq!(got, [ready], "only the READY task");
    assert_eq!(s.get(canceled).await.unwrap().state, TaskState::Canceled);
    let left: u64 = redis::cmd("LLEN").arg("tb:{q}:ready:0").query(&mut conn).unwrap();
    assert_eq!(left, 0, "the stale entry is gone");
}

/// Calls of Redis command `name` since the last `CONFIG RESETSTAT` (commands
/// run by scripts included).
fn calls(conn: &mut redis::Connection, name: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    let prefix = format!("cmdstat_{name}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// 10,000 keys with two READY tasks each, enqueued key by key: a lease of
/// 10 takes the first task of the first 10 keys (round-robin, not FIFO), and
/// reads only what it serves: one turn read and a list read per group
/// served, never every key's list.
#[tokio::test]
async fn a_lease_over_10000_keys_serves_them_in_turn_without_reading_them_all() {
    let server = RedisServer::start();
    let s = connect(&server).await;
    let keyed = |k: usize| NewTask { concurrency_key: format!("k{k}"), ..new_task("q", b"p".to_vec()) };
    for batch in 0..20 {
        let tasks = (batch * 500..(batch + 1) * 500).flat_map(|k| [keyed(k), keyed(k)]).collect();
        s.enqueue(tasks, NOW).await.unwrap();
    }
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    redis::cmd("CONFIG").arg("RESETSTAT").query::<()>(&mut conn).unwrap();

    let got = s.lease(spec("q", 10), NOW).await.unwrap();
    let keys: Vec<String> = got.iter().map(|t| t.concurrency_key.clone()).collect();
    assert_eq!(keys, (0..10).map(|k| format!("k{k}")).collect::<Vec<_>>(), "one task of each key in turn");
    let (lists, turns) = (calls(&mut conn, "lrange"), calls(&mut conn, "zrange"));
    println!("a lease of 10 over 10,000 keys: {lists} LRANGE, {turns} ZRANGE");
    assert!(lists <= 10, "a list read per group served, not per key: {lists}");
    assert!(turns <= 10, "one turn read per priority level at most: {turns}");
}
