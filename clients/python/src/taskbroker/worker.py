"""The worker API: :class:`Worker` runs handlers for task kinds over one Stream.

A worker holds one bidirectional Stream with ``max_in_flight = concurrency``,
so the broker never pushes it more tasks than it runs at once. Async handlers
run on the event loop; sync handlers on a pool of ``concurrency`` threads. The
per-connection protocol lives in :mod:`taskbroker._session`; this module owns
registration, the reconnect loop, signals and stopping.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterable, Mapping, NamedTuple, Optional, Sequence, Tuple, TypeVar

from . import _convert
from ._connection import Backoff, TLSOption, endpoint
from ._convert import Seconds
from ._session import Session
from .v1 import worker_pb2, worker_pb2_grpc

__all__ = ["Worker"]

log = logging.getLogger("taskbroker.worker")

F = TypeVar("F", bound=Callable[..., Any])

#: A session that lived this long was healthy: the next reconnect starts from the shortest delay.
HEALTHY_SESSION = 5.0

_MODES = {"strict": worker_pb2.SUBSCRIBE_MODE_STRICT, "weighted": worker_pb2.SUBSCRIBE_MODE_WEIGHTED}


class _Handler(NamedTuple):
    fn: Callable[..., Any]
    is_async: bool


class Worker:
    """Runs ``@worker.task(kind)`` handlers for tasks from ``queues``.

    ``mode="strict"`` takes from the first queue with ready work; ``"weighted"``
    shares deliveries by ``weights`` (queue -> weight). ``lease_duration``
    (seconds) overrides the queues' lease length; leases are extended
    automatically while a handler runs. ``drain_timeout`` bounds how long a
    stopping worker waits for running tasks (None: as long as they take).
    ``handle_signals``: SIGTERM/SIGINT stop the worker gracefully (a second one
    stops it at once), when it runs in the main thread.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        queues: Sequence[str] = ("default",),
        concurrency: int = 1,
        mode: str = "strict",
        weights: Optional[Mapping[str, int]] = None,
        *,
        token: Optional[str] = None,
        tls: TLSOption = None,
        lease_duration: Optional[Seconds] = None,
        worker_id: Optional[str] = None,
        drain_timeout: Optional[float] = None,
        handle_signals: bool = True,
        max_reconnect_delay: float = 5.0,
        options: Optional[Sequence[Tuple[str, object]]] = None,
    ) -> None:
        if isinstance(queues, str):
            queues = [queues]
        if not queues:
            raise ValueError("a worker needs at least one queue")
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if mode not in _MODES:
            raise ValueError(f"mode must be 'strict' or 'weighted', not {mode!r}")
        if weights and mode != "weighted":
            raise ValueError("weights apply to mode='weighted' only")
        self._endpoint = endpoint(target, token, tls, options)
        self.queues = list(queues)
        self.concurrency = concurrency
        self.mode = mode
        self.weights = dict(weights or {})
        #: Seconds, or None for each queue's own lease_duration.
        self.lease_duration = None if lease_duration is None else _convert.seconds(lease_duration)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.drain_timeout = drain_timeout
        self.handle_signals = handle_signals
        self.max_reconnect_delay = max_reconnect_delay
        self._handlers: Dict[str, _Handler] = {}
        # Set while run_async runs:
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop_event: asyncio.Event = None  # type: ignore[assignment]
        self._force_event: asyncio.Event = None  # type: ignore[assignment]
        self._executor: Optional[ThreadPoolExecutor] = None
        #: stop() before run: the next run stops at once.
        self._stop_requested = False
        self._lock = threading.Lock()

    # --- handlers -----------------------------------------------------------

    def task(self, kind: str) -> Callable[[F], F]:
        """Decorator: ``@worker.task("email.send")`` registers a handler for that kind.

        The handler gets a :class:`~taskbroker.Job` and returns the result
        (bytes, str, anything JSON-able, or None); raising acks nothing and
        nacks the task (:class:`~taskbroker.Retry` / :class:`~taskbroker.NoRetry`
        steer the retry).
        """

        def register(fn: F) -> F:
            self.register(kind, fn)
            return fn

        return register

    def register(self, kind: str, fn: Callable[..., Any]) -> None:
        """Registers ``fn`` for ``kind`` (what ``@worker.task(kind)`` does)."""
        if not kind:
            raise ValueError("kind must not be empty")
        if kind in self._handlers:
            raise ValueError(f"a handler for {kind!r} is already registered")
        call = getattr(fn, "__call__", None)
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)
        self._handlers[kind] = _Handler(fn, is_async)

    @property
    def kinds(self) -> Iterable[str]:
        return tuple(self._handlers)

    # --- running ------------------------------------------------------------

    def run(self) -> None:
        """Runs until :meth:`stop` or SIGTERM/SIGINT, then drains: no new tasks, running ones
        finish and are settled, then it returns. Blocks; starts its own event loop."""
        asyncio.run(self.run_async())

    def stop(self) -> None:
        """Asks the worker to drain and return from run(). Safe from any thread and from handlers."""
        with self._lock:
            self._stop_requested = True
            loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._stop_event.set)
            except RuntimeError:  # the loop closed in between
                pass

    async def run_async(self) -> None:
        """The same as :meth:`run` from inside a running event loop."""
        if not self._handlers:
            raise ValueError("no handlers registered: use @worker.task(kind)")
        with self._lock:
            if self._loop is not None:
                raise RuntimeError("this worker is already running")
            self._loop = asyncio.get_running_loop()
            self._stop_event = asyncio.Event()
            self._force_event = asyncio.Event()
            if self._stop_requested:
                self._stop_event.set()
        channel = self._endpoint.aio_channel()
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        restore = self._install_signals()
        backoff = Backoff(0.1, self.max_reconnect_delay)
        try:
            log.info("worker %s: queues %s, concurrency %d, kinds %s",
                     self.worker_id, self.queues, self.concurrency, sorted(self._handlers))
            while not self._stop_event.is_set():
                session = Session(self, stub)
                started = time.monotonic()
                await session.run()
                if self._stop_event.is_set():
                    break
                if session.productive or time.monotonic() - started > HEALTHY_SESSION:
                    backoff.reset()
                delay = backoff.next()
                log.info("reconnecting to %s in %.2fs", self._endpoint.target, delay)
                try:
                    await asyncio.wait_for(self._stop_event.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        finally:
            restore()
            await channel.close()
            if self._executor is not None:
                self._executor.shutdown(wait=False)
                self._executor = None
            with self._lock:
                self._loop = None
                self._stop_requested = False
            log.info("worker %s stopped", self.worker_id)

    def _pool(self) -> ThreadPoolExecutor:
        """The threads sync handlers run on: ``concurrency`` of them, made on first use."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="taskbroker-handler")
        return self._executor

    def _stopping(self) -> bool:
        return self._stop_event is not None and self._stop_event.is_set()

    def _subscribe(self) -> worker_pb2.Subscribe:
        sub = worker_pb2.Subscribe(
            queues=self.queues,
            mode=_MODES[self.mode],
            weights=self.weights,
            max_in_flight=self.concurrency,
            worker_id=self.worker_id,
        )
        if self.lease_duration is not None:
            sub.lease_duration.CopyFrom(_convert.duration(self.lease_duration))
        return sub

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stop_event.is_set():
            log.warning("%s again: stopping now; running tasks go back to the broker", name)
            self._force_event.set()
        else:
            log.info("%s: draining (finishing running tasks); send it again to stop at once", name)
            self._stop_event.set()

    def _install_signals(self) -> Callable[[], None]:
        """Routes SIGTERM/SIGINT to a graceful stop; returns what undoes it."""
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return lambda: None
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not on this platform / loop
                pass

        def restore() -> None:
            for sig in installed:
                loop.remove_signal_handler(sig)

        return restore
