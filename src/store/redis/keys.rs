//! Every Redis key and channel name the Redis store uses, built here only.
//!
//! A queue's keys share the hash tag `{<queue>}`, so in Redis Cluster they sit
//! in one slot and one Lua script can change them atomically. The global keys
//! ([`QUEUES`], [`LAYOUT`]) are never touched by a script, and only read or
//! written once per queue or per connection, so they are never hot.

/// SET of every queue that ever had a task: what the timer sweeps walk, and
/// how a task id's queue tag ([`super::queues`]) is resolved.
pub const QUEUES: &str = "tb:queues";

/// STRING: the version of this key layout; a Redis written by another layout
/// is refused at start-up rather than misread.
pub const LAYOUT: &str = "tb:layout";

/// The layout this build reads and writes.
pub const LAYOUT_VERSION: &str = "2";

/// Pub/sub channel on which the scripts tell every replica what happened.
pub const EVENTS: &str = "tb:events";

/// The keys of one queue, in the order every script receives them as `KEYS`
/// (see `lua/lib.lua`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueKeys([String; 12]);

/// The role of each key, in `KEYS` order.
const ROLES: [&str; 12] = [
    "meta",
    "body",
    "results",
    "ready",
    "leased",
    "scheduled",
    "finished",
    "seq",
    "lease",
    "dedup",
    "requests",
    "watched",
];

impl QueueKeys {
    pub fn new(queue: &str) -> Self {
        Self(ROLES.map(|role| format!("tb:{{{queue}}}:{role}")))
    }

    /// All twelve keys, in `KEYS` order.
    pub fn all(&self) -> &[String] {
        &self.0
    }

    /// HASH task id -> meta record.
    pub fn meta(&self) -> &str {
        &self.0[0]
    }

    /// ZSET of LEASED tasks by deadline.
    pub fn leased(&self) -> &str {
        &self.0[4]
    }

    /// ZSET of SCHEDULED tasks by due time.
    pub fn scheduled(&self) -> &str {
        &self.0[5]
    }

    /// LIST of finished tasks, `<purge time>:<id>`, in purge-time order.
    pub fn finished(&self) -> &str {
        &self.0[6]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_keys_share_one_hash_tag() {
        let k = QueueKeys::new("emails");
        assert_eq!(k.meta(), "tb:{emails}:meta");
        assert_eq!(k.all()[10], "tb:{emails}:requests");
        assert_eq!(k.all()[11], "tb:{emails}:watched");
        assert!(k.all().iter().all(|key| key.starts_with("tb:{emails}:")));
    }
}
