//! The broker's errors: a short list, mapped to gRPC codes in one place
//! (`grpc/status.rs`).

use crate::core::access::Denied;
use crate::core::lease::LeaseError;
use crate::store::StoreError;

/// One bad field of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The request field, e.g. `kind` or `queues[2]`.
    pub field: String,
    pub description: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BrokerError {
    /// Bad input: each violation names its field.
    #[error("invalid request: {}", describe(.0))]
    Invalid(Vec<Violation>),
    /// A queue that does not exist: undeclared while `strict_queues` is on,
    /// or (operations API) neither declared nor holding tasks.
    #[error("queue {0:?} not found: it is not declared and holds no tasks")]
    QueueNotFound(String),
    /// A config (re)load found problems; the running config stays.
    #[error("the config file has problems: {}", .0.join("; "))]
    ConfigInvalid(Vec<String>),
    #[error("task {0} not found")]
    TaskNotFound(String),
    #[error("schedule {0:?} not found")]
    ScheduleNotFound(String),
    /// PutSchedule or DeleteSchedule of a schedule the config file declares.
    #[error("schedule {0:?} is declared in the config file: change it there and reload")]
    ScheduleFromConfig(String),
    /// A wrong, stale or expired lease id.
    #[error("lease mismatch: the lease expired or the task was delivered again")]
    LeaseMismatch,
    /// The task was canceled while the caller held its lease.
    #[error("the task was canceled; stop working on it")]
    TaskCanceled,
    /// Cancel of a task that already succeeded or died.
    #[error("task {0} already finished")]
    TaskFinished(String),
    /// An enqueue named dependencies that do not exist (unknown or purged).
    #[error("dependencies not found: {}", .0.join(", "))]
    DependencyNotFound(Vec<String>),
    /// Storage cannot serve; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// An enqueue would create a queue beyond `max_queues`.
    #[error("queue limit reached: {0:?} would be a new queue (max_queues)")]
    QueueLimit(String),
    /// Storage refuses writes (full).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A worker stream was ended because its client stopped reading
    /// (`stream_stall_timeout`); its tasks went back.
    #[error("{0}")]
    StreamStalled(String),
    /// The caller's grants do not allow this.
    #[error("{0}")]
    PermissionDenied(Denied),
    /// Storage read something it cannot understand (corruption, a bug); the
    /// detail is for the broker's log, not for clients.
    #[error("{0}")]
    Internal(String),
}

impl BrokerError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        BrokerError::Invalid(vec![Violation::new(field, description)])
    }
}

fn describe(violations: &[Violation]) -> String {
    violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ")
}

impl From<StoreError> for BrokerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TaskNotFound(id) => BrokerError::TaskNotFound(id.to_string()),
            StoreError::Lease(LeaseError::Mismatch) => BrokerError::LeaseMismatch,
            StoreError::Lease(LeaseError::Canceled) => BrokerError::TaskCanceled,
            StoreError::TaskFinished(id) => BrokerError::TaskFinished(id.to_string()),
            StoreError::DependencyNotFound(ids) => {
                BrokerError::DependencyNotFound(ids.iter().map(ToString::to_string).collect())
            }
            StoreError::Unavailable(why) => BrokerError::Unavailable(why),
            StoreError::Full(why) => BrokerError::ResourceExhausted(why),
            StoreError::QueueLimit(queue) => BrokerError::QueueLimit(queue),
            StoreError::Internal(why) => BrokerError::Internal(why),
        }
    }
}
