//! Lease: one `lease.lua` call per queue, in the worker's preference order.
//!
//! Each call is atomic (every task goes to exactly one caller); a lease over
//! several queues is not, which only means another worker may take a task
//! from a later queue in between.
//!
//! Lease ids mix the queue's counter with a random part per call, so a counter
//! that Redis rolled back (lost writes) does not hand a task's lease id out
//! again (see `lua/lease.lua`).

use super::reply::{array, task, text, uint, unexpected};
use super::{keys, scripts, RedisStore};
use crate::core::select::Fill;
use crate::core::task::Task;
use crate::core::Millis;
use crate::store::{LeaseSpec, StoreError};

/// Lease ids carry a random number below this in their low bits (lease.lua).
const LEASE_RANDOM: u32 = 1 << 21;

/// Most rounds of reserving semaphore permits in one queue's lease.
const MAX_SEMAPHORE_ROUNDS: usize = 4;

/// How long a semaphore permit reserved for a lease call is held if the
/// broker never hands it to a task nor gives it back (it crashed between).
const RESERVATION_MS: Millis = 10_000;

/// A lease's holder name in a semaphore's holders.
pub(super) fn holder(id: crate::core::task::TaskId, lease_id: u64) -> String {
    format!("{id}:{lease_id}")
}

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
    ///
    /// The first call stops at the first task that needs shared semaphores
    /// (it holds no permits); when that left the lease short, permits of the
    /// semaphores it named are reserved in their own slots
    /// ([`Self::reserve_permits`]) and a second call takes tasks within them.
    /// Each task so leased gets one reserved permit per semaphore, renamed to
    /// its lease (lapsing at the lease's deadline); the rest are given back.
    async fn lease_from(
        &self,
        queue: &str,
        take: usize,
        spec: &LeaseSpec,
        now: Millis,
        out: &mut Vec<Task>,
        bytes: &mut usize,
    ) -> Result<usize, StoreError> {
        let (mut got, mut blocked) = self.lease_call(queue, take, spec, now, out, bytes, "", true).await?;
        // Permits reserved for this lease, per semaphore, not yet handed out.
        let mut reserved: Vec<(String, Vec<String>)> = Vec::new();
        let mut outcome = Ok(());
        // Each round reserves the semaphores the last call named that have
        // no reservation yet (a task needing another one was passed over).
        for _ in 0..MAX_SEMAPHORE_ROUNDS {
            let new: Vec<&str> = blocked
                .split(',')
                .filter(|n| !n.is_empty() && !reserved.iter().any(|(r, _)| r == n))
                .collect();
            if got >= take || new.is_empty() {
                break;
            }
            match self.reserve_permits(&new.join(","), take - got, now).await {
                Ok(more) => reserved.extend(more),
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
            let rooms: Vec<String> = reserved.iter().map(|(name, m)| format!("{name}={}", m.len())).collect();
            let before = out.len();
            let call =
                self.lease_call(queue, take - got, spec, now, out, bytes, &rooms.join(","), false).await;
            for t in &out[before..] {
                let Some(lease) = &t.lease else { continue };
                for name in &t.semaphores {
                    let Some((_, members)) = reserved.iter_mut().find(|(n, _)| n == name) else { continue };
                    if let Some(reservation) = members.pop() {
                        self.hand_permit(name, &reservation, &holder(t.id, lease.id), lease.expire_time)
                            .await;
                    }
                }
            }
            match call {
                Ok((n, names)) => (got, blocked) = (got + n, names),
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        for (name, members) in reserved {
            self.give_permits(&name, &members).await;
        }
        outcome.map(|()| got)
    }

    /// Reserves up to `want` permits of each semaphore in `names`
    /// (comma-separated) for a lease call: `(name, reservations)`. A name no
    /// longer declared gets `want` unreserved permits (it limits nothing).
    async fn reserve_permits(
        &self,
        names: &str,
        want: usize,
        now: Millis,
    ) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let policies = self.queues.current();
        let lapse = now + RESERVATION_MS;
        let mut out = Vec::new();
        for name in names.split(',').filter(|n| !n.is_empty()) {
            let tag: u64 = rand::random();
            let mut members: Vec<String> = (0..want).map(|i| format!("r:{tag:x}:{i}")).collect();
            if let Some(limit) = policies.semaphore_limit(name) {
                let mut inv = scripts::SEMAPHORE_TAKE.prepare_invoke();
                inv.key(keys::semaphore(name));
                inv.arg(if self.server_time { String::new() } else { now.to_string() }).arg(limit);
                for m in &members {
                    inv.arg(m).arg(lapse);
                }
                let taken = uint(&self.run(&inv).await?)? as usize;
                members.truncate(taken);
                tracing::debug!(semaphore = name, limit, reserved = taken, "flow control");
            }
            out.push((name.to_owned(), members));
        }
        Ok(out)
    }

    /// One `lease.lua` call: leases up to `take` tasks of `queue` into `out`
    /// within the semaphore permits `rooms` ('name=n,...'); returns how many,
    /// and the semaphores a passed-over task needed. `probe`: stop at the
    /// first task needing a semaphore without a permit (see lease.lua).
    #[allow(clippy::too_many_arguments)]
    async fn lease_call(
        &self,
        queue: &str,
        take: usize,
        spec: &LeaseSpec,
        now: Millis,
        out: &mut Vec<Task>,
        bytes: &mut usize,
        rooms: &str,
        probe: bool,
    ) -> Result<(usize, String), StoreError> {
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
        inv.arg(policy.per_key_max_in_flight).arg(rooms).arg(if probe { "1" } else { "0" });
        inv.arg(policy.retention.as_millis() as u64);
        let items = array(self.run(&inv).await?)?;
        let [total, _full, blocked, events, records @ ..] = items.as_slice() else {
            return Err(unexpected("a short lease reply"));
        };
        if uint(events)? == 1 {
            // What waits on a task that expired here hears of it now.
            self.deliver(queue, now).await?;
        }
        let blocked = text(blocked)?.to_owned();
        if records.len() % 3 != 0 {
            return Err(unexpected("a lease reply of the wrong length"));
        }
        *bytes = uint(total)? as usize;
        for record in records.chunks(3) {
            out.push(task(queue, record)?);
        }
        Ok((records.len() / 3, blocked))
    }
}
