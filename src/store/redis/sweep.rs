//! The timer sweeps (reap, promote, purge) and the next timer, over every
//! queue in `tb:queues`.
//!
//! Each queue is swept by its own script calls, all queues concurrently over
//! the one multiplexed connection. Several replicas may sweep at once: each
//! script re-reads the due tasks under Redis's atomicity, so every task is
//! handled by exactly one call.

use futures_util::future::join_all;
use redis::{Script, Value};

use super::keys::QueueKeys;
use super::reply::{self, array, bounded, task_id, uint, unexpected};
use super::scripts::{self, SWEEP_BATCH};
use super::RedisStore;
use crate::core::task::TaskId;
use crate::core::Millis;
use crate::store::{StoreError, Swept};

/// A sweep script and the number of reply items it gives per task.
#[derive(Clone, Copy)]
struct Sweep {
    script: &'static Script,
    per_task: usize,
}

impl RedisStore {
    /// `requeue_expired`: expired leases back to READY, or DEAD.
    pub(super) async fn reap(&self, now: Millis) -> Result<Swept, StoreError> {
        let reap = Sweep { script: &scripts::REAP, per_task: 3 };
        let mut swept = Swept::default();
        let policies = self.queues.current();
        let mut died_in = Vec::new();
        for (queue, items) in self.sweep(reap, now, |q| vec![self.retention(q)]).await? {
            if items.chunks(3).any(|item| item.get(2).is_some_and(|ready| uint(ready).ok() == Some(0))) {
                died_in.push(queue.clone());
            }
            // An expired lease of a capped queue frees a permit even when its
            // task dies: the queue's waiting workers look again (as the table).
            let caps = policies.get(&queue).caps_leases();
            for item in items.chunks(3) {
                let [id, lease_id, ready] = item else { return Err(unexpected("an odd reap reply")) };
                let id = task_id(id)?;
                swept.expired.push((id, uint(lease_id)?));
                note(&mut swept, &queue, id, uint(ready)? == 1 || caps);
            }
        }
        // What waits on a task that died here hears of it now.
        for queue in died_in {
            self.deliver(&queue, now).await?;
        }
        Ok(swept)
    }

    /// `promote_due`: due SCHEDULED tasks to READY.
    pub(super) async fn promote(&self, now: Millis) -> Result<Swept, StoreError> {
        let expire = Sweep { script: &scripts::EXPIRE, per_task: 1 };
        let promote = Sweep { script: &scripts::PROMOTE, per_task: 1 };
        let mut swept = Swept::default();
        let mut expired_in = Vec::new();
        for (queue, items) in self.sweep(expire, now, |q| vec![self.retention(q)]).await? {
            for id in &items {
                note(&mut swept, &queue, task_id(id)?, false);
            }
            if !items.is_empty() {
                expired_in.push(queue);
            }
        }
        for queue in expired_in {
            self.deliver(&queue, now).await?;
        }
        for (queue, items) in self.sweep(promote, now, |_| Vec::new()).await? {
            for id in &items {
                note(&mut swept, &queue, task_id(id)?, true);
            }
        }
        // Resolution events a replica left behind (it died, or another
        // replica held the outbox too long).
        self.deliver_all(now).await?;
        Ok(swept)
    }

    /// `purge_finished`: finished tasks past retention removed; then the
    /// queues left without tasks leave `tb:queues`.
    pub(super) async fn purge(&self, now: Millis) -> Result<Swept, StoreError> {
        let purge = Sweep { script: &scripts::PURGE, per_task: 1 };
        let swept = self.sweep(purge, now, |_| Vec::new()).await?;
        let count = swept.iter().map(|(_, items)| items.len()).sum();
        let queues: Vec<String> = swept.into_iter().map(|(q, _)| q).collect();
        self.forget_empty(&queues, now).await?;
        Ok(Swept { count, ..Swept::default() })
    }

    /// `next_timer`: the earliest of every queue's first lease deadline, due
    /// time and purge time, read in one pipeline.
    pub(super) async fn first_timer(&self) -> Result<Option<Millis>, StoreError> {
        let queues = self.queues().await?;
        if queues.is_empty() {
            return Ok(None);
        }
        // One pipeline per queue (its keys share a slot in a cluster), all
        // at once on the multiplexed connection.
        let reads = queues.iter().map(|queue| {
            let keys = QueueKeys::new(queue);
            let mut pipe = redis::pipe();
            pipe.zrange_withscores(keys.leased(), 0, 0).zrange_withscores(keys.scheduled(), 0, 0);
            pipe.lindex(keys.finished(), 0).zrange_withscores(keys.expiring(), 0, 0);
            let mut conn = self.conn.clone();
            async move { bounded(pipe.query_async::<Vec<Value>>(&mut conn)).await }
        });
        let mut firsts = Vec::new();
        for read in join_all(reads).await {
            firsts.extend(read?);
        }
        let mut earliest: Option<Millis> = None;
        for (i, first) in firsts.iter().enumerate() {
            let at = if i % 4 == 2 {
                // '<purge time>:<id>' (lua/lib.lua)
                match first {
                    Value::Nil => None,
                    entry => reply::text(entry)?.split(':').next().and_then(|t| t.parse().ok()),
                }
            } else {
                // [member, score]
                array(first.clone())?
                    .get(1)
                    .map(reply::text)
                    .transpose()?
                    .and_then(|t| t.parse::<f64>().ok())
                    .map(|f| f as Millis)
            };
            earliest = match (earliest, at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(earliest)
    }

    /// Runs a sweep on every queue at once; the per-queue replies in order.
    async fn sweep(
        &self,
        sweep: Sweep,
        now: Millis,
        args: impl Fn(&str) -> Vec<u64>,
    ) -> Result<Vec<(String, Vec<Value>)>, StoreError> {
        let queues = self.queues().await?;
        let runs = queues.iter().map(|q| {
            let args = args(q);
            async move { self.sweep_queue(sweep, q, now, &args).await }
        });
        let results = join_all(runs).await;
        queues.into_iter().zip(results).map(|(q, r)| r.map(|items| (q, items))).collect()
    }

    /// Runs a sweep script on `queue` until it has nothing left due at `now`.
    async fn sweep_queue(
        &self,
        sweep: Sweep,
        queue: &str,
        now: Millis,
        args: &[u64],
    ) -> Result<Vec<Value>, StoreError> {
        let mut all = Vec::new();
        loop {
            let mut inv = self.invocation(sweep.script, queue, now);
            for a in args {
                inv.arg(*a);
            }
            inv.arg(SWEEP_BATCH);
            let items = array(self.run(&inv).await?)?;
            let full = items.len() >= SWEEP_BATCH * sweep.per_task;
            all.extend(items);
            if !full {
                return Ok(all);
            }
        }
    }
}

/// Records one swept task in the outcome, as the table does.
fn note(swept: &mut Swept, queue: &str, id: TaskId, ready: bool) {
    swept.count += 1;
    swept.changed.push(id);
    if ready && !swept.ready_queues.iter().any(|q| q == queue) {
        swept.ready_queues.push(queue.to_owned());
    }
}
