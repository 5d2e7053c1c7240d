//! The messaging spans of OpenTelemetry's messaging conventions, made only
//! while trace export is on ([`trace::enabled`]): `send {queue}` per
//! enqueued task (its context becomes the task's creation context unless
//! the producer set a `traceparent` header), `receive {queue}` per delivery
//! and `settle {queue}` per Ack/Nack, both children of the task's creation
//! context, so one trace runs from producer to worker.

use tracing::field::Empty;
use tracing::Span;

use crate::core::task::{NewTask, Task, TaskState};
use crate::core::trace::{TraceContext, TRACEPARENT, TRACESTATE};
use crate::telemetry::trace::{self, TARGET};

/// The `send {queue}` span of a task about to be stored (`None` when
/// traces are off); unless the producer set its own (`own_context`), the
/// span's context becomes the task's creation context.
pub fn send(task: &mut NewTask, own_context: bool) -> Option<Span> {
    if !trace::enabled() {
        return None;
    }
    let span = tracing::info_span!(
        target: TARGET,
        "send",
        otel.name = format!("send {}", task.queue),
        otel.kind = "producer",
        messaging.system = "taskbroker",
        messaging.operation.name = "send",
        messaging.operation.type = "send",
        messaging.destination.name = task.queue.as_str(),
        messaging.message.id = Empty,
    );
    if !own_context {
        if let Some(TraceContext { traceparent, tracestate }) = trace::context_of(&span) {
            task.headers.remove(TRACESTATE);
            if let Some(p) = traceparent {
                task.headers.insert(TRACEPARENT.to_owned(), p);
            }
            if let Some(s) = tracestate {
                task.headers.insert(TRACESTATE.to_owned(), s);
            }
        }
    }
    Some(span)
}

/// Completes a `send` span once its task is stored.
pub fn sent(span: &Span, task: &Task) {
    span.record("messaging.message.id", task.id.to_string());
}

/// A delivery (Lease or stream push) of `task`.
pub fn received(task: &Task) {
    if !trace::enabled() {
        return;
    }
    let span = tracing::info_span!(
        target: TARGET,
        "receive",
        otel.name = format!("receive {}", task.queue),
        otel.kind = "consumer",
        messaging.system = "taskbroker",
        messaging.operation.name = "receive",
        messaging.operation.type = "receive",
        messaging.destination.name = task.queue.as_str(),
        messaging.message.id = task.id.to_string(),
        messaging.message.delivery_attempt = task.attempt,
    );
    trace::set_parent(&span, trace::task_context(&task.headers));
}

/// An Ack or Nack of `task` (its state after it); `outcome` is `ack` or `nack`.
pub fn settled(task: &Task, outcome: &'static str) {
    if !trace::enabled() {
        return;
    }
    let span = tracing::info_span!(
        target: TARGET,
        "settle",
        otel.name = format!("settle {}", task.queue),
        otel.kind = "client",
        messaging.system = "taskbroker",
        messaging.operation.name = outcome,
        messaging.operation.type = "settle",
        messaging.destination.name = task.queue.as_str(),
        messaging.message.id = task.id.to_string(),
        taskbroker.outcome = outcome,
        error.type = Empty,
    );
    trace::set_parent(&span, trace::task_context(&task.headers));
    if outcome == "nack" {
        span.record("error.type", "nacked");
    }
    if task.state == TaskState::Dead {
        tracing::info!(target: TARGET, parent: &span, last_error = task.last_error.as_str(), "dead-lettered");
    }
}

/// A lease of `task` ran out.
pub fn expired(task: &Task) {
    if !trace::enabled() {
        return;
    }
    let span = tracing::info_span!(
        target: TARGET,
        "lease expired",
        otel.name = format!("expire {}", task.queue),
        messaging.system = "taskbroker",
        messaging.destination.name = task.queue.as_str(),
        messaging.message.id = task.id.to_string(),
    );
    trace::set_parent(&span, trace::task_context(&task.headers));
    if task.state == TaskState::Dead {
        tracing::info!(target: TARGET, parent: &span, "dead-lettered");
    }
}
