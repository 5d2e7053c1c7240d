//! The log under the store: torn tails, damage, compaction, and the import
//! of a redb database, each read back by opening the store again.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;
use crate::core::queue::{Policies, QueuePolicy};
use crate::core::task::{NewTask, Task, TaskId};
use crate::store::{AckItem, LeaseSpec, Store};

fn queues() -> QueueRegistry {
    Arc::new(Policies::new(BTreeMap::new(), QueuePolicy::default())).into()
}

fn new_task(payload: &str) -> NewTask {
    NewTask {
        queue: "q".into(),
        kind: "k".into(),
        payload: payload.as_bytes().to_vec(),
        content_type: String::new(),
        priority: 0,
        headers: BTreeMap::new(),
        max_attempts: 3,
        scheduled_time: 0,
        dedup_key: String::new(),
        request_id: String::new(),
        concurrency_key: String::new(),
        semaphores: Vec::new(),
        depends_on: Vec::new(),
        on_dependency_failure: Default::default(),
        expire_time: None,
    }
}

/// Enqueues one task per call (one commit each); their ids.
async fn enqueue_each(store: &EmbeddedStore, payloads: &[String]) -> Vec<TaskId> {
    let mut ids = Vec::new();
    for p in payloads {
        ids.push(store.enqueue(vec![new_task(p)], 1).await.unwrap().remove(0).task.id);
    }
    ids
}

fn payloads(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("task-{i}")).collect()
}

fn files_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .collect();
    found.sort();
    found
}

async fn get_all(store: &EmbeddedStore, ids: &[TaskId]) -> Vec<Option<Task>> {
    let mut tasks = Vec::new();
    for id in ids {
        tasks.push(store.get(*id).await.ok());
    }
    tasks
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_and_every_commit_before_it_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let store = EmbeddedStore::open(dir.path(), queues()).unwrap();
        enqueue_each(&store, &payloads(3)).await
    };
    let segment = files_named(dir.path(), "log-").pop().unwrap();
    let bytes = fs::read(&segment).unwrap();
    let frame::End::Zeros { at: len } = frame::read(&bytes).1 else { panic!("the log is zero-filled ahead") };
    // A crash in the middle of the last write: its frame is cut short.
    OpenOptions::new().write(true).open(&segment).unwrap().set_len(len as u64 - 3).unwrap();

    let store = EmbeddedStore::open(dir.path(), queues()).unwrap();
    let back = get_all(&store, &ids).await;
    assert!(back[0].is_some() && back[1].is_some(), "the commits before the torn one are kept");
    assert!(back[2].is_none(), "the torn commit is gone");
    // The cut is made on disk: what is written next reads back after it.
    let more = enqueue_each(&store, &payloads(1)).await;
    drop(store);
    let store = EmbeddedStore::open(dir.path(), queues()).unwrap();
    let back = get_all(&store, &[ids[0], ids[1], more[0]]).await;
    assert!(back.iter().all(Option::is_some), "{back:?}");
}

#[tokio::test]
async fn garbage_after_the_last_frame_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let store = EmbeddedStore::open(dir.path(), queues()).unwrap();
        enqueue_each(&store, &payloads(3)).await
    };
    let segment = files_named(dir.path(), "log-").pop().unwrap();
    OpenOptions::new().append(true).open(&segment).unwrap().write_all(&[7; 40]).unwrap();
    let store = EmbeddedStore::open(dir.path(), queues()).unwrap();
    assert!(get_all(&store, &ids).await.iter().all(Option::is_some));
}

/// Writes segment `n` of `files` holding one frame per entry.
fn write_segment(files: &files::Files, n: u64, entries: &[entry::Entry<'_>]) -> PathBuf {
    let mut bytes = Vec::new();
    for e in entries {
        let start = frame::begin(&mut bytes);
        entry::push(&mut bytes, e);
        frame::finish(&mut bytes, start);
    }
    let path = files.segment(n);
    fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn damage_before_the_newest_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let files = files::Files::open(dir.path()).unwrap();
    let first = write_segment(&files, 1, &[entry::Entry::Task(1, b"a"), entry::Entry::Task(2, b"b")]);
    write_segment(&files, 2, &[entry::Entry::Task(3, b"c")]);
    assert_eq!(files.load().unwrap().fold().unwrap().tasks().count(), 3, "whole segments load");

    let mut bytes = fs::read(&first).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    fs::write(&first, bytes).unwrap();
    match files.load().and_then(|loaded| loaded.fold().map(|f| f.tasks().count())) {
        Err(files::LoadError::Corrupt { path, why }) => {
            assert_eq!(path, first);
            assert!(why.contains("checksum") && why.contains("before the newest segment"), "{why}");
        }
        Err(e) => panic!("expected a corrupt segment, got {e}"),
        Ok(_) => panic!("a damaged segment before the newest one loaded"),
    }
}

#[test]
fn a_missing_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let files = files::Files::open(dir.path()).unwrap();
    write_segment(&files, 1, &[entry::Entry::Task(1, b"a")]);
    let third = write_segment(&files, 3, &[entry::Entry::Task(3, b"c")]);
    match files.load().map(|loaded| loaded.segments) {
        Err(files::LoadError::Corrupt { path, why }) => {
            assert_eq!((path, why.as_str()), (third, "segment 2 is missing"));
        }
        Err(e) => panic!("expected a missing segment, got {e}"),
        Ok(_) => panic!("a log with a gap loaded"),
    }
}

