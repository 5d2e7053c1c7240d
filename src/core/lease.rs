//! Lease fencing: whether a settling call's lease id still holds the task.

use super::task::{Task, TaskState};
use super::Millis;

/// A lease's fencing token (clients see its decimal form). Ids start at 1 and
/// never repeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub u64);

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for LeaseId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(LeaseId)
    }
}

/// Why a settling call (Ack, Nack, ExtendLease) was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// The lease id is not the task's current lease, or the lease ran out.
    #[error("the lease is not held: it expired, or the task was delivered again")]
    Mismatch,
    /// The task was canceled while this lease held it.
    #[error("the task was canceled while leased")]
    Canceled,
}

/// Checks that `lease_id` is the live lease on `task` at `now`.
pub fn check(task: &Task, lease_id: u64, now: Millis) -> Result<(), LeaseError> {
    let held = task.lease.as_ref().filter(|l| l.id == lease_id);
    match (task.state, held) {
        (TaskState::Canceled, Some(_)) => Err(LeaseError::Canceled),
        (TaskState::Leased, Some(lease)) if lease.expire_time > now => Ok(()),
        _ => Err(LeaseError::Mismatch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::task::{Lease, NewTask, TaskId};

    fn leased(id: u64, expire_time: Millis) -> Task {
        let mut t = Task::create(
            TaskId(7),
            NewTask {
                depends_on: Vec::new(),
                on_dependency_failure: Default::default(),
                expire_time: None,
                queue: "q".into(),
                kind: "k".into(),
                payload: vec![],
                content_type: String::new(),
                priority: 0,
                headers: Default::default(),
                max_attempts: 3,
                scheduled_time: 0,
                dedup_key: String::new(),
                request_id: String::new(),
                concurrency_key: String::new(),
                semaphores: Vec::new(),
            },
            0,
        );
        t.state = TaskState::Leased;
        t.lease = Some(Lease { id, expire_time, worker_id: String::new() });
        t
    }

    #[test]
    fn only_the_live_lease_passes() {
        let t = leased(5, 1_000);
        assert_eq!(check(&t, 5, 999), Ok(()));
        assert_eq!(check(&t, 4, 999), Err(LeaseError::Mismatch));
        assert_eq!(check(&t, 5, 1_000), Err(LeaseError::Mismatch), "expired at the deadline");
    }

    #[test]
    fn a_canceled_task_tells_its_holder() {
        let mut t = leased(5, 1_000);
        t.state = TaskState::Canceled;
        assert_eq!(check(&t, 5, 10), Err(LeaseError::Canceled));
        assert_eq!(check(&t, 6, 10), Err(LeaseError::Mismatch));
    }
}
