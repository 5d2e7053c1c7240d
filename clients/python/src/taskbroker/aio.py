"""The producer API over asyncio: :class:`AsyncClient`, the same calls as
:class:`~taskbroker.Client` as coroutines."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterable, List, Mapping, Optional, Sequence

import grpc
import grpc.aio

from . import _convert
from ._connection import Backoff
from ._convert import Seconds, When
from .client import TaskRef, _ProducerBase
from .errors import Timeout, Unavailable, from_rpc_error
from .v1 import producer_pb2, producer_pb2_grpc, task_pb2

__all__ = ["AsyncClient"]


class AsyncClient(_ProducerBase):
    """Enqueue tasks and follow them from asyncio code.

    The channel is opened on first use, inside the running loop; ``await
    client.close()`` or ``async with AsyncClient(...) as client`` closes it.
    Takes the same arguments as :class:`~taskbroker.Client`.
    """

    def _connect(self) -> None:
        self._channel: Optional[grpc.aio.Channel] = None
        self._stub: Any = None

    def _producer(self) -> Any:
        if self._stub is None:
            self._channel = self._endpoint.aio_channel()
            self._stub = producer_pb2_grpc.ProducerServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub = None, None

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _unary(self, name: str, request: Any, timeout: Optional[float] = None) -> Any:
        started, backoff = time.monotonic(), Backoff(0.05, 2.0)
        while True:
            method = getattr(self._producer(), name)
            try:
                return await method(request, timeout=timeout or self.timeout, metadata=self._endpoint.metadata)
            except grpc.RpcError as e:
                err = from_rpc_error(e)
            delay = self._retry_delay(err, started, backoff)
            if delay is None:
                raise err
            await asyncio.sleep(delay)

    async def enqueue(
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
        """See :meth:`taskbroker.Client.enqueue`."""
        req = _convert.enqueue_request(
            kind, payload, queue=queue, priority=priority, delay=delay, run_at=run_at, headers=headers,
            dedup_key=dedup_key, concurrency_key=concurrency_key, semaphores=semaphores,
            max_attempts=max_attempts,
            content_type=content_type, request_id=request_id,
            depends_on=depends_on, on_dependency_failure=on_dependency_failure, ttl=ttl,
        )
        return (await self._unary("Enqueue", req, timeout)).task

    async def enqueue_many(
        self, items: Iterable[Any], *, return_exceptions: bool = False, **defaults: Any
    ) -> List[Any]:
        """See :meth:`taskbroker.Client.enqueue_many`."""
        out: List[Any] = []
        for batch in self._chunks(items, defaults):
            out.extend(self._batch_results(await self._unary("EnqueueBatch", batch), return_exceptions))
        return out

    async def get(self, task: TaskRef) -> task_pb2.Task:
        """See :meth:`taskbroker.Client.get`."""
        req = producer_pb2.GetTaskRequest(task_id=_convert.task_id_of(task))
        return (await self._unary("GetTask", req)).task

    async def get_dependencies(self, task: TaskRef) -> List[task_pb2.Task]:
        """See :meth:`taskbroker.Client.get_dependencies`."""
        req = producer_pb2.GetTaskRequest(task_id=_convert.task_id_of(task), include_dependencies=True)
        return list((await self._unary("GetTask", req)).dependencies)

    async def cancel(self, task: TaskRef) -> task_pb2.Task:
        """See :meth:`taskbroker.Client.cancel`."""
        req = producer_pb2.CancelTaskRequest(task_id=_convert.task_id_of(task))
        return (await self._unary("CancelTask", req)).task

    async def wait(self, task: TaskRef, timeout: Optional[float] = None) -> task_pb2.Task:
        """See :meth:`taskbroker.Client.wait`."""
        task_id = _convert.task_id_of(task)
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = Backoff(0.05, 2.0)
        last: Optional[task_pb2.Task] = None
        req = producer_pb2.WatchTaskRequest(task_id=task_id)
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise self._not_finished(task_id, timeout, last)
            call = self._producer().WatchTask(req, timeout=remaining, metadata=self._endpoint.metadata)
            try:
                async for resp in call:
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
            await asyncio.sleep(retry_after)
