"""One worker Stream, from ``subscribe`` to its end.

A session owns everything that belongs to one connection: the tasks pushed to
it (each tracked until its ack/nack is *settled*), their lease extensions, and
the one writer that sends on the stream. When the stream ends, every task it
held is lost (the broker has given them back), so their handlers are
cancelled. The :class:`~taskbroker.Worker` runs sessions one after another,
reconnecting with backoff.

Protocol (README "Worker streams"): ``subscribe`` first, with
``max_in_flight = concurrency``; the broker pushes ``task`` while fewer than
that are unsettled; ``ack``/``nack``/``extend`` are each answered by
``settled``; ``lease_lost`` says stop; ``draining`` says the broker is going
away; ``drain`` tells the broker this worker is.

This is the hot path of a worker (three stream messages per task), so it
avoids per-task timers and queues: one keeper task extends leases, and the
writer drains a deque.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import traceback
from typing import TYPE_CHECKING, Any, Deque, Dict, Optional

import grpc
import grpc.aio

from . import _convert, _tracing
from .control import NoRetry, Retry
from .errors import (
    InvalidArgument,
    LeaseMismatch,
    NotFound,
    PermissionDenied,
    TaskCanceled,
    Unauthenticated,
    from_rpc_error,
    from_status,
)
from .job import Job
from .v1 import worker_pb2

if TYPE_CHECKING:
    from .worker import Worker, _Handler

log = logging.getLogger("taskbroker.worker")

#: Errors after which reconnecting cannot help: the subscription itself is refused.
FATAL = (InvalidArgument, NotFound, PermissionDenied, Unauthenticated)
#: Settlement errors that mean the broker no longer counts the task as ours.
GONE = (LeaseMismatch, TaskCanceled, NotFound)
#: Most characters of a traceback sent as a Nack's error.
ERROR_TAIL = 4000
#: How long to wait for the broker to close the stream after we finished writing.
CLOSE_TIMEOUT = 5.0
#: Lease durations the broker accepts, in seconds.
MIN_LEASE, MAX_LEASE = 1.0, 12 * 3600.0
#: How often the keeper looks for leases to extend.
KEEPER_TICK = 0.1
#: A lease is extended once this share of it has passed (as `taskbroker work` does).
EXTEND_AFTER = 1 / 3
NEVER = float("inf")

_EXTEND = worker_pb2.SETTLE_OPERATION_EXTEND
_StreamRequest = worker_pb2.StreamRequest
_AckRequest = worker_pb2.AckRequest
_DONE = object()  # in the outbox: finish writing


def traceback_tail(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    return text if len(text) <= ERROR_TAIL else "..." + text[-ERROR_TAIL:]


class _Running:
    """A pushed task, from its delivery until its settlement is confirmed or its lease is lost."""

    __slots__ = ("job", "lease_s", "extend_at", "handler_task", "settle", "lost")

    def __init__(self, job: Job, lease_s: float) -> None:
        self.job = job
        #: The lease length, and so each extension's ``extend_by``.
        self.lease_s = lease_s
        #: When (monotonic) the keeper extends the lease next; NEVER while an extension is under way.
        self.extend_at = time.monotonic() + lease_s * EXTEND_AFTER
        self.handler_task: Optional[asyncio.Task] = None
        #: The ack/nack sent, kept to send again if the broker could not apply it.
        self.settle: Optional[worker_pb2.StreamRequest] = None
        self.lost = False


class Session:
    def __init__(self, worker: "Worker", stub: Any) -> None:
        self.w = worker
        self.stub = stub
        self.loop = asyncio.get_running_loop()
        #: Task id -> its delivery, until settled or lost.
        self.running: Dict[str, _Running] = {}
        #: Set while nothing is running: what a drain waits for.
        self.idle = asyncio.Event()
        self.idle.set()
        #: Messages for the writer, in order, and the future it sleeps on when there are none.
        self.outbox: Deque[Any] = collections.deque()
        self.outbox_waiter: Optional[asyncio.Future] = None
        #: True once a task arrived: the connection was worth having (resets the reconnect backoff).
        self.productive = False
        #: Set when the broker said it is shutting down.
        self.broker_draining = asyncio.Event()
        self.call: Any = None

    # --- the stream ---------------------------------------------------------

    async def run(self) -> None:
        """Runs until the stream ends; raises only errors that reconnecting cannot fix."""
        self.call = self.stub.Stream(metadata=self.w._endpoint.metadata)
        self._send(_StreamRequest(subscribe=self.w._subscribe()))
        helpers = [self.loop.create_task(c) for c in (self._write(), self._close_when_done(), self._keep_leases())]
        read, dispatch = self.call.read, self._dispatch
        try:
            while True:
                msg = await read()
                if msg is grpc.aio.EOF:
                    if not self.w._stopping():
                        log.info("stream ended by the broker")
                    return
                dispatch(msg)
        except grpc.RpcError as e:
            err = from_rpc_error(e)
            if isinstance(err, FATAL) and not self.productive:
                raise err from None
            if not self.w._stopping():
                log.warning("stream to %s broke: %s", self.w._endpoint.target, err)
        finally:
            for h in helpers:
                h.cancel()
            self.call.cancel()
            for entry in list(self.running.values()):
                self._lose(entry, "disconnected")

    def _send(self, msg: Any) -> None:
        self.outbox.append(msg)
        waiter = self.outbox_waiter
        if waiter is not None:
            self.outbox_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _write(self) -> None:
        outbox, write = self.outbox, self.call.write
        try:
            while True:
                while not outbox:
                    self.outbox_waiter = self.loop.create_future()
                    await self.outbox_waiter
                msg = outbox.popleft()
                if msg is _DONE:
                    await self.call.done_writing()
                    return
                await write(msg)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the stream broke: the reader sees why
            log.debug("stream write failed: %s", e)
            self.call.cancel()

    async def _close_when_done(self) -> None:
        """On stop (or when the broker drains): drain, wait for what runs to settle, finish writing."""
        await _first(self.w._stop_event.wait(), self.broker_draining.wait())
        grace = None
        if self.w._stop_event.is_set():
            self._send(_StreamRequest(drain=worker_pb2.Drain()))
            grace = self.w.drain_timeout
            if self.running:
                log.info("draining: waiting for %d running task(s)", len(self.running))
        await _first(self.idle.wait(), self.w._force_event.wait(), timeout=grace)
        for entry in list(self.running.values()):
            log.warning("task %s still running at shutdown: cancelled, the broker will redeliver it", entry.job.id)
            self._lose(entry, "stopped")
        self._send(_DONE)
        await asyncio.sleep(CLOSE_TIMEOUT)
        self.call.cancel()

    async def _keep_leases(self) -> None:
        """Extends each running task's lease every third of its length, until it is settled or lost."""
        while True:
            await asyncio.sleep(KEEPER_TICK)
            now = time.monotonic()
            for entry in list(self.running.values()):
                if entry.extend_at <= now and entry.settle is None and not entry.lost:
                    entry.extend_at = NEVER  # until the broker answers
                    job = entry.job
                    self._send(_StreamRequest(extend=worker_pb2.ExtendLeaseRequest(
                        task_id=job.id, lease_id=job.lease_id, extend_by=_convert.duration(entry.lease_s)
                    )))

    def _dispatch(self, msg: worker_pb2.StreamResponse) -> None:
        kind = msg.WhichOneof("msg")
        if kind == "settled":
            self._on_settled(msg.settled)
        elif kind == "task":
            self._start(msg.task)
        elif kind == "lease_lost":
            lost = msg.lease_lost
            entry = self.running.get(lost.task_id)
            if entry is not None and entry.job.lease_id == lost.lease_id:
                log.warning("lease of task %s lost (%s): handler cancelled", lost.task_id, lost.reason)
                self._lose(entry, lost.reason or "expired")
        elif kind == "draining":
            log.info("the broker is shutting down: finishing running tasks, then reconnecting")
            self.broker_draining.set()

    # --- tasks --------------------------------------------------------------

    def _start(self, leased: worker_pb2.LeasedTask) -> None:
        self.productive = True
        job = Job(leased)
        old = self.running.get(job.id)
        if old is not None:  # redelivered to us after its lease expired
            self._lose(old, "expired")
        lease_s = self.w.lease_duration
        if lease_s is None:
            expire = leased.lease_expire_time
            remaining = expire.seconds + expire.nanos / 1e9 - time.time()
            lease_s = min(max(remaining, MIN_LEASE), MAX_LEASE)
        entry = _Running(job, lease_s)
        self.running[job.id] = entry
        self.idle.clear()
        handler = self.w._handlers.get(job.kind)
        if handler is None:
            known = ", ".join(sorted(self.w._handlers)) or "none"
            error = f"no handler for kind {job.kind!r} on this worker (it handles: {known})"
            log.error("task %s: %s", job.id, error)
            self._settle(entry, self._nack(job, error, no_retry=True))
            return
        entry.handler_task = self.loop.create_task(self._execute(entry, handler))

    async def _execute(self, entry: _Running, handler: "_Handler") -> None:
        job = entry.job
        span = _tracing.start_process_span(job.queue, job.id, job.kind, job.attempt, job.headers)
        error: Optional[BaseException] = None
        outcome = "ack"
        try:
            if not handler.is_async:
                value = await self.loop.run_in_executor(self.w._pool(), _call_sync, handler.fn, job, span)
            elif span is None:
                value = await handler.fn(job)
            else:
                with _tracing.use_span(span):
                    value = await handler.fn(job)
            request = _StreamRequest(ack=_AckRequest(
                task_id=job.id, lease_id=job.lease_id, result=_convert.encode_result(value)
            ))
        except asyncio.CancelledError as e:
            if entry.lost:  # the lease is gone (or the worker is stopping hard): nothing to settle
                _tracing.end_span(span, None, "lost")
                return
            # Not our cancellation: the handler let a CancelledError of its own escape.
            outcome, error = "nack", e
            log.warning("task %s (%s) was cancelled from inside its handler", job.id, job.kind)
            request = self._nack(job, traceback_tail(e) or "CancelledError")
        except Retry as e:
            outcome, error = "retry", e
            log.info("task %s (%s) asked for a retry: %s", job.id, job.kind, e.message)
            request = self._nack(job, e.message, retry_after=e.after)
        except NoRetry as e:
            outcome, error = "no_retry", e
            log.warning("task %s (%s) failed without retry: %s", job.id, job.kind, e.message)
            request = self._nack(job, e.message, no_retry=True)
        except Exception as e:
            outcome, error = "nack", e
            log.warning("task %s (%s) failed (attempt %d)", job.id, job.kind, job.attempt, exc_info=True)
            request = self._nack(job, traceback_tail(e))
        if span is not None:
            _tracing.end_span(span, error, outcome if not entry.lost else "lost")
        if not entry.lost:
            self._settle(entry, request)

    @staticmethod
    def _nack(job: Job, error: str, retry_after: Optional[float] = None, no_retry: bool = False) -> Any:
        msg = worker_pb2.NackRequest(task_id=job.id, lease_id=job.lease_id, error=error, no_retry=no_retry)
        if retry_after is not None:
            msg.retry_after.CopyFrom(_convert.duration(retry_after))
        return _StreamRequest(nack=msg)

    def _settle(self, entry: _Running, request: Any) -> None:
        entry.settle = request
        self._send(request)

    def _on_settled(self, s: worker_pb2.Settled) -> None:
        entry = self.running.get(s.task_id)
        if entry is None or entry.job.lease_id != s.lease_id:
            return
        err = from_status(s.error) if s.HasField("error") else None
        if s.operation == _EXTEND:
            if entry.lost or entry.settle is not None:
                return
            if err is None:
                entry.extend_at = time.monotonic() + entry.lease_s * EXTEND_AFTER
            elif isinstance(err, GONE):
                log.warning("task %s: lease could not be extended (%s): handler cancelled", s.task_id, err)
                self._lose(entry, "canceled" if isinstance(err, TaskCanceled) else "expired")
            else:  # e.g. storage briefly unavailable: try again well before the deadline
                entry.extend_at = time.monotonic() + entry.lease_s / 8
            return
        if err is None:
            self._finish(entry)
        elif isinstance(err, GONE):
            log.warning("task %s: settlement refused (%s); the broker has moved on", s.task_id, err)
            self._finish(entry)
        elif isinstance(err, InvalidArgument) and entry.settle is not None and entry.settle.HasField("ack"):
            # e.g. a result over the broker's size limit: fail the task rather than hold it.
            self._settle(entry, self._nack(entry.job, f"the broker refused the result: {err}"))
        elif isinstance(err, InvalidArgument):
            log.error("task %s: nack refused (%s)", s.task_id, err)
            self._finish(entry)
        else:
            delay = err.retry_delay or 1.0
            log.warning("task %s: settlement failed (%s); sending it again in %.1fs", s.task_id, err, delay)
            self.loop.call_later(delay, self._resend, entry)

    def _resend(self, entry: _Running) -> None:
        if not entry.lost and self.running.get(entry.job.id) is entry and not self.call.done():
            self._send(entry.settle)

    def _lose(self, entry: _Running, reason: str) -> None:
        entry.lost = True
        entry.job._mark_lost(reason)
        if entry.handler_task is not None and not entry.handler_task.done():
            entry.handler_task.cancel()
        self._finish(entry)

    def _finish(self, entry: _Running) -> None:
        if self.running.get(entry.job.id) is entry:
            del self.running[entry.job.id]
        if not self.running:
            self.idle.set()


def _call_sync(fn: Any, job: Job, span: Any) -> Any:
    """Runs a sync handler on a pool thread, with its span current."""
    if span is None:
        return fn(job)
    with _tracing.use_span(span):
        return fn(job)


async def _first(*aws: Any, timeout: Optional[float] = None) -> None:
    """Waits until the first of ``aws`` completes (or ``timeout`` passes), then cancels the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
