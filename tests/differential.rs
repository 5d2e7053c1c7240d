//! The differential model test: random operation sequences (enqueue, with
//! dependencies on earlier tasks and deadlines, lease,
//! ack, nack, extend, cancel, get, time advancing with every sweep, and the
//! operations API's pause, redrive, purge, stats and listing) replayed
//! against the memory store (the reference), the embedded store and the Redis
//! store, with every result and the final state of every task compared.
//!
//! The task state machine is decided once, in `core::transition`, but the
//! Redis store re-states it in Lua; this test is what keeps the copies equal.
//! Tasks carry no key, key "a" or key "b", so the delivery order compared
//! includes the keys' turns (`core::flow::Rotation`, which `lease.lua`
//! re-states).
//! Time is injected (`now` is an argument and the Redis store runs without its
//! server clock), so nothing sleeps and a failing case replays exactly.
//!
//! Task ids and lease ids differ between stores (random ULIDs; lease counters
//! global in one, per queue in another), so results are compared through the
//! order in which each store handed them out: "task #3", "lease #5".

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use taskbroker::core::flow::RateLimit;
use taskbroker::core::queue::{Policies, QueuePolicy};
use taskbroker::core::retry::Backoff;
use taskbroker::core::stats::{QueueStats, STATES};
use taskbroker::core::task::{DependencyFailure, NewTask, Task, TaskId, TaskState};
use taskbroker::store::embedded::EmbeddedStore;
use taskbroker::store::memory::MemoryStore;
use taskbroker::store::redis::RedisStore;
use taskbroker::store::{AckItem, LeaseSpec, NackSpec, Store, StoreError, Swept};

#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;
use redis_server::RedisServer;

const START: u64 = 1_767_225_600_000;
const QUEUES: [&str; 2] = ["q0", "q1"];
/// Random cases per run, and operations per case.
const CASES: u32 = 48;
const MAX_OPS: usize = 40;

/// Short leases, a jittered backoff and a short retention, so that random
/// time steps cross every timer.
fn policies() -> Arc<Policies> {
    let policy = QueuePolicy {
        lease_duration: Duration::from_secs(5),
        max_attempts: 3,
        retry_backoff: Backoff {
            initial: Duration::from_millis(700),
            max: Duration::from_secs(20),
            multiplier: 2.5,
            jitter: 0.3,
        },
        default_priority: 0,
        retention: Duration::from_secs(30),
        dedup_window: Duration::from_secs(10),
        max_in_flight: 0,
        per_key_max_in_flight: 0,
        rate_limit: None,
        semaphores: Vec::new(),
    };
    // Flow control the stores must agree on: q0 paced by a token bucket, q1
    // capped at 2 LEASED tasks (every way out of LEASED frees a permit).
    let rate = RateLimit { rate: "5/s".parse().unwrap(), burst: 3 };
    let q0 = QueuePolicy { rate_limit: Some(rate), ..policy.clone() };
    let q1 = QueuePolicy { max_in_flight: 2, ..policy.clone() };
    let declared = BTreeMap::from([("q0".to_owned(), q0), ("q1".to_owned(), q1)]);
    Arc::new(Policies::new(declared, policy))
}

