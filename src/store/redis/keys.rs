//! Every Redis key and channel name the Redis store uses, built here only.
//!
//! A queue's keys share the hash tag `{<queue>}`, so in Redis Cluster they sit
//! in one slot and one Lua script can change them atomically. The two global
//! keys ([`INDEX`], [`QUEUES`]) are never touched by a script: the Rust side
//! writes them around the scripts.

/// HASH task id -> queue: how GetTask, Ack, Nack, Extend and Cancel, which only
/// know a task id, find the queue's keys. Written before the enqueue script and
/// deleted after the purge, so an entry without its task is possible (and
/// harmless: it reads as "not found").
pub const INDEX: &str = "tb:index";

/// SET of every queue that ever had a task: what the timer sweeps walk.
pub const QUEUES: &str = "tb:queues";

/// Pub/sub channel on which the scripts tell every replica what happened.
pub const EVENTS: &str = "tb:events";

/// The keys of one queue, in the order every script receives them as `KEYS`
/// (see `lua/lib.lua`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueKeys([String; 10]);

/// The role of each key, in `KEYS` order.
const ROLES: [&str; 10] =
    ["tasks", "ready", "leased", "scheduled", "finished", "seq", "lease", "dedup", "requests", "watched"];

impl QueueKeys {
    pub fn new(queue: &str) -> Self {
        Self(ROLES.map(|role| format!("tb:{{{queue}}}:{role}")))
    }

    /// All ten keys, in `KEYS` order.
    pub fn all(&self) -> &[String] {
        &self.0
    }

    /// HASH task id -> MessagePack record.
    pub fn tasks(&self) -> &str {
        &self.0[0]
    }

    /// ZSET of LEASED tasks by deadline.
    pub fn leased(&self) -> &str {
        &self.0[2]
    }

    /// ZSET of SCHEDULED tasks by due time.
    pub fn scheduled(&self) -> &str {
        &self.0[3]
    }

    /// ZSET of finished tasks by purge time.
    pub fn finished(&self) -> &str {
        &self.0[4]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_keys_share_one_hash_tag() {
        let k = QueueKeys::new("emails");
        assert_eq!(k.tasks(), "tb:{emails}:tasks");
        assert_eq!(k.all()[8], "tb:{emails}:requests");
        assert_eq!(k.all()[9], "tb:{emails}:watched");
        assert!(k.all().iter().all(|key| key.starts_with("tb:{emails}:")));
    }
}
