//! Shared semaphores on Redis: each semaphore's holders are a sorted set in
//! the semaphore's own slot ([`keys::semaphore`]), member `<task>:<lease>`,
//! scored by the time the permit lapses (the lease's deadline). Holders past
//! their lapse time do not count and are removed by the next take
//! (`semaphore_take.lua`), so a permit whose release was lost (a broker
//! crash, a connection cut) comes back by itself at the lease's deadline,
//! when the lease itself ends. See the module docs of [`super`] for the
//! protocol of a lease.

use super::lease::holder;
use super::reply::bounded;
use super::{keys, RedisStore};
use crate::core::task::{Task, TaskId};
use crate::core::Millis;
use crate::store::StoreError;

impl RedisStore {
    /// Renames a reservation of semaphore `name` to the lease `holder`,
    /// lapsing at `deadline`. The holder is added before the reservation
    /// goes, so the count is never below the truth in between.
    pub(super) async fn hand_permit(&self, name: &str, reservation: &str, holder: &str, deadline: Millis) {
        let key = keys::semaphore(name);
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD").arg(&key).arg(deadline).arg(holder).ignore();
        pipe.cmd("ZREM").arg(&key).arg(reservation).ignore();
        let mut conn = self.conn.clone();
        if let Err(e) = bounded(pipe.query_async::<()>(&mut conn)).await {
            // The lease then holds no permit while the reservation lapses:
            // the count errs high until then, never low.
            tracing::warn!(error = %e, semaphore = name, "could not hand a reserved permit to its lease");
        }
    }

    /// Gives back permits of semaphore `name` held by `members`.
    pub(super) async fn give_permits(&self, name: &str, members: &[String]) {
        if members.is_empty() {
            return;
        }
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(keys::semaphore(name)).arg(members);
        let mut conn = self.conn.clone();
        if let Err(e) = bounded(cmd.query_async::<i64>(&mut conn)).await {
            tracing::debug!(error = %e, semaphore = name, "permits not given back; they lapse by themselves");
        }
    }

    /// The lease `lease_id` of `task` ended (settled, canceled): its
    /// permits go back, and every replica's waiting workers are told (a
    /// task of any queue may need them).
    pub(super) async fn release_permits(&self, task: &Task, lease_id: u64) {
        if task.semaphores.is_empty() {
            return;
        }
        let member = [holder(task.id, lease_id)];
        for name in &task.semaphores {
            self.give_permits(name, &member).await;
        }
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(keys::EVENTS).arg("freed");
        let mut conn = self.conn.clone();
        let _ = bounded(cmd.query_async::<i64>(&mut conn)).await;
    }

    /// The lease `lease_id` of `id` now ends at `deadline`: so do its
    /// permits of `semaphores` (comma-separated). An error means a permit
    /// may still lapse at the old deadline: the caller fails the extension,
    /// so the worker extends again (the lease's script and this are both
    /// safe to repeat) instead of running on a permit that lapses under it.
    pub(super) async fn extend_permits(
        &self,
        id: TaskId,
        lease_id: u64,
        semaphores: &str,
        deadline: Millis,
    ) -> Result<(), StoreError> {
        let mut failed = None;
        for name in semaphores.split(',').filter(|n| !n.is_empty()) {
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(keys::semaphore(name)).arg("XX").arg(deadline).arg(holder(id, lease_id));
            let mut conn = self.conn.clone();
            if let Err(e) = bounded(cmd.query_async::<i64>(&mut conn)).await {
                tracing::warn!(error = %e, semaphore = name, "could not extend a permit with its lease");
                failed.get_or_insert(StoreError::Unavailable(format!(
                    "the lease was extended but its permit of semaphore {name} may lapse at the old deadline \
                     ({e}); extend again"
                )));
            }
        }
        failed.map_or(Ok(()), Err)
    }
}
