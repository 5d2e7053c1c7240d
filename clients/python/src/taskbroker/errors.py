"""Typed exceptions, mapped from the broker's errors in one place.

Every broker error carries a ``google.rpc.ErrorInfo`` whose ``reason`` picks
the class (``LEASE_MISMATCH`` -> :class:`LeaseMismatch`, ...); an error without
one (a proxy's, or the transport's) is mapped by its gRPC code. Bad input adds
``BadRequest`` field violations (:attr:`TaskbrokerError.field_violations`);
``UNAVAILABLE`` adds ``RetryInfo`` (:attr:`TaskbrokerError.retry_delay`).
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Type

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "TaskbrokerError",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "TaskNotFound",
    "QueueNotFound",
    "FailedPrecondition",
    "LeaseMismatch",
    "TaskCanceled",
    "TaskFinished",
    "Unavailable",
    "ResourceExhausted",
    "PermissionDenied",
    "Unauthenticated",
    "Timeout",
    "Unsupported",
    "from_rpc_error",
    "from_status",
]


class FieldViolation(NamedTuple):
    """One offending request field, as the broker named it (e.g. ``priority``)."""

    field: str
    description: str


class TaskbrokerError(Exception):
    """Base class of every error this package raises for a broker call."""

    def __init__(
        self,
        message: str,
        *,
        code: Optional[grpc.StatusCode] = None,
        reason: str = "",
        metadata: Optional[Dict[str, str]] = None,
        field_violations: Optional[List[FieldViolation]] = None,
        retry_delay: Optional[float] = None,
    ) -> None:
        super().__init__(message)
        #: What the broker (or the transport) said.
        self.message = message
        #: The gRPC status code, or None for errors raised by this package itself.
        self.code = code
        #: The ``ErrorInfo.reason`` (``LEASE_MISMATCH``, ...), or "" when there was none.
        self.reason = reason
        #: The ``ErrorInfo.metadata`` (e.g. ``{"task_id": ...}``).
        self.metadata = dict(metadata or {})
        #: ``BadRequest`` field violations; empty unless the input was bad.
        self.field_violations = list(field_violations or [])
        #: Seconds the broker asked clients to wait before retrying (``RetryInfo``).
        self.retry_delay = retry_delay

    def __str__(self) -> str:
        head = " ".join(p for p in (self.code.name if self.code else "", self.reason) if p)
        text = f"{head}: {self.message}" if head else self.message
        if self.field_violations:
            text += " [" + "; ".join(f"{v.field}: {v.description}" for v in self.field_violations) + "]"
        return text


class InvalidArgument(TaskbrokerError):
    """Bad input; :attr:`field_violations` names each offending field."""


class NotFound(TaskbrokerError):
    """Something named in the request does not exist."""


class TaskNotFound(NotFound):
    """Unknown (or already purged) task id."""


class QueueNotFound(NotFound):
    """An undeclared queue on a broker with ``strict_queues = true``."""


class FailedPrecondition(TaskbrokerError):
    """The task is not in a state that allows the call."""


class LeaseMismatch(FailedPrecondition):
    """A wrong, stale or expired lease id: the task was not touched."""


class TaskCanceled(FailedPrecondition):
    """The task was canceled while it was held."""


class TaskFinished(FailedPrecondition):
    """Cancel of a task that already succeeded or died."""


class Unavailable(TaskbrokerError):
    """The broker (or its storage) cannot serve now; safe to retry."""


class ResourceExhausted(TaskbrokerError):
    """A limit was reached (e.g. the storage is full)."""


class PermissionDenied(TaskbrokerError):
    """The caller may not do this."""


class Unauthenticated(TaskbrokerError):
    """Missing or wrong credentials."""


class Timeout(TaskbrokerError, TimeoutError):
    """A deadline passed (a call's timeout, or ``wait``'s)."""


class Unsupported(TaskbrokerError):
    """An option this client or the broker's API does not support."""


_BY_REASON: Dict[str, Type[TaskbrokerError]] = {
    "INVALID_ARGUMENT": InvalidArgument,
    "TASK_NOT_FOUND": TaskNotFound,
    "QUEUE_NOT_FOUND": QueueNotFound,
    "LEASE_MISMATCH": LeaseMismatch,
    "TASK_CANCELED": TaskCanceled,
    "TASK_FINISHED": TaskFinished,
    "STORAGE_UNAVAILABLE": Unavailable,
    "STORAGE_FULL": ResourceExhausted,
}

_BY_CODE: Dict[grpc.StatusCode, Type[TaskbrokerError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.DEADLINE_EXCEEDED: Timeout,
}

_CODE_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


def _build(code: Optional[grpc.StatusCode], message: str, status: Optional[status_pb2.Status]) -> TaskbrokerError:
    reason, metadata, violations, retry_delay = "", {}, [], None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            retry_delay = info.retry_delay.ToTimedelta().total_seconds()
    cls = _BY_REASON.get(reason) or (_BY_CODE.get(code) if code is not None else None) or TaskbrokerError
    return cls(
        message,
        code=code,
        reason=reason,
        metadata=metadata,
        field_violations=violations,
        retry_delay=retry_delay,
    )


def from_status(status: status_pb2.Status) -> TaskbrokerError:
    """The exception for a ``google.rpc.Status`` (a batch item's or a stream settlement's error)."""
    return _build(_CODE_BY_NUMBER.get(status.code), status.message, status)


def from_rpc_error(err: grpc.RpcError) -> TaskbrokerError:
    """The exception for a failed gRPC call (sync or asyncio)."""
    code = err.code() if hasattr(err, "code") else None
    message = (err.details() if hasattr(err, "details") else None) or str(err)
    status = None
    trailers = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except Exception:  # a malformed trailer is no reason to hide the error itself
                status = None
    return _build(code, message, status)