#[derive(Clone, Debug)]
enum Op {
    Enqueue {
        queue: usize,
        priority: u8,
        delay: Option<u64>,
        dedup: Option<u8>,
        max_attempts: u32,
        /// The task's `concurrency_key`: none, "a" or "b" (keys take turns).
        key: u8,
        /// Earlier tasks (by number) it depends on, and whether it runs
        /// when one fails.
        deps: Vec<usize>,
        run: bool,
        /// Deadline from now.
        ttl: Option<u64>,
    },
    /// `first` is the preferred queue; `both` adds the other one after it.
    Lease {
        first: usize,
        both: bool,
        max: usize,
        duration: Option<u64>,
    },
    Ack {
        lease: usize,
    },
    AckMany {
        leases: Vec<usize>,
    },
    Nack {
        lease: usize,
        retry_after: Option<u64>,
        no_retry: bool,
        jitter: f64,
    },
    Extend {
        lease: usize,
        by: u64,
    },
    Cancel {
        task: usize,
    },
    Get {
        task: usize,
    },
    /// Moves time on and runs the three sweeps.
    Advance {
        by: u64,
    },
    // The operations API.
    Pause {
        queue: usize,
        paused: bool,
    },
    /// DEAD tasks back to READY: `tasks` (by creation number), or the oldest.
    Redrive {
        queue: usize,
        tasks: Vec<usize>,
        limit: usize,
    },
    /// `states` index `core::stats::STATES`.
    PurgeQueue {
        queue: usize,
        states: Vec<usize>,
    },
    Stats {
        queue: usize,
    },
    List {
        queue: usize,
        state: usize,
        after: Option<usize>,
        limit: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (
            (0..2usize, 0..3u8, prop::option::weighted(0.3, 1..8_000u64), prop::option::weighted(0.3, 0..3u8), 1..4u32, 0..3u8),
            (prop::collection::vec(0..12usize, 0..3), any::<bool>(), prop::option::weighted(0.2, 1..20_000u64)),
        )
            .prop_map(|((queue, priority, delay, dedup, max_attempts, key), (deps, run, ttl))| {
                Op::Enqueue { queue, priority, delay, dedup, max_attempts, key, deps, run, ttl }
            }),
        3 => (0..2usize, any::<bool>(), 1..4usize, prop::option::weighted(0.3, 1_000..9_000u64))
            .prop_map(|(first, both, max, duration)| Op::Lease { first, both, max, duration }),
        2 => (0..12usize).prop_map(|lease| Op::Ack { lease }),
        1 => prop::collection::vec(0..12usize, 1..4).prop_map(|leases| Op::AckMany { leases }),
        2 => (0..12usize, prop::option::weighted(0.4, 0..3_000u64), prop::bool::weighted(0.2), 0.0..1.0f64)
            .prop_map(|(lease, retry_after, no_retry, jitter)| Op::Nack { lease, retry_after, no_retry, jitter }),
        1 => (0..12usize, 1_000..9_000u64).prop_map(|(lease, by)| Op::Extend { lease, by }),
        1 => (0..12usize).prop_map(|task| Op::Cancel { task }),
        1 => (0..12usize).prop_map(|task| Op::Get { task }),
        2 => prop_oneof![1..3_000u64, 3_000..40_000u64].prop_map(|by| Op::Advance { by }),
        1 => (0..2usize, any::<bool>()).prop_map(|(queue, paused)| Op::Pause { queue, paused }),
        1 => (0..2usize, prop::collection::vec(0..12usize, 0..3), 0..3usize)
            .prop_map(|(queue, tasks, limit)| Op::Redrive { queue, tasks, limit }),
        1 => (0..2usize, prop::collection::vec(0..7usize, 0..3)).prop_map(|(queue, states)| Op::PurgeQueue { queue, states }),
        1 => (0..2usize).prop_map(|queue| Op::Stats { queue }),
        1 => (0..2usize, 0..7usize, prop::option::of(0..12usize), 1..4usize)
            .prop_map(|(queue, state, after, limit)| Op::List { queue, state, after, limit }),
    ]
}

/// A task as compared across stores: ids replaced by their order of creation.
#[derive(Debug, PartialEq)]
struct Seen {
    task: usize,
    queue: String,
    state: String,
    priority: u8,
    attempt: u32,
    max_attempts: u32,
    scheduled_time: u64,
    update_time: u64,
    result: Vec<u8>,
    last_error: String,
    lease_expire: Option<u64>,
    depends_on: Vec<usize>,
    expire_time: Option<u64>,
}

/// What one operation returned, in store-independent terms.
#[derive(Debug, PartialEq)]
enum Outcome {
    Tasks(Vec<(Seen, bool)>),
    Task(Seen),
    Deadline(u64),
    Error(String),
    Swept { count: usize, changed: Vec<usize>, expired: Vec<(usize, usize)>, ready: Vec<String> },
    Many(Vec<Outcome>),
    Changed(bool),
    Count(u64),
    Stats(QueueStats),
    Names(Vec<String>),
    Nothing,
}

