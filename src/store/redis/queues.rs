//! Which queue a task is in, read from its id, so the calls that only carry a
//! task id (Ack, Nack, Extend, Cancel, GetTask) find the queue's keys without
//! a global index that every enqueue would have to write.
//!
//! The Redis store makes task ids whose low 32 bits (part of the ULID's random
//! part; 48 random bits remain per millisecond) are a tag of the queue's name
//! ([`tag`], FNV-1a). Every queue is registered in `tb:queues` before its
//! first task is created; a replica resolves a tag against the queues it
//! knows and re-reads `tb:queues` when it knows none with that tag. Two
//! queues with the same tag are possible and handled (each is tried).

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, RwLock};

use futures_util::future::join_all;
use redis::{AsyncCommands, Script};

use super::keys::{self, QueueKeys};
use super::reply::bounded;
use super::RedisStore;
use crate::core::task::TaskId;
use crate::core::Millis;
use crate::store::StoreError;

/// The tag of `queue` carried by its task ids.
pub fn tag(queue: &str) -> u32 {
    queue.bytes().fold(0x811c_9dc5, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// A new task id for `queue`, created at `now`.
pub fn new_id(now: Millis, queue: &str) -> TaskId {
    TaskId((TaskId::generate(now).0 & !u128::from(u32::MAX)) | u128::from(tag(queue)))
}

fn tag_of(id: TaskId) -> u32 {
    id.0 as u32
}

/// The queues this replica knows, by tag.
#[derive(Default)]
pub struct KnownQueues(RwLock<Known>);

#[derive(Default)]
struct Known {
    by_tag: HashMap<u32, Vec<String>>,
    /// Queues known to be in `tb:queues`.
    registered: HashSet<String>,
}

impl KnownQueues {
    fn candidates(&self, id: TaskId) -> Vec<String> {
        let known = self.0.read().unwrap_or_else(|e| e.into_inner());
        known.by_tag.get(&tag_of(id)).cloned().unwrap_or_default()
    }

    fn is_registered(&self, queue: &str) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).registered.contains(queue)
    }

    /// `queue` left `tb:queues`: register it again before its next task.
    /// (Its tag stays known: resolving a stale id only costs a lookup.)
    fn forget(&self, queue: &str) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).registered.remove(queue);
    }

    fn learn(&self, queues: impl IntoIterator<Item = String>) {
        let mut known = self.0.write().unwrap_or_else(|e| e.into_inner());
        for q in queues {
            if known.registered.insert(q.clone()) {
                known.by_tag.entry(tag(&q)).or_default().push(q);
            }
        }
    }
}

/// Adds a queue to `tb:queues` unless that would make more than `max` queues.
/// KEYS[1]: tb:queues; ARGV[1]: the queue; ARGV[2]: max.
/// Returns 1 when the queue is in the set, 0 when refused.
static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end \
         if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end \
         redis.call('SADD', KEYS[1], ARGV[1]) return 1",
    )
});

