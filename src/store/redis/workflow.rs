//! Dependencies across queues, and so across Redis Cluster slots: an outbox
//! per queue, delivered by any replica, applied idempotently.
//!
//! # The problem
//! A script touches one queue's keys (one slot). A task of queue `B` that
//! depends on a task of queue `A` must be registered in `A` when it is
//! created in `B`, and released (or canceled) in `B` when the task of `A`
//! ends: two slots each time, so no single atomic step.
//!
//! # The design
//! - Every script that changes a queue in a way another queue must learn
//!   appends an event to that queue's **outbox** (`tb:{q}:outbox`, a list) in
//!   the same atomic step as the change itself (`outbox()` in `lua/lib.lua`),
//!   each entry unique by a per-queue sequence number:
//!   - `reg <seq> <A> <dep> <B> <task>`: `enqueue.lua` created `task` WAITING
//!     in `B`, depending on `dep` of `A` (or `redrive.lua` made it run again:
//!     it reads `dep` again; `dep`'s end then finds it no longer waiting);
//!   - `end <seq> <B> <task> <dep> <state>`: `dep` ended in `state` (ack,
//!     nack or reap to DEAD, cancel, expiry, a cascade), and `task` waits
//!     on it;
//!   - `rel <seq> <A> <dep> <task>`: `task` finished, so it no longer reads
//!     `dep` (which was kept past retention for it).
//! - A replica **delivers** an outbox ([`RedisStore::deliver`]): in order, it
//!   runs each event's script on the other queue, then removes the entry
//!   (`LREM` of that exact entry). The replica that made the change delivers
//!   at once, before its call returns (so an Ack returns with the dependents
//!   it released already READY); every replica's timer sweep delivers
//!   whatever is left ([`RedisStore::deliver_all`]), so an outbox survives
//!   the replica that filled it dying half-way.
//! - Each event's script is **idempotent**, so delivering twice (a replica
//!   died after applying, before removing) changes nothing the second time:
//!   `depend.lua` adds the task to `dep`'s waiters and readers once;
//!   `resolve.lua` removes `dep` from the task's pending list and acts only if
//!   it was there (`core::dependency::resolve`); `release.lua` removes the
//!   reader once. Hence exactly-once resolution: at least once by the
//!   outbox, at most once by the pending list.
//! - Registration and ending are ordered in `A`'s slot: `depend.lua` either
//!   finds `dep` unfinished (and adds the waiter, so `dep`'s end will emit an
//!   `end` for it) or finished (and returns its state, so the deliverer
//!   resolves at once). No resolution falls between the two.
//! - One deliverer per outbox at a time (a lock key with a lapse,
//!   `outbox_lock`, renewed between batches), so its events apply in order
//!   (a `rel` never before the `reg` it undoes: both are in the dependent's
//!   queue's outbox); a deliverer that died leaves the lock to lapse. A
//!   replica waits up to a second for another's lock, then leaves the work to
//!   the sweeps.
//! - A dependency purged between the enqueue's existence check and its
//!   registration is seen as CANCELED.
//!
//! Limits: a deliverer stalled past the lock's lapse (5 s without finishing
//! a batch) lets a second one start on the same outbox; events still apply
//! exactly once, but a `rel` could then overtake its `reg` and keep a
//! finished dependency past its retention.
//!
//! WAITING tasks sit in `ids_waiting`; their dependencies and failure policy
//! in `deps`, the ones still pending in `pending`; deadlines in `expiring`,
//! checked by `lease.lua` and by `expire.lua` in the promote sweep
//! (`expire_due` in `lib.lua`).

use super::reply::{array, bounded, uint, unexpected};
use super::{keys::QueueKeys, scripts, RedisStore};
use crate::core::task::TaskId;
use crate::core::Millis;
use crate::store::StoreError;

/// Outbox entries read per round trip.
const BATCH: isize = 100;
/// How long a deliverer's lock lasts unless renewed (ms).
const LOCK_MS: u64 = 5_000;
/// How many times a deliverer waits for another one's lock before leaving
/// the outbox to the timer sweeps.
const LOCK_TRIES: usize = 200;

impl RedisStore {
    /// Delivers `queue`'s outbox, and those of the queues it cascades into
    /// (a canceled dependent's own dependents). Returns the tasks changed.
    pub(super) async fn deliver(&self, queue: &str, now: Millis) -> Result<Vec<TaskId>, StoreError> {
        let mut changed = Vec::new();
        let mut work = vec![queue.to_owned()];
        while let Some(q) = work.pop() {
            self.deliver_one_outbox(&q, now, &mut work, &mut changed).await?;
        }
        Ok(changed)
    }

    /// Every queue's outbox (the timer sweep's part). What it changes is
    /// announced by the scripts (`ready`, `changed`), as any side effect.
    pub(super) async fn deliver_all(&self, now: Millis) -> Result<(), StoreError> {
        for queue in self.queues().await? {
            let mut conn = self.conn.clone();
            let waiting: u64 =
                bounded(redis::cmd("LLEN").arg(QueueKeys::new(&queue).outbox()).query_async(&mut conn))
                    .await?;
            if waiting > 0 {
                self.deliver(&queue, now).await?;
            }
        }
        Ok(())
    }

