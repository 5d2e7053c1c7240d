//! The embedded store's record format: private and versioned, so that the
//! domain type ([`Task`]) can change without making existing data files read
//! as corrupt.
//!
//! A value is one format byte and the postcard encoding of that format's
//! record. [`decode`] reads every format there has been and migrates it to
//! today's [`Task`]. Adding a task field: add a format with the field, make
//! it [`CURRENT`], and let older records decode with the field's default. A
//! checked-in record of each format (`testdata/task-v1.bin`,
//! `testdata/task-v2.bin`) is decoded by a test, so an accidental change of
//! a layout fails the build's tests.
//!
//! Format 2 is format 1's record followed by [`FlowV2`] (the flow-control
//! fields). [`encode`] writes format 2 only for a task that has one of those
//! fields set, and format 1, byte for byte as before, for every other task:
//! the common task costs nothing more, and a data file written without flow
//! control stays readable by the taskbroker before it.
//!
//! Format 3 is format 2 followed by [`WorkflowV3`] (dependencies and the
//! deadline), written only for a task that has one of those; a WAITING task
//! always has dependencies, so the WAITING state ([`StateV1::Waiting`], a
//! variant added after the others) only ever appears in format 3 records.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::stats::QueueTotals;
use crate::core::task::{DependencyFailure, Lease, Task, TaskId, TaskState};

/// The newest format (written for tasks with dependencies or a deadline).
pub const CURRENT: u8 = 3;

/// Format 3's addition after the V2 record. Never change it; add a V4.
#[derive(Serialize, Deserialize)]
struct WorkflowV3 {
    depends_on: Vec<u128>,
    pending_dependencies: Vec<u128>,
    /// 0: cancel, 1: run.
    on_dependency_failure: u8,
    expire_time: Option<u64>,
}

/// Format 2's addition after the V1 record. Never change it; add a V3.
#[derive(Serialize, Deserialize)]
struct FlowV2 {
    concurrency_key: String,
    semaphores: Vec<String>,
}

/// [`FlowV2`] borrowing from the task.
#[derive(Serialize)]
struct FlowV2Ref<'a> {
    concurrency_key: &'a str,
    semaphores: &'a [String],
}

/// A task as stored, with the table's bookkeeping beside it.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub task: Task,
    /// The task's order of arrival in READY (FIFO within a priority level).
    pub ready_seq: u64,
}

/// Format 1: the field order and types postcard wrote for tasks up to and
/// including this format's introduction. Never change it; add a V2.
#[derive(Serialize, Deserialize)]
struct StoredTaskV1 {
    id: u128,
    queue: String,
    kind: String,
    payload: Vec<u8>,
    content_type: String,
    priority: u8,
    headers: BTreeMap<String, String>,
    state: StateV1,
    attempt: u32,
    max_attempts: u32,
    dedup_key: String,
    request_id: String,
    create_time: u64,
    update_time: u64,
    scheduled_time: u64,
    result: Vec<u8>,
    last_error: String,
    lease: Option<LeaseV1>,
    ready_seq: u64,
}

/// Task states by their V1 number (postcard writes the variant index).
#[derive(Serialize, Deserialize)]
enum StateV1 {
    Scheduled,
    Ready,
    Leased,
    Succeeded,
    Dead,
    Canceled,
    /// Only in format 3 records (see the module docs).
    Waiting,
}

#[derive(Serialize, Deserialize)]
struct LeaseV1 {
    id: u64,
    expire_time: u64,
    worker_id: String,
}

/// [`StoredTaskV1`] borrowing from the task, for writing without a copy
/// (postcard writes `&str`/`&[u8]` exactly as `String`/`Vec<u8>`; the
/// byte-for-byte test below holds the two together).
#[derive(Serialize)]
struct StoredTaskV1Ref<'a> {
    id: u128,
    queue: &'a str,
    kind: &'a str,
    payload: &'a [u8],
    content_type: &'a str,
    priority: u8,
    headers: &'a BTreeMap<String, String>,
    state: StateV1,
    attempt: u32,
    max_attempts: u32,
    dedup_key: &'a str,
    request_id: &'a str,
    create_time: u64,
    update_time: u64,
    scheduled_time: u64,
    result: &'a [u8],
    last_error: &'a str,
    lease: Option<LeaseV1Ref<'a>>,
    ready_seq: u64,
}