/// One store under test and what it handed out, in order.
struct Run {
    store: Arc<dyn Store>,
    tasks: Vec<TaskId>,
    by_id: HashMap<TaskId, usize>,
    /// Every lease handed out: `(task, lease id)`.
    leases: Vec<(TaskId, u64)>,
    by_lease: HashMap<(TaskId, u64), usize>,
}

impl Run {
    fn new(store: Arc<dyn Store>) -> Self {
        Self { store, tasks: Vec::new(), by_id: HashMap::new(), leases: Vec::new(), by_lease: HashMap::new() }
    }

    fn task_no(&mut self, id: TaskId) -> usize {
        let next = self.tasks.len();
        *self.by_id.entry(id).or_insert_with(|| {
            self.tasks.push(id);
            next
        })
    }

    fn seen(&mut self, t: &Task) -> Seen {
        // "dependency <id> ended DEAD": ids differ between stores, numbers do not.
        let named = t.last_error.strip_prefix("dependency ").and_then(|r| r.split_once(' '));
        let last_error = match named.and_then(|(id, rest)| Some((id.parse::<TaskId>().ok()?, rest))) {
            Some((id, rest)) => format!("dependency #{} {rest}", self.task_no(id)),
            None => t.last_error.clone(),
        };
        Seen {
            task: self.task_no(t.id),
            queue: t.queue.clone(),
            state: format!("{:?}", t.state),
            priority: t.priority,
            attempt: t.attempt,
            max_attempts: t.max_attempts,
            scheduled_time: t.scheduled_time,
            update_time: t.update_time,
            result: t.result.clone(),
            last_error,
            lease_expire: t.lease.as_ref().map(|l| l.expire_time),
            depends_on: t.depends_on.iter().map(|d| self.task_no(*d)).collect(),
            expire_time: t.expire_time,
        }
    }

    fn error(e: StoreError) -> Outcome {
        Outcome::Error(match e {
            StoreError::TaskNotFound(_) => "not found".into(),
            StoreError::TaskFinished(_) => "finished".into(),
            StoreError::DependencyNotFound(ids) => format!("{} dependencies not found", ids.len()),
            StoreError::Lease(l) => format!("{l:?}"),
            other => panic!("a store failed: {other}"),
        })
    }

    fn swept(&mut self, s: Swept) -> Outcome {
        let mut changed: Vec<usize> = s.changed.iter().map(|id| self.task_no(*id)).collect();
        changed.sort_unstable();
        let mut expired: Vec<(usize, usize)> = s
            .expired
            .iter()
            .map(|k| (self.task_no(k.0), self.by_lease.get(k).copied().unwrap_or(usize::MAX)))
            .collect();
        expired.sort_unstable();
        let mut ready = s.ready_queues;
        ready.sort();
        Outcome::Swept { count: s.count, changed, expired, ready }
    }

    /// The lease a reference points to (a made-up one when there is none yet).
    fn lease(&self, n: usize) -> Option<(TaskId, u64)> {
        self.leases.get(n).copied()
    }

