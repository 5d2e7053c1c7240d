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
pub struct QueueKeys([String; 21]);

/// The role of each key, in `KEYS` order: then one ready list per priority.
const ROLES: [&str; 21] = [
    "meta",
    "body",
    "results",
    "leased",
    "scheduled",
    "finished",
    "seq",
    "lease",
    "dedup",
    "requests",
    "watched",
    "ready:0",
    "ready:1",
    "ready:2",
    "ready:3",
    "ready:4",
    "ready:5",
    "ready:6",
    "ready:7",
    "ready:8",
    "ready:9",
];

impl QueueKeys {
    pub fn new(queue: &str) -> Self {
        Self(ROLES.map(|role| format!("tb:{{{queue}}}:{role}")))
    }

    /// All the keys, in `KEYS` order.
    pub fn all(&self) -> &[String] {
        &self.0
    }

    /// HASH task id -> meta record.
    pub fn meta(&self) -> &str {
        &self.0[0]
    }

    /// ZSET of LEASED tasks by deadline.
    pub fn leased(&self) -> &str {
        &self.0[3]
    }

    /// ZSET of SCHEDULED tasks by due time.
    pub fn scheduled(&self) -> &str {
        &self.0[4]
    }

    /// LIST of finished tasks, `<purge time>:<id>`, in purge-time order.
    pub fn finished(&self) -> &str {
        &self.0[5]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_keys_share_one_hash_tag() {
        let k = QueueKeys::new("emails");
        assert_eq!(k.meta(), "tb:{emails}:meta");
        assert_eq!(k.all()[9], "tb:{emails}:requests");
        assert_eq!(k.all()[11], "tb:{emails}:ready:0");
        assert_eq!(k.all()[20], "tb:{emails}:ready:9");
        assert!(k.all().iter().all(|key| key.starts_with("tb:{emails}:")));
    }
}
