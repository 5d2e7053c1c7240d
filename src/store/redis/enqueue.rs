//! Enqueue: a batch grouped by queue, one `enqueue.lua` call per queue.
//!
//! Task ids carry their queue's tag ([`super::queues`]); the queue is
//! registered in `tb:queues` (within `max_queues`) before its first task is
//! created. A queue this replica registered earlier may have been forgotten
//! since (emptied, by any replica's sweep): the script refuses to create the
//! first task of an empty queue unless told the queue was registered just
//! now (`empty`), and the queue is then registered again, within the bound,
//! first. A (vanishingly unlikely) id collision is refused by the script,
//! and retried with new ids.

use futures_util::future::join_all;

use super::reply::{self, array, task, uint, unexpected};
use super::{keys, queues, record, scripts, RedisStore};
use crate::core::clock::{Clock, SystemClock};
use std::collections::HashMap;

use crate::core::task::{DependencyFailure, NewTask, Task, TaskId, TaskState};
use crate::core::Millis;
use crate::store::{Enqueued, Store, StoreError};

/// The queue named for a dependency that does not exist (enqueue.lua).
const GONE: &str = "-";

/// A task about to be created, with its dependencies as the script takes
/// them (`<queue> <id>,...`).
type Pending = (Task, String);

impl RedisStore {
    /// Creates `tasks`: one script call per queue, the queues concurrently,
    /// the results in the order of `tasks`.
    pub(super) async fn enqueue_batch(
        &self,
        tasks: Vec<NewTask>,
        now: Millis,
    ) -> Result<Vec<Enqueued>, StoreError> {
        // Every dependency must exist (workflow.rs: one purged after this
        // look is seen as CANCELED); each named as '<queue> <id>' for the script.
        let dep_queues = self.dependency_queues(&tasks).await?;
        // Ids and provisional records; the script sets state and times.
        let local_now = if self.server_time { SystemClock.now() } else { now };
        let mut groups: Vec<(String, Vec<usize>, Vec<Pending>)> = Vec::new();
        for (pos, new) in tasks.into_iter().enumerate() {
            let task = Task::create(queues::new_id(local_now, &new.queue), new, local_now);
            let deps: Vec<String> =
                task.depends_on.iter().map(|d| format!("{} {d}", dep_queues[d])).collect();
            let item = (task, deps.join(","));
            match groups.iter_mut().find(|(q, _, _)| *q == item.0.queue) {
                Some((_, positions, tasks)) => {
                    positions.push(pos);
                    tasks.push(item);
                }
                None => groups.push((item.0.queue.clone(), vec![pos], vec![item])),
            }
        }
        // Every queue registered (within max_queues) before any task is
        // created: a batch refused for a new queue creates nothing.
        let mut just_registered = Vec::with_capacity(groups.len());
        for registered in join_all(groups.iter().map(|(queue, _, _)| self.register(queue))).await {
            just_registered.push(registered?);
        }
        let total = groups.iter().map(|(_, p, _)| p.len()).sum();
        let calls =
            groups.iter_mut().zip(just_registered).map(|((queue, _, tasks), registered)| async move {
                match self.enqueue_queue(queue, std::mem::take(tasks), registered, now, None).await? {
                    Created::Tasks(tasks) => Ok(tasks),
                    Created::Already | Created::Skipped => Err(unexpected("a fire status from enqueue")),
                }
            });
        let results = join_all(calls).await;
        let mut out: Vec<Option<Enqueued>> = (0..total).map(|_| None).collect();
        for ((queue, positions, _), result) in groups.into_iter().zip(results) {
            let created = result?;
            let waiting = created.iter().any(|e| !e.deduplicated && e.task.state == TaskState::Waiting);
            for (pos, e) in positions.into_iter().zip(created) {
                out[pos] = Some(e);
            }
            if waiting {
                // Registered with their dependencies before the answer: those
                // that already ended are settled now (workflow.rs).
                self.deliver(&queue, now).await?;
            }
        }
        let mut out: Vec<Enqueued> = out
            .into_iter()
            .map(|e| e.ok_or_else(|| unexpected("a short enqueue reply")))
            .collect::<Result<_, _>>()?;
        for e in out.iter_mut().filter(|e| !e.deduplicated && e.task.state == TaskState::Waiting) {
            e.task = self.get(e.task.id).await?;
        }
        Ok(out)
    }

