//! Request validation and resolution: from what a client sent to what the
//! store is asked to do. Pure: no I/O, `now` passed in.

use std::collections::BTreeMap;
use std::time::Duration;

use super::error::{BrokerError, Violation};
use crate::core::access::{Access, Operation};
use crate::core::dependency::MAX_DEPENDENCIES;
use crate::core::flow::{self, MAX_CONCURRENCY_KEY, MAX_TASK_SEMAPHORES};
use crate::core::queue::{valid_queue_name, Policies, DEFAULT_QUEUE};
use crate::core::routing::{self, Route};
use crate::core::select::Mode;
use crate::core::task::{DependencyFailure, NewTask, TaskId};
use crate::core::trace::TraceContext;
use crate::core::{millis, Millis, MAX_PRIORITY, MAX_TIME};

/// Most headers a task may carry.
pub const MAX_HEADERS: usize = 64;
/// Most tasks one Lease call or batch may carry.
pub const MAX_BATCH: usize = 1000;
/// Longest long-poll.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Shortest and longest lease.
pub const MIN_LEASE: Duration = Duration::from_secs(1);
pub const MAX_LEASE: Duration = Duration::from_secs(12 * 3600);
/// Longest kind, content type, dedup key, request id, worker id or header name.
pub const MAX_NAME: usize = 256;
/// Default of the longest `delay`, `retry_after` or `scheduled_time` ahead
/// of now (`max_delay` in the config).
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(366 * 24 * 3600);
/// The dependency ids of an enqueue: each a task id, at most
/// [`MAX_DEPENDENCIES`], duplicates dropped (order kept).
fn dependencies(ids: &[String], v: &mut Vec<Violation>) -> Vec<TaskId> {
    if ids.len() > MAX_DEPENDENCIES {
        v.push(Violation::new("depends_on", format!("at most {MAX_DEPENDENCIES} task ids")));
        return Vec::new();
    }
    let mut out: Vec<TaskId> = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        match id.parse::<TaskId>() {
            Ok(id) if !out.contains(&id) => out.push(id),
            Ok(_) => {}
            Err(e) => v.push(Violation::new(format!("depends_on[{i}]"), e.to_string())),
        }
    }
    out
}

/// The resolved deadline of a task due at `due`: `expire_time`, or now +
/// `ttl`. One at or before the due time could never be met.
fn deadline(
    expire_time: Option<Millis>,
    ttl: Option<Duration>,
    due: Millis,
    now: Millis,
) -> Result<Option<Millis>, BrokerError> {
    let at = expire_time.or(ttl.map(|t| now.saturating_add(millis(t)).min(MAX_TIME)));
    match at {
        Some(at) if at <= due => {
            let field = if expire_time.is_some() { "expire_time" } else { "ttl" };
            Err(BrokerError::invalid(field, "must end after the task's scheduled time"))
        }
        at => Ok(at),
    }
}

/// Most queues one Lease call may name.
const MAX_LEASE_QUEUES: usize = 64;

/// An Enqueue request, as the client sent it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnqueueInput {
    pub queue: String,
    pub kind: String,
    pub payload: Vec<u8>,
    pub content_type: String,
    pub priority: Option<u32>,
    pub headers: BTreeMap<String, String>,
    pub delay: Option<Duration>,
    pub scheduled_time: Option<Millis>,
    pub max_attempts: Option<u32>,
    pub dedup_key: String,
    pub request_id: String,
    pub concurrency_key: String,
    /// Semaphores the producer asks for (each must be declared).
    pub semaphores: Vec<String>,
    /// Ids of the tasks it runs after, as sent (parsed by validation).
    pub depends_on: Vec<String>,
    pub on_dependency_failure: DependencyFailure,
    /// Deadline (at most one of `expire_time` and `ttl`).
    pub expire_time: Option<Millis>,
    pub ttl: Option<Duration>,
    /// The producer's trace context, kept with the task (see [`TraceContext`]).
    pub trace: TraceContext,
    /// What the producer may do (checked against the routed queue).
    pub access: Access,
}

