//! What the operations API asks of the Redis store: a queue's numbers,
//! pausing, listing, purging and redriving its tasks. The table's
//! (`store/table/admin.rs`) are the reference; every replica reads the same
//! numbers, since they live in Redis.
//!
//! # Keys (one queue's, in its slot; see `lua/lib.lua`)
//! - `paused`: present while the queue is paused; `lease.lua` then takes
//!   nothing. Beside it, the global set [`keys::PAUSED`] lists paused queues
//!   so [`crate::store::Store::queue_names`] finds one that holds no task.
//!   That set is written after the script, not atomically with it: the
//!   queue's own key decides, and `queue_names` checks it.
//! - `totals`: a hash counted by the scripts that make each event happen
//!   (enqueue, lease, ack, nack, reap) as [`crate::core::stats::Event`] says;
//!   it goes with the queue's last task, as the table's book does.
//! - `ids_scheduled`, `ids_succeeded`, `ids_dead`, `ids_canceled`: the ids
//!   of each state, score 0 so a ZSET keeps them in id (creation) order:
//!   counts, listing, purging and redriving without a scan of other states.
//!   READY and LEASED have no such index, so the two hottest scripts (enqueue,
//!   lease) write nothing more per task: they are counted from their lists
//!   and set, and listed by reading at most [`LIST_SCAN`] of them, sorted
//!   (`lua/list.lua`; a larger backlog lists the tasks delivered next).
//! - `redriven`: how many entries of each redriven task in the finished list
//!   are stale, so `purge.lua` skips them; a redrive does no O(n) LREM.
//!
//! # Calls
//! One script per call and queue, each on at most [`SWEEP_BATCH`] tasks so
//! that none blocks Redis for long (nor outlasts [`super::reply::CALL_TIMEOUT`]);
//! a purge or a redrive of more runs the script again while it comes back
//! full. Each batch is atomic, a large purge or redrive as a whole is not.
//!
//! # Data written before these keys
//! The key layout keeps its version: nothing a task needs is read
//! differently. Tasks that finished (or were scheduled) under an earlier build
//! are missing from the id indexes and the totals start at zero, so until
//! retention purges them (or they come due), finished counts, listing,
//! purging finished states and a redrive of the oldest miss them (counting
//! and purging SCHEDULED tasks and a redrive by id do not need the index).

use futures_util::future::join_all;
use redis::AsyncCommands;

use super::keys::{self, QueueKeys};
use super::record::state_code;
use super::reply::{array, bounded, task, task_id, text, uint, unexpected};
use super::scripts::{self, SWEEP_BATCH};
use super::RedisStore;
use crate::core::stats::{purgeable, QueueCounts, QueueStats, QueueTotals, STATES};
use crate::core::task::{Task, TaskId, TaskState};
use crate::core::Millis;
use crate::store::{StoreError, Swept};

/// Most READY (or LEASED) tasks of a queue `list.lua` reads to list them.
pub const LIST_SCAN: usize = 10_000;

impl RedisStore {
    /// Queues that hold tasks or are paused, by name.
    pub(super) async fn admin_queue_names(&self) -> Result<Vec<String>, StoreError> {
        let mut names = self.queues().await?;
        let mut conn = self.conn.clone();
        let paused: Vec<String> = bounded(conn.smembers(keys::PAUSED)).await?;
        names.extend(paused);
        names.sort_unstable();
        names.dedup();
        // A registered queue may be empty for a moment, a paused one resumed:
        // keep those that hold a task or whose pause key is set.
        let checks = names.iter().map(|queue| async move {
            let keys = QueueKeys::new(queue);
            let mut pipe = redis::pipe();
            pipe.exists(keys.meta()).exists(keys.paused());
            let mut conn = self.conn.clone();
            let (held, paused): (bool, bool) = bounded(pipe.query_async(&mut conn)).await?;
            Ok::<_, StoreError>(held || paused)
        });
        let keep = join_all(checks).await;
        let mut out = Vec::with_capacity(names.len());
        for (queue, keep) in names.into_iter().zip(keep) {
            if keep? {
                out.push(queue);
            }
        }
        Ok(out)
    }

    /// The numbers of `queue`, read by one script.
    pub(super) async fn admin_queue_stats(&self, queue: &str) -> Result<QueueStats, StoreError> {
        let inv = self.invocation(&scripts::STATS, queue, 0);
        let items = array(self.run(&inv).await?)?;
        let [counts @ .., oldest, paused, enqueued, delivered, acked, nacked, dead, expired] =
            items.as_slice()
        else {
            return Err(unexpected("a stats reply of the wrong length"));
        };
        if counts.len() != STATES.len() {
            return Err(unexpected("a stats reply of the wrong length"));
        }
        let mut by_state = QueueCounts::default();
        for (state, n) in STATES.iter().zip(counts) {
            by_state.add(*state, uint(n)?);
        }
        let oldest = text(oldest)?;
        Ok(QueueStats {
            counts: by_state,
            oldest_ready_time: if oldest.is_empty() {
                None
            } else {
                Some(oldest.parse().map_err(|_| unexpected("an oldest ready time"))?)
            },
            totals: QueueTotals {
                enqueued: uint(enqueued)?,
                delivered: uint(delivered)?,
                acked: uint(acked)?,
                nacked: uint(nacked)?,
                dead: uint(dead)?,
                expired: uint(expired)?,
            },
            paused: uint(paused)? == 1,
        })
    }

