//! The table's lease path: the one lease driver ([`Fill`]) over each queue's
//! ready order, with flow control (caps, per-key caps, semaphores, rate
//! limits) and pause applied as tasks are taken.

use super::names;
use super::Table;
use crate::core::dependency;
use crate::core::flow::{room, Bucket};
use crate::core::select::Fill;
use crate::core::stats::Event;
use crate::core::task::{Task, TaskState};
use crate::core::Millis;
use crate::store::LeaseSpec;

impl Table {
    pub fn lease(&mut self, spec: &LeaseSpec, now: Millis) -> Vec<Task> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut fill = Fill::new(&spec.queues, spec.max_tasks);
        while let Some((queue, take)) = fill.next(out.len()) {
            let before = out.len();
            self.lease_from(queue, before + take, spec, now, &mut out, &mut bytes);
            fill.took(take, out.len() - before);
        }
        out
    }

    /// Leases from `queue` until `out` holds `until` tasks, the queue has
    /// nothing more that may go, or a limit binds: its `max_in_flight`, its
    /// rate limit's tokens; a task whose key is at `per_key_max_in_flight`
    /// or whose semaphore is at its limit is passed over for the next one.
    fn lease_from(
        &mut self,
        queue_name: &str,
        until: usize,
        spec: &LeaseSpec,
        now: Millis,
        out: &mut Vec<Task>,
        bytes: &mut usize,
    ) {
        let policies = self.policies.clone();
        let policy = policies.get(queue_name);
        let duration = spec.lease_duration.unwrap_or(policy.lease_duration.as_millis() as Millis);
        if self.paused.contains(queue_name) {
            return;
        }
        let Some(queue) = self.names.get(queue_name) else { return };
        let mut want = until.saturating_sub(out.len());
        let in_flight = self.idx.permits.in_flight(queue);
        want = want.min(room(policy.max_in_flight, in_flight) as usize);
        let mut tokens = None;
        if let Some(limit) = &policy.rate_limit {
            let bucket =
                self.buckets.entry(queue_name.to_owned()).or_insert_with(|| Bucket::full(limit, now));
            let available = bucket.available(limit, now);
            tokens = Some(available);
            want = want.min(available as usize);
        }
        let mut taken = 0;
        while taken < want {
            let (permits, names) = (&self.idx.permits, &self.names);
            let per_key = policy.per_key_max_in_flight;
            let pick = self.idx.ready.get(&queue).and_then(|ready| {
                ready.next(
                    |key| key == names::Sym::NONE || room(per_key, permits.of_key(queue, key)) > 0,
                    |sems| permits.semaphores_open(sems, names, &policies),
                )
            });
            let Some(pick) = pick else { break };
            let id = pick.id;
            let expire_time = self.tasks.get(&id).and_then(|t| t.expire_time());
            if dependency::expired(expire_time, TaskState::Ready, now) {
                // Too late to run: canceled instead (out of the ready order).
                self.expire(id, now);
                continue;
            }
            let size = self.tasks.get(&id).map_or(0, |t| t.lease_bytes(&self.names));
            if !out.is_empty() && *bytes + size > spec.max_bytes {
                break;
            }
            *bytes += size;
            if let Some(ready) = self.idx.ready.get_mut(&queue) {
                ready.served(pick);
            }
            let lease_id = self.lease_ids.take();
            let worker = self.names.acquire(&spec.worker_id);
            let task = self.transition(id, now, |t| {
                t.state = TaskState::Leased;
                t.attempt += 1;
                t.set_lease(lease_id, now + duration, worker);
            });
            self.count(queue, Event::Delivered);
            out.push(task);
            taken += 1;
        }
        if let (Some(_), Some(bucket)) = (&policy.rate_limit, self.buckets.get_mut(queue_name)) {
            bucket.take(taken as u32);
        }
        if policy.caps_leases() || tokens.is_some() {
            tracing::debug!(
                queue = queue_name,
                in_flight = in_flight + taken as u32,
                max_in_flight = policy.max_in_flight,
                tokens = tokens.map(|t| t - taken as u32),
                leased = taken,
                "flow control"
            );
        }
        if !policies.semaphores().is_empty() && tracing::enabled!(tracing::Level::DEBUG) {
            for (name, limit) in policies.semaphores() {
                tracing::debug!(semaphore = %name, held = self.idx.permits.held(name), limit, "flow control");
            }
        }
    }

    /// When `queue`'s next delivery is held back only by its rate limit
    /// (ready tasks wait, the bucket is empty): when the bucket has a token.
    pub fn throttled(&mut self, queue: &str, now: Millis) -> Option<Millis> {
        let limit = self.policies.get(queue).rate_limit?;
        let waiting =
            self.names.get(queue).and_then(|q| self.idx.ready.get(&q)).is_some_and(|r| !r.is_empty());
        let bucket = self.buckets.get_mut(queue)?;
        (waiting && bucket.available(&limit, now) == 0).then(|| bucket.next_token(&limit, now))
    }
}
