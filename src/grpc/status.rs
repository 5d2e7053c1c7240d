//! The one place where broker errors become gRPC statuses (Google AIP-193):
//! every status carries a `google.rpc.ErrorInfo` with an UPPER_SNAKE reason
//! and domain `taskbroker`; bad input adds `BadRequest` field violations;
//! `UNAVAILABLE` adds `RetryInfo`.

use std::collections::HashMap;
use std::time::Duration;

use prost::Message;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::broker::BrokerError;

/// The `ErrorInfo.domain` of every error.
pub const DOMAIN: &str = "taskbroker";

/// How long clients should wait before retrying after `UNAVAILABLE`.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The gRPC code and `ErrorInfo.reason` of an error.
pub fn code_and_reason(e: &BrokerError) -> (Code, &'static str) {
    match e {
        BrokerError::Invalid(_) => (Code::InvalidArgument, "INVALID_ARGUMENT"),
        BrokerError::QueueNotFound(_) => (Code::NotFound, "QUEUE_NOT_FOUND"),
        BrokerError::TaskNotFound(_) => (Code::NotFound, "TASK_NOT_FOUND"),
        BrokerError::ScheduleNotFound(_) => (Code::NotFound, "SCHEDULE_NOT_FOUND"),
        BrokerError::ScheduleFromConfig(_) => (Code::FailedPrecondition, "SCHEDULE_FROM_CONFIG"),
        BrokerError::LeaseMismatch => (Code::FailedPrecondition, "LEASE_MISMATCH"),
        BrokerError::TaskCanceled => (Code::FailedPrecondition, "TASK_CANCELED"),
        BrokerError::TaskFinished(_) => (Code::FailedPrecondition, "TASK_FINISHED"),
        BrokerError::DependencyNotFound(_) => (Code::FailedPrecondition, "DEPENDENCY_NOT_FOUND"),
        BrokerError::ConfigInvalid(_) => (Code::FailedPrecondition, "CONFIG_INVALID"),
        BrokerError::Unavailable(_) => (Code::Unavailable, "STORAGE_UNAVAILABLE"),
        BrokerError::ResourceExhausted(_) => (Code::ResourceExhausted, "STORAGE_FULL"),
        BrokerError::QueueLimit(_) => (Code::ResourceExhausted, "QUEUE_LIMIT"),
        BrokerError::Internal(_) => (Code::Internal, "INTERNAL"),
        BrokerError::StreamStalled(_) => (Code::Unavailable, "STREAM_STALLED"),
        BrokerError::PermissionDenied(_) => (Code::PermissionDenied, "PERMISSION_DENIED"),
    }
}

/// What a client is told of a storage failure; the backend's own text (which
/// may name hosts, keys or internals) goes to the broker's log instead.
fn client_message(e: &BrokerError) -> String {
    match e {
        BrokerError::Unavailable(detail) => {
            crate::telemetry::storage_failure("a call", detail);
            "storage unavailable; retry later".into()
        }
        BrokerError::ResourceExhausted(detail) => {
            crate::telemetry::storage_failure("a call", detail);
            "storage is full: enqueues are refused; leases, acks and nacks still work".into()
        }
        BrokerError::Internal(detail) => {
            tracing::error!(error = %detail, "storage internal error");
            "internal storage error; see the broker's log".into()
        }
        other => other.to_string(),
    }
}

