"""taskbroker: producers and workers for the taskbroker gRPC task broker.

::

    from taskbroker import Client, Worker

    client = Client("127.0.0.1:50051")
    task = client.enqueue("email.send", {"to": "a@b.c"}, queue="emails")
    done = client.wait(task.id, timeout=30)

    worker = Worker("127.0.0.1:50051", queues=["emails"], concurrency=8)

    @worker.task("email.send")
    def send(job):
        return {"sent": True}

    worker.run()

# Layout
- ``client`` / ``aio``: the producer API, blocking and asyncio;
- ``worker`` (registration, reconnects, signals) and ``_session`` (one Stream's protocol);
- ``job``: what a handler receives; ``control``: ``Retry`` and ``NoRetry``;
- ``errors``: typed exceptions mapped from the broker's error reasons;
- ``_convert``: Python values <-> messages; ``_connection``: channels, TLS, tokens, backoff;
- ``_tracing``: optional OpenTelemetry; ``v1``: the generated protobuf and gRPC stubs.
"""

from ._connection import TLS
from ._convert import result_json
from .aio import AsyncClient
from .client import Client
from .control import NoRetry, Retry
from .errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    LeaseMismatch,
    NotFound,
    PermissionDenied,
    QueueNotFound,
    ResourceExhausted,
    TaskbrokerError,
    TaskCanceled,
    TaskFinished,
    TaskNotFound,
    Timeout,
    Unauthenticated,
    Unavailable,
    Unsupported,
)
from .job import Job
from .v1.task_pb2 import Task, TaskState
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "Client",
    "AsyncClient",
    "Worker",
    "Job",
    "Retry",
    "NoRetry",
    "TLS",
    "Task",
    "TaskState",
    "result_json",
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
]
