//! The embedded store's group commit: concurrent writes share one fsync
//! (README, Durability). One test in its own binary, because the commit
//! counter it reads is process-wide.

use std::collections::BTreeMap;
use std::sync::Arc;

use taskbroker::core::queue::{Policies, QueuePolicy};
use taskbroker::core::task::{NewTask, TaskState};
use taskbroker::store::embedded::EmbeddedStore;
use taskbroker::store::Store;

const NOW: u64 = 1_767_225_600_000;
/// Writers at once.
const WRITERS: usize = 64;

fn task(i: usize) -> NewTask {
    NewTask {
        depends_on: Vec::new(),
        on_dependency_failure: Default::default(),
        expire_time: None,
        queue: "gc".into(),
        kind: format!("k{i}"),
        payload: vec![i as u8; 100],
        content_type: String::new(),
        priority: 0,
        headers: BTreeMap::new(),
        max_attempts: 3,
        scheduled_time: 0,
        dedup_key: String::new(),
        request_id: String::new(),
        concurrency_key: String::new(),
        semaphores: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_share_commits_and_each_is_durable_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let policies = Arc::new(Policies::new(BTreeMap::new(), QueuePolicy::default()));
    let store = Arc::new(EmbeddedStore::open(dir.path(), policies.clone()).unwrap());

    let before = store.commits().expect("the embedded store counts its commits");
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(
                async move { store.enqueue(vec![task(i)], NOW).await.unwrap().pop().unwrap().task.id },
            )
        })
        .collect();
    let mut ids = Vec::new();
    for w in writers {
        ids.push(w.await.unwrap());
    }
    let commits = store.commits().unwrap() - before;
    eprintln!("{WRITERS} concurrent single-task enqueues took {commits} commits");
    // One commit (one fsync) per call would be 64; sharing brings it far
    // below. The bound leaves room for a slow, busy machine.
    assert!(commits <= WRITERS as u64 / 2, "{commits} commits for {WRITERS} concurrent enqueues");

    // Every acknowledged enqueue is on disk.
    drop(store);
    let reopened = EmbeddedStore::open(dir.path(), policies).unwrap();
    for id in ids {
        assert_eq!(reopened.get(id).await.unwrap().state, TaskState::Ready);
    }
}