/// A Lease request, as the client sent it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LeaseInput {
    pub queues: Vec<String>,
    pub max_tasks: u32,
    pub lease_duration: Option<Duration>,
    pub wait: Option<Duration>,
    pub worker_id: String,
    /// How long the client waits for the answer (its gRPC deadline).
    pub deadline: Option<Duration>,
    /// What the worker may do (`consume` on every named queue).
    pub access: Access,
}

/// A stream's Subscribe message, as the client sent it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubscribeInput {
    pub queues: Vec<String>,
    pub weighted: bool,
    pub weights: BTreeMap<String, u32>,
    pub max_in_flight: u32,
    pub lease_duration: Option<Duration>,
    pub worker_id: String,
    pub access: Access,
}

/// A validated subscription.
#[derive(Clone, Debug, PartialEq)]
pub struct Subscription {
    pub queues: Vec<String>,
    pub mode: Mode,
    /// The initial in-flight window (credits).
    pub max_in_flight: usize,
    pub lease_duration: Option<Millis>,
    pub worker_id: String,
    /// What the stream's caller may do (its settlements are checked too).
    pub access: Access,
}

/// Largest in-flight window a stream may ask for.
pub const MAX_IN_FLIGHT: usize = 10_000;

/// The request-independent facts validation needs.
pub struct Rules<'a> {
    pub policies: &'a Policies,
    pub routes: &'a [Route],
    pub strict_queues: bool,
    pub max_payload_bytes: usize,
    /// Longest `delay` or `retry_after`, and furthest `scheduled_time` ahead.
    pub max_delay: Duration,
}

