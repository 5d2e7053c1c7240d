//! Periodic schedules in the table: definitions, and each one's last fired
//! due time, which [`Table::fire_schedule`] advances in the same step that
//! enqueues the due time's task.

use super::Table;
use crate::core::schedule::Schedule;
use crate::core::task::NewTask;
use crate::core::Millis;
use crate::store::{Fired, StoreError, StoredSchedule};

impl Table {
    /// Every schedule, by name.
    pub fn schedules(&self) -> Vec<StoredSchedule> {
        self.schedules.values().cloned().collect()
    }

    /// Creates or replaces a schedule, keeping its last fired due time.
    pub fn put_schedule(&mut self, schedule: Schedule) {
        let name = schedule.name.clone();
        let last_fired = self.schedules.get(&name).and_then(|s| s.last_fired);
        self.schedules.insert(name.clone(), StoredSchedule { schedule, last_fired });
        self.schedule_changed(name);
    }

    pub fn delete_schedule(&mut self, name: &str) -> bool {
        let existed = self.schedules.remove(name).is_some();
        if existed {
            self.schedule_changed(name.to_owned());
        }
        existed
    }

    /// See [`crate::store::Store::fire_schedule`].
    pub fn fire_schedule(
        &mut self,
        name: &str,
        due: Millis,
        task: Option<NewTask>,
        now: Millis,
    ) -> Result<Fired, StoreError> {
        let Some(stored) = self.schedules.get(name) else { return Ok(Fired::Already) };
        if stored.last_fired.is_some_and(|last| last >= due) {
            return Ok(Fired::Already);
        }
        let fired = match task {
            Some(task) => {
                let mut enqueued = self.enqueue(vec![task], now)?;
                let one = enqueued.pop().ok_or_else(|| StoreError::Internal("no task enqueued".into()))?;
                Fired::Enqueued(Box::new(one))
            }
            None => Fired::Skipped,
        };
        if let Some(stored) = self.schedules.get_mut(name) {
            stored.last_fired = Some(due);
        }
        self.schedule_changed(name.to_owned());
        Ok(fired)
    }

    /// Puts back a schedule read from disk.
    pub fn restore_schedule(&mut self, stored: StoredSchedule) {
        self.schedules.insert(stored.schedule.name.clone(), stored);
    }

    fn schedule_changed(&mut self, name: String) {
        if self.track {
            self.schedule_changes.push(name);
        }
    }

    /// The schedules changed since the last call: each with its record, or
    /// `None` when deleted.
    pub(super) fn take_schedule_changes(&mut self) -> Vec<(String, Option<StoredSchedule>)> {
        let mut names = std::mem::take(&mut self.schedule_changes);
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let stored = self.schedules.get(&name).cloned();
                (name, stored)
            })
            .collect()
    }
}
