//! Periodic schedules: declaring the config's, runtime management
//! (AdminService), and the firing pass every replica runs.
//!
//! # Exactly once
//! Every replica runs [`Broker::fire_schedules`] about once a second. For
//! each schedule it asks [`crate::core::schedule::plan`] which due times
//! are owed since the last one the store recorded, and fires each through
//! [`Store::fire_schedule`](crate::store::Store::fire_schedule), which
//! records the due time and enqueues its task in one atomic step, and does
//! nothing for a due time already recorded. So replicas racing on one due
//! time enqueue one task; a replica that died half-way left either nothing
//! (the next pass, on any replica, fires it) or both. The task also carries
//! the dedup key `schedule:<name>:<due ms>`.
//!
//! # Config and runtime schedules
//! `[[schedules]]` are stored with `source = config` at start-up and on
//! every reload ([`Broker::declare_schedules`]): they replace a runtime
//! schedule of the same name, and config schedules the file no longer
//! declares are deleted. PutSchedule and DeleteSchedule refuse a config
//! schedule's name (`SCHEDULE_FROM_CONFIG`: change the file). Runtime
//! schedules persist in the store until DeleteSchedule.
//!
//! A schedule created, or changed in its timing or queue, counts due
//! times from then on (`since`): it does not catch up on runs it never had.

use super::{Broker, BrokerError, EnqueueInput};
use crate::core::schedule::{self, Schedule, ScheduleSource};
use crate::core::task::Task;
use crate::core::Millis;
use crate::store::{Fired, StoredSchedule};

/// A schedule as listed: what the store keeps, and when it runs next.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleInfo {
    pub stored: StoredSchedule,
    /// The next due time a pass would fire (`None`: never again).
    pub next_run: Option<Millis>,
}

impl Broker {
    /// Every schedule, by name, with its next run.
    pub async fn list_schedules(&self) -> Result<Vec<ScheduleInfo>, BrokerError> {
        let now = self.now();
        let stored = self.store().list_schedules().await?;
        Ok(stored
            .into_iter()
            .map(|s| {
                let next_run = s.schedule.timing().ok().and_then(|t| schedule::next_run(&t, after(&s), now));
                ScheduleInfo { stored: s, next_run }
            })
            .collect())
    }

    /// Creates or replaces a runtime schedule (PutSchedule).
    pub async fn put_schedule(&self, mut schedule: Schedule) -> Result<ScheduleInfo, BrokerError> {
        schedule.source = ScheduleSource::Runtime;
        self.check_schedule(&schedule)?;
        let existing = self.find_schedule(&schedule.name).await?;
        if let Some(e) = &existing {
            if e.schedule.source == ScheduleSource::Config {
                return Err(BrokerError::ScheduleFromConfig(schedule.name));
            }
        }
        schedule.since = since(existing.as_ref().map(|e| &e.schedule), &schedule, self.now());
        self.store().put_schedule(schedule.clone()).await?;
        let name = schedule.name.clone();
        self.list_schedules()
            .await?
            .into_iter()
            .find(|s| s.stored.schedule.name == name)
            .ok_or(BrokerError::ScheduleNotFound(name))
    }

    /// Deletes a runtime schedule (DeleteSchedule).
    pub async fn delete_schedule(&self, name: &str) -> Result<(), BrokerError> {
        match self.find_schedule(name).await? {
            None => Err(BrokerError::ScheduleNotFound(name.to_owned())),
            Some(s) if s.schedule.source == ScheduleSource::Config => {
                Err(BrokerError::ScheduleFromConfig(name.to_owned()))
            }
            Some(_) => {
                self.store().delete_schedule(name).await?;
                Ok(())
            }
        }
    }

    /// Enqueues one run of the schedule now, outside its timing
    /// (TriggerSchedule); its due times are unaffected.
    pub async fn trigger_schedule(&self, name: &str) -> Result<Task, BrokerError> {
        let stored =
            self.find_schedule(name).await?.ok_or_else(|| BrokerError::ScheduleNotFound(name.into()))?;
        let now = self.now();
        let mut input = input(&stored.schedule);
        input.dedup_key = format!("schedule:{name}:trigger:{now}");
        Ok(self.enqueue(input).await?.task)
    }

    /// Stores the config's schedules (start-up, reload): see the module docs.
    pub async fn declare_schedules(&self, declared: &[Schedule]) -> Result<(), BrokerError> {
        let now = self.now();
        let stored = self.store().list_schedules().await?;
        let mut changed = false;
        for s in declared {
            let existing = stored.iter().find(|e| e.schedule.name == s.name).map(|e| &e.schedule);
            let mut s = s.clone();
            s.source = ScheduleSource::Config;
            s.since = since(existing, &s, now);
            if existing != Some(&s) {
                if existing.is_some_and(|e| e.source == ScheduleSource::Runtime) {
                    tracing::warn!(schedule = %s.name, "the config declares a runtime schedule's name: the config's replaces it");
                }
                self.store().put_schedule(s).await?;
                changed = true;
            }
        }
        for gone in stored.iter().filter(|e| e.schedule.source == ScheduleSource::Config) {
            if !declared.iter().any(|d| d.name == gone.schedule.name) {
                tracing::info!(schedule = %gone.schedule.name, "config schedule no longer declared: deleted");
                self.store().delete_schedule(&gone.schedule.name).await?;
                changed = true;
            }
        }
        if changed {
            self.inner.activity.touch();
        }
        Ok(())
    }

