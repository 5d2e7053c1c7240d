//! Periodic schedules in Redis.
//!
//! # Keys
//! - [`keys::SCHEDULES`] (global): name -> the definition, written by
//!   Put/DeleteSchedule and config declarations.
//! - [`keys::fired`] (the schedule's queue's slot): name -> the last due
//!   time fired. `fire.lua` checks and records it in the same atomic step
//!   that enqueues the due time's task (with the dedup key
//!   `schedule:<name>:<due>`), so each due time enqueues at most one task
//!   however many replicas fire it, in a Redis Cluster too (one slot).
//!
//! A schedule moved to another queue starts its `since` again (the broker
//! does that: [`crate::core::schedule::Schedule::moves`]), so the new
//! queue's missing record cannot make it fire a due time twice. A replica
//! that listed a schedule just before another deleted it may still fire it
//! once: deletion is not atomic with the queue's record, which it removes
//! after the definition.

use redis::AsyncCommands;

use super::enqueue::Created;
use super::reply::{bounded, unexpected};
use super::{keys, queues, RedisStore};
use crate::core::clock::{Clock, SystemClock};
use crate::core::schedule::Schedule;
use crate::core::task::{NewTask, Task};
use crate::core::Millis;
use crate::store::{schedule_record, Fired, StoreError, StoredSchedule};

impl RedisStore {
    pub(super) async fn redis_list_schedules(&self) -> Result<Vec<StoredSchedule>, StoreError> {
        let mut conn = self.conn.clone();
        let all: Vec<(String, Vec<u8>)> = bounded(conn.hgetall(keys::SCHEDULES)).await?;
        let mut out = Vec::with_capacity(all.len());
        for (name, bytes) in all {
            let mut stored = schedule_record::decode(&name, &bytes)
                .map_err(|e| StoreError::Internal(format!("schedule {name}: {e}")))?;
            let fired: Option<u64> = bounded(conn.hget(keys::fired(&stored.schedule.queue), &name)).await?;
            stored.last_fired = fired;
            out.push(stored);
        }
        out.sort_by(|a, b| a.schedule.name.cmp(&b.schedule.name));
        Ok(out)
    }

    pub(super) async fn redis_put_schedule(&self, schedule: Schedule) -> Result<(), StoreError> {
        let name = schedule.name.clone();
        let bytes = schedule_record::encode(&StoredSchedule { schedule, last_fired: None });
        let mut conn = self.conn.clone();
        bounded(conn.hset::<_, _, _, ()>(keys::SCHEDULES, name, bytes)).await
    }

    pub(super) async fn redis_delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let bytes: Option<Vec<u8>> = bounded(conn.hget(keys::SCHEDULES, name)).await?;
        let Some(bytes) = bytes else { return Ok(false) };
        let removed: u64 = bounded(conn.hdel(keys::SCHEDULES, name)).await?;
        if let Ok(stored) = schedule_record::decode(name, &bytes) {
            bounded(conn.hdel::<_, _, ()>(keys::fired(&stored.schedule.queue), name)).await?;
        }
        Ok(removed == 1)
    }

    pub(super) async fn redis_fire_schedule(
        &self,
        name: &str,
        due: Millis,
        task: Option<NewTask>,
        now: Millis,
    ) -> Result<Fired, StoreError> {
        let mut conn = self.conn.clone();
        let bytes: Option<Vec<u8>> = bounded(conn.hget(keys::SCHEDULES, name)).await?;
        let Some(bytes) = bytes else { return Ok(Fired::Already) };
        let stored = schedule_record::decode(name, &bytes)
            .map_err(|e| StoreError::Internal(format!("schedule {name}: {e}")))?;
        let queue = stored.schedule.queue;
        let tasks = match task {
            Some(new) => {
                if new.queue != queue {
                    return Err(StoreError::Internal(format!(
                        "schedule {name} fires into {queue}, not {}",
                        new.queue
                    )));
                }
                let local_now = if self.server_time { SystemClock.now() } else { now };
                vec![(Task::create(queues::new_id(local_now, &queue), new, local_now), String::new())]
            }
            None => Vec::new(),
        };
        let registered = if tasks.is_empty() { true } else { self.register(&queue).await? };
        match self.enqueue_queue(&queue, tasks, registered, now, Some((name, due))).await? {
            Created::Already => Ok(Fired::Already),
            Created::Skipped => Ok(Fired::Skipped),
            Created::Tasks(mut t) => Ok(Fired::Enqueued(Box::new(
                t.pop().ok_or_else(|| unexpected("a fire reply without its task"))?,
            ))),
        }
    }
}
