//! Which queue a task is in, read from its id, so the calls that only carry a
//! task id (Ack, Nack, Extend, Cancel, GetTask) find the queue's keys without
//! a global index that every enqueue would have to write.
//!
//! The Redis store makes task ids whose low 32 bits (part of the ULID's random
//! part; 48 random bits remain per millisecond) are a tag of the queue's name
//! ([`tag`], FNV-1a). Every queue is registered in `tb:queues`, and in the set
//! of its tag ([`keys::tag_set`]), before its first task is created; a
//! replica resolves a tag against the queues it knows and reads that tag's
//! set when it knows none: an unknown (or made-up) id costs one small read,
//! never a read of every queue. Two queues with the same tag are possible and
//! handled (each is tried).
//!
//! # Forgetting, and `max_queues`
//! A queue left without tasks (past its retention) leaves `tb:queues` and its
//! tag set, and its keys are deleted, counters included ([`FORGET`]). Each
//! sweep reads `tb:queues` and replaces what the replica knows with it, so a
//! queue forgotten by any replica leaves every replica's cache within a
//! sweep. Registration is one atomic check-and-add (`max_queues` is never
//! passed by queues registering at once); a replica that still believes a
//! forgotten queue registered learns otherwise from `enqueue.lua` (`empty`)
//! and registers it again, within the bound, before creating anything. One
//! race remains: a sweep that forgets a queue between an enqueue's
//! registration and its script (one round trip) has the enqueue put the
//! queue back without the check (`first`, [`RedisStore::reregister`]); the
//! count then passes `max_queues` by the queues re-created that way, which
//! needs one to be forgotten in that instant.
//!
//! [`FORGET`]: super::scripts::FORGET

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, RwLock};

use futures_util::future::join_all;
use redis::{AsyncCommands, Script};

use super::keys::{self, QueueKeys};
use super::reply::{bounded, uint};
use super::scripts::FORGET;
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

    /// `queue` left `tb:queues`: register it again before its next task, and
    /// resolve its tag from Redis again.
    fn forget(&self, queue: &str) {
        let mut known = self.0.write().unwrap_or_else(|e| e.into_inner());
        known.registered.remove(queue);
        let tag = tag(queue);
        if let Some(named) = known.by_tag.get_mut(&tag) {
            named.retain(|q| q != queue);
            if named.is_empty() {
                known.by_tag.remove(&tag);
            }
        }
    }

    /// What a full read of `tb:queues` found replaces what was known: queues
    /// forgotten by any replica are forgotten here too.
    fn replace(&self, queues: &[String]) {
        let mut fresh = Known::default();
        for q in queues {
            if fresh.registered.insert(q.clone()) {
                fresh.by_tag.entry(tag(q)).or_default().push(q.clone());
            }
        }
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = fresh;
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
    /// Adds `queue` to `tb:queues` unless this replica knows it there
    /// already; whether it did.
    pub(super) async fn register(&self, queue: &str) -> Result<bool, StoreError> {
        if self.known.is_registered(queue) {
            return Ok(false);
        }
        self.register_now(queue).await?;
        Ok(true)
    }

    /// Adds `queue` to `tb:queues`, refusing a queue beyond `max_queues`, and
    /// to its tag set; called before the queue's first task is created.
    pub(super) async fn register_now(&self, queue: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let max = self.limits.max_queues.min(i64::MAX as usize);
        let mut inv = REGISTER.prepare_invoke();
        inv.key(keys::QUEUES).arg(queue).arg(max);
        let added: i64 = bounded(inv.invoke_async(&mut conn)).await?;
        if added == 0 {
            return Err(StoreError::QueueLimit(queue.to_owned()));
        }
        bounded(conn.sadd::<_, _, ()>(keys::tag_set(tag(queue)), queue)).await?;
        self.known.learn([queue.to_owned()]);
        Ok(())
    }

    /// Puts `queue` back in `tb:queues` and its tag set after its first task
    /// was created (a sweep removed it in the instant since it was
    /// registered); not bounded: it was within `max_queues` a moment ago.
    pub(super) async fn reregister(&self, queue: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        bounded(conn.sadd::<_, _, ()>(keys::QUEUES, queue)).await?;
        bounded(conn.sadd::<_, _, ()>(keys::tag_set(tag(queue)), queue)).await?;
        self.known.learn([queue.to_owned()]);
        Ok(())
    }

    /// Takes the queues that hold no task out of `tb:queues` and their tag
    /// sets and deletes their keys, so sweeps cost in proportion to queues
    /// with work, `max_queues` counts live queues, and nothing is left of a
    /// forgotten queue.
    ///
    /// Safe against an enqueue racing it: the queue leaves the sets first,
    /// then [`FORGET`] deletes its keys only if it still holds no task (in
    /// one script, so atomically with any enqueue), else it goes back into
    /// the sets; an enqueue whose task lands after that finds the queue
    /// empty and registers it again itself (`enqueue.lua`: `empty`, `first`).
    ///
    /// [`FORGET`]: super::scripts::FORGET
    pub(super) async fn forget_empty(&self, queues: &[String], now: Millis) -> Result<usize, StoreError> {
        let checks = queues.iter().map(|queue| async move {
            let mut conn = self.conn.clone();
            let meta = QueueKeys::new(queue).meta().to_owned();
            if bounded(conn.exists::<_, bool>(&meta)).await? {
                return Ok::<_, StoreError>(false);
            }
            let tags = keys::tag_set(tag(queue));
            bounded(conn.srem::<_, _, ()>(keys::QUEUES, queue)).await?;
            bounded(conn.srem::<_, _, ()>(&tags, queue)).await?;
            let forgotten = uint(&self.run(&self.invocation(&FORGET, queue, now)).await?)? == 1;
            if !forgotten {
                bounded(conn.sadd::<_, _, ()>(keys::QUEUES, queue)).await?;
                bounded(conn.sadd::<_, _, ()>(&tags, queue)).await?;
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

    /// Every queue in `tb:queues`; what this replica knows becomes that.
    pub(super) async fn queues(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let queues: Vec<String> = bounded(conn.smembers(keys::QUEUES)).await?;
        self.known.replace(&queues);
        Ok(queues)
    }

    /// Puts every queue of `tb:queues` in its tag set (idempotent): a Redis
    /// written by a build without tag sets gets them. Run once at connect.
    pub(super) async fn index_tags(&self) -> Result<(), StoreError> {
        let queues = self.queues().await?;
        let adds = queues.iter().map(|queue| async move {
            let mut conn = self.conn.clone();
            bounded(conn.sadd::<_, _, ()>(keys::tag_set(tag(queue)), queue)).await
        });
        join_all(adds).await.into_iter().collect()
    }

    /// The queues task `id` may be in: those with its tag, read from the
    /// tag's set when none is known here.
    async fn candidates(&self, id: TaskId) -> Result<Vec<String>, StoreError> {
        let known = self.known.candidates(id);
        if !known.is_empty() {
            return Ok(known);
        }
        let mut conn = self.conn.clone();
        let tagged: Vec<String> = bounded(conn.smembers(keys::tag_set(tag_of(id)))).await?;
        self.known.learn(tagged.iter().cloned());
        Ok(tagged)
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