    /// One firing pass: every due time owed now, each enqueued once across
    /// replicas (see the module docs). Returns how many tasks it created.
    pub async fn fire_schedules(&self) -> Result<usize, BrokerError> {
        let now = self.now();
        let listed = self.store().list_schedules().await;
        self.store_failed("list_schedules", &listed);
        let mut created = 0;
        for stored in listed? {
            // One schedule's failure (a full store) does not hold up the others.
            match self.fire_owed(&stored, now).await {
                Ok(n) => created += n,
                Err(e) => {
                    tracing::warn!(schedule = %stored.schedule.name, error = %e, "schedule not fired (retrying)")
                }
            }
        }
        Ok(created)
    }

    /// Fires what `stored` owes at `now`; how many tasks that created.
    async fn fire_owed(&self, stored: &StoredSchedule, now: Millis) -> Result<usize, BrokerError> {
        let s = &stored.schedule;
        let Ok(timing) = s.timing() else {
            tracing::warn!(schedule = %s.name, "stored schedule has an invalid timing; not fired");
            return Ok(0);
        };
        let plan = schedule::plan(&timing, s.catch_up, after(stored), now);
        if let Some(skip) = plan.skip_to {
            tracing::info!(schedule = %s.name, due = skip, "missed runs skipped (catch_up = none)");
            self.store().fire_schedule(&s.name, skip, None, now).await?;
        }
        let mut created = 0;
        for due in plan.fire {
            created += self.fire_one(s, due, now).await?;
        }
        Ok(created)
    }

    /// Fires `due`: 1 if this call created its task.
    async fn fire_one(&self, s: &Schedule, due: Millis, now: Millis) -> Result<usize, BrokerError> {
        let mut input = input(s);
        input.dedup_key = s.dedup_key(due);
        let task = match self.with_rules(|rules| rules.enqueue(input, now)) {
            Ok(task) => task,
            Err(e) => {
                // The queue's rules changed since it was stored (a reload made
                // queues strict, a payload limit shrank): skip this due time.
                tracing::warn!(schedule = %s.name, due, error = %e, "schedule's task refused; run skipped");
                self.store().fire_schedule(&s.name, due, None, now).await?;
                return Ok(0);
            }
        };
        let fired = self.store().fire_schedule(&s.name, due, Some(task), now).await;
        self.store_failed("fire_schedule", &fired);
        match fired? {
            Fired::Enqueued(e) if !e.deduplicated => {
                tracing::debug!(schedule = %s.name, due, task = %e.task.id, "schedule fired");
                self.after_enqueue(std::slice::from_ref(&e));
                Ok(1)
            }
            Fired::Enqueued(_) | Fired::Skipped | Fired::Already => Ok(0),
        }
    }

    async fn find_schedule(&self, name: &str) -> Result<Option<StoredSchedule>, BrokerError> {
        Ok(self.store().list_schedules().await?.into_iter().find(|s| s.schedule.name == name))
    }

    /// Checks a runtime schedule whole: itself, and the task it would
    /// enqueue under the rules in force.
    fn check_schedule(&self, s: &Schedule) -> Result<(), BrokerError> {
        let mut violations: Vec<_> =
            s.check().into_iter().map(|e| super::Violation::new(e.field, e.message)).collect();
        if violations.is_empty() {
            let now = self.now();
            match self.with_rules(|rules| rules.enqueue(input(s), now)) {
                Ok(_) => {}
                Err(BrokerError::Invalid(v)) => violations.extend(v),
                // An undeclared queue under strict_queues.
                Err(other) => return Err(other),
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(BrokerError::Invalid(violations))
        }
    }
}

/// Due times after this are owed: the last fired, or `since`.
fn after(s: &StoredSchedule) -> Millis {
    s.last_fired.unwrap_or(0).max(s.schedule.since)
}

/// The `since` of `new` replacing `old`: kept unless it now fires at other
/// times or into another queue.
fn since(old: Option<&Schedule>, new: &Schedule, now: Millis) -> Millis {
    match old {
        Some(old) if !old.moves(new) => old.since,
        _ => now,
    }
}

/// The enqueue a schedule's run makes.
fn input(s: &Schedule) -> EnqueueInput {
    EnqueueInput {
        queue: s.queue.clone(),
        kind: s.kind.clone(),
        payload: s.payload.clone(),
        headers: s.headers.clone(),
        ..EnqueueInput::default()
    }
}