    async fn apply(&mut self, op: &Op, now: u64) -> Outcome {
        let store = self.store.clone();
        match op {
            Op::Enqueue { queue, priority, delay, dedup, max_attempts, key, deps, run, ttl } => {
                let mut depends_on: Vec<TaskId> = Vec::new();
                for id in deps.iter().filter_map(|n| self.tasks.get(*n).copied()) {
                    if !depends_on.contains(&id) {
                        depends_on.push(id);
                    }
                }
                let on_dependency_failure =
                    if *run { DependencyFailure::Run } else { DependencyFailure::Cancel };
                let due = delay.map_or(now, |d| now + d);
                let new = NewTask {
                    depends_on,
                    on_dependency_failure,
                    expire_time: ttl.map(|t| due + t),
                    queue: QUEUES[*queue].into(),
                    kind: "k".into(),
                    payload: b"p".to_vec(),
                    content_type: String::new(),
                    priority: *priority,
                    headers: BTreeMap::new(),
                    max_attempts: *max_attempts,
                    scheduled_time: delay.map_or(0, |d| now + d),
                    dedup_key: dedup.map_or(String::new(), |d| format!("d{d}")),
                    request_id: String::new(),
                    concurrency_key: ["", "a", "b"][*key as usize].into(),
                    semaphores: Vec::new(),
                };
                match store.enqueue(vec![new], now).await {
                    Ok(mut out) => {
                        let e = out.pop().unwrap();
                        Outcome::Tasks(vec![(self.seen(&e.task), e.deduplicated)])
                    }
                    Err(e) => Self::error(e),
                }
            }
            Op::Lease { first, both, max, duration } => {
                let mut queues = vec![QUEUES[*first].to_string()];
                if *both {
                    queues.push(QUEUES[1 - first].to_string());
                }
                let spec = LeaseSpec::strict(&queues, *max, *duration, "w");
                match store.lease(spec, now).await {
                    Ok(tasks) => {
                        let mut out = Vec::new();
                        for t in &tasks {
                            let key = (t.id, t.lease.as_ref().expect("a leased task has a lease").id);
                            self.by_lease.insert(key, self.leases.len());
                            self.leases.push(key);
                            out.push((self.seen(t), false));
                        }
                        Outcome::Tasks(out)
                    }
                    Err(e) => Self::error(e),
                }
            }
            Op::Ack { lease } => match self.lease(*lease) {
                None => Outcome::Nothing,
                Some((id, lease_id)) => match store.ack(id, lease_id, b"r".to_vec(), now).await {
                    Ok(t) => Outcome::Task(self.seen(&t)),
                    Err(e) => Self::error(e),
                },
            },
            Op::AckMany { leases } => {
                let items: Vec<AckItem> = leases
                    .iter()
                    .filter_map(|n| self.lease(*n))
                    .map(|(id, lease_id)| AckItem { id, lease_id, result: b"m".to_vec() })
                    .collect();
                if items.is_empty() {
                    return Outcome::Nothing;
                }
                match store.ack_many(items, now).await {
                    Ok(results) => Outcome::Many(
                        results
                            .into_iter()
                            .map(|r| match r {
                                Ok(t) => Outcome::Task(self.seen(&t)),
                                Err(e) => Self::error(e),
                            })
                            .collect(),
                    ),
                    Err(e) => Self::error(e),
                }
            }
            Op::Nack { lease, retry_after, no_retry, jitter } => match self.lease(*lease) {
                None => Outcome::Nothing,
                Some((id, lease_id)) => {
                    let spec = NackSpec {
                        error: "boom".into(),
                        retry_after: *retry_after,
                        no_retry: *no_retry,
                        jitter_sample: *jitter,
                    };
                    match store.nack(id, lease_id, spec, now).await {
                        Ok(t) => Outcome::Task(self.seen(&t)),
                        Err(e) => Self::error(e),
                    }
                }
            },
            Op::Extend { lease, by } => match self.lease(*lease) {
                None => Outcome::Nothing,
                Some((id, lease_id)) => match store.extend(id, lease_id, *by, now).await {
                    Ok(deadline) => Outcome::Deadline(deadline),
                    Err(e) => Self::error(e),
                },
            },
            Op::Cancel { task } => match self.tasks.get(*task).copied() {
                None => Outcome::Nothing,
                Some(id) => match store.cancel(id, now).await {
                    Ok(t) => Outcome::Task(self.seen(&t)),
                    Err(e) => Self::error(e),
                },
            },
            Op::Get { task } => match self.tasks.get(*task).copied() {
                None => Outcome::Nothing,
                Some(id) => match store.get(id).await {
                    Ok(t) => Outcome::Task(self.seen(&t)),
                    Err(e) => Self::error(e),
                },
            },
            Op::Advance { .. } => {
                let expired = store.requeue_expired(now).await.unwrap();
                let promoted = store.promote_due(now).await.unwrap();
                let purged = store.purge_finished(now).await.unwrap();
                Outcome::Many(vec![self.swept(expired), self.swept(promoted), self.swept(purged)])
            }
            Op::Pause { queue, paused } => match store.set_paused(QUEUES[*queue], *paused).await {
                Ok(changed) => Outcome::Changed(changed),
                Err(e) => Self::error(e),
            },
            Op::Redrive { queue, tasks, limit } => {
                let ids: Vec<TaskId> = tasks.iter().filter_map(|n| self.tasks.get(*n).copied()).collect();
                match store.redrive(QUEUES[*queue], &ids, *limit, now).await {
                    Ok(swept) => self.swept(swept),
                    Err(e) => Self::error(e),
                }
            }
            Op::PurgeQueue { queue, states } => {
                let states: Vec<TaskState> = states.iter().map(|i| STATES[*i]).collect();
                match store.purge_queue(QUEUES[*queue], &states, now).await {
                    Ok(n) => Outcome::Count(n),
                    Err(e) => Self::error(e),
                }
            }
            Op::Stats { queue } => match store.queue_stats(QUEUES[*queue]).await {
                Ok(stats) => Outcome::Stats(stats),
                Err(e) => Self::error(e),
            },
            Op::List { queue, state, after, limit } => {
                let after = after.and_then(|n| self.tasks.get(n).copied());
                match store.list_tasks(QUEUES[*queue], STATES[*state], after, *limit).await {
                    Ok(tasks) => Outcome::Tasks(tasks.iter().map(|t| (self.seen(t), false)).collect()),
                    Err(e) => Self::error(e),
                }
            }
        }
    }

