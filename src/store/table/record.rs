//! The table's compact form of a task, and its conversions to and from
//! [`Task`].
//!
//! A million queued tasks are a million records, so a record keeps only what
//! most tasks need inline (96 bytes): names as [`Sym`]s, the payload as a
//! boxed slice, the lease as plain numbers. The fields most tasks leave empty
//! (content type, headers, dedup key, request id, result, last error) live in
//! one [`Cold`] box that is `None` when all of them are empty. The API type
//! stays [`Task`]: the table builds one whenever it hands a task out.

use std::collections::BTreeMap;

use super::names::{Names, Sym};
use crate::core::task::{DependencyFailure, Lease, Task, TaskId, TaskState};
use crate::core::transition::Retry;
use crate::core::Millis;

/// A task as the table keeps it (its id is the table's key).
pub struct Record {
    pub create_time: Millis,
    pub update_time: Millis,
    pub scheduled_time: Millis,
    /// Order of arrival in READY: FIFO within a priority level (table
    /// bookkeeping, persisted beside the task by the embedded store).
    pub ready_seq: u64,
    /// The lease's fencing token; meaningful only when `has_lease`.
    lease_id: u64,
    lease_expire: Millis,
    payload: Box<[u8]>,
    /// The rarely-set fields; `None` when every one of them is empty.
    cold: Option<Box<Cold>>,
    pub queue: Sym,
    pub kind: Sym,
    /// Who holds the lease; a held reference only when `has_lease`.
    lease_worker: Sym,
    pub attempt: u32,
    pub max_attempts: u32,
    pub priority: u8,
    pub state: TaskState,
    has_lease: bool,
}

/// The fields most tasks leave empty.
#[derive(Default)]
struct Cold {
    content_type: String,
    headers: BTreeMap<String, String>,
    dedup_key: String,
    request_id: String,
    result: Vec<u8>,
    last_error: String,
    /// The `concurrency_key` ([`Sym::NONE`]: none).
    key: Sym,
    /// The semaphore names joined by [`SEMAPHORE_SEPARATOR`] ([`Sym::NONE`]:
    /// none): tasks needing the same set share one name.
    sems: Sym,
    /// [`Task::depends_on`].
    depends_on: Vec<TaskId>,
    /// [`Task::pending_dependencies`].
    pending: Vec<TaskId>,
    on_failure: DependencyFailure,
    /// [`Task::expire_time`].
    expire_time: Option<Millis>,
}

impl Cold {
    fn is_empty(&self) -> bool {
        let Cold {
            content_type,
            headers,
            dedup_key,
            request_id,
            result,
            last_error,
            key,
            sems,
            depends_on,
            pending,
            on_failure,
            expire_time,
        } = self;
        *key == Sym::NONE
            && *sems == Sym::NONE
            && depends_on.is_empty()
            && pending.is_empty()
            && *on_failure == DependencyFailure::Cancel
            && expire_time.is_none()
            && content_type.is_empty()
            && headers.is_empty()
            && dedup_key.is_empty()
            && request_id.is_empty()
            && result.is_empty()
            && last_error.is_empty()
    }
}

/// Joins a record's semaphore names (which cannot contain it).
pub const SEMAPHORE_SEPARATOR: char = ',';

/// The lease parts a transition compares: `(lease id, holder)`.
pub type Holder = (u64, Sym);