/// The status for `e`, with its details.
pub fn to_status(e: BrokerError) -> Status {
    let (code, reason) = code_and_reason(&e);
    let mut details = ErrorDetails::new();
    let mut metadata = HashMap::new();
    match &e {
        BrokerError::Invalid(violations) => {
            for v in violations {
                details.add_bad_request_violation(v.field.clone(), v.description.clone());
            }
        }
        BrokerError::QueueNotFound(q) | BrokerError::QueueLimit(q) => {
            metadata.insert("queue".to_owned(), q.clone());
        }
        BrokerError::TaskNotFound(id) | BrokerError::TaskFinished(id) => {
            metadata.insert("task_id".to_owned(), id.clone());
        }
        BrokerError::PermissionDenied(d) => {
            metadata.insert("action".to_owned(), d.action.as_str().to_owned());
            if let Some(q) = &d.queue {
                metadata.insert("queue".to_owned(), q.clone());
            }
            if let Some(id) = &d.task_id {
                metadata.insert("task_id".to_owned(), id.clone());
            }
            if let Some(name) = &d.schedule {
                metadata.insert("schedule".to_owned(), name.clone());
            }
        }
        BrokerError::ScheduleNotFound(name) | BrokerError::ScheduleFromConfig(name) => {
            metadata.insert("schedule".to_owned(), name.clone());
        }
        // The ids, comma-separated, and one precondition violation each.
        BrokerError::DependencyNotFound(ids) => {
            metadata.insert("task_ids".to_owned(), ids.join(","));
            for id in ids {
                details.add_precondition_failure_violation(
                    "DEPENDENCY",
                    id.clone(),
                    "no such task (unknown or purged)",
                );
            }
        }
        // Both say: come back later (a stalled stream's worker reconnects).
        BrokerError::Unavailable(_) | BrokerError::StreamStalled(_) => {
            details.set_retry_info(Some(RETRY_DELAY));
        }
        BrokerError::ConfigInvalid(problems) => {
            for p in problems {
                details.add_precondition_failure_violation("CONFIG", "config file", p.clone());
            }
        }
        BrokerError::LeaseMismatch
        | BrokerError::TaskCanceled
        | BrokerError::ResourceExhausted(_)
        | BrokerError::Internal(_) => {}
    }
    details.set_error_info(reason, DOMAIN, metadata);
    Status::with_error_details(code, client_message(&e), details)
}

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Self {
        to_status(e)
    }
}

/// The same error as a `google.rpc.Status` message, for per-item results.
pub fn to_rpc_status(e: BrokerError) -> tonic_types::Status {
    let status = to_status(e);
    tonic_types::Status::decode(status.details()).unwrap_or_else(|_| tonic_types::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Violation;

    #[test]
    fn invalid_input_names_its_fields() {
        let e = BrokerError::Invalid(vec![Violation::new("kind", "must not be empty")]);
        let status = to_status(e);
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().unwrap();
        assert_eq!(bad.field_violations[0].field, "kind");
        assert_eq!(details.error_info().unwrap().reason, "INVALID_ARGUMENT");
    }

    #[test]
    fn unavailable_carries_retry_info_and_rpc_status_matches() {
        let status = to_status(BrokerError::Unavailable("disk".into()));
        assert_eq!(status.code(), Code::Unavailable);
        let details = status.get_error_details();
        assert_eq!(details.retry_info().and_then(|r| r.retry_delay), Some(RETRY_DELAY));
        assert_eq!(details.error_info().map(|i| i.reason.as_str()), Some("STORAGE_UNAVAILABLE"));

        // The per-item form carries the same details, decoded from its Any list.
        let rpc = to_rpc_status(BrokerError::Unavailable("disk".into()));
        assert_eq!(rpc.code, Code::Unavailable as i32);
        let mut retry_delay = None;
        let mut reason = None;
        for any in &rpc.details {
            match any.type_url.as_str() {
                "type.googleapis.com/google.rpc.RetryInfo" => {
                    let info = tonic_types::pb::RetryInfo::decode(any.value.as_slice()).unwrap();
                    retry_delay = info.retry_delay;
                }
                "type.googleapis.com/google.rpc.ErrorInfo" => {
                    reason = Some(tonic_types::pb::ErrorInfo::decode(any.value.as_slice()).unwrap().reason);
                }
                _ => {}
            }
        }
        let one_second = prost_types::Duration { seconds: 1, nanos: 0 };
        assert_eq!(retry_delay, Some(one_second), "RetryInfo in {:?}", rpc.details);
        assert_eq!(reason.as_deref(), Some("STORAGE_UNAVAILABLE"));

        // Only UNAVAILABLE asks for a retry.
        let status = to_status(BrokerError::LeaseMismatch);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.get_error_details().error_info().unwrap().reason, "LEASE_MISMATCH");
        assert!(status.get_error_details().retry_info().is_none());
    }
}