#[derive(Serialize)]
struct LeaseV1Ref<'a> {
    id: u64,
    expire_time: u64,
    worker_id: &'a str,
}

impl From<TaskState> for StateV1 {
    fn from(s: TaskState) -> Self {
        match s {
            TaskState::Scheduled => StateV1::Scheduled,
            TaskState::Ready => StateV1::Ready,
            TaskState::Leased => StateV1::Leased,
            TaskState::Succeeded => StateV1::Succeeded,
            TaskState::Dead => StateV1::Dead,
            TaskState::Canceled => StateV1::Canceled,
            TaskState::Waiting => StateV1::Waiting,
        }
    }
}

impl From<StateV1> for TaskState {
    fn from(s: StateV1) -> Self {
        match s {
            StateV1::Scheduled => TaskState::Scheduled,
            StateV1::Ready => TaskState::Ready,
            StateV1::Leased => TaskState::Leased,
            StateV1::Succeeded => TaskState::Succeeded,
            StateV1::Dead => TaskState::Dead,
            StateV1::Canceled => TaskState::Canceled,
            StateV1::Waiting => TaskState::Waiting,
        }
    }
}

/// The value to store for a task (the writer uses [`encode_into`]).
#[cfg(test)]
pub fn encode(task: &Task, ready_seq: u64) -> Vec<u8> {
    encode_into(task, ready_seq, Vec::new())
}

/// [`encode`] into `out`, emptied first: a writer reuses one buffer for
/// every record instead of allocating one each.
pub fn encode_into(task: &Task, ready_seq: u64, mut out: Vec<u8>) -> Vec<u8> {
    out.clear();
    let Task {
        id,
        queue,
        kind,
        payload,
        content_type,
        priority,
        headers,
        state,
        attempt,
        max_attempts,
        dedup_key,
        request_id,
        create_time,
        update_time,
        scheduled_time,
        result,
        last_error,
        lease,
        concurrency_key,
        semaphores,
        depends_on,
        pending_dependencies,
        on_dependency_failure,
        expire_time,
    } = task;
    let record = StoredTaskV1Ref {
        id: id.0,
        queue,
        kind,
        payload,
        content_type,
        priority: *priority,
        headers,
        state: (*state).into(),
        attempt: *attempt,
        max_attempts: *max_attempts,
        dedup_key,
        request_id,
        create_time: *create_time,
        update_time: *update_time,
        scheduled_time: *scheduled_time,
        result,
        last_error,
        lease: lease.as_ref().map(|l| LeaseV1Ref {
            id: l.id,
            expire_time: l.expire_time,
            worker_id: &l.worker_id,
        }),
        ready_seq,
    };
    let workflow = !depends_on.is_empty() || expire_time.is_some();
    // Encoding plain data into a Vec cannot fail.
    if !workflow && concurrency_key.is_empty() && semaphores.is_empty() {
        out.push(1);
        return postcard::to_extend(&record, out).unwrap_or_default();
    }
    out.push(if workflow { CURRENT } else { 2 });
    let out = postcard::to_extend(&record, out).unwrap_or_default();
    let out = postcard::to_extend(&FlowV2Ref { concurrency_key, semaphores }, out).unwrap_or_default();
    if !workflow {
        return out;
    }
    let v3 = WorkflowV3 {
        depends_on: depends_on.iter().map(|d| d.0).collect(),
        pending_dependencies: pending_dependencies.iter().map(|d| d.0).collect(),
        on_dependency_failure: match on_dependency_failure {
            DependencyFailure::Cancel => 0,
            DependencyFailure::Run => 1,
        },
        expire_time: *expire_time,
    };
    postcard::to_extend(&v3, out).unwrap_or_default()
}

