"""OpenTelemetry, when ``opentelemetry-api`` is installed; a no-op otherwise.

Producers put the current trace context into the task's headers
(``traceparent``); workers open a ``process {queue}`` CONSUMER span whose
parent is that context, following the messaging semantic conventions.
"""

from __future__ import annotations

import os
from typing import Any, MutableMapping, Optional

try:
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
except ImportError:  # the optional extra is not installed
    _propagate = None  # type: ignore[assignment]
    _trace = None  # type: ignore[assignment]


#: A tracer provider named by the environment is loaded on first use, so the fast path below must not apply.
_PROVIDER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_UNKNOWN = object()


def active() -> bool:
    """True when OpenTelemetry is installed and an SDK (a real tracer provider) is set up.

    On every task's path: when opentelemetry-api shows that no provider was
    ever set, answer without the public lookup (which reads the environment).
    """
    if _trace is None:
        return False
    if getattr(_trace, "_TRACER_PROVIDER", _UNKNOWN) is None and not _PROVIDER_FROM_ENV:
        return False
    return not isinstance(_trace.get_tracer_provider(), (_trace.ProxyTracerProvider, _trace.NoOpTracerProvider))


def inject(headers: MutableMapping[str, str]) -> None:
    """Adds the current trace context (``traceparent``, ...) unless the caller set one."""
    if "traceparent" in headers or not active():
        return
    carrier: dict = {}
    _propagate.inject(carrier)
    for key, value in carrier.items():
        if key not in headers:  # not setdefault: older protobuf maps insert "" on a missed lookup
            headers[key] = value


def start_process_span(queue: str, task_id: str, kind: str, attempt: int, headers: Any) -> Optional[Any]:
    """A started ``process {queue}`` span, child of the task's ``traceparent``; None without OpenTelemetry.

    Without a configured SDK every span would be a no-op: skip the work.
    """
    if not active():
        return None
    parent = _propagate.extract(dict(headers))
    tracer = _trace.get_tracer("taskbroker")
    return tracer.start_span(
        f"process {queue}",
        context=parent,
        kind=_trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "taskbroker",
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": queue,
            "messaging.message.id": task_id,
            "taskbroker.task.kind": kind,
            "taskbroker.task.attempt": attempt,
        },
    )


def use_span(span: Any):
    """A context manager making ``span`` current (without ending it)."""
    return _trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False)


def end_span(span: Any, error: Optional[BaseException], outcome: str) -> None:
    if span is None:
        return
    span.set_attribute("taskbroker.outcome", outcome)
    if error is not None:
        span.record_exception(error)
        span.set_status(_trace.Status(_trace.StatusCode.ERROR, str(error)))
    span.end()
