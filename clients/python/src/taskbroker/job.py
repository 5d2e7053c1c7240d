"""What a handler receives: :class:`Job`, one delivery of a task."""

from __future__ import annotations

import json
import threading
from typing import Any, Dict, Optional

from .v1 import worker_pb2

__all__ = ["Job"]

#: Guards the lazy creation of cancel events against a concurrent loss.
_EVENT_LOCK = threading.Lock()


class Job:
    """One delivery of a task to this worker.

    ``payload`` is the raw bytes; :meth:`json` and :meth:`text` decode it.
    When the lease is lost (it expired, the task was canceled, or the stream to
    the broker broke) an async handler is cancelled (``asyncio.CancelledError``)
    and :attr:`cancelled` turns True; a sync handler, which cannot be
    interrupted, should check :attr:`cancelled` or wait on :attr:`cancel_event`
    between steps and give up early. A lost task's result is never sent.
    """

    __slots__ = (
        "task", "id", "kind", "queue", "payload", "content_type", "headers", "attempt", "max_attempts",
        "priority", "lease_id", "lost_reason", "_lost", "_event",
    )

    def __init__(self, leased: worker_pb2.LeasedTask) -> None:
        task = leased.task
        #: The delivered ``taskbroker.v1.Task`` message.
        self.task = task
        self.id: str = task.id
        self.kind: str = task.kind
        self.queue: str = task.queue
        self.payload: bytes = task.payload
        self.content_type: str = task.content_type
        self.headers: Dict[str, str] = dict(task.headers)
        #: This delivery's number, from 1.
        self.attempt: int = task.attempt
        self.max_attempts: int = task.max_attempts
        self.priority: int = task.priority
        #: The fencing token of this delivery.
        self.lease_id: str = leased.lease_id
        #: Why the lease was lost ("expired", "canceled", "disconnected", "stopped"), or None.
        self.lost_reason: Optional[str] = None
        self._lost = False
        #: Made on first use: most jobs never need one.
        self._event: Optional[threading.Event] = None

    @property
    def cancelled(self) -> bool:
        """True once the lease is lost: stop working, the result would be discarded."""
        return self._lost

    @property
    def cancel_event(self) -> threading.Event:
        """Set when the lease is lost; a sync handler may ``wait()`` on it instead of sleeping."""
        with _EVENT_LOCK:
            if self._event is None:
                self._event = threading.Event()
                if self._lost:
                    self._event.set()
            return self._event

    def _mark_lost(self, reason: str) -> None:
        with _EVENT_LOCK:
            self.lost_reason = reason
            self._lost = True
            if self._event is not None:
                self._event.set()

    def json(self) -> Any:
        """The payload decoded as JSON."""
        return json.loads(self.payload)

    def text(self) -> str:
        """The payload decoded as UTF-8."""
        return self.payload.decode()

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, kind={self.kind!r}, queue={self.queue!r}, attempt={self.attempt})"