#[tokio::test]
async fn compaction_folds_the_log_into_a_snapshot_that_reopens_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, before) = {
        let store = EmbeddedStore::open_with(dir.path(), queues(), 4096).unwrap();
        let ids = enqueue_each(&store, &payloads(300)).await;
        let spec = LeaseSpec {
            queues: vec![("q".into(), 100)],
            max_tasks: 100,
            max_bytes: 1 << 20,
            lease_duration: Some(60_000),
            worker_id: "w".into(),
        };
        let leased = store.lease(spec, 2).await.unwrap();
        let acks = leased
            .iter()
            .take(60)
            .map(|t| AckItem { id: t.id, lease_id: t.lease.as_ref().unwrap().id, result: b"done".to_vec() })
            .collect();
        store.ack_many(acks, 3).await.unwrap();
        store.set_paused("q", true).await.unwrap();
        let before = get_all(&store, &ids).await;
        (ids, before)
    };
    // Dropping the store waits for the compactor.
    let snapshots = files_named(dir.path(), "snap-");
    assert_eq!(snapshots.len(), 1, "one snapshot: {snapshots:?}");
    let segments = files_named(dir.path(), "log-");
    assert!(segments.len() <= 3, "the log was folded away: {} segments left", segments.len());

    let store = EmbeddedStore::open_with(dir.path(), queues(), 4096).unwrap();
    assert_eq!(get_all(&store, &ids).await, before, "the same tasks, states and leases after reopening");
    assert!(store.queue_stats("q").await.unwrap().paused, "the pause is kept");
    let leased = store
        .lease(
            LeaseSpec {
                queues: vec![("q".into(), 1)],
                max_tasks: 1,
                max_bytes: 1 << 20,
                lease_duration: None,
                worker_id: "w".into(),
            },
            4,
        )
        .await
        .unwrap();
    assert!(leased.is_empty(), "a paused queue delivers nothing");
}

