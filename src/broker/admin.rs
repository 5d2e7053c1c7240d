//! The operations API: see and steer queues (list, pause, purge, redrive),
//! the routing dry-run. Validation of the operator's input lives here; the
//! numbers come from the store, so over a shared store every replica
//! answers the same.

use crate::core::access::{Access, Operation};
use std::collections::BTreeMap;

use super::{Broker, BrokerError, Violation};
use crate::core::queue::{valid_queue_name, QueuePolicy};
use crate::core::routing::{self, Explanation};
use crate::core::scaler::ScalerSpec;
use crate::core::stats::{purgeable, QueueStats};
use crate::core::task::{Task, TaskId, TaskState};

/// Largest ListTasks page.
pub const MAX_PAGE: usize = 1000;
/// ListTasks page when none is asked for.
pub const DEFAULT_PAGE: usize = 100;

/// One queue as the operations API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueInfo {
    pub name: String,
    /// In the config file (false: created on first use).
    pub declared: bool,
    pub stats: QueueStats,
    /// The resolved settings in force.
    pub policy: QueuePolicy,
}

/// One page of ListTasks.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<TaskId>,
}

impl Broker {
    /// Every queue that exists (declared, holding tasks, or paused) and
    /// that `access` may inspect, by name.
    pub async fn list_queues(&self, access: &Access) -> Result<Vec<QueueInfo>, BrokerError> {
        let policies = self.inner.settings.queues.current();
        let mut names = self.store().queue_names().await?;
        names.extend(policies.declared().map(str::to_owned));
        names.retain(|q| access.allows(Operation::ListQueues, q));
        names.sort_unstable();
        names.dedup();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let stats = self.store().queue_stats(&name).await?;
            out.push(QueueInfo {
                declared: policies.is_declared(&name),
                policy: policies.get(&name).clone(),
                stats,
                name,
            });
        }
        Ok(out)
    }

    /// One queue; `QueueNotFound` when it is neither declared, holding
    /// tasks, nor paused.
    pub async fn queue_info(&self, name: &str) -> Result<QueueInfo, BrokerError> {
        check_queue(name)?;
        let policies = self.inner.settings.queues.current();
        let stats = self.store().queue_stats(name).await?;
        let declared = policies.is_declared(name);
        if !declared && !stats.paused && stats.counts.total() == 0 {
            return Err(BrokerError::QueueNotFound(name.to_owned()));
        }
        Ok(QueueInfo { name: name.to_owned(), declared, stats, policy: policies.get(name).clone() })
    }

    /// Stops (or restarts) delivery from `queue`. A resume wakes the
    /// workers waiting on it at once (other replicas through the store).
    pub async fn set_paused(&self, queue: &str, paused: bool) -> Result<QueueInfo, BrokerError> {
        self.queue_info(queue).await?;
        let changed = self.store().set_paused(queue, paused).await?;
        if changed && !paused {
            self.inner.waiters.wake(queue);
        }
        tracing::info!(queue, paused, changed, "queue pause set");
        self.queue_info(queue).await
    }

    /// Removes the queue's tasks in `states`; returns how many.
    pub async fn purge_queue(&self, queue: &str, states: &[TaskState]) -> Result<u64, BrokerError> {
        let mut v = Vec::new();
        if states.is_empty() {
            v.push(Violation::new("states", "name at least one state"));
        }
        if let Some(s) = states.iter().find(|s| !purgeable(**s)) {
            v.push(Violation::new("states", format!("{s:?} tasks are held by workers and cannot be purged")));
        }
        if !v.is_empty() {
            return Err(BrokerError::Invalid(v));
        }
        self.queue_info(queue).await?;
        let purged = self.store().purge_queue(queue, states, self.now()).await?;
        self.inner.activity.touch();
        tracing::info!(queue, ?states, purged, "queue purged");
        Ok(purged)
    }

    /// A page of the queue's tasks in `state`, oldest first. `page_size` 0
    /// is [`DEFAULT_PAGE`]; `after` comes from the previous page.
    pub async fn list_tasks(
        &self,
        queue: &str,
        state: TaskState,
        page_size: usize,
        after: Option<TaskId>,
    ) -> Result<TaskPage, BrokerError> {
        if page_size > MAX_PAGE {
            return Err(BrokerError::invalid("page_size", format!("must be at most {MAX_PAGE}")));
        }
        let size = if page_size == 0 { DEFAULT_PAGE } else { page_size };
        self.queue_info(queue).await?;
        let mut tasks = self.store().list_tasks(queue, state, after, size + 1).await?;
        let next = (tasks.len() > size).then(|| tasks[size - 1].id);
        tasks.truncate(size);
        Ok(TaskPage { tasks, next })
    }

    /// DEAD tasks back to READY (attempt 0): `ids`, or the oldest up to
    /// `limit` (0: all). Returns how many.
    pub async fn redrive(&self, queue: &str, ids: &[TaskId], limit: usize) -> Result<u64, BrokerError> {
        self.queue_info(queue).await?;
        let swept = self.store().redrive(queue, ids, limit, self.now()).await?;
        self.inner.activity.touch();
        for q in &swept.ready_queues {
            self.inner.waiters.wake(q);
        }
        if self.inner.watchers.any() {
            for id in &swept.changed {
                if let Ok(task) = self.store().get(*id).await {
                    self.inner.watchers.publish(&task);
                }
            }
        }
        tracing::info!(queue, redriven = swept.count, "dead tasks redriven");
        Ok(swept.count as u64)
    }

    /// The number an autoscaler scales on: the spec's queues' ready (and
    /// leased) tasks, summed (a queue that does not exist counts 0).
    pub async fn scaler_value(&self, spec: &ScalerSpec) -> Result<u64, BrokerError> {
        let mut total = 0;
        for q in &spec.queues {
            total += spec.value_of(&self.store().queue_stats(q).await?.counts);
        }
        Ok(total)
    }

    /// Where an Enqueue with these fields would go (nothing is enqueued).
    pub fn explain_route(
        &self,
        queue: &str,
        kind: &str,
        headers: &BTreeMap<String, String>,
    ) -> Result<Explanation, BrokerError> {
        if !queue.is_empty() {
            check_queue(queue)?;
        }
        let policies = self.inner.settings.queues.current();
        Ok(routing::explain(&policies, queue, kind, headers))
    }
}

fn check_queue(name: &str) -> Result<(), BrokerError> {
    if valid_queue_name(name) {
        Ok(())
    } else {
        Err(BrokerError::invalid("queue", "must match [A-Za-z0-9._:-]{1,128}"))
    }
}
