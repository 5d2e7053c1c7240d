//! Every Redis key and channel name the Redis store uses, built here only.
//!
//! A queue's keys share the hash tag `{<queue>}`, so in Redis Cluster they sit
//! in one slot and one Lua script can change them atomically. The global keys
//! ([`QUEUES`], [`tag_set`], [`LAYOUT`], [`PAUSED`]) are never touched by a
//! script but `REGISTER`'s single-key check-and-add, and only written once
//! per queue or per pause, or read once per connection, sweep or unknown
//! tag, so they are never hot.

/// SET of every queue that holds tasks (a queue left empty past its
/// retention is taken out): what the timer sweeps walk, and what
/// `max_queues` counts.
pub const QUEUES: &str = "tb:queues";

/// SET of the queues in [`QUEUES`] whose task ids carry `tag` (see
/// [`super::queues`]): how a task id unknown to a replica finds its queue
/// without reading every queue.
pub fn tag_set(tag: u32) -> String {
    format!("tb:tag:{tag:08x}")
}

/// STRING: the version of this key layout; a Redis written by another layout
/// is refused at start-up rather than misread.
pub const LAYOUT: &str = "tb:layout";

/// The layout this build reads and writes: 3 added the key groups' lists
/// and turns (round-robin across `concurrency_key`s).
pub const LAYOUT_VERSION: &str = "3";

/// The older layout this build reads too (its ready lists are the no-key
/// groups), marking the Redis with [`LAYOUT_VERSION`] when it connects.
pub const UPGRADES_FROM: &str = "2";

/// SET of the queues paused now (or lately: see [`super::admin`]), so
/// `queue_names` lists a paused queue that holds no task. Written beside the
/// pause script, never by a script; the queue's own `paused` key decides.
pub const PAUSED: &str = "tb:paused";

/// HASH schedule name -> its definition (a
/// [`crate::store::schedule_record`], without the last fired due time,
/// which lives in [`fired`]). Written by Put/DeleteSchedule and config
/// declarations only, never by a script.
pub const SCHEDULES: &str = "tb:schedules";

/// HASH schedule name -> the last due time fired (ms) of the schedules
/// enqueuing into `queue`: in the queue's slot, so `fire.lua` checks and
/// records it in the step that enqueues; not among [`QueueKeys`], so it
/// outlives the queue's tasks (`forget.lua` deletes only those).
pub fn fired(queue: &str) -> String {
    format!("tb:{{{queue}}}:fired")
}

/// Pub/sub channel on which the scripts tell every replica what happened.
pub const EVENTS: &str = "tb:events";

/// ZSET of the holders of semaphore `name` (`<task id>:<lease id>`, or a
/// reservation `r:<random>:<n>`) scored by when each permit lapses: in its
/// own slot (hash tag `{sem:<name>}`), shared by every queue.
pub fn semaphore(name: &str) -> String {
    format!("tb:{{sem:{name}}}:holders")
}

/// The keys of one queue, in the order every script receives them as `KEYS`
/// (see `lua/lib.lua`).
///
/// Besides these, a keyed queue's READY tasks with a `concurrency_key` wait
/// in one list per (priority, key): `tb:{<queue>}:ready:<p>:k:<key>`, built
/// by the scripts from the `ready:<p>` key they are given (`k_group` in
/// `lua/lib.lua`), so under the same hash tag and in the same slot. They
/// are not passed as `KEYS` because their names depend on the data; the
/// `turn:<p>` sorted sets list the ones that hold tasks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueKeys([String; 49]);