/// A stored value of any format, as today's task.
pub fn decode(bytes: &[u8]) -> Result<Stored, String> {
    match bytes.split_first() {
        Some((1, rest)) => postcard::from_bytes::<StoredTaskV1>(rest).map(from_v1).map_err(|e| e.to_string()),
        Some((format @ (2 | 3), rest)) => {
            let (v1, rest) = postcard::take_from_bytes::<StoredTaskV1>(rest).map_err(|e| e.to_string())?;
            let (flow, rest) = postcard::take_from_bytes::<FlowV2>(rest).map_err(|e| e.to_string())?;
            let mut stored = from_v1(v1);
            stored.task.concurrency_key = flow.concurrency_key;
            stored.task.semaphores = flow.semaphores;
            if *format == 3 {
                let w = postcard::from_bytes::<WorkflowV3>(rest).map_err(|e| e.to_string())?;
                let t = &mut stored.task;
                t.depends_on = w.depends_on.into_iter().map(TaskId).collect();
                t.pending_dependencies = w.pending_dependencies.into_iter().map(TaskId).collect();
                t.on_dependency_failure = match w.on_dependency_failure {
                    0 => DependencyFailure::Cancel,
                    1 => DependencyFailure::Run,
                    n => return Err(format!("unknown dependency failure policy {n}")),
                };
                t.expire_time = w.expire_time;
            } else if !rest.is_empty() {
                return Err("trailing bytes after a format 2 record".into());
            }
            Ok(stored)
        }
        Some((v, _)) => Err(format!("unknown record format {v} (written by a newer taskbroker?)")),
        None => Err("empty record".into()),
    }
}

fn from_v1(r: StoredTaskV1) -> Stored {
    let task = Task {
        id: TaskId(r.id),
        queue: r.queue,
        kind: r.kind,
        payload: r.payload,
        content_type: r.content_type,
        priority: r.priority,
        headers: r.headers,
        state: r.state.into(),
        attempt: r.attempt,
        max_attempts: r.max_attempts,
        dedup_key: r.dedup_key,
        request_id: r.request_id,
        create_time: r.create_time,
        update_time: r.update_time,
        scheduled_time: r.scheduled_time,
        result: r.result,
        last_error: r.last_error,
        lease: r.lease.map(|l| Lease { id: l.id, expire_time: l.expire_time, worker_id: l.worker_id }),
        concurrency_key: String::new(),
        semaphores: Vec::new(),
        depends_on: Vec::new(),
        pending_dependencies: Vec::new(),
        on_dependency_failure: DependencyFailure::Cancel,
        expire_time: None,
    };
    Stored { task, ready_seq: r.ready_seq }
}

/// A queue's totals as stored (format 1): one format byte, then postcard.
#[derive(Serialize, Deserialize)]
struct StoredTotalsV1 {
    enqueued: u64,
    delivered: u64,
    acked: u64,
    nacked: u64,
    dead: u64,
    expired: u64,
}

pub fn encode_totals(t: &QueueTotals) -> Vec<u8> {
    let QueueTotals { enqueued, delivered, acked, nacked, dead, expired } = *t;
    let record = StoredTotalsV1 { enqueued, delivered, acked, nacked, dead, expired };
    postcard::to_extend(&record, vec![1]).unwrap_or_default()
}

