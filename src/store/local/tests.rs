//! The barrier of [`super::TableStore`]: answers that change nothing wait for
//! the commits submitted before them. The commits here are held open by the
//! test, so the order is checked without timing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;

use super::*;
use crate::core::queue::{Policies, QueuePolicy};
use crate::core::task::NewTask;

/// Commits that finish only when the test says so.
struct Held {
    log: Arc<CommitLog>,
    /// How many commits were submitted so far.
    submitted: Mutex<usize>,
    /// The outcomes of the commits not finished yet, in order.
    pending: Mutex<Vec<Outcome>>,
}

impl Held {
    /// Finishes every pending commit with `outcome` (a failure, as a real
    /// store does, puts the store out first).
    fn finish(&self, outcome: Result<(), String>) {
        if let Err(e) = &outcome {
            self.log.fail(e.clone());
        }
        for tx in self.pending.lock().unwrap().drain(..) {
            let _ = tx.send(outcome.clone());
        }
    }
}

impl Persist for Held {
    const TRACKS_CHANGES: bool = true;

    fn check(&self, _table: &mut Table) -> Result<(), StoreError> {
        self.log.check()
    }

    fn submit(&self, _changes: Changes) -> Result<Durable, StoreError> {
        let (tx, durable) = self.log.submit();
        *self.submitted.lock().unwrap() += 1;
        self.pending.lock().unwrap().push(tx);
        Ok(durable)
    }

    fn barrier(&self) -> Result<Option<Durable>, StoreError> {
        self.log.barrier()
    }

    fn commits(&self) -> Option<u64> {
        None
    }
}

fn held_store() -> Arc<TableStore<Held>> {
    let log = CommitLog::new("test store");
    let queues: QueueRegistry = Arc::new(Policies::new(BTreeMap::new(), QueuePolicy::default())).into();
    let table = TableStore::<Held>::table_for(&queues);
    let persist = Held { log, submitted: Mutex::new(0), pending: Mutex::new(Vec::new()) };
    Arc::new(TableStore::with(queues, table, persist))
}

fn replayable() -> NewTask {
    NewTask {
        depends_on: Vec::new(),
        on_dependency_failure: Default::default(),
        expire_time: None,
        queue: "q".into(),
        kind: "k".into(),
        payload: b"p".to_vec(),
        content_type: String::new(),
        priority: 0,
        headers: BTreeMap::new(),
        max_attempts: 3,
        scheduled_time: 0,
        dedup_key: "d".into(),
        request_id: "r".into(),
        concurrency_key: String::new(),
        semaphores: Vec::new(),
    }
}

/// Starts the first enqueue and returns once its commit is submitted (and held).
async fn first_enqueue_held(
    store: &Arc<TableStore<Held>>,
) -> tokio::task::JoinHandle<Result<Vec<Enqueued>, StoreError>> {
    let s = store.clone();
    let first = tokio::spawn(async move { s.enqueue(vec![replayable()], 1).await });
    for _ in 0..1000 {
        if *store.persist.submitted.lock().unwrap() > 0 {
            return first;
        }
        tokio::task::yield_now().await;
    }
    panic!("the first enqueue never submitted its commit");
}

#[tokio::test]
async fn a_replay_is_not_answered_before_the_first_commit_is_durable() {
    let store = held_store();
    let first = first_enqueue_held(&store).await;
    let mut replay = Box::pin(store.enqueue(vec![replayable()], 2));
    assert!((&mut replay).now_or_never().is_none(), "the replay answered while the first commit was pending");
    let id = store.table().request("q", "r").expect("the first task is in the table");
    let mut read = Box::pin(store.get(id));
    assert!((&mut read).now_or_never().is_none(), "get answered while the task's commit was pending");

    store.persist.finish(Ok(()));
    let replayed = tokio::time::timeout(Duration::from_secs(5), replay).await.unwrap().unwrap();
    assert!(replayed[0].deduplicated);
    let got = tokio::time::timeout(Duration::from_secs(5), read).await.unwrap().unwrap();
    assert_eq!(got.id, replayed[0].task.id);
    assert!(!first.await.unwrap().unwrap()[0].deduplicated);
    assert_eq!(*store.persist.submitted.lock().unwrap(), 1, "the replay committed nothing");
}

