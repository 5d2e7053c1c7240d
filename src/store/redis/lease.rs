//! Lease: one `lease.lua` call per queue, in the worker's preference order.
//!
//! Each call is atomic (every task goes to exactly one caller); a lease over
//! several queues is not, which only means another worker may take a task
//! from a later queue in between.
//!
//! Lease ids mix the queue's counter with a random part per call, so a counter
//! that Redis rolled back (lost writes) does not hand a task's lease id out
//! again (see `lua/lease.lua`).

use super::reply::{array, task, uint, unexpected};
use super::{scripts, RedisStore};
use crate::core::select::Fill;
use crate::core::task::Task;
use crate::core::Millis;
use crate::store::{LeaseSpec, StoreError};

/// Lease ids carry a random number below this in their low bits (lease.lua).
const LEASE_RANDOM: u32 = 1 << 21;

impl RedisStore {
    /// Leases by `spec` with the one lease driver, [`Fill`], over `lease.lua`
    /// (one script call per queue).
    /// A failure after some tasks were leased returns those tasks.
    pub(super) async fn lease_tasks(&self, spec: LeaseSpec, now: Millis) -> Result<Vec<Task>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut fill = Fill::new(&spec.queues, spec.max_tasks);
        while let Some((queue, take)) = fill.next(out.len()) {
            match self.lease_from(queue, take, &spec, now, &mut out, &mut bytes).await {
                Ok(got) => fill.took(take, got),
                Err(e) if out.is_empty() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, queue, "lease stopped part-way; returning what was leased");
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Leases up to `take` tasks from `queue` into `out`; returns how many.
    async fn lease_from(
        &self,
        queue: &str,
        take: usize,
        spec: &LeaseSpec,
        now: Millis,
        out: &mut Vec<Task>,
        bytes: &mut usize,
    ) -> Result<usize, StoreError> {
        let policies = self.queues.current();
        let policy = policies.get(queue);
        let duration = spec.lease_duration.unwrap_or(policy.lease_duration.as_millis() as Millis);
        let mut inv = self.invocation(&scripts::LEASE, queue, now);
        inv.arg(take).arg(duration).arg(&spec.worker_id).arg(out.len()).arg(*bytes).arg(spec.max_bytes);
        inv.arg(crate::core::budget::FIELD);
        // The random part of this call's lease ids (see lease.lua).
        inv.arg(rand::random::<u32>() % LEASE_RANDOM);
        inv.arg(policy.max_in_flight);
        match &policy.rate_limit {
            Some(limit) => inv.arg(format!("{:e}", limit.rate.per_ms())).arg(limit.burst),
            None => inv.arg("").arg(0),
        };
        inv.arg(policy.per_key_max_in_flight);
        let items = array(self.run(&inv).await?)?;
        let [total, _full, records @ ..] = items.as_slice() else {
            return Err(unexpected("a short lease reply"));
        };
        if records.len() % 3 != 0 {
            return Err(unexpected("a lease reply of the wrong length"));
        }
        *bytes = uint(total)? as usize;
        for record in records.chunks(3) {
            out.push(task(queue, record)?);
        }
        Ok(records.len() / 3)
    }
}
