"""The producer API: :class:`Client` (blocking). :class:`~taskbroker.AsyncClient`
is the same over asyncio; both share :class:`_ProducerBase`.

Every call is retried with backoff after ``UNAVAILABLE`` for up to
``retry_for`` seconds. That is safe: reads are reads, cancel is idempotent,
and each enqueue carries a ``request_id`` that makes a repeat return the task
the first attempt created.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import grpc

from . import _convert
from ._connection import Backoff, TLSOption, endpoint
from ._convert import Seconds, When
from .errors import TaskbrokerError, Timeout, Unavailable, from_rpc_error, from_status
from .v1 import producer_pb2, producer_pb2_grpc, task_pb2

__all__ = ["Client"]

#: EnqueueBatch takes at most this many items.
BATCH_LIMIT = 1000

TaskRef = Union[str, task_pb2.Task]


class _ProducerBase:
    """Configuration and the parts of the producer API that do no I/O."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        token: Optional[str] = None,
        tls: TLSOption = None,
        timeout: Optional[float] = 30.0,
        retry_for: float = 30.0,
        options: Optional[Sequence[Tuple[str, object]]] = None,
    ) -> None:
        #: Where and how to connect.
        self._endpoint = endpoint(target, token, tls, options)
        #: Per-call deadline in seconds (None: none), for each attempt of a unary call.
        self.timeout = timeout
        #: How long a call keeps retrying after UNAVAILABLE (0: not at all).
        self.retry_for = retry_for
        self._connect()

    def _connect(self) -> None:
        """Opens the channel (or prepares to, for asyncio)."""
        raise NotImplementedError

    @staticmethod
    def result_json(task: task_pb2.Task) -> Any:
        """The task's result decoded as JSON (None when empty)."""
        return _convert.result_json(task)

    def _retry_delay(self, err: TaskbrokerError, started: float, backoff: Backoff) -> Optional[float]:
        """How long to wait before retrying after ``err``, or None to give up."""
        if not isinstance(err, Unavailable):
            return None
        delay = backoff.next(at_least=min(err.retry_delay or 0.0, backoff.maximum))
        if time.monotonic() + delay > started + self.retry_for:
            return None
        return delay

    @staticmethod
    def _batch_results(
        resp: producer_pb2.EnqueueBatchResponse, return_exceptions: bool
    ) -> List[Union[task_pb2.Task, TaskbrokerError]]:
        out: List[Union[task_pb2.Task, TaskbrokerError]] = []
        for item in resp.results:
            if item.WhichOneof("result") == "task":
                out.append(item.task)
                continue
            err = from_status(item.error)
            if not return_exceptions:
                raise err
            out.append(err)
        return out

    @staticmethod
    def _chunks(items: Iterable[Any], defaults: Mapping[str, Any]) -> List[producer_pb2.EnqueueBatchRequest]:
        reqs = [_convert.enqueue_item(item, defaults) for item in items]
        return [
            producer_pb2.EnqueueBatchRequest(tasks=reqs[i:i + BATCH_LIMIT]) for i in range(0, len(reqs), BATCH_LIMIT)
        ]

    @staticmethod
    def _not_finished(task_id: str, timeout: Optional[float], last: Optional[task_pb2.Task]) -> Timeout:
        state = task_pb2.TaskState.Name(last.state) if last is not None else "unknown"
        return Timeout(f"task {task_id} did not finish within {timeout}s (last state {state})")


