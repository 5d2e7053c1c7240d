//! Conversions between protobuf messages and broker/core types. Each request
//! conversion destructures every field, so a new proto field breaks the build
//! instead of being silently dropped.

use std::time::Duration;

use prost_types::Timestamp;

use super::caller::Caller;
use crate::broker::{BrokerError, EnqueueInput, LeaseInput, Violation};
use crate::core::lease::LeaseId;
use crate::core::task::{DependencyFailure, Task, TaskId, TaskState};
use crate::core::{Millis, MAX_TIME};
use crate::pb;

/// Longest duration a client may send: protobuf's own range for
/// `google.protobuf.Duration` (about 10,000 years). The broker bounds each
/// field much tighter; this keeps every conversion exact.
const MAX_DURATION_SECS: i64 = 315_576_000_000;

/// A duration as protobuf's `Duration`.
pub fn duration_pb(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn timestamp(ms: Millis) -> Timestamp {
    Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

/// A timestamp from the network: from 1970 to before the year 10000.
fn to_millis(field: &str, ts: Timestamp) -> Result<Millis, Violation> {
    let max_seconds = (MAX_TIME / 1000) as i64;
    if !(0..max_seconds).contains(&ts.seconds) || !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(Violation::new(field, "must be a valid time from 1970 to before the year 10000"));
    }
    Ok(ts.seconds as u64 * 1000 + ts.nanos as u64 / 1_000_000)
}

/// A protobuf duration, which must not be negative.
fn duration(field: &str, d: Option<prost_types::Duration>) -> Result<Option<Duration>, Violation> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 => {
            Err(Violation::new(field, "must be a non-negative duration"))
        }
        Some(d) if d.seconds > MAX_DURATION_SECS => {
            Err(Violation::new(field, format!("must be at most {MAX_DURATION_SECS}s")))
        }
        Some(d) => Ok(Some(Duration::new(d.seconds as u64, d.nanos as u32))),
    }
}

/// Collects conversion violations; fails with all of them.
#[derive(Default)]
struct Checks(Vec<Violation>);

impl Checks {
    fn take<T: Default>(&mut self, r: Result<T, Violation>) -> T {
        r.unwrap_or_else(|v| {
            self.0.push(v);
            T::default()
        })
    }

    fn finish<T>(self, value: T) -> Result<T, BrokerError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(BrokerError::Invalid(self.0))
        }
    }
}

pub fn duration_field(
    field: &str,
    d: Option<prost_types::Duration>,
) -> Result<Option<Duration>, BrokerError> {
    duration(field, d).map_err(|v| BrokerError::Invalid(vec![v]))
}

/// A task id from the network, parsed once here.
pub fn task_id(task_id: &str) -> Result<TaskId, BrokerError> {
    if task_id.is_empty() {
        return Err(BrokerError::invalid("task_id", "required"));
    }
    task_id.parse().map_err(|e: crate::core::task::BadTaskId| BrokerError::invalid("task_id", e.to_string()))
}

/// The task and lease a settling call names. A lease id that is not one of
/// ours cannot hold the task: `LEASE_MISMATCH`, as for a stale one.
pub fn held(task_id: &str, lease_id: &str) -> Result<(TaskId, LeaseId), BrokerError> {
    let id = self::task_id(task_id)?;
    if lease_id.is_empty() {
        return Err(BrokerError::invalid("lease_id", "required"));
    }
    let lease = lease_id.parse().map_err(|_| BrokerError::LeaseMismatch)?;
    Ok((id, lease))
}

/// An Enqueue as the broker takes it; `caller` supplies the trace context.
pub fn enqueue_input(req: pb::EnqueueRequest, caller: &Caller) -> Result<EnqueueInput, BrokerError> {
    let pb::EnqueueRequest {
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
    } = req;
    let mut checks = Checks::default();
    let delay = checks.take(duration("delay", delay));
    let scheduled_time = checks.take(scheduled_time.map(|t| to_millis("scheduled_time", t)).transpose());
    let expire_time = checks.take(expire_time.map(|t| to_millis("expire_time", t)).transpose());
    let ttl = checks.take(duration("ttl", ttl));
    let on_dependency_failure = checks.take(failure_policy(on_dependency_failure));
    checks.finish(EnqueueInput {
        queue,
        kind,
        payload,
        content_type,
        priority,
        headers: headers.into_iter().collect(),
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
        trace: caller.trace.clone(),
        access: caller.access.clone(),
    })
}

fn failure_policy(value: i32) -> Result<DependencyFailure, Violation> {
    match pb::DependencyFailurePolicy::try_from(value) {
        Ok(pb::DependencyFailurePolicy::Unspecified | pb::DependencyFailurePolicy::Cancel) => {
            Ok(DependencyFailure::Cancel)
        }
        Ok(pb::DependencyFailurePolicy::Run) => Ok(DependencyFailure::Run),
        Err(_) => Err(Violation::new("on_dependency_failure", "must be CANCEL or RUN")),
    }
}