    /// Pauses or resumes `queue`; whether that changed anything. A resume
    /// publishes `ready` (`lua/pause.lua`), waking workers on every replica.
    pub(super) async fn admin_set_paused(&self, queue: &str, paused: bool) -> Result<bool, StoreError> {
        let mut inv = self.invocation(&scripts::PAUSE, queue, 0);
        inv.arg(if paused { "1" } else { "0" });
        let changed = uint(&self.run(&inv).await?)? == 1;
        let mut conn = self.conn.clone();
        if paused {
            // After the script: a resume racing this one sees the key set and
            // puts the queue back (below).
            bounded(conn.sadd::<_, _, ()>(keys::PAUSED, queue)).await?;
        } else {
            bounded(conn.srem::<_, _, ()>(keys::PAUSED, queue)).await?;
            // A pause that ran its script after ours may have added the queue
            // before our SREM: put it back.
            if bounded(conn.exists::<_, bool>(QueueKeys::new(queue).paused())).await? {
                bounded(conn.sadd::<_, _, ()>(keys::PAUSED, queue)).await?;
            }
        }
        Ok(changed)
    }

    /// Removes the tasks of `queue` in `states` (never LEASED ones); then
    /// forgets the queue if it holds no task, like the retention purge.
    pub(super) async fn admin_purge_queue(
        &self,
        queue: &str,
        states: &[TaskState],
        now: Millis,
    ) -> Result<u64, StoreError> {
        let codes: Vec<u8> = states.iter().filter(|s| purgeable(**s)).map(|s| state_code(*s)).collect();
        if codes.is_empty() {
            return Ok(0);
        }
        let mut purged = 0;
        loop {
            let mut inv = self.invocation(&scripts::PURGE_QUEUE, queue, 0);
            inv.arg(SWEEP_BATCH);
            for code in &codes {
                inv.arg(*code);
            }
            let reply = array(self.run(&inv).await?)?;
            let [removed, more] = reply.as_slice() else { return Err(unexpected("a purge_queue reply")) };
            purged += uint(removed)?;
            if uint(more)? == 0 {
                break;
            }
        }
        // What waited on purged unfinished tasks sees them CANCELED.
        self.deliver(queue, now).await?;
        self.forget_empty(&[queue.to_owned()], now).await?;
        Ok(purged)
    }

    /// Up to `limit` tasks of `queue` in `state` after `after`, by id.
    pub(super) async fn admin_list_tasks(
        &self,
        queue: &str,
        state: TaskState,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut inv = self.invocation(&scripts::LIST, queue, 0);
        inv.arg(state_code(state))
            .arg(after.map(|id| id.to_string()).unwrap_or_default())
            .arg(limit.min(i64::MAX as usize))
            .arg(LIST_SCAN);
        let items = array(self.run(&inv).await?)?;
        if items.len() % 3 != 0 {
            return Err(unexpected("a list reply of the wrong length"));
        }
        let mut tasks: Vec<Task> =
            items.chunks(3).map(|record| task(queue, record)).collect::<Result<_, _>>()?;
        if state == TaskState::Waiting && !tasks.is_empty() {
            // Their pending dependencies, read just after (one that ended
            // in between shows as no longer pending).
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(QueueKeys::new(queue).pending());
            for t in &tasks {
                cmd.arg(t.id.to_string());
            }
            let mut conn = self.conn.clone();
            let pending: Vec<Option<String>> = bounded(cmd.query_async(&mut conn)).await?;
            for (t, p) in tasks.iter_mut().zip(pending) {
                for dep in p.unwrap_or_default().split(',').filter(|d| !d.is_empty()) {
                    t.pending_dependencies
                        .push(dep.parse().map_err(|_| unexpected("a pending dependency id"))?);
                }
            }
        }
        Ok(tasks)
    }

    /// DEAD tasks of `queue` back to READY: `ids`, or the oldest; at most
    /// `limit` (0: all).
    pub(super) async fn admin_redrive(
        &self,
        queue: &str,
        ids: &[TaskId],
        limit: usize,
        now: Millis,
    ) -> Result<Swept, StoreError> {
        let mut left = if limit == 0 { usize::MAX } else { limit };
        let mut swept = Swept::default();
        let mut given = ids.chunks(SWEEP_BATCH);
        while left > 0 {
            let batch = left.min(SWEEP_BATCH);
            let mut inv = self.invocation(&scripts::REDRIVE, queue, now);
            inv.arg(batch);
            let chunk = if ids.is_empty() {
                None
            } else {
                // Every id given has been tried: done.
                let Some(chunk) = given.next() else { break };
                for id in chunk {
                    inv.arg(id.to_string());
                }
                Some(chunk)
            };
            let redriven = array(self.run(&inv).await?)?;
            for id in &redriven {
                swept.changed.push(task_id(id)?);
            }
            left -= redriven.len();
            // The oldest dead tasks: a short batch means none is left.
            if chunk.is_none() && redriven.len() < batch {
                break;
            }
        }
        swept.count = swept.changed.len();
        if swept.count > 0 {
            swept.ready_queues.push(queue.to_owned());
            self.deliver(queue, now).await?;
        }
        Ok(swept)
    }
}
