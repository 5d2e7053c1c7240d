//! Task dependencies and deadlines: every decision about a WAITING task and
//! about a task whose deadline passed, as pure functions.
//!
//! ```text
//!  WAITING --last dependency SUCCEEDED (or DEAD/CANCELED under RUN)--> READY or SCHEDULED
//!  WAITING --a dependency DEAD/CANCELED under CANCEL------------------> CANCELED
//!  WAITING / SCHEDULED / READY --expire_time passed-------------------> CANCELED ("expired")
//! ```
//!
//! A dependency is settled for its dependent exactly once: stores keep the
//! dependent's pending set ([`crate::core::task::Task::pending_dependencies`])
//! and [`resolve`] removes the dependency from it, so applying the same
//! resolution twice changes nothing (what makes the Redis store's replayed
//! resolution events idempotent).

use super::task::{DependencyFailure, TaskId, TaskState};
use super::Millis;

/// Most dependencies one task may name.
pub const MAX_DEPENDENCIES: usize = 1000;

/// The `last_error` of a task canceled because its deadline passed.
pub const EXPIRED: &str = "expired";

/// Where a task goes once nothing holds it back: SCHEDULED until `due`, or
/// READY when `due` is not after `now`.
pub fn on_dependencies_done(due: Millis, now: Millis) -> TaskState {
    if due > now {
        TaskState::Scheduled
    } else {
        TaskState::Ready
    }
}

/// What a dependency's end means for one task waiting on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The dependency was not (or no longer) pending: nothing changes.
    Unchanged,
    /// Still waiting on others.
    Waiting,
    /// The last one is done: the task goes to this state (READY or SCHEDULED).
    Go(TaskState),
    /// The task is CANCELED with this `last_error`.
    Cancel(String),
}

/// Settles dependency `dep`, which ended in `dep_state` (a final state), for a
/// task waiting in `pending` (removing `dep` from it) with the failure policy
/// `policy` and due time `due`. Idempotent: `dep` no longer pending is
/// [`Resolution::Unchanged`].
pub fn resolve(
    pending: &mut Vec<TaskId>,
    dep: TaskId,
    dep_state: TaskState,
    policy: DependencyFailure,
    due: Millis,
    now: Millis,
) -> Resolution {
    let Some(at) = pending.iter().position(|d| *d == dep) else { return Resolution::Unchanged };
    pending.remove(at);
    let failed = matches!(dep_state, TaskState::Dead | TaskState::Canceled);
    if failed && policy == DependencyFailure::Cancel {
        return Resolution::Cancel(failure_error(dep, dep_state));
    }
    if pending.is_empty() {
        Resolution::Go(on_dependencies_done(due, now))
    } else {
        Resolution::Waiting
    }
}

/// The `last_error` of a task canceled because dependency `dep` ended in `state`.
pub fn failure_error(dep: TaskId, state: TaskState) -> String {
    let how = if state == TaskState::Dead { "DEAD" } else { "CANCELED" };
    format!("dependency {dep} ended {how}")
}

/// Whether a task with deadline `expire_time` in `state` must be canceled as
/// expired at `now`: only a task not yet delivered (WAITING, SCHEDULED,
/// READY) expires; a leased one runs to its end.
pub fn expired(expire_time: Option<Millis>, state: TaskState, now: Millis) -> bool {
    let undelivered = matches!(state, TaskState::Waiting | TaskState::Scheduled | TaskState::Ready);
    undelivered && expire_time.is_some_and(|at| at <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: TaskId = TaskId(1);
    const B: TaskId = TaskId(2);

    #[test]
    fn the_last_success_releases_the_task_ready_or_scheduled() {
        let mut pending = vec![A, B];
        let cancel = DependencyFailure::Cancel;
        assert_eq!(resolve(&mut pending, A, TaskState::Succeeded, cancel, 0, 10), Resolution::Waiting);
        assert_eq!(resolve(&mut pending, A, TaskState::Succeeded, cancel, 0, 10), Resolution::Unchanged);
        let mut later = pending.clone();
        assert_eq!(
            resolve(&mut pending, B, TaskState::Succeeded, cancel, 0, 10),
            Resolution::Go(TaskState::Ready)
        );
        assert_eq!(
            resolve(&mut later, B, TaskState::Succeeded, cancel, 50, 10),
            Resolution::Go(TaskState::Scheduled)
        );
        assert!(pending.is_empty());
    }

    #[test]
    fn a_failed_dependency_cancels_or_counts_as_done_by_policy() {
        let mut pending = vec![A, B];
        let r = resolve(&mut pending, A, TaskState::Dead, DependencyFailure::Cancel, 0, 10);
        assert_eq!(r, Resolution::Cancel(format!("dependency {A} ended DEAD")));
        let mut pending = vec![A];
        let r = resolve(&mut pending, A, TaskState::Canceled, DependencyFailure::Run, 0, 10);
        assert_eq!(r, Resolution::Go(TaskState::Ready));
    }

    #[test]
    fn only_undelivered_tasks_expire_and_only_once_due() {
        assert!(expired(Some(10), TaskState::Ready, 10));
        assert!(expired(Some(10), TaskState::Waiting, 11));
        assert!(expired(Some(10), TaskState::Scheduled, 11));
        assert!(!expired(Some(10), TaskState::Ready, 9));
        assert!(!expired(Some(10), TaskState::Leased, 11));
        assert!(!expired(Some(10), TaskState::Succeeded, 11));
        assert!(!expired(None, TaskState::Ready, 11));
    }
}