class Client(_ProducerBase):
    """Enqueue tasks and follow them (blocking). Thread-safe; use as a context manager or ``close()``.

    ``target`` is ``host:port`` (``http://``/``https://`` prefixes accepted);
    ``token`` is sent as a bearer token; ``tls`` is True (system roots), a
    :class:`taskbroker.TLS`, or ``grpc.ChannelCredentials``.
    """

    def _connect(self) -> None:
        self._channel = self._endpoint.channel()
        self._stub = producer_pb2_grpc.ProducerServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _unary(self, method: Any, request: Any, timeout: Optional[float] = None) -> Any:
        started, backoff = time.monotonic(), Backoff(0.05, 2.0)
        while True:
            try:
                return method(request, timeout=timeout or self.timeout, metadata=self._endpoint.metadata)
            except grpc.RpcError as e:
                err = from_rpc_error(e)
            delay = self._retry_delay(err, started, backoff)
            if delay is None:
                raise err
            time.sleep(delay)

    def enqueue(
        self,
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
        depends_on: Optional[Sequence[TaskRef]] = None,
        on_dependency_failure: Optional[str] = None,
        ttl: Optional[Seconds] = None,
        timeout: Optional[float] = None,
    ) -> task_pb2.Task:
        """Enqueue one task and return it (a ``taskbroker.v1.Task``).

        ``payload``: bytes as they are, str as UTF-8 text, anything else as JSON.
        ``delay`` (seconds or timedelta) or ``run_at`` (datetime or Unix seconds)
        schedule it. ``concurrency_key`` groups tasks for the queue's per-key cap and
        fair turns; ``semaphores`` names shared semaphores the task needs a permit
        of while leased (the broker's ``[semaphores]``; an unknown name is
        :class:`~taskbroker.errors.InvalidArgument` on ``semaphores``). Either
        raises :class:`~taskbroker.errors.Unsupported` with a broker API that has
        no such field.

        ``depends_on`` (tasks or ids, of any queue): the task waits until every
        one has SUCCEEDED; ``on_dependency_failure`` ``"cancel"`` (the default)
        or ``"run"`` says what a DEAD or CANCELED dependency does to it. ``ttl``
        (seconds or timedelta): not delivered by then, it is CANCELED as
        expired. Read the dependencies' results with :meth:`get_dependencies`.
        """
        req = _convert.enqueue_request(
            kind, payload, queue=queue, priority=priority, delay=delay, run_at=run_at, headers=headers,
            dedup_key=dedup_key, concurrency_key=concurrency_key, semaphores=semaphores,
            max_attempts=max_attempts,
            content_type=content_type, request_id=request_id,
            depends_on=depends_on, on_dependency_failure=on_dependency_failure, ttl=ttl,
        )
        return self._unary(self._stub.Enqueue, req, timeout).task

    def enqueue_many(
        self, items: Iterable[Any], *, return_exceptions: bool = False, **defaults: Any
    ) -> List[Any]:
        """Enqueue many tasks with EnqueueBatch (1000 per call), returning the Tasks in order.

        Each item is a mapping of :meth:`enqueue` arguments, a ``(kind, payload)``
        pair, or a kind; ``defaults`` (``queue=...``, ...) fill what items leave out.
        A bad item fails alone: with ``return_exceptions=True`` its error takes its
        place in the list, otherwise the first error is raised (later batches are not sent).
        """
        out: List[Any] = []
        for batch in self._chunks(items, defaults):
            out.extend(self._batch_results(self._unary(self._stub.EnqueueBatch, batch), return_exceptions))
        return out

    def get(self, task: TaskRef) -> task_pb2.Task:
        """The task as it is now; :class:`~taskbroker.errors.TaskNotFound` when unknown or purged."""
        req = producer_pb2.GetTaskRequest(task_id=_convert.task_id_of(task))
        return self._unary(self._stub.GetTask, req).task

    def get_dependencies(self, task: TaskRef) -> List[task_pb2.Task]:
        """The tasks ``task`` depends on, with their results, in ``depends_on`` order (one
        call: GetTask with ``include_dependencies``)."""
        req = producer_pb2.GetTaskRequest(task_id=_convert.task_id_of(task), include_dependencies=True)
        return list(self._unary(self._stub.GetTask, req).dependencies)

    def cancel(self, task: TaskRef) -> task_pb2.Task:
        """Cancel a scheduled, ready or leased task; returns it (CANCELED)."""
        req = producer_pb2.CancelTaskRequest(task_id=_convert.task_id_of(task))
        return self._unary(self._stub.CancelTask, req).task

    def wait(self, task: TaskRef, timeout: Optional[float] = None) -> task_pb2.Task:
        """Follow the task (WatchTask) until SUCCEEDED, DEAD or CANCELED and return it.

        Raises :class:`~taskbroker.errors.Timeout` after ``timeout`` seconds (None: no limit).
        A broken watch (broker restart) is resumed within the same time budget.
        """
        task_id = _convert.task_id_of(task)
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = Backoff(0.05, 2.0)
        last: Optional[task_pb2.Task] = None
        req = producer_pb2.WatchTaskRequest(task_id=task_id)
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise self._not_finished(task_id, timeout, last)
            call = self._stub.WatchTask(req, timeout=remaining, metadata=self._endpoint.metadata)
            try:
                for resp in call:
                    last = resp.task
                    if _convert.is_final(last):
                        return last
                retry_after = backoff.next()
            except grpc.RpcError as e:
                err = from_rpc_error(e)
                if isinstance(err, Timeout):
                    raise self._not_finished(task_id, timeout, last) from None
                if not isinstance(err, Unavailable):
                    raise err from None
                retry_after = backoff.next(at_least=min(err.retry_delay or 0.0, 2.0))
            finally:
                call.cancel()
            if deadline is not None:
                retry_after = min(retry_after, max(0.0, deadline - time.monotonic()))
            time.sleep(retry_after)