#[tokio::test]
async fn after_a_failed_commit_a_replay_and_a_get_are_unavailable() {
    let store = held_store();
    let first = first_enqueue_held(&store).await;
    let replay = store.enqueue(vec![replayable()], 2);
    let id = store.table().request("q", "r").expect("the first task is in the table");
    let read = store.get(id);
    store.persist.finish(Err("disk on fire".into()));
    assert!(matches!(first.await.unwrap(), Err(StoreError::Unavailable(_))));
    assert!(matches!(replay.await, Err(StoreError::Unavailable(_))), "the replay saw undurable state");
    assert!(matches!(read.await, Err(StoreError::Unavailable(_))), "get saw undurable state");
    assert!(
        matches!(store.get(id).await, Err(StoreError::Unavailable(_))),
        "get skips the failed-store check"
    );
}

#[tokio::test]
async fn with_nothing_pending_a_no_change_answer_does_not_wait() {
    let store = held_store();
    let first = first_enqueue_held(&store).await;
    store.persist.finish(Ok(()));
    first.await.unwrap().unwrap();
    let replay = store.enqueue(vec![replayable()], 2).now_or_never().expect("nothing to wait for");
    assert!(replay.unwrap()[0].deduplicated);
}

#[tokio::test]
async fn once_recovered_the_store_serves_and_a_barrier_does_not_wait_for_the_failed_commit() {
    let store = held_store();
    let first = first_enqueue_held(&store).await;
    store.persist.finish(Err("disk full".into()));
    assert!(matches!(first.await.unwrap(), Err(StoreError::Unavailable(_))));
    assert!(matches!(store.get(TaskId(42)).await, Err(StoreError::Unavailable(_))), "out until recovered");
    // What the embedded store does once its table is reloaded from disk.
    store.persist.log.resume();
    let got = store.get(TaskId(42)).now_or_never().expect("nothing pending since the recovery");
    assert!(matches!(got, Err(StoreError::TaskNotFound(_))), "{got:?}");
}

fn lease_one() -> LeaseSpec {
    LeaseSpec {
        queues: vec![("q".into(), 1)],
        max_tasks: 1,
        max_bytes: 1 << 20,
        lease_duration: Some(60_000),
        worker_id: "w".into(),
    }
}

fn plain(i: usize) -> NewTask {
    NewTask { dedup_key: String::new(), request_id: format!("r{i}"), ..replayable() }
}

#[tokio::test]
async fn a_lease_waits_for_the_commits_before_it_but_not_for_its_own_unless_it_reserves_lease_ids() {
    let store = held_store();
    let s = store.clone();
    let enqueue = tokio::spawn(async move { s.enqueue((0..3).map(plain).collect(), 1).await });
    while *store.persist.submitted.lock().unwrap() == 0 {
        tokio::task::yield_now().await;
    }
    // The tasks' own commit is pending: a lease must not hand them out yet.
    let mut first = Box::pin(store.lease(lease_one(), 2));
    assert!((&mut first).now_or_never().is_none(), "a lease answered before the enqueue was durable");
    let held = std::mem::take(&mut *store.persist.pending.lock().unwrap());
    assert_eq!(held.len(), 2, "the enqueue's and the lease's commits");
    let mut held = held.into_iter();
    let _ = held.next().unwrap().send(Ok(()));
    enqueue.await.unwrap().unwrap();
    // The first lease reserved a block of lease ids: it waits for its own commit.
    assert!((&mut first).now_or_never().is_none(), "the lease that reserves ids answered before its commit");
    let _ = held.next().unwrap().send(Ok(()));
    assert_eq!(first.await.unwrap().len(), 1);
    // The next one is answered while its own commit is still pending...
    let second = store.lease(lease_one(), 3).now_or_never().expect("a lease waits only for earlier commits");
    assert_eq!(second.unwrap().len(), 1);
    assert_eq!(*store.persist.submitted.lock().unwrap(), 3, "its changes were still submitted");
    // ...and what comes after it waits for that commit as for any other.
    let mut read = Box::pin(store.get(TaskId(42)));
    assert!((&mut read).now_or_never().is_none(), "a read after the lease skipped its commit");
    store.persist.finish(Ok(()));
}
