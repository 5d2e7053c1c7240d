//! Per-queue policy: the settings that govern tasks of one queue.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::flow::RateLimit;
use super::retry::Backoff;
use super::routing::Route;

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
    /// Most tasks of the queue LEASED at once (0: unlimited).
    pub max_in_flight: u32,
    /// Most LEASED tasks per `concurrency_key` (0: unlimited).
    pub per_key_max_in_flight: u32,
    /// A token bucket on deliveries, shared by every replica.
    pub rate_limit: Option<RateLimit>,
    /// Semaphores every task of the queue needs a permit of while leased
    /// (added to the task's own at enqueue).
    pub semaphores: Vec<String>,
}

impl QueuePolicy {
    /// Whether a lease of this queue holds a permit the queue counts
    /// (`max_in_flight` or `per_key_max_in_flight`), so that its end may let
    /// another task go.
    pub fn caps_leases(&self) -> bool {
        self.max_in_flight > 0 || self.per_key_max_in_flight > 0
    }
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
            max_in_flight: 0,
            per_key_max_in_flight: 0,
            rate_limit: None,
            semaphores: Vec::new(),
        }
    }
}

/// Every queue's policy: the declared queues, the policy an undeclared
/// queue gets when it is created on first use, and the routes into them
/// (everything a config reload swaps at once).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policies {
    declared: BTreeMap<String, QueuePolicy>,
    fallback: QueuePolicy,
    /// `[[routes]]` in order: the first match picks a task's queue.
    routes: Vec<Route>,
    /// `[semaphores.NAME] limit`: permits shared by every queue.
    semaphores: BTreeMap<String, u32>,
}

impl Policies {
    pub fn new(declared: BTreeMap<String, QueuePolicy>, fallback: QueuePolicy) -> Self {
        Self { declared, fallback, routes: Vec::new(), semaphores: BTreeMap::new() }
    }

    /// These policies with `routes` in force.
    pub fn with_routes(mut self, routes: Vec<Route>) -> Self {
        self.routes = routes;
        self
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// These policies with `semaphores` (name -> limit) declared.
    pub fn with_semaphores(mut self, semaphores: BTreeMap<String, u32>) -> Self {
        self.semaphores = semaphores;
        self
    }

    /// The limit of semaphore `name`; `None` if it is not declared (a task
    /// that names a semaphore since removed by a reload is not held back).
    pub fn semaphore_limit(&self, name: &str) -> Option<u32> {
        self.semaphores.get(name).copied()
    }

    /// Every declared semaphore with its limit.
    pub fn semaphores(&self) -> &BTreeMap<String, u32> {
        &self.semaphores
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

/// The one owner of every queue's settings while the broker runs: the broker
/// and the store share one registry, so a new set of policies (a config
/// reload) reaches both at once. Each operation reads one snapshot
/// ([`QueueRegistry::current`]) and uses it throughout, so no operation sees
/// half of an old set and half of a new one.
///
/// A change applies to what happens next: tasks already finished keep the
/// removal time their queue's retention gave them when they finished, leases
/// already given keep their deadline.
#[derive(Clone, Debug)]
pub struct QueueRegistry {
    current: Arc<RwLock<Arc<Policies>>>,
}

impl QueueRegistry {
    pub fn new(policies: Policies) -> Self {
        Self::from(Arc::new(policies))
    }

    /// The policies in force now.
    pub fn current(&self) -> Arc<Policies> {
        // The lock only guards a pointer swap: a poisoned one still holds a
        // whole value.
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `policies` in force for every later operation.
    pub fn replace(&self, policies: Policies) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policies);
    }
}

impl From<Arc<Policies>> for QueueRegistry {
    fn from(policies: Arc<Policies>) -> Self {
        Self { current: Arc::new(RwLock::new(policies)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_holder_of_a_registry_sees_a_replacement_and_old_snapshots_stay_whole() {
        let registry = QueueRegistry::new(Policies::default());
        let shared = registry.clone();
        let before = shared.current();
        let longer = QueuePolicy { lease_duration: Duration::from_secs(90), ..QueuePolicy::default() };
        registry.replace(Policies::new(
            BTreeMap::from([("q".to_owned(), longer.clone())]),
            QueuePolicy::default(),
        ));
        assert_eq!(shared.current().get("q"), &longer);
        assert_eq!(before.get("q"), &QueuePolicy::default(), "a snapshot taken before is unchanged");
    }
}