fn failure_policy_pb(policy: DependencyFailure) -> pb::DependencyFailurePolicy {
    match policy {
        DependencyFailure::Cancel => pb::DependencyFailurePolicy::Cancel,
        DependencyFailure::Run => pb::DependencyFailurePolicy::Run,
    }
}

/// A Lease as the broker takes it; `caller` supplies the client's deadline.
pub fn lease_input(req: pb::LeaseRequest, caller: &Caller) -> Result<LeaseInput, BrokerError> {
    let pb::LeaseRequest { queues, max_tasks, lease_duration, wait, worker_id } = req;
    let mut checks = Checks::default();
    let lease_duration = checks.take(duration("lease_duration", lease_duration));
    let wait = checks.take(duration("wait", wait));
    checks.finish(LeaseInput {
        queues,
        max_tasks,
        lease_duration,
        wait,
        worker_id,
        deadline: caller.deadline,
        access: caller.access.clone(),
    })
}

pub fn state(s: TaskState) -> pb::TaskState {
    match s {
        TaskState::Scheduled => pb::TaskState::Scheduled,
        TaskState::Ready => pb::TaskState::Ready,
        TaskState::Leased => pb::TaskState::Leased,
        TaskState::Succeeded => pb::TaskState::Succeeded,
        TaskState::Dead => pb::TaskState::Dead,
        TaskState::Canceled => pb::TaskState::Canceled,
        TaskState::Waiting => pb::TaskState::Waiting,
    }
}

pub fn task(t: Task) -> pb::Task {
    let Task {
        id,
        queue,
        kind,
        payload,
        content_type,
        priority,
        headers,
        state: s,
        attempt,
        max_attempts,
        dedup_key,
        request_id: _,
        create_time,
        update_time,
        scheduled_time,
        result,
        last_error,
        lease: _,
        concurrency_key,
        semaphores,
        depends_on,
        pending_dependencies,
        on_dependency_failure,
        expire_time,
    } = t;
    pb::Task {
        id: id.to_string(),
        queue,
        kind,
        payload,
        content_type,
        priority: priority as u32,
        headers: headers.into_iter().collect(),
        state: state(s) as i32,
        attempt,
        max_attempts,
        dedup_key,
        create_time: Some(timestamp(create_time)),
        update_time: Some(timestamp(update_time)),
        scheduled_time: Some(timestamp(scheduled_time)),
        result,
        last_error,
        concurrency_key,
        semaphores,
        depends_on: depends_on.iter().map(ToString::to_string).collect(),
        pending_dependencies: pending_dependencies.len() as u32,
        on_dependency_failure: failure_policy_pb(on_dependency_failure) as i32,
        expire_time: expire_time.map(timestamp),
    }
}

/// A task just leased, with its lease.
pub fn leased_task(mut t: Task) -> pb::LeasedTask {
    let lease = t.lease.take();
    pb::LeasedTask {
        lease_id: lease.as_ref().map(|l| l.id.to_string()).unwrap_or_default(),
        lease_expire_time: lease.map(|l| timestamp(l.expire_time)),
        task: Some(task(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let ts = timestamp(1_700_000_123_456);
        assert_eq!(ts.seconds, 1_700_000_123);
        assert_eq!(ts.nanos, 456_000_000);
        assert_eq!(to_millis("t", ts).unwrap(), 1_700_000_123_456);
    }

    #[test]
    fn negative_durations_and_times_are_invalid() {
        let req = pb::EnqueueRequest {
            kind: "k".into(),
            delay: Some(prost_types::Duration { seconds: -1, nanos: 0 }),
            scheduled_time: Some(Timestamp { seconds: -5, nanos: 0 }),
            ..Default::default()
        };
        let Err(BrokerError::Invalid(v)) = enqueue_input(req, &Caller::default()) else {
            panic!("expected invalid")
        };
        let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["delay", "scheduled_time"]);
    }

    #[test]
    fn durations_and_times_beyond_any_use_are_invalid_not_wrapped() {
        // 9999-12-31T23:59:59.999Z is the last time accepted.
        let last = Timestamp { seconds: 253_402_300_799, nanos: 999_999_999 };
        assert_eq!(to_millis("t", last).unwrap(), MAX_TIME - 1);
        for seconds in [253_402_300_800, 18_446_744_073_709_552, i64::MAX] {
            assert!(to_millis("t", Timestamp { seconds, nanos: 0 }).is_err(), "{seconds}");
        }
        let d = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
        assert_eq!(duration("d", d(MAX_DURATION_SECS)).unwrap(), Some(Duration::from_secs(315_576_000_000)));
        for seconds in [MAX_DURATION_SECS + 1, 18_446_744_073_709_552, i64::MAX] {
            assert_eq!(duration("d", d(seconds)).unwrap_err().field, "d", "{seconds}");
        }
    }
}
