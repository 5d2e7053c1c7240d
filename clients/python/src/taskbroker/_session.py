"""One worker Stream, from ``subscribe`` to its end.

A session owns everything that belongs to one connection: the tasks pushed to
it (each running until its ack/nack is *settled*), their lease extensions, and
the one writer that sends on the stream. When the stream ends, every task it
held is lost (the broker has given them back), so their handlers are
cancelled. The :class:`~taskbroker.Worker` runs sessions one after another,
reconnecting with backoff.

Protocol (README "Worker streams"): ``subscribe`` first, with
``max_in_flight = concurrency``; the broker pushes ``task`` while fewer than
that are unsettled; ``ack``/``nack``/``extend`` are each answered by
``settled``; ``lease_lost`` says stop; ``draining`` says the broker is going
away; ``drain`` tells the broker this worker is.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from typing import TYPE_CHECKING, Any, Dict, Optional

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

_EXTEND = worker_pb2.SETTLE_OPERATION_EXTEND
_DONE = object()  # in the outbox: finish writing


def traceback_tail(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    return text if len(text) <= ERROR_TAIL else "..." + text[-ERROR_TAIL:]


class _Running:
    """A pushed task, from its delivery until its settlement is confirmed or its lease is lost."""

    __slots__ = ("job", "lease_s", "timer", "handler_task", "settle", "lost")

    def __init__(self, job: Job, lease_s: float) -> None:
        self.job = job
        #: The lease length, and so each extension's ``extend_by``.
        self.lease_s = lease_s
        #: The pending extension.
        self.timer: Optional[asyncio.TimerHandle] = None
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
        #: Messages for the writer, in order.
        self.outbox: asyncio.Queue = asyncio.Queue()
        #: True once a task arrived: the connection was worth having (resets the reconnect backoff).
        self.productive = False
        #: Set when the broker said it is shutting down.
        self.broker_draining = asyncio.Event()
        self.call: Any = None

    # --- the stream ---------------------------------------------------------

    async def run(self) -> None:
        """Runs until the stream ends; raises only errors that reconnecting cannot fix."""
        self.call = self.stub.Stream(metadata=self.w._endpoint.metadata)
        self._send(worker_pb2.StreamRequest(subscribe=self.w._subscribe()))
        writer = self.loop.create_task(self._write())
        closer = self.loop.create_task(self._close_when_done())
        try:
            while True:
                msg = await self.call.read()
                if msg is grpc.aio.EOF:
                    log.info("stream ended by the broker")
                    return
                self._dispatch(msg)
        except grpc.RpcError as e:
            err = from_rpc_error(e)
            if isinstance(err, FATAL) and not self.productive:
                raise err from None
            if not self.w._stopping():
                log.warning("stream to %s broke: %s", self.w._endpoint.target, err)
        finally:
            writer.cancel()
            closer.cancel()
            self.call.cancel()
            for entry in list(self.running.values()):
                self._lose(entry, "disconnected")

    async def _write(self) -> None:
        try:
            while True:
                msg = await self.outbox.get()
                if msg is _DONE:
                    await self.call.done_writing()
                    return
                await self.call.write(msg)
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
            self._send(worker_pb2.StreamRequest(drain=worker_pb2.Drain()))
            grace = self.w.drain_timeout
            if self.running:
                log.info("draining: waiting for %d running task(s)", len(self.running))
        await _first(self.idle.wait(), self.w._force_event.wait(), timeout=grace)
        for entry in list(self.running.values()):
            log.warning("task %s still running at shutdown: cancelled, the broker will redeliver it", entry.job.id)
            self._lose(entry, "stopped")
        self.outbox.put_nowait(_DONE)
        await asyncio.sleep(CLOSE_TIMEOUT)
        self.call.cancel()

    def _send(self, msg: Any) -> None:
        self.outbox.put_nowait(msg)

    def _dispatch(self, msg: worker_pb2.StreamResponse) -> None:
        kind = msg.WhichOneof("msg")
        if kind == "task":
            self._start(msg.task)
        elif kind == "settled":
            self._on_settled(msg.settled)
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
        if self.w.lease_duration is not None:
            lease_s = self.w.lease_duration
        else:
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
            self._settle(entry, worker_pb2.StreamRequest(
                nack=worker_pb2.NackRequest(task_id=job.id, lease_id=job.lease_id, error=error, no_retry=True)
            ))
            return
        entry.timer = self.loop.call_later(lease_s / 2, self._extend, entry)
        entry.handler_task = self.loop.create_task(self._execute(entry, handler))

    async def _execute(self, entry: _Running, handler: "_Handler") -> None:
        job = entry.job
        span = _tracing.start_process_span(job.queue, job.id, job.kind, job.attempt, job.headers)
        error: Optional[BaseException] = None
        outcome = "ack"
        try:
            if handler.is_async:
                if span is None:
                    value = await handler.fn(job)
                else:
                    with _tracing.use_span(span):
                        value = await handler.fn(job)
            else:
                value = await self.loop.run_in_executor(self.w._executor, _call_sync, handler.fn, job, span)
            msg = worker_pb2.AckRequest(task_id=job.id, lease_id=job.lease_id, result=_convert.encode_result(value))
            request = worker_pb2.StreamRequest(ack=msg)
        except asyncio.CancelledError:
            _tracing.end_span(span, None, "lost")
            return  # the lease is gone (or the worker is stopping hard): nothing to settle
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
        _tracing.end_span(span, error, outcome if not entry.lost else "lost")
        if not entry.lost:
            self._settle(entry, request)

    @staticmethod
    def _nack(job: Job, error: str, retry_after: Optional[float] = None, no_retry: bool = False) -> Any:
        msg = worker_pb2.NackRequest(task_id=job.id, lease_id=job.lease_id, error=error, no_retry=no_retry)
        if retry_after is not None:
            msg.retry_after.CopyFrom(_convert.duration(retry_after))
        return worker_pb2.StreamRequest(nack=msg)

    def _settle(self, entry: _Running, request: Any) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        entry.settle = request
        self._send(request)

    def _extend(self, entry: _Running) -> None:
        entry.timer = None
        if entry.lost or entry.settle is not None:
            return
        job = entry.job
        self._send(worker_pb2.StreamRequest(extend=worker_pb2.ExtendLeaseRequest(
            task_id=job.id, lease_id=job.lease_id, extend_by=_convert.duration(entry.lease_s)
        )))

    def _on_settled(self, s: worker_pb2.Settled) -> None:
        entry = self.running.get(s.task_id)
        if entry is None or entry.job.lease_id != s.lease_id:
            return
        err = from_status(s.error) if s.HasField("error") else None
        if s.operation == _EXTEND:
            if entry.lost or entry.settle is not None:
                return
            if err is None:
                entry.timer = self.loop.call_later(entry.lease_s / 2, self._extend, entry)
            elif isinstance(err, GONE):
                log.warning("task %s: lease could not be extended (%s): handler cancelled", s.task_id, err)
                self._lose(entry, "canceled" if isinstance(err, TaskCanceled) else "expired")
            else:  # e.g. storage briefly unavailable: try again well before the deadline
                entry.timer = self.loop.call_later(entry.lease_s / 8, self._extend, entry)
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
            request = entry.settle
            self.loop.call_later(delay, lambda: entry.lost or self.call.done() or self._send(request))

    def _lose(self, entry: _Running, reason: str) -> None:
        entry.lost = True
        entry.job.lost_reason = reason
        entry.job.cancel_event.set()
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
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