pub fn decode_totals(bytes: &[u8]) -> Result<QueueTotals, String> {
    match bytes.split_first() {
        Some((1, rest)) => postcard::from_bytes::<StoredTotalsV1>(rest)
            .map(|r| QueueTotals {
                enqueued: r.enqueued,
                delivered: r.delivered,
                acked: r.acked,
                nacked: r.nacked,
                dead: r.dead,
                expired: r.expired,
            })
            .map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("unknown totals format {v} (written by a newer taskbroker?)")),
        None => Err("empty totals record".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The task in `testdata/task-v1.bin`, written by the broker as it was
    /// when format 1 was current (core::Task postcard-encoded directly).
    fn v1_task() -> Task {
        Task {
            id: TaskId(0x0190_1234_5678_9abc_def0_1234_5678_9abc),
            queue: "emails".into(),
            kind: "email.send".into(),
            payload: b"{\"to\":\"a@b.c\"}".to_vec(),
            content_type: "application/json".into(),
            priority: 7,
            headers: [
                (
                    "traceparent".to_string(),
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
                ),
                ("tenant".to_string(), "acme".to_string()),
            ]
            .into(),
            state: TaskState::Leased,
            attempt: 2,
            max_attempts: 5,
            dedup_key: "d-1".into(),
            request_id: "r-1".into(),
            create_time: 1_767_225_600_000,
            update_time: 1_767_225_601_000,
            scheduled_time: 1_767_225_600_500,
            result: b"partial".to_vec(),
            last_error: "boom".into(),
            lease: Some(Lease { id: 4242, expire_time: 1_767_225_631_000, worker_id: "w-7".into() }),
            concurrency_key: String::new(),
            semaphores: Vec::new(),
            depends_on: Vec::new(),
            pending_dependencies: Vec::new(),
            on_dependency_failure: DependencyFailure::Cancel,
            expire_time: None,
        }
    }

    /// The task in `testdata/task-v2.bin` (format 2: with flow-control fields).
    fn v2_task() -> Task {
        Task {
            concurrency_key: "tenant-42".into(),
            semaphores: vec!["gpu".into(), "selenium".into()],
            ..v1_task()
        }
    }

    /// The task in `testdata/task-v3.bin` (format 3: dependencies, deadline).
    fn v3_task() -> Task {
        Task {
            state: TaskState::Waiting,
            lease: None,
            depends_on: vec![TaskId(0x0190_1234_5678_9abc_def0_1234_5678_0001), TaskId(7)],
            pending_dependencies: vec![TaskId(7)],
            on_dependency_failure: DependencyFailure::Run,
            expire_time: Some(1_767_229_200_000),
            ..v2_task()
        }
    }

    #[test]
    fn a_checked_in_v3_record_still_decodes_and_is_written_byte_for_byte() {
        let bytes = include_bytes!("testdata/task-v3.bin");
        assert_eq!(decode(bytes).expect("the V3 record decodes"), Stored { task: v3_task(), ready_seq: 99 });
        assert_eq!(encode(&v3_task(), 99).as_slice(), bytes.as_slice());
        let deadline_only = Task { expire_time: Some(5), ..v1_task() };
        let bytes = encode(&deadline_only, 3);
        assert_eq!(bytes[0], 3);
        assert_eq!(decode(&bytes).unwrap(), Stored { task: deadline_only, ready_seq: 3 });
    }

    #[test]
    fn a_checked_in_v2_record_still_decodes_and_is_written_byte_for_byte() {
        let bytes = include_bytes!("testdata/task-v2.bin");
        assert_eq!(decode(bytes).expect("the V2 record decodes"), Stored { task: v2_task(), ready_seq: 99 });
        assert_eq!(encode(&v2_task(), 99).as_slice(), bytes.as_slice());
        let key_only = Task { semaphores: Vec::new(), ..v2_task() };
        assert_eq!(decode(&encode(&key_only, 3)).unwrap(), Stored { task: key_only, ready_seq: 3 });
    }

    #[test]
    fn a_checked_in_v1_record_still_decodes() {
        let bytes = include_bytes!("testdata/task-v1.bin");
        let stored = decode(bytes).expect("the V1 record decodes");
        assert_eq!(stored, Stored { task: v1_task(), ready_seq: 99 });
    }

    #[test]
    fn records_round_trip_and_v1_is_written_byte_for_byte_as_before() {
        let bytes = encode(&v1_task(), 99);
        assert_eq!(bytes.as_slice(), include_bytes!("testdata/task-v1.bin").as_slice());
        assert_eq!(decode(&bytes).unwrap(), Stored { task: v1_task(), ready_seq: 99 });
    }

    #[test]
    fn unknown_formats_and_garbage_are_errors_not_panics() {
        assert!(decode(&[]).unwrap_err().contains("empty"));
        assert!(decode(&[9, 1, 2]).unwrap_err().contains("unknown record format 9"));
        assert!(decode(&[1, 0xff, 0xff]).is_err());
    }
}