impl Rules<'_> {
    /// Validates an enqueue and resolves its queue, priority, attempts and due time.
    pub fn enqueue(&self, input: EnqueueInput, now: Millis) -> Result<NewTask, BrokerError> {
        let EnqueueInput {
            queue,
            kind,
            payload,
            content_type,
            priority,
            headers,
            delay,
            scheduled_time,
            max_attempts,
            dedup_key,
            request_id,
            concurrency_key,
            semaphores,
            depends_on,
            on_dependency_failure,
            expire_time,
            ttl,
            trace,
            access,
        } = input;
        let mut v = Vec::new();
        let depends_on = dependencies(&depends_on, &mut v);
        if kind.is_empty() {
            v.push(Violation::new("kind", "must not be empty"));
        } else if kind.len() > MAX_NAME {
            v.push(Violation::new("kind", format!("must be at most {MAX_NAME} bytes")));
        }
        if content_type.len() > MAX_NAME {
            v.push(Violation::new("content_type", format!("must be at most {MAX_NAME} bytes")));
        }
        if !queue.is_empty() && !valid_queue_name(&queue) {
            v.push(Violation::new("queue", "must match [A-Za-z0-9._:-]{1,128}"));
        }
        if priority.is_some_and(|p| p > MAX_PRIORITY as u32) {
            v.push(Violation::new("priority", "must be 0-9"));
        }
        if payload.len() > self.max_payload_bytes {
            let limit = self.max_payload_bytes;
            v.push(Violation::new(
                "payload",
                format!("{} bytes is over the limit of {limit}", payload.len()),
            ));
        }
        if headers.len() > MAX_HEADERS {
            v.push(Violation::new("headers", format!("at most {MAX_HEADERS} headers")));
        }
        if headers.iter().any(|(k, val)| k.is_empty() || k.len() > MAX_NAME || val.len() > 8 * MAX_NAME) {
            v.push(Violation::new("headers", "names must be 1-256 bytes and values at most 2048"));
        }
        if delay.is_some() && scheduled_time.is_some() {
            v.push(Violation::new("scheduled_time", "set delay or scheduled_time, not both"));
        }
        if let Some(d) = delay {
            if let Err(e) = self.delay("delay", d) {
                v.push(e);
            }
        }
        if scheduled_time.is_some_and(|at| at >= MAX_TIME || at > now.saturating_add(millis(self.max_delay)))
        {
            let max = humantime::format_duration(self.max_delay);
            v.push(Violation::new("scheduled_time", format!("must be at most {max} (max_delay) from now")));
        }
        if max_attempts == Some(0) {
            v.push(Violation::new("max_attempts", "must be >= 1"));
        }
        if dedup_key.len() > MAX_NAME {
            v.push(Violation::new("dedup_key", format!("must be at most {MAX_NAME} bytes")));
        }
        if request_id.len() > MAX_NAME {
            v.push(Violation::new("request_id", format!("must be at most {MAX_NAME} bytes")));
        }
        if concurrency_key.len() > MAX_CONCURRENCY_KEY {
            v.push(Violation::new("concurrency_key", format!("must be at most {MAX_CONCURRENCY_KEY} bytes")));
        }
        if semaphores.len() > MAX_TASK_SEMAPHORES {
            v.push(Violation::new("semaphores", format!("at most {MAX_TASK_SEMAPHORES} names")));
        } else if let Some(unknown) = semaphores.iter().find(|s| self.policies.semaphore_limit(s).is_none()) {
            let shown: String = unknown.chars().take(MAX_NAME).collect();
            v.push(Violation::new("semaphores", format!("{shown:?} is not a declared semaphore")));
        }
        if expire_time.is_some() && ttl.is_some() {
            v.push(Violation::new("expire_time", "set expire_time or ttl, not both"));
        }
        if ttl.is_some_and(|t| t.is_zero()) {
            v.push(Violation::new("ttl", "must be above 0"));
        }
        if expire_time.is_some_and(|at| at <= now) {
            v.push(Violation::new("expire_time", "must be after now"));
        }
        if !v.is_empty() {
            return Err(BrokerError::Invalid(v));
        }
        let mut headers = headers;
        trace.inherit_into(&mut headers);
        let route = if queue.is_empty() { routing::route(self.routes, &kind, &headers) } else { None };
        let queue = match (queue.is_empty(), route) {
            (false, _) => queue,
            (true, Some(r)) => r.queue.clone(),
            (true, None) => DEFAULT_QUEUE.to_owned(),
        };
        // The queue the task goes to, routed or named; before `known`, so a
        // refusal does not tell which queues exist.
        access.check(Operation::Enqueue, &queue).map_err(BrokerError::PermissionDenied)?;
        self.known(&queue)?;
        let policy = self.policies.get(&queue);
        let priority =
            priority.map(|p| p as u8).or(route.and_then(|r| r.priority)).unwrap_or(policy.default_priority);
        let scheduled_time = match (delay, scheduled_time) {
            (Some(d), _) => now.saturating_add(millis(d)),
            (None, Some(at)) => at,
            (None, None) => now,
        };
        let route_semaphores = route.map(|r| r.semaphores.iter()).into_iter().flatten();
        let semaphores = flow::normalize_semaphores(
            semaphores.into_iter().chain(route_semaphores.cloned()).chain(policy.semaphores.iter().cloned()),
        );
        Ok(NewTask {
            queue,
            kind,
            payload,
            content_type,
            priority,
            headers,
            max_attempts: max_attempts.unwrap_or(policy.max_attempts),
            scheduled_time,
            dedup_key,
            request_id,
            concurrency_key,
            semaphores,
            depends_on,
            on_dependency_failure,
            expire_time: deadline(expire_time, ttl, scheduled_time, now)?,
        })
    }

    /// Validates a lease request; returns the number of tasks to take.
    pub fn lease(&self, input: &LeaseInput) -> Result<usize, BrokerError> {
        let mut v = Vec::new();
        if input.queues.is_empty() {
            v.push(Violation::new("queues", "name at least one queue"));
        }
        if input.queues.len() > MAX_LEASE_QUEUES {
            v.push(Violation::new("queues", format!("at most {MAX_LEASE_QUEUES} queues")));
        }
        for (i, q) in input.queues.iter().enumerate() {
            if !valid_queue_name(q) {
                v.push(Violation::new(format!("queues[{i}]"), "must match [A-Za-z0-9._:-]{1,128}"));
            }
        }
        if input.max_tasks as usize > MAX_BATCH {
            v.push(Violation::new("max_tasks", format!("must be at most {MAX_BATCH}")));
        }
        if let Some(d) = input.lease_duration {
            if let Err(e) = lease_length("lease_duration", d) {
                v.push(e);
            }
        }
        if input.wait.is_some_and(|w| w > MAX_WAIT) {
            v.push(Violation::new("wait", "must be at most 60s"));
        }
        if input.worker_id.len() > MAX_NAME {
            v.push(Violation::new("worker_id", format!("must be at most {MAX_NAME} bytes")));
        }
        if !v.is_empty() {
            return Err(BrokerError::Invalid(v));
        }
        for q in &input.queues {
            input.access.check(Operation::Lease, q).map_err(BrokerError::PermissionDenied)?;
            self.known(q)?;
        }
        Ok(input.max_tasks.max(1) as usize)
    }

    /// Validates a stream subscription.
    pub fn subscribe(&self, input: SubscribeInput) -> Result<Subscription, BrokerError> {
        let SubscribeInput { queues, weighted, weights, max_in_flight, lease_duration, worker_id, access } =
            input;
        let as_lease = LeaseInput {
            queues,
            max_tasks: 1,
            lease_duration,
            wait: None,
            worker_id,
            deadline: None,
            access,
        };
        let mut v = match self.lease(&as_lease) {
            Ok(_) => Vec::new(),
            Err(BrokerError::Invalid(v)) => v,
            Err(other) => return Err(other),
        };
        let LeaseInput { queues, lease_duration, worker_id, access, .. } = as_lease;
        if max_in_flight as usize > MAX_IN_FLIGHT {
            v.push(Violation::new("max_in_flight", format!("must be at most {MAX_IN_FLIGHT}")));
        }
        if let Some(q) = weights.keys().find(|q| !queues.contains(q)) {
            v.push(Violation::new("weights", format!("{q:?} is not one of the subscribed queues")));
        }
        if !v.is_empty() {
            return Err(BrokerError::Invalid(v));
        }
        let mode = if weighted {
            Mode::Weighted(queues.iter().map(|q| weights.get(q).copied().unwrap_or(1).max(1)).collect())
        } else {
            Mode::Strict
        };
        Ok(Subscription {
            queues,
            mode,
            max_in_flight: (max_in_flight as usize).max(1),
            lease_duration: lease_duration.map(millis),
            worker_id,
            access,
        })
    }

    /// A Nack's `retry_after`, in milliseconds.
    pub fn retry_after(&self, d: Duration) -> Result<Millis, BrokerError> {
        self.delay("retry_after", d).map_err(|v| BrokerError::Invalid(vec![v]))
    }

    /// A delay from now: at most `max_delay`.
    fn delay(&self, field: &str, d: Duration) -> Result<Millis, Violation> {
        if d > self.max_delay {
            let max = humantime::format_duration(self.max_delay);
            return Err(Violation::new(field, format!("must be at most {max} (max_delay)")));
        }
        Ok(millis(d))
    }

    /// With `strict_queues`, only declared queues exist.
    fn known(&self, queue: &str) -> Result<(), BrokerError> {
        if self.strict_queues && !self.policies.is_declared(queue) {
            return Err(BrokerError::QueueNotFound(queue.to_owned()));
        }
        Ok(())
    }
}

/// A lease length must be within 1s-12h.
pub fn lease_length(field: &str, d: Duration) -> Result<Millis, Violation> {
    if d < MIN_LEASE || d > MAX_LEASE {
        return Err(Violation::new(field, "must be between 1s and 12h"));
    }
    Ok(millis(d))
}

#[cfg(test)]
mod tests;
