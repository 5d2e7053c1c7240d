"""Python values <-> the API's messages: payloads, results, durations, times,
and the one EnqueueRequest builder both clients share."""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

from google.protobuf import duration_pb2, timestamp_pb2

from . import _tracing
from .errors import Unsupported
from .v1 import producer_pb2, task_pb2

Seconds = Union[float, int, _dt.timedelta]
When = Union[_dt.datetime, float, int]

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"

#: True when the API's EnqueueRequest has a ``concurrency_key`` field (a newer proto).
HAS_CONCURRENCY_KEY = "concurrency_key" in producer_pb2.EnqueueRequest.DESCRIPTOR.fields_by_name
#: True when the API's EnqueueRequest has a ``semaphores`` field.
HAS_SEMAPHORES = "semaphores" in producer_pb2.EnqueueRequest.DESCRIPTOR.fields_by_name
#: True when the API's EnqueueRequest has ``depends_on`` and ``ttl`` (task dependencies and deadlines).
HAS_WORKFLOWS = "depends_on" in producer_pb2.EnqueueRequest.DESCRIPTOR.fields_by_name


def encode_payload(payload: Any, content_type: Optional[str]) -> Tuple[bytes, str]:
    """bytes as they are; str as UTF-8 text; anything else as JSON."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload), content_type or ""
    if isinstance(payload, str):
        return payload.encode(), content_type or TEXT
    if payload is None:
        return b"", content_type or ""
    return json.dumps(payload, separators=(",", ":")).encode(), content_type or JSON


def encode_result(value: Any) -> bytes:
    """A handler's return value as Ack's result: bytes, str (UTF-8), None (empty) or JSON."""
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":")).encode()


def seconds(value: Seconds) -> float:
    return value.total_seconds() if isinstance(value, _dt.timedelta) else float(value)


def duration(value: Seconds) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(round(seconds(value) * 1e9)))
    return d


def timestamp(value: When) -> timestamp_pb2.Timestamp:
    """A datetime (naive = local time, as ``datetime.timestamp`` reads it) or Unix seconds."""
    epoch = value.timestamp() if isinstance(value, _dt.datetime) else float(value)
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(round(epoch * 1e9)))
    return ts


def enqueue_request(
    kind: str,
    payload: Any = b"",
    *,
    queue: Optional[str] = None,
    priority: Optional[int] = None,
    delay: Optional[Seconds] = None,
    run_at: Optional[When] = None,
    headers: Optional[Mapping[str, str]] = None,
    dedup_key: Optional[str] = None,
    concurrency_key: Optional[str] = None,
    semaphores: Optional[Sequence[str]] = None,
    max_attempts: Optional[int] = None,
    content_type: Optional[str] = None,
    request_id: Optional[str] = None,
    depends_on: Optional[Sequence[Union[str, task_pb2.Task]]] = None,
    on_dependency_failure: Optional[str] = None,
    ttl: Optional[Seconds] = None,
) -> producer_pb2.EnqueueRequest:
    """The EnqueueRequest for one task, with a fresh ``request_id`` unless one is given.

    The broker validates everything (and names the offending field); this only
    converts. The current OpenTelemetry context, if any, goes into the headers
    as ``traceparent`` unless the caller set one.
    """
    body, ctype = encode_payload(payload, content_type)
    req = producer_pb2.EnqueueRequest(
        queue=queue or "",
        kind=kind,
        payload=body,
        content_type=ctype,
        dedup_key=dedup_key or "",
        request_id=request_id or uuid.uuid4().hex,
    )
    if headers:
        req.headers.update({str(k): str(v) for k, v in headers.items()})
    _tracing.inject(req.headers)
    if priority is not None:
        req.priority = priority
    if max_attempts is not None:
        req.max_attempts = max_attempts
    if delay is not None:
        req.delay.CopyFrom(duration(delay))
    if run_at is not None:
        req.scheduled_time.CopyFrom(timestamp(run_at))
    if concurrency_key is not None:
        if not HAS_CONCURRENCY_KEY:
            raise Unsupported(
                "concurrency_key is not supported: this taskbroker API (taskbroker.v1.EnqueueRequest) "
                "has no concurrency_key field yet"
            )
        setattr(req, "concurrency_key", concurrency_key)
    if semaphores:
        if not HAS_SEMAPHORES:
            raise Unsupported(
                "semaphores is not supported: this taskbroker API (taskbroker.v1.EnqueueRequest) "
                "has no semaphores field yet"
            )
        getattr(req, "semaphores").extend(str(s) for s in semaphores)
    if depends_on or on_dependency_failure is not None or ttl is not None:
        if not HAS_WORKFLOWS:
            raise Unsupported(
                "depends_on, on_dependency_failure and ttl are not supported: this taskbroker API "
                "(taskbroker.v1.EnqueueRequest) has no such fields yet"
            )
        getattr(req, "depends_on").extend(task_id_of(t) for t in depends_on or ())
        if on_dependency_failure is not None:
            policies = {"cancel": "DEPENDENCY_FAILURE_POLICY_CANCEL", "run": "DEPENDENCY_FAILURE_POLICY_RUN"}
            if on_dependency_failure not in policies:
                raise ValueError(f"on_dependency_failure must be 'cancel' or 'run', not {on_dependency_failure!r}")
            setattr(req, "on_dependency_failure", task_pb2.DependencyFailurePolicy.Value(policies[on_dependency_failure]))
        if ttl is not None:
            getattr(req, "ttl").CopyFrom(duration(ttl))
    return req


def enqueue_item(item: Any, defaults: Mapping[str, Any]) -> producer_pb2.EnqueueRequest:
    """One ``enqueue_many`` item: a mapping of ``enqueue`` arguments, a ``(kind, payload)``
    pair, a bare kind, or a ready EnqueueRequest; ``defaults`` fill what an item leaves out."""
    if isinstance(item, producer_pb2.EnqueueRequest):
        req = producer_pb2.EnqueueRequest()
        req.CopyFrom(item)
        if not req.request_id:
            req.request_id = uuid.uuid4().hex
        return req
    if isinstance(item, str):
        args: dict = {"kind": item}
    elif isinstance(item, tuple):
        args = dict(zip(("kind", "payload"), item))
    elif isinstance(item, Mapping):
        args = dict(item)
    else:
        raise TypeError(f"enqueue_many item must be a mapping, a (kind, payload) tuple or a kind, not {item!r}")
    for key, value in defaults.items():
        if value is not None:
            args.setdefault(key, value)
    return enqueue_request(**args)


def result_json(task: task_pb2.Task) -> Any:
    """The task's result decoded as JSON, or None when the result is empty."""
    return json.loads(task.result) if task.result else None


FINAL_STATES = frozenset(
    (task_pb2.TASK_STATE_SUCCEEDED, task_pb2.TASK_STATE_DEAD, task_pb2.TASK_STATE_CANCELED)
)


def is_final(task: task_pb2.Task) -> bool:
    return task.state in FINAL_STATES


def task_id_of(task: Union[str, task_pb2.Task]) -> str:
    return task if isinstance(task, str) else task.id