    async fn deliver_one_outbox(
        &self,
        queue: &str,
        now: Millis,
        work: &mut Vec<String>,
        changed: &mut Vec<TaskId>,
    ) -> Result<(), StoreError> {
        let keys = QueueKeys::new(queue);
        let mut conn = self.conn.clone();
        let entries: Vec<String> =
            bounded(redis::cmd("LRANGE").arg(keys.outbox()).arg(0).arg(BATCH - 1).query_async(&mut conn))
                .await?;
        if entries.is_empty() {
            return Ok(());
        }
        let token = rand::random::<u64>().to_string();
        if !self.lock_outbox(&keys, &token).await? {
            return Ok(());
        }
        let outcome = self.deliver_entries(&keys, entries, &token, now, work, changed).await;
        // Released if still ours (best effort: it lapses anyway).
        let held: Option<String> =
            bounded(redis::cmd("GET").arg(keys.outbox_lock()).query_async(&mut conn)).await?;
        if held.as_deref() == Some(token.as_str()) {
            bounded(redis::cmd("DEL").arg(keys.outbox_lock()).query_async::<i64>(&mut conn)).await?;
        }
        outcome
    }

    /// Applies and removes the outbox's entries, from `entries` (its head)
    /// on, until it is empty; renews the lock between batches.
    async fn deliver_entries(
        &self,
        keys: &QueueKeys,
        mut entries: Vec<String>,
        token: &str,
        now: Millis,
        work: &mut Vec<String>,
        changed: &mut Vec<TaskId>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        while !entries.is_empty() {
            for entry in &entries {
                self.apply(entry, now, work, changed).await?;
                let mut remove = redis::cmd("LREM");
                remove.arg(keys.outbox()).arg(1).arg(entry);
                bounded(remove.query_async::<i64>(&mut conn)).await?;
            }
            let mut renew = redis::cmd("SET");
            renew.arg(keys.outbox_lock()).arg(token).arg("XX").arg("PX").arg(LOCK_MS);
            bounded(renew.query_async::<Option<String>>(&mut conn)).await?;
            let mut next = redis::cmd("LRANGE");
            next.arg(keys.outbox()).arg(0).arg(BATCH - 1);
            entries = bounded(next.query_async(&mut conn)).await?;
        }
        Ok(())
    }

    /// Takes the outbox lock, waiting for another deliverer to finish (it
    /// may be delivering this replica's own events); `false` when it does
    /// not finish in time (the timer sweeps then deliver what is left).
    async fn lock_outbox(&self, keys: &QueueKeys, token: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        for _ in 0..LOCK_TRIES {
            let set: Option<String> = bounded(
                redis::cmd("SET")
                    .arg(keys.outbox_lock())
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(LOCK_MS)
                    .query_async(&mut conn),
            )
            .await?;
            if set.is_some() {
                return Ok(true);
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(false)
    }

    /// Applies one outbox entry (see the module docs) on the queue it names.
    async fn apply(
        &self,
        entry: &str,
        now: Millis,
        work: &mut Vec<String>,
        changed: &mut Vec<TaskId>,
    ) -> Result<(), StoreError> {
        let fields: Vec<&str> = entry.split(' ').collect();
        let bad = || unexpected(&format!("an outbox entry {entry:?}"));
        match fields.as_slice() {
            ["reg", _, dep_queue, dep, queue, task] => {
                let mut inv = self.invocation(&scripts::DEPEND, dep_queue, 0);
                inv.arg(*dep).arg(*queue).arg(*task);
                let state = uint(&self.run(&inv).await?)?;
                // 4..=6: SUCCEEDED, DEAD, CANCELED; 0: gone (lib.lua).
                if state == 0 || (4..=6).contains(&state) {
                    self.resolve(queue, task, dep, state, now, work, changed).await?;
                }
            }
            ["end", _, queue, task, dep, state] => {
                let state = state.parse().map_err(|_| bad())?;
                self.resolve(queue, task, dep, state, now, work, changed).await?;
            }
            ["rel", _, dep_queue, dep, reader] => {
                let mut inv = self.invocation(&scripts::RELEASE, dep_queue, 0);
                inv.arg(*dep).arg(*reader);
                self.run(&inv).await?;
            }
            _ => return Err(bad()),
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn resolve(
        &self,
        queue: &str,
        task: &str,
        dep: &str,
        state: u64,
        now: Millis,
        work: &mut Vec<String>,
        changed: &mut Vec<TaskId>,
    ) -> Result<(), StoreError> {
        let mut inv = self.invocation(&scripts::RESOLVE, queue, now);
        inv.arg(task).arg(dep).arg(state).arg(self.retention(queue));
        let reply = array(self.run(&inv).await?)?;
        let [did, events] = reply.as_slice() else { return Err(unexpected("a resolve reply")) };
        if uint(did)? == 1 {
            changed.push(task.parse().map_err(|_| unexpected("a task id in the outbox"))?);
        }
        if uint(events)? == 1 && !work.iter().any(|q| q == queue) {
            work.push(queue.to_owned());
        }
        Ok(())
    }
}