impl RedisStore {
    /// Adds `queue` to `tb:queues` (once per queue and replica), refusing a
    /// queue beyond `max_queues`; called before the queue's first task is
    /// created.
    pub(super) async fn register(&self, queue: &str) -> Result<(), StoreError> {
        if self.known.is_registered(queue) {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let max = self.limits.max_queues.min(i64::MAX as usize);
        let mut inv = REGISTER.prepare_invoke();
        inv.key(keys::QUEUES).arg(queue).arg(max);
        let added: i64 = bounded(inv.invoke_async(&mut conn)).await?;
        if added == 0 {
            return Err(StoreError::QueueLimit(queue.to_owned()));
        }
        self.known.learn([queue.to_owned()]);
        Ok(())
    }

    /// Puts `queue` back in `tb:queues` after its first task was created (a
    /// sweep may have removed it while it was empty); not bounded: the queue
    /// was within `max_queues` when this replica registered it.
    pub(super) async fn reregister(&self, queue: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        bounded(conn.sadd::<_, _, ()>(keys::QUEUES, queue)).await?;
        self.known.learn([queue.to_owned()]);
        Ok(())
    }

    /// Takes the queues that hold no task out of `tb:queues`, so sweeps cost
    /// in proportion to queues with work and `max_queues` counts live queues.
    ///
    /// Safe against an enqueue racing it: the queue leaves the set first and
    /// comes back if it holds a task by then; an enqueue whose task lands
    /// after that look found the queue empty and registers it again itself
    /// (`enqueue.lua` answers `first`).
    pub(super) async fn forget_empty(&self, queues: &[String]) -> Result<usize, StoreError> {
        let checks = queues.iter().map(|queue| async move {
            let mut conn = self.conn.clone();
            let meta = QueueKeys::new(queue).meta().to_owned();
            if bounded(conn.exists::<_, bool>(&meta)).await? {
                return Ok::<_, StoreError>(false);
            }
            bounded(conn.srem::<_, _, ()>(keys::QUEUES, queue)).await?;
            if bounded(conn.exists::<_, bool>(&meta)).await? {
                bounded(conn.sadd::<_, _, ()>(keys::QUEUES, queue)).await?;
                return Ok(false);
            }
            Ok(true)
        });
        let mut forgotten = 0;
        for (queue, removed) in queues.iter().zip(join_all(checks).await) {
            if removed? {
                self.known.forget(queue);
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    /// Every queue in `tb:queues`.
    pub(super) async fn queues(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let queues: Vec<String> = bounded(conn.smembers(keys::QUEUES)).await?;
        self.known.learn(queues.iter().cloned());
        Ok(queues)
    }

    /// The queues task `id` may be in: those with its tag, re-reading
    /// `tb:queues` when none is known here.
    async fn candidates(&self, id: TaskId) -> Result<Vec<String>, StoreError> {
        let known = self.known.candidates(id);
        if !known.is_empty() {
            return Ok(known);
        }
        self.queues().await?;
        Ok(self.known.candidates(id))
    }

    /// The queue holding task `id`: when several queues share its tag, the
    /// one whose records have it.
    pub(super) async fn queue_of(&self, id: TaskId) -> Result<String, StoreError> {
        let mut candidates = self.candidates(id).await?;
        if candidates.len() > 1 {
            let mut conn = self.conn.clone();
            for queue in &candidates {
                if bounded(conn.hexists(QueueKeys::new(queue).meta(), id.to_string())).await? {
                    return Ok(queue.clone());
                }
            }
        }
        candidates.pop().ok_or(StoreError::TaskNotFound(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_queue_tag_and_stay_ordered_ulids() {
        let a = new_id(1_000, "emails");
        let b = new_id(2_000, "emails");
        assert_eq!(tag_of(a), tag("emails"));
        assert_ne!(tag("emails"), tag("emails2"));
        assert!(a < b && a.to_string() < b.to_string());
        assert_eq!(a.to_string().parse::<TaskId>().unwrap(), a);
        assert_ne!(new_id(1_000, "emails"), new_id(1_000, "emails"), "48 random bits remain");
    }

    /// Two queue names with one tag (a birthday search over `q<n>` finds them).
    const SAME_TAG: [&str; 2] = ["q562789", "q779192"];

    #[test]
    fn two_queues_can_share_a_tag_and_both_are_candidates() {
        assert_eq!(tag(SAME_TAG[0]), tag(SAME_TAG[1]));
        let known = KnownQueues::default();
        known.learn(SAME_TAG.map(str::to_owned));
        for queue in SAME_TAG {
            let mut candidates = known.candidates(new_id(1, queue));
            candidates.sort();
            assert_eq!(candidates, SAME_TAG, "an id of {queue}");
        }
    }

    #[test]
    fn a_tag_resolves_to_every_queue_that_has_it() {
        let known = KnownQueues::default();
        known.learn(["a".to_owned(), "b".to_owned(), "a".to_owned()]);
        assert_eq!(known.candidates(new_id(1, "a")), ["a"]);
        assert!(known.candidates(new_id(1, "c")).is_empty());
        assert!(known.is_registered("b") && !known.is_registered("c"));
    }
}