    /// The queue of each dependency `tasks` name ("-" for one that does not
    /// exist); `DependencyNotFound` when one that does not exist is named by
    /// a task without a request id or dedup key (a task with one may be
    /// answered by the task it names: the script decides, see enqueue.lua).
    async fn dependency_queues(&self, tasks: &[NewTask]) -> Result<HashMap<TaskId, String>, StoreError> {
        let mut ids: Vec<TaskId> = tasks.iter().flat_map(|t| t.depends_on.iter().copied()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut found = HashMap::new();
        let looks = join_all(ids.iter().map(|id| self.get(*id))).await;
        for (id, got) in ids.iter().zip(looks) {
            match got {
                Ok(task) => found.insert(*id, task.queue),
                Err(StoreError::TaskNotFound(_)) => found.insert(*id, GONE.to_owned()),
                Err(e) => return Err(e),
            };
        }
        let mut missing: Vec<TaskId> = tasks
            .iter()
            .filter(|t| t.request_id.is_empty() && t.dedup_key.is_empty())
            .flat_map(|t| t.depends_on.iter().copied())
            .filter(|d| found[d] == GONE)
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            Ok(found)
        } else {
            Err(StoreError::DependencyNotFound(missing))
        }
    }

    /// Enqueues `tasks` (all of one queue) with one script call (two when
    /// the queue turns out to need registering again; `registered`: it was
    /// registered by this call already). With `fire` (a schedule's name and
    /// due time) through `fire.lua`: only if that due time was not fired,
    /// and recording it.
    pub(super) async fn enqueue_queue(
        &self,
        queue: &str,
        mut tasks: Vec<Pending>,
        mut registered: bool,
        now: Millis,
        fire: Option<(&str, Millis)>,
    ) -> Result<Created, StoreError> {
        let window = self.queues.current().get(queue).dedup_window.as_millis() as u64;
        let script = if fire.is_some() { &scripts::FIRE } else { &scripts::ENQUEUE };
        for _ in 0..4 {
            let mut inv = self.invocation(script, queue, now);
            inv.arg(window).arg(if registered { "1" } else { "0" });
            for (t, deps) in &tasks {
                inv.arg(t.id.to_string())
                    .arg(record::encode_body(t))
                    .arg(t.priority)
                    .arg(t.max_attempts)
                    .arg(t.scheduled_time)
                    .arg(crate::core::budget::task_bytes_of(t))
                    .arg(&t.dedup_key)
                    .arg(&t.request_id)
                    .arg(&t.concurrency_key)
                    .arg(t.semaphores.join(","))
                    .arg(deps)
                    .arg(match t.on_dependency_failure {
                        DependencyFailure::Cancel => "c",
                        DependencyFailure::Run => "r",
                    })
                    .arg(t.expire_time.map(|at| at.to_string()).unwrap_or_default());
            }
            if let Some((name, due)) = fire {
                inv.key(keys::fired(queue)).arg(name).arg(due);
            }
            let items = array(self.run(&inv).await?)?;
            match items.first().map(reply::text).transpose()? {
                Some("ok") => {}
                Some("already") if fire.is_some() => return Ok(Created::Already),
                Some("skipped") if fire.is_some() => return Ok(Created::Skipped),
                // Empty, so possibly forgotten since this replica registered
                // it: register it (within max_queues) before its first task.
                Some("empty") if !registered => {
                    self.register_now(queue).await?;
                    registered = true;
                    continue;
                }
                // A sweep took the empty queue out of `tb:queues` between its
                // registration and this call: put it back, now that it holds
                // a task (see `forget_empty`); it was within max_queues a
                // moment ago.
                Some("first") => self.reregister(queue).await?,
                Some("missing") => {
                    let ids = items[1..].iter().map(reply::task_id).collect::<Result<Vec<_>, _>>()?;
                    return Err(StoreError::DependencyNotFound(ids));
                }
                Some("collision") => {
                    renew_ids(&mut tasks, queue);
                    continue;
                }
                other => return Err(unexpected(&format!("enqueue status {other:?}"))),
            }
            if items.len() != 1 + 4 * tasks.len() {
                return Err(unexpected("an enqueue reply of the wrong length"));
            }
            return items[1..]
                .chunks(4)
                .zip(tasks)
                .map(|(item, (mine, _))| {
                    let [created, meta, ..] = item else { unreachable!("chunks of four") };
                    if uint(created)? == 1 {
                        // Ours: the script only set what Redis decides.
                        let mut task = mine;
                        record::apply_meta(&mut task, reply::bytes(meta)?).map_err(reply::corrupt)?;
                        Ok(Enqueued { task, deduplicated: false })
                    } else {
                        let task = task(queue, &item[1..])?;
                        Ok(Enqueued { task, deduplicated: true })
                    }
                })
                .collect::<Result<_, _>>()
                .map(Created::Tasks);
        }
        Err(StoreError::Internal("could not find free task ids".into()))
    }
}

/// What one `enqueue.lua` or `fire.lua` call did.
pub(super) enum Created {
    Tasks(Vec<Enqueued>),
    /// `fire.lua`: the due time (or a later one) was fired already.
    Already,
    /// `fire.lua` without a task: the due time is recorded.
    Skipped,
}

/// New random ids for tasks whose ids were taken.
fn renew_ids(tasks: &mut [Pending], queue: &str) {
    for (t, _) in tasks {
        t.id = queues::new_id(t.create_time, queue);
    }
}
