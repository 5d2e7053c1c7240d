//! Per-queue policy: the settings that govern tasks of one queue.

use std::collections::BTreeMap;
use std::time::Duration;

use super::retry::Backoff;

/// The queue unrouted tasks land in; its settings are every queue's defaults.
pub const DEFAULT_QUEUE: &str = "default";

/// Whether `name` is a valid queue name: `[A-Za-z0-9._:-]{1,128}`.
pub fn valid_queue_name(name: &str) -> bool {
    (1..=128).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// The resolved settings of one queue.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuePolicy {
    /// Lease length when the worker does not ask for one.
    pub lease_duration: Duration,
    /// Deliveries allowed when the producer does not say.
    pub max_attempts: u32,
    pub retry_backoff: Backoff,
    /// Priority when neither the producer nor a route sets one.
    pub default_priority: u8,
    /// How long finished tasks are kept for GetTask.
    pub retention: Duration,
    /// How long after a task finishes its dedup_key still deduplicates.
    pub dedup_window: Duration,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(30),
            max_attempts: 5,
            retry_backoff: Backoff::default(),
            default_priority: 0,
            retention: Duration::from_secs(24 * 3600),
            dedup_window: Duration::ZERO,
        }
    }
}

/// Every queue's policy: the declared queues, and the policy an undeclared
/// queue gets when it is created on first use.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policies {
    declared: BTreeMap<String, QueuePolicy>,
    fallback: QueuePolicy,
}

impl Policies {
    pub fn new(declared: BTreeMap<String, QueuePolicy>, fallback: QueuePolicy) -> Self {
        Self { declared, fallback }
    }

    /// The policy of `queue` (the fallback for undeclared queues).
    pub fn get(&self, queue: &str) -> &QueuePolicy {
        self.declared.get(queue).unwrap_or(&self.fallback)
    }

    pub fn is_declared(&self, queue: &str) -> bool {
        self.declared.contains_key(queue)
    }

    pub fn declared(&self) -> impl Iterator<Item = &str> {
        self.declared.keys().map(String::as_str)
    }
}