    /// Every task this run created, as the store has it now.
    async fn final_state(&mut self) -> Vec<Outcome> {
        let mut out = Vec::new();
        for id in self.tasks.clone() {
            out.push(match self.store.get(id).await {
                Ok(t) => Outcome::Task(self.seen(&t)),
                Err(e) => Self::error(e),
            });
        }
        for queue in QUEUES {
            out.push(Outcome::Stats(self.store.queue_stats(queue).await.unwrap()));
        }
        out.push(Outcome::Names(self.store.queue_names().await.unwrap()));
        out
    }
}

/// Replays `ops` against every store; the first divergence from the memory
/// store fails the case, naming the step.
async fn replay(ops: &[Op], redis: &RedisServer) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    flush(redis);
    let redis_store = RedisStore::connect(&redis.url(), policies(), false).await.unwrap();
    let mut runs = [
        ("memory", Run::new(Arc::new(MemoryStore::new(policies())))),
        ("embedded", Run::new(Arc::new(EmbeddedStore::open(dir.path(), policies()).unwrap()))),
        ("redis", Run::new(Arc::new(redis_store))),
    ];
    let mut now = START;
    for (step, op) in ops.iter().enumerate() {
        // Every step at its own millisecond: task ids (ULIDs) then sort by
        // creation in every store, so ties (tasks due at the same time) break
        // the same way everywhere; within one millisecond their order is the
        // ids' random bits, which differ from store to store.
        now += 1;
        if let Op::Advance { by } = op {
            now += by;
        }
        let mut outcomes = Vec::new();
        for (_, run) in runs.iter_mut() {
            outcomes.push(run.apply(op, now).await);
        }
        for (i, (name, _)) in runs.iter().enumerate().skip(1) {
            prop_assert_eq!(&outcomes[0], &outcomes[i], "step {} ({:?}): memory vs {}", step, op, name);
        }
    }
    let mut finals = Vec::new();
    for (_, run) in runs.iter_mut() {
        finals.push(run.final_state().await);
    }
    for (i, (name, _)) in runs.iter().enumerate().skip(1) {
        prop_assert_eq!(&finals[0], &finals[i], "final state: memory vs {}", name);
    }
    Ok(())
}

/// Empties the Redis server between cases (each case starts from nothing).
fn flush(redis: &RedisServer) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    redis::cmd("FLUSHALL").query::<()>(&mut conn).unwrap();
}

#[test]
fn every_store_follows_the_reference_through_random_operation_sequences() {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut runner = TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() });
    let ops = prop::collection::vec(op(), 1..MAX_OPS);
    let result = runner.run(&ops, |ops| rt.block_on(replay(&ops, &server)));
    if let Err(e) = result {
        panic!("{e}");
    }
}
