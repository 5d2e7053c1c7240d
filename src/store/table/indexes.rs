//! The table's indexes: where each task sits, by state.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::names::{Names, Sym};
use super::record::Record;
use crate::core::priority::ReadyKey;
use crate::core::queue::Policies;
use crate::core::task::{TaskId, TaskState};
use crate::core::Millis;

/// Where each task sits, by state. A task is in exactly one index, the one of
/// its state.
#[derive(Default)]
pub struct Indexes {
    /// READY tasks per queue (by its interned name), in delivery order.
    pub ready: HashMap<Sym, BTreeMap<ReadyKey, TaskId>>,
    /// LEASED tasks by lease deadline: the reaper's work list.
    pub leased: BTreeSet<(Millis, TaskId)>,
    /// SCHEDULED tasks by due time: the scheduler's work list.
    pub scheduled: BTreeSet<(Millis, TaskId)>,
    /// Finished tasks by removal time (finish + retention).
    pub finished: BTreeSet<(Millis, TaskId)>,
}

/// Ids whose time key is at or before `now`.
pub fn take_due(set: &BTreeSet<(Millis, TaskId)>, now: Millis) -> Vec<TaskId> {
    set.range(..=(now, TaskId(u128::MAX))).map(|(_, id)| *id).collect()
}

/// When a finished task is removed.
fn purge_time(policies: &Policies, names: &Names, task: &Record) -> Millis {
    task.update_time + policies.get(names.resolve(task.queue)).retention.as_millis() as Millis
}

pub fn index(idx: &mut Indexes, policies: &Policies, names: &Names, id: TaskId, task: &Record) {
    match task.state {
        TaskState::Ready => {
            let key = ReadyKey::new(task.priority, task.ready_seq);
            idx.ready.entry(task.queue).or_default().insert(key, id);
        }
        TaskState::Leased => {
            idx.leased.insert((task.lease_expire().unwrap_or(0), id));
        }
        TaskState::Scheduled => {
            idx.scheduled.insert((task.scheduled_time, id));
        }
        TaskState::Succeeded | TaskState::Dead | TaskState::Canceled => {
            idx.finished.insert((purge_time(policies, names, task), id));
        }
    }
}

pub fn unindex(idx: &mut Indexes, policies: &Policies, names: &Names, id: TaskId, task: &Record) {
    match task.state {
        TaskState::Ready => {
            if let Some(ready) = idx.ready.get_mut(&task.queue) {
                ready.remove(&ReadyKey::new(task.priority, task.ready_seq));
            }
        }
        TaskState::Leased => {
            idx.leased.remove(&(task.lease_expire().unwrap_or(0), id));
        }
        TaskState::Scheduled => {
            idx.scheduled.remove(&(task.scheduled_time, id));
        }
        TaskState::Succeeded | TaskState::Dead | TaskState::Canceled => {
            idx.finished.remove(&(purge_time(policies, names, task), id));
        }
    }
}