/// The role of each key, in `KEYS` order: eleven, the flow-control state,
/// one ready list per priority, what the operations API keeps (see
/// [`super::admin`]), the turn of the concurrency-key groups per
/// priority, then dependencies and deadlines (see [`super::workflow`]).
const ROLES: [&str; 49] = [
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
    "flow",
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
    "paused",
    "totals",
    "redriven",
    "ids_scheduled",
    "ids_succeeded",
    "ids_dead",
    "ids_canceled",
    "turn:0",
    "turn:1",
    "turn:2",
    "turn:3",
    "turn:4",
    "turn:5",
    "turn:6",
    "turn:7",
    "turn:8",
    "turn:9",
    "ids_waiting",
    "deps",
    "pending",
    "dependents",
    "readers",
    "held",
    "outbox",
    "outbox_seq",
    "outbox_lock",
    "expiring",
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

    /// HASH task id -> its dependencies not yet ended (`<id>,<id>...`).
    pub fn pending(&self) -> &str {
        &self.0[41]
    }

    /// LIST of resolution events to deliver to other queues (see
    /// [`super::workflow`]).
    pub fn outbox(&self) -> &str {
        &self.0[45]
    }

    /// STRING held by the replica delivering the outbox (so its events go
    /// out in order), lapsing on its own.
    pub fn outbox_lock(&self) -> &str {
        &self.0[47]
    }

    /// ZSET of undelivered tasks with a deadline, by deadline.
    pub fn expiring(&self) -> &str {
        &self.0[48]
    }

    /// STRING present while the queue is paused.
    pub fn paused(&self) -> &str {
        &self.0[22]
    }

    /// HASH of the queue's flow-control state: its rate limit's token
    /// bucket (`tokens`, `at`).
    #[cfg(test)]
    pub fn flow(&self) -> &str {
        &self.0[11]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_keys_share_one_hash_tag() {
        let k = QueueKeys::new("emails");
        assert_eq!(k.all().len(), ROLES.len());
        assert!(k.all().iter().all(|key| key.starts_with("tb:{emails}:")));
        assert_eq!(
            (k.meta(), k.leased(), k.scheduled(), k.finished()),
            ("tb:{emails}:meta", "tb:{emails}:leased", "tb:{emails}:scheduled", "tb:{emails}:finished")
        );
        assert_eq!(k.paused(), "tb:{emails}:paused");
        assert_eq!(k.flow(), "tb:{emails}:flow");
    }

    /// The scripts read the keys by position (`lua/lib.lua`): every position
    /// they name holds the key of that role here.
    #[test]
    fn keys_are_in_the_order_the_scripts_read_them() {
        let lib = include_str!("lua/lib.lua");
        let k = QueueKeys::new("emails");
        let position = |value: &str| -> usize {
            let inner = value.trim().strip_prefix("KEYS[").and_then(|v| v.strip_suffix(']'));
            inner.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("not KEYS[n]: {value:?}"))
        };
        // `local K_META, K_BODY = KEYS[1], KEYS[2]`: K_<ROLE> is KEYS[n].
        let mut named = 0;
        for line in lib.lines().filter(|l| l.starts_with("local K_")) {
            let (names, values) = line["local ".len()..].split_once(" = ").expect("an assignment");
            let (names, values): (Vec<_>, Vec<_>) = (names.split(',').collect(), values.split(',').collect());
            assert_eq!(names.len(), values.len(), "{line}");
            for (name, value) in names.iter().zip(values) {
                let role = name.trim().trim_start_matches("K_").to_lowercase();
                assert_eq!(k.all()[position(value) - 1], format!("tb:{{emails}}:{role}"), "{line}");
                named += 1;
            }
        }
        // Every role but the per-priority ones is named once.
        let per_priority = |r: &&str| r.starts_with("ready:") || r.starts_with("turn:");
        assert_eq!(named, ROLES.iter().filter(|r| !per_priority(r)).count());
        // `local function k_ready(p)` then `return KEYS[13 + ...p...]`: the
        // ready list of priority p; k_turn likewise.
        for (function, role) in [("k_ready", "ready"), ("k_turn", "turn")] {
            let mut lines = lib.lines().skip_while(|l| *l != format!("local function {function}(p)"));
            let body = lines.nth(1).unwrap_or_else(|| panic!("{function} in lib.lua"));
            let index = body.trim().strip_prefix("return KEYS[").expect("return KEYS[n + p]");
            let first: usize = index.split(" + ").next().and_then(|n| n.parse().ok()).expect("KEYS[n + p]");
            for p in 0..=crate::core::MAX_PRIORITY as usize {
                assert_eq!(k.all()[first - 1 + p], format!("tb:{{emails}}:{role}:{p}"));
            }
        }
    }
}
