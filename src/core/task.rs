//! The task record and its states.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::Millis;

/// A task's identity: a ULID, so ids sort by creation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub u128);

impl TaskId {
    /// A new id for a task created at `now`, unique within this process and
    /// increasing with time.
    pub fn generate(now: Millis) -> Self {
        let ulid = ulid::Ulid::from_parts(now, rand::random::<u128>());
        TaskId(ulid.0)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        ulid::Ulid(self.0).fmt(f)
    }
}

/// A task id that is not a ULID.
#[derive(Debug, thiserror::Error)]
#[error("not a task id (expected a 26-character ULID)")]
pub struct BadTaskId;

impl FromStr for TaskId {
    type Err = BadTaskId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s).map(|u| TaskId(u.0)).map_err(|_| BadTaskId)
    }
}

/// Where a task is in its life (see `proto/taskbroker/v1/task.proto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskState {
    Scheduled,
    Ready,
    Leased,
    Succeeded,
    Dead,
    Canceled,
    /// Waiting for its dependencies ([`Task::pending_dependencies`]).
    Waiting,
}

/// What happens to a task when one of its dependencies ends DEAD or
/// CANCELED (see [`super::dependency`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DependencyFailure {
    /// The task is CANCELED too, and so on down the graph.
    #[default]
    Cancel,
    /// The dependency counts as done: the task runs anyway.
    Run,
}

impl TaskState {
    /// Final states never change again; the task is kept for its retention, then removed.
    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Dead | TaskState::Canceled)
    }
}

/// The lease a worker holds on a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Fencing token: unique per delivery; settling calls must present it.
    pub id: u64,
    /// When the lease runs out and the task comes back.
    pub expire_time: Millis,
    /// Who holds it (free-form, for logs).
    pub worker_id: String,
}

/// A task with everything the broker knows about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub id: TaskId,
    /// The queue it was enqueued (or routed) into.
    pub queue: String,
    /// What the task is (`email.send`): workers dispatch on it, routes match it.
    pub kind: String,
    /// Opaque to the broker.
    pub payload: Vec<u8>,
    /// The payload's media type, for the worker (free-form).
    pub content_type: String,
    /// 0-9, higher first.
    pub priority: u8,
    /// Free-form metadata; routes match on it; `traceparent` carries the
    /// task's creation trace context.
    pub headers: BTreeMap<String, String>,
    pub state: TaskState,
    /// Deliveries so far.
    pub attempt: u32,
    /// Deliveries allowed before the task is DEAD.
    pub max_attempts: u32,
    /// Enqueues with the same key in the same queue return this task while
    /// it is unfinished (or within the queue's dedup window).
    pub dedup_key: String,
    /// The producer's idempotency key, kept so a replay finds this task.
    pub request_id: String,
    pub create_time: Millis,
    /// The last state change.
    pub update_time: Millis,
    /// When the task is (or was) due to run.
    pub scheduled_time: Millis,
    /// What the worker's Ack returned.
    pub result: Vec<u8>,
    /// The last Nack's error, or why the task died.
    pub last_error: String,
    /// The current (or, for a task canceled while leased, the last) lease.
    pub lease: Option<Lease>,
    /// The group it belongs to within its queue (a tenant, a device): groups
    /// take turns, and `per_key_max_in_flight` caps each ("": no group).
    pub concurrency_key: String,
    /// Semaphores it needs a permit of while leased (sorted, no duplicates).
    pub semaphores: Vec<String>,
    /// The tasks (of any queue) it runs after, as the producer named them.
    pub depends_on: Vec<TaskId>,
    /// Those of `depends_on` not yet done, in the same order: the task is
    /// WAITING while this is not empty.
    pub pending_dependencies: Vec<TaskId>,
    /// What a dependency ending DEAD or CANCELED does to this task.
    pub on_dependency_failure: DependencyFailure,
    /// Its deadline: not delivered by then, it is CANCELED as expired
    /// (`None`: no deadline).
    pub expire_time: Option<Millis>,
}

/// A validated, fully resolved request to create a task.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTask {
    pub queue: String,
    pub kind: String,
    pub payload: Vec<u8>,
    pub content_type: String,
    pub priority: u8,
    pub headers: BTreeMap<String, String>,
    pub max_attempts: u32,
    /// Due time; at or before `now` means ready at once.
    pub scheduled_time: Millis,
    pub dedup_key: String,
    pub request_id: String,
    /// See [`Task::concurrency_key`].
    pub concurrency_key: String,
    /// See [`Task::semaphores`]: the producer's, its route's and its queue's.
    pub semaphores: Vec<String>,
    /// See [`Task::depends_on`]: no duplicates, each an existing task.
    pub depends_on: Vec<TaskId>,
    pub on_dependency_failure: DependencyFailure,
    /// See [`Task::expire_time`].
    pub expire_time: Option<Millis>,
}

impl Task {
    /// The record for a brand-new task created at `now`, WAITING on all of
    /// its dependencies (the store then settles those already finished with
    /// [`super::dependency::resolve`]).
    pub fn create(id: TaskId, new: NewTask, now: Millis) -> Task {
        let NewTask {
            queue,
            kind,
            payload,
            content_type,
            priority,
            headers,
            max_attempts,
            scheduled_time,
            dedup_key,
            request_id,
            concurrency_key,
            semaphores,
            depends_on,
            on_dependency_failure,
            expire_time,
        } = new;
        let due = scheduled_time.max(now);
        let state = if !depends_on.is_empty() {
            TaskState::Waiting
        } else {
            super::dependency::on_dependencies_done(due, now)
        };
        Task {
            id,
            queue,
            kind,
            payload,
            content_type,
            priority,
            headers,
            state,
            attempt: 0,
            max_attempts,
            dedup_key,
            request_id,
            create_time: now,
            update_time: now,
            scheduled_time: due,
            result: Vec::new(),
            last_error: String::new(),
            lease: None,
            concurrency_key,
            semaphores,
            pending_dependencies: depends_on.clone(),
            depends_on,
            on_dependency_failure,
            expire_time,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_round_trip_and_sort_by_time() {
        let a = TaskId::generate(1_000);
        let b = TaskId::generate(2_000);
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
        assert_eq!(a.to_string().parse::<TaskId>().unwrap(), a);
        assert!("nope".parse::<TaskId>().is_err());
    }

    #[test]
    fn a_future_due_time_makes_a_scheduled_task() {
        let new = NewTask {
            queue: "q".into(),
            kind: "k".into(),
            payload: vec![],
            content_type: String::new(),
            priority: 0,
            headers: BTreeMap::new(),
            max_attempts: 3,
            scheduled_time: 5_000,
            dedup_key: String::new(),
            request_id: String::new(),
            concurrency_key: String::new(),
            semaphores: Vec::new(),
            depends_on: Vec::new(),
            on_dependency_failure: DependencyFailure::Cancel,
            expire_time: None,
        };
        let t = Task::create(TaskId(1), new.clone(), 1_000);
        assert_eq!(t.state, TaskState::Scheduled);
        let t = Task::create(TaskId(1), NewTask { scheduled_time: 0, ..new.clone() }, 1_000);
        assert_eq!((t.state, t.scheduled_time), (TaskState::Ready, 1_000));
        let t = Task::create(TaskId(1), NewTask { depends_on: vec![TaskId(7)], ..new }, 1_000);
        assert_eq!((t.state, t.pending_dependencies.as_slice()), (TaskState::Waiting, &[TaskId(7)][..]));
    }
}
