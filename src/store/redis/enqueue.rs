//! Enqueue: a batch grouped by queue, one `enqueue.lua` call per queue.
//!
//! The task index (`tb:index`) is written before the script, with `HSETNX`, so
//! a (vanishingly unlikely) id collision is caught instead of overwriting
//! another task's entry; entries of ids that went unused are removed after.

use futures_util::future::join_all;

use super::keys::{self, QueueKeys};
use super::reply::{self, array, bounded, task, task_id, uint, unexpected};
use super::{record, scripts, RedisStore};
use crate::core::clock::{Clock, SystemClock};
use crate::core::task::{NewTask, Task, TaskId};
use crate::core::Millis;
use crate::store::{Enqueued, StoreError};

impl RedisStore {
    /// Creates `tasks`: one script call per queue, the queues concurrently,
    /// the results in the order of `tasks`.
    pub(super) async fn enqueue_batch(
        &self,
        tasks: Vec<NewTask>,
        now: Millis,
    ) -> Result<Vec<Enqueued>, StoreError> {
        // Ids and provisional records; the script sets state and times.
        let local_now = if self.server_time { SystemClock.now() } else { now };
        let mut groups: Vec<(String, Vec<usize>, Vec<Task>)> = Vec::new();
        for (pos, new) in tasks.into_iter().enumerate() {
            let task = Task::create(TaskId::generate(local_now), new, local_now);
            match groups.iter_mut().find(|(q, _, _)| *q == task.queue) {
                Some((_, positions, tasks)) => {
                    positions.push(pos);
                    tasks.push(task);
                }
                None => groups.push((task.queue.clone(), vec![pos], vec![task])),
            }
        }
        let total = groups.iter().map(|(_, p, _)| p.len()).sum();
        let calls =
            groups.iter_mut().map(|(queue, _, tasks)| self.enqueue_queue(queue, std::mem::take(tasks), now));
        let results = join_all(calls).await;
        let mut out: Vec<Option<Enqueued>> = (0..total).map(|_| None).collect();
        for ((_, positions, _), result) in groups.into_iter().zip(results) {
            for (pos, e) in positions.into_iter().zip(result?) {
                out[pos] = Some(e);
            }
        }
        out.into_iter().map(|e| e.ok_or_else(|| unexpected("a short enqueue reply"))).collect()
    }

    /// Enqueues `tasks` (all of one queue) with one script call.
    async fn enqueue_queue(
        &self,
        queue: &str,
        mut tasks: Vec<Task>,
        now: Millis,
    ) -> Result<Vec<Enqueued>, StoreError> {
        let keys = QueueKeys::new(queue);
        let window = self.policies.get(queue).dedup_window.as_millis() as u64;
        let mut conn = self.conn.clone();
        for _ in 0..3 {
            // The index first: a task must never exist without its entry.
            let mut pipe = redis::pipe();
            for t in &tasks {
                pipe.hset_nx(keys::INDEX, t.id.to_string(), queue);
            }
            pipe.sadd(keys::QUEUES, queue).ignore();
            let fresh: Vec<bool> = bounded(pipe.query_async(&mut conn)).await?;
            if fresh.iter().any(|f| !f) {
                self.forget(tasks.iter().zip(&fresh).filter(|(_, f)| **f).map(|(t, _)| t.id)).await;
                renew_ids(&mut tasks);
                continue;
            }
            let mut inv = self.invocation(&scripts::ENQUEUE, &keys, now);
            inv.arg(window);
            for t in &tasks {
                inv.arg(record::encode(t));
            }
            let items = array(self.run(&inv).await?)?;
            match items.first().map(reply::text).transpose()? {
                Some("ok") => {}
                Some("collision") => {
                    // The taken id's entry is right (same queue); drop the others.
                    let taken = task_id(items.get(1).ok_or_else(|| unexpected("no colliding id"))?)?;
                    self.forget(tasks.iter().map(|t| t.id).filter(|id| *id != taken)).await;
                    renew_ids(&mut tasks);
                    continue;
                }
                other => return Err(unexpected(&format!("enqueue status {other:?}"))),
            }
            let out = items[1..]
                .chunks(2)
                .map(|pair| match pair {
                    [created, rec] => Ok(Enqueued { task: task(rec)?, deduplicated: uint(created)? == 0 }),
                    _ => Err(unexpected("an odd enqueue reply")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.queues_of.remember(out.iter().map(|e| (e.task.id, queue)));
            // New ids that went unused (an existing task was returned).
            self.forget(tasks.iter().zip(&out).filter(|(_, e)| e.deduplicated).map(|(t, _)| t.id)).await;
            return Ok(out);
        }
        Err(StoreError::Unavailable("could not find free task ids".into()))
    }
}

/// New random ids for tasks whose ids were taken.
fn renew_ids(tasks: &mut [Task]) {
    for t in tasks {
        t.id = TaskId::generate(t.create_time);
    }
}