#[tokio::test]
async fn a_redb_database_of_the_store_before_is_imported_once() {
    use redb::{Database, TableDefinition};
    let dir = tempfile::tempdir().unwrap();
    let record = include_bytes!("testdata/task-v3.bin");
    let task = stored::decode(record).unwrap().task;
    {
        let db = Database::create(dir.path().join("tasks.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut tasks = txn.open_table(TableDefinition::<u128, &[u8]>::new("tasks")).unwrap();
            tasks.insert(task.id.0, record.as_slice()).unwrap();
            let mut meta = txn.open_table(TableDefinition::<&str, u64>::new("meta")).unwrap();
            meta.insert("next_lease", 500).unwrap();
        }
        txn.commit().unwrap();
    }
    {
        let store = EmbeddedStore::open(dir.path(), queues()).unwrap();
        assert_eq!(store.get(task.id).await.unwrap(), task);
    }
    assert!(!dir.path().join("tasks.redb").exists());
    assert!(dir.path().join("tasks.redb.imported").is_file(), "the database is kept aside");
    let store = EmbeddedStore::open(dir.path(), queues()).unwrap();
    assert_eq!(store.get(task.id).await.unwrap(), task, "read from the log from then on");
}

#[tokio::test]
async fn a_second_store_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedStore::open(dir.path(), queues()).unwrap();
    match EmbeddedStore::open(dir.path(), queues()) {
        Err(OpenError::Corrupt { reason, .. }) => assert!(reason.contains("in use"), "{reason}"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("two stores opened the same directory"),
    }
}

mod crash_points {
    //! Any cut of the log (a crash at any byte) loads as exactly the state
    //! after the last whole frame before the cut.
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::super::{entry, files, frame};

    /// One group commit: tasks put (id, value byte) or removed.
    fn groups() -> impl Strategy<Value = Vec<Vec<(u8, Option<u8>)>>> {
        prop::collection::vec(prop::collection::vec((0u8..16, prop::option::of(any::<u8>())), 1..6), 1..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn a_cut_anywhere_loads_the_state_of_the_whole_frames_before_it(
            groups in groups(),
            cut in any::<prop::sample::Index>(),
            zeros in prop_oneof![Just(0usize), 1usize..64],
        ) {
            let dir = tempfile::tempdir().unwrap();
            let files = files::Files::open(dir.path()).unwrap();
            let mut bytes = Vec::new();
            // The state after each whole frame, and where each frame ends.
            let mut states = vec![(0usize, BTreeMap::new())];
            let mut state = BTreeMap::new();
            for group in &groups {
                let start = frame::begin(&mut bytes);
                for (id, value) in group {
                    let id = u128::from(*id);
                    match value {
                        Some(v) => {
                            entry::push(&mut bytes, &entry::Entry::Task(id, &[*v]));
                            state.insert(id, vec![*v]);
                        }
                        None => {
                            entry::push(&mut bytes, &entry::Entry::Removed(id));
                            state.remove(&id);
                        }
                    }
                }
                frame::finish(&mut bytes, start);
                states.push((bytes.len(), state.clone()));
            }
            let cut = cut.index(bytes.len() + 1);
            // The zero fill ahead of the writer may follow whatever reached the disk.
            let mut on_disk = bytes[..cut].to_vec();
            on_disk.resize(cut + zeros, 0);
            std::fs::write(files.segment(1), &on_disk).unwrap();

            let loaded = files.load().unwrap();
            let folded = loaded.fold().unwrap();
            let got: BTreeMap<u128, Vec<u8>> = folded.tasks().map(|(id, v)| (id, v.to_vec())).collect();
            let (end, expected) = states.iter().rev().find(|(end, _)| *end <= cut).unwrap();
            prop_assert_eq!(&got, expected);
            prop_assert_eq!(loaded.segments, vec![(1, *end as u64)], "the log ends after its last whole frame");
            // A torn frame is cut off on disk; zeros after whole frames are kept.
            let left = std::fs::read(files.segment(1)).unwrap();
            prop_assert_eq!(&left[..*end], &bytes[..*end]);
            prop_assert!(left[*end..].iter().all(|b| *b == 0), "only zeros after the log");
            prop_assert!(left.len() == *end || *end == cut, "a torn tail is cut off");
        }
    }
}

fn lease_spec() -> LeaseSpec {
    LeaseSpec {
        queues: vec![("q".into(), 1)],
        max_tasks: 1,
        max_bytes: 1 << 20,
        lease_duration: Some(60_000),
        worker_id: "w".into(),
    }
}

/// A lease is not fsynced on its own; a crash may lose its write. The task
/// then comes back READY with the attempt count it had, and the lease ids
/// handed out before (reserved in durable blocks) never come back.
#[tokio::test]
async fn a_lease_whose_write_is_lost_comes_back_under_a_new_lease_id() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, lost) = {
        let store = EmbeddedStore::open(dir.path(), queues()).unwrap();
        let ids = enqueue_each(&store, &payloads(2)).await;
        // The first lease reserves a block of ids (its own commit, durable).
        store.lease(lease_spec(), 2).await.unwrap();
        let lost = store.lease(lease_spec(), 3).await.unwrap().remove(0);
        (ids, lost)
    };
    // The second lease's write is the log's last frame: the crash loses it.
    let segment = files_named(dir.path(), "log-").pop().unwrap();
    let bytes = fs::read(&segment).unwrap();
    let last = *frame::read(&bytes).0.last().unwrap();
    let at = last.as_ptr() as usize - bytes.as_ptr() as usize - frame::HEADER;
    OpenOptions::new().write(true).open(&segment).unwrap().set_len(at as u64).unwrap();

    let store = EmbeddedStore::open(dir.path(), queues()).unwrap();
    let back = store.get(lost.id).await.unwrap();
    assert_eq!(
        (back.state, back.attempt),
        (crate::core::task::TaskState::Ready, 0),
        "the lost lease is forgotten"
    );
    assert!(ids.contains(&lost.id));
    let again = store.lease(lease_spec(), 4).await.unwrap().remove(0);
    assert_eq!(again.id, lost.id);
    let (old, new) = (lost.lease.unwrap().id, again.lease.as_ref().unwrap().id);
    assert!(new > old, "lease id {new} after the crash, {old} handed out before it");
    let stale = store.ack(lost.id, old, Vec::new(), 5).await;
    assert!(stale.is_err(), "the lost lease's id settled the new delivery: {stale:?}");
}