impl Record {
    /// The record of `task`, which entered READY as number `ready_seq`,
    /// taking references on its names in `names`.
    pub fn new(task: Task, ready_seq: u64, names: &mut Names) -> Record {
        let Task {
            id: _,
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
        let key = names.acquire_opt(&concurrency_key);
        let sems = names.acquire_opt(&semaphores.join(&SEMAPHORE_SEPARATOR.to_string()));
        let cold = Cold {
            content_type,
            headers,
            dedup_key,
            request_id,
            result,
            last_error,
            key,
            sems,
            depends_on,
            pending: pending_dependencies,
            on_failure: on_dependency_failure,
            expire_time,
        };
        let queue = names.acquire(&queue);
        let kind = names.acquire(&kind);
        let (has_lease, lease_id, lease_expire, lease_worker) = match lease {
            Some(Lease { id, expire_time, worker_id }) => (true, id, expire_time, names.acquire(&worker_id)),
            None => (false, 0, 0, queue),
        };
        Record {
            create_time,
            update_time,
            scheduled_time,
            ready_seq,
            lease_id,
            lease_expire,
            payload: payload.into_boxed_slice(),
            cold: (!cold.is_empty()).then(|| Box::new(cold)),
            queue,
            kind,
            lease_worker,
            attempt,
            max_attempts,
            priority,
            state,
            has_lease,
        }
    }

    /// The task this record holds, with id `id`.
    pub fn to_task(&self, id: TaskId, names: &Names) -> Task {
        let mut task = self.hollow(id);
        task.queue = names.resolve(self.queue).to_owned();
        task.kind = names.resolve(self.kind).to_owned();
        task.concurrency_key = names.resolve(self.key()).to_owned();
        task.semaphores = self.semaphores(names).map(str::to_owned).collect();
        task.payload = self.payload.to_vec();
        if let Some(lease) = &mut task.lease {
            lease.worker_id = names.resolve(self.lease_worker).to_owned();
        }
        if let Some(cold) = &self.cold {
            let Cold {
                content_type,
                headers,
                dedup_key,
                request_id,
                result,
                last_error,
                key: _,
                sems: _,
                depends_on,
                pending,
                on_failure,
                expire_time,
            } = &**cold;
            task.depends_on = depends_on.clone();
            task.pending_dependencies = pending.clone();
            task.on_dependency_failure = *on_failure;
            task.expire_time = *expire_time;
            task.content_type = content_type.clone();
            task.headers = headers.clone();
            task.dedup_key = dedup_key.clone();
            task.request_id = request_id.clone();
            task.result = result.clone();
            task.last_error = last_error.clone();
        }
        task
    }

    /// The task with every fixed-size field and none of the heap ones: its
    /// strings, payload, headers, result and lease holder are empty. Costs no
    /// allocation; for rules in [`crate::core`] that read only fixed-size
    /// fields (lease fencing).
    pub fn hollow(&self, id: TaskId) -> Task {
        Task {
            id,
            queue: String::new(),
            kind: String::new(),
            payload: Vec::new(),
            content_type: String::new(),
            priority: self.priority,
            headers: BTreeMap::new(),
            state: self.state,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            dedup_key: String::new(),
            request_id: String::new(),
            create_time: self.create_time,
            update_time: self.update_time,
            scheduled_time: self.scheduled_time,
            result: Vec::new(),
            last_error: String::new(),
            lease: self.has_lease.then(|| Lease {
                id: self.lease_id,
                expire_time: self.lease_expire,
                worker_id: String::new(),
            }),
            concurrency_key: String::new(),
            semaphores: Vec::new(),
            depends_on: Vec::new(),
            pending_dependencies: Vec::new(),
            on_dependency_failure: DependencyFailure::Cancel,
            expire_time: self.expire_time(),
        }
    }

    /// The tasks this one runs after.
    pub fn depends_on(&self) -> &[TaskId] {
        self.cold.as_ref().map_or(&[], |c| &c.depends_on)
    }

    /// Those of [`Self::depends_on`] not yet done.
    pub fn pending(&self) -> &[TaskId] {
        self.cold.as_ref().map_or(&[], |c| &c.pending)
    }

    pub fn on_dependency_failure(&self) -> DependencyFailure {
        self.cold.as_ref().map_or(DependencyFailure::Cancel, |c| c.on_failure)
    }

    /// The deadline for delivery, if any.
    pub fn expire_time(&self) -> Option<Millis> {
        self.cold.as_ref().and_then(|c| c.expire_time)
    }

    /// Applies `edit` to the pending dependencies.
    pub fn edit_pending<R>(&mut self, edit: impl FnOnce(&mut Vec<TaskId>) -> R) -> R {
        let mut out = None;
        self.edit_cold(|c| out = Some(edit(&mut c.pending)));
        out.expect("edit_cold runs the edit")
    }

    /// The `concurrency_key` ([`Sym::NONE`]: none).
    pub fn key(&self) -> Sym {
        self.cold.as_ref().map_or(Sym::NONE, |c| c.key)
    }

    /// The semaphore set ([`Sym::NONE`]: none).
    pub fn sems(&self) -> Sym {
        self.cold.as_ref().map_or(Sym::NONE, |c| c.sems)
    }

    /// The semaphores this task needs a permit of while leased.
    pub fn semaphores<'n>(&self, names: &'n Names) -> impl Iterator<Item = &'n str> {
        names.resolve(self.sems()).split(SEMAPHORE_SEPARATOR).filter(|s| !s.is_empty())
    }

    /// Drops the references this record holds in `names` (it is leaving the table).
    pub fn release(&self, names: &mut Names) {
        names.release(self.queue);
        names.release(self.kind);
        names.release(self.key());
        names.release(self.sems());
        if let Some((_, worker)) = self.holder() {
            names.release(worker);
        }
    }

    /// Payload bytes (what the store's byte budget counts).
    pub fn payload_len(&self) -> usize {
        self.payload.len()
    }

    /// Upper bound of this task's bytes in a lease response
    /// ([`crate::core::budget::lease_bytes`]).
    pub fn lease_bytes(&self, names: &Names) -> usize {
        use crate::core::budget;
        let cold = self.cold.as_deref();
        let strings = [
            names.resolve(self.queue).len(),
            names.resolve(self.kind).len(),
            self.payload.len(),
            cold.map_or(0, |c| c.content_type.len()),
            self.dedup_key().len(),
        ];
        let headers = cold.into_iter().flat_map(|c| c.headers.iter().map(|(k, v)| (k.len(), v.len())));
        budget::lease_bytes(budget::task_bytes(strings, headers), cold.map_or(0, |c| c.last_error.len()))
    }

    pub fn dedup_key(&self) -> &str {
        self.cold.as_ref().map_or("", |c| &c.dedup_key)
    }

    pub fn request_id(&self) -> &str {
        self.cold.as_ref().map_or("", |c| &c.request_id)
    }

    /// Applies a retry decision of [`crate::core::transition`]: READY at once,
    /// SCHEDULED until its due time, or DEAD.
    pub fn retry(&mut self, retry: Retry) {
        self.state = retry.state();
        if let Retry::At(due) = retry {
            self.scheduled_time = due;
        }
    }

    /// The current lease's id and holder, if any.
    pub fn holder(&self) -> Option<Holder> {
        self.has_lease.then_some((self.lease_id, self.lease_worker))
    }

    /// The current lease's deadline, if any.
    pub fn lease_expire(&self) -> Option<Millis> {
        self.has_lease.then_some(self.lease_expire)
    }

    /// Sets the lease. `worker` must be a reference the caller took for this
    /// record; the previous holder's reference is the caller's to release.
    pub fn set_lease(&mut self, id: u64, expire_time: Millis, worker: Sym) {
        (self.has_lease, self.lease_id, self.lease_expire, self.lease_worker) =
            (true, id, expire_time, worker);
    }

    /// Moves the deadline of the current lease, if any.
    pub fn set_lease_expire(&mut self, expire_time: Millis) {
        if self.has_lease {
            self.lease_expire = expire_time;
        }
    }

    /// Removes the lease; its holder's reference is the caller's to release.
    pub fn clear_lease(&mut self) {
        self.has_lease = false;
    }

    pub fn set_result(&mut self, result: Vec<u8>) {
        self.edit_cold(|c| c.result = result);
    }

    pub fn set_last_error(&mut self, error: String) {
        self.edit_cold(|c| c.last_error = error);
    }

    /// Applies `edit` to the cold fields, keeping `cold` `None` when all are empty.
    fn edit_cold(&mut self, edit: impl FnOnce(&mut Cold)) {
        let mut cold = self.cold.take().unwrap_or_default();
        edit(&mut cold);
        self.cold = (!cold.is_empty()).then_some(cold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_task() -> Task {
        Task {
            id: TaskId(42),
            queue: "emails".into(),
            kind: "send".into(),
            payload: b"hello".to_vec(),
            content_type: "application/json".into(),
            priority: 7,
            headers: [("trace".to_owned(), "abc".to_owned()), ("x".to_owned(), String::new())].into(),
            state: TaskState::Canceled,
            attempt: 2,
            max_attempts: 5,
            dedup_key: "d-1".into(),
            request_id: "r-1".into(),
            create_time: 1_000,
            update_time: 2_000,
            scheduled_time: 1_500,
            result: vec![1, 2, 3],
            last_error: "boom".into(),
            lease: Some(Lease { id: 9, expire_time: 3_000, worker_id: "w-1".into() }),
            concurrency_key: "tenant".into(),
            semaphores: vec!["a".into(), "b".into()],
            depends_on: vec![TaskId(7), TaskId(8)],
            pending_dependencies: vec![TaskId(8)],
            on_dependency_failure: DependencyFailure::Run,
            expire_time: Some(9_000),
        }
    }

    fn plain_task() -> Task {
        Task {
            content_type: String::new(),
            headers: BTreeMap::new(),
            state: TaskState::Ready,
            dedup_key: String::new(),
            request_id: String::new(),
            result: Vec::new(),
            last_error: String::new(),
            lease: None,
            concurrency_key: String::new(),
            semaphores: Vec::new(),
            depends_on: Vec::new(),
            pending_dependencies: Vec::new(),
            on_dependency_failure: DependencyFailure::Cancel,
            expire_time: None,
            ..full_task()
        }
    }

    #[test]
    fn every_field_survives_the_round_trip() {
        let mut names = Names::default();
        for task in [full_task(), plain_task()] {
            let record = Record::new(task.clone(), 17, &mut names);
            assert_eq!(record.to_task(task.id, &names), task);
        }
        let only_one_cold_field = Task { headers: [("h".into(), "v".into())].into(), ..plain_task() };
        let record = Record::new(only_one_cold_field.clone(), 0, &mut names);
        assert_eq!(record.to_task(TaskId(42), &names), only_one_cold_field);
        let empty_worker =
            Task { lease: Some(Lease { id: 0, expire_time: 0, worker_id: String::new() }), ..plain_task() };
        let record = Record::new(empty_worker.clone(), 0, &mut names);
        assert_eq!(record.to_task(TaskId(42), &names), empty_worker);
    }

    #[test]
    fn the_common_task_is_small_and_has_no_cold_box() {
        let mut names = Names::default();
        let record = Record::new(plain_task(), 0, &mut names);
        assert!(record.cold.is_none());
        assert!(std::mem::size_of::<Record>() <= 96, "{}", std::mem::size_of::<Record>());
    }

    #[test]
    fn the_hollow_task_keeps_the_fixed_fields() {
        let mut names = Names::default();
        let task = full_task();
        let hollow = Record::new(task.clone(), 17, &mut names).hollow(task.id);
        let lease = task.lease.clone().map(|l| Lease { worker_id: String::new(), ..l });
        assert_eq!(
            hollow,
            Task {
                queue: String::new(),
                kind: String::new(),
                payload: Vec::new(),
                content_type: String::new(),
                headers: BTreeMap::new(),
                dedup_key: String::new(),
                request_id: String::new(),
                result: Vec::new(),
                last_error: String::new(),
                lease,
                concurrency_key: String::new(),
                semaphores: Vec::new(),
                depends_on: Vec::new(),
                pending_dependencies: Vec::new(),
                on_dependency_failure: DependencyFailure::Cancel,
                ..task
            }
        );
    }

    #[test]
    fn names_are_shared_and_released_with_the_record() {
        let mut names = Names::default();
        let a = Record::new(full_task(), 17, &mut names);
        let b = Record::new(full_task(), 17, &mut names);
        assert_eq!((a.queue, a.kind), (b.queue, b.kind));
        assert_eq!(names.len(), 5, "queue, kind, key, semaphores, worker");
        a.release(&mut names);
        assert_eq!(names.len(), 5);
        b.release(&mut names);
        assert_eq!(names.len(), 0);
    }

    #[test]
    fn setting_cold_fields_back_to_empty_drops_the_box() {
        let mut names = Names::default();
        let mut record = Record::new(plain_task(), 0, &mut names);
        record.set_last_error("boom".into());
        record.set_result(vec![1]);
        let task = record.to_task(TaskId(42), &names);
        assert_eq!((task.last_error.as_str(), task.result.as_slice()), ("boom", &[1u8][..]));
        record.set_last_error(String::new());
        record.set_result(Vec::new());
        assert!(record.cold.is_none());
        let worker = names.acquire("w");
        record.set_lease(3, 99, worker);
        record.set_lease_expire(100);
        assert_eq!((record.holder(), record.lease_expire()), (Some((3, worker)), Some(100)));
        record.clear_lease();
        assert_eq!((record.holder(), record.lease_expire()), (None, None));
    }
}
