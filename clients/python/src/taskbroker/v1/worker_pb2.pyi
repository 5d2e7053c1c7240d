from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from taskbroker.v1 import task_pb2 as _task_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubscribeMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUBSCRIBE_MODE_UNSPECIFIED: _ClassVar[SubscribeMode]
    SUBSCRIBE_MODE_STRICT: _ClassVar[SubscribeMode]
    SUBSCRIBE_MODE_WEIGHTED: _ClassVar[SubscribeMode]

class SettleOperation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SETTLE_OPERATION_UNSPECIFIED: _ClassVar[SettleOperation]
    SETTLE_OPERATION_ACK: _ClassVar[SettleOperation]
    SETTLE_OPERATION_NACK: _ClassVar[SettleOperation]
    SETTLE_OPERATION_EXTEND: _ClassVar[SettleOperation]
SUBSCRIBE_MODE_UNSPECIFIED: SubscribeMode
SUBSCRIBE_MODE_STRICT: SubscribeMode
SUBSCRIBE_MODE_WEIGHTED: SubscribeMode
SETTLE_OPERATION_UNSPECIFIED: SettleOperation
SETTLE_OPERATION_ACK: SettleOperation
SETTLE_OPERATION_NACK: SettleOperation
SETTLE_OPERATION_EXTEND: SettleOperation

class LeaseRequest(_message.Message):
    __slots__ = ("queues", "max_tasks", "lease_duration", "wait", "worker_id")
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    MAX_TASKS_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedScalarFieldContainer[str]
    max_tasks: int
    lease_duration: _duration_pb2.Duration
    wait: _duration_pb2.Duration
    worker_id: str
    def __init__(self, queues: _Optional[_Iterable[str]] = ..., max_tasks: _Optional[int] = ..., lease_duration: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., wait: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., worker_id: _Optional[str] = ...) -> None: ...

class LeasedTask(_message.Message):
    __slots__ = ("task", "lease_id", "lease_expire_time")
    TASK_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    lease_id: str
    lease_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ..., lease_id: _Optional[str] = ..., lease_expire_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LeaseResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[LeasedTask]
    def __init__(self, tasks: _Optional[_Iterable[_Union[LeasedTask, _Mapping]]] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("task_id", "lease_id", "result")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lease_id: str
    result: bytes
    def __init__(self, task_id: _Optional[str] = ..., lease_id: _Optional[str] = ..., result: _Optional[bytes] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NackRequest(_message.Message):
    __slots__ = ("task_id", "lease_id", "error", "retry_after", "no_retry")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    NO_RETRY_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lease_id: str
    error: str
    retry_after: _duration_pb2.Duration
    no_retry: bool
    def __init__(self, task_id: _Optional[str] = ..., lease_id: _Optional[str] = ..., error: _Optional[str] = ..., retry_after: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., no_retry: bool = ...) -> None: ...

class NackResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

class ExtendLeaseRequest(_message.Message):
    __slots__ = ("task_id", "lease_id", "extend_by")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    EXTEND_BY_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lease_id: str
    extend_by: _duration_pb2.Duration
    def __init__(self, task_id: _Optional[str] = ..., lease_id: _Optional[str] = ..., extend_by: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ExtendLeaseResponse(_message.Message):
    __slots__ = ("lease_expire_time",)
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    lease_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, lease_expire_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Subscribe(_message.Message):
    __slots__ = ("queues", "mode", "weights", "max_in_flight", "lease_duration", "worker_id")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedScalarFieldContainer[str]
    mode: SubscribeMode
    weights: _containers.ScalarMap[str, int]
    max_in_flight: int
    lease_duration: _duration_pb2.Duration
    worker_id: str
    def __init__(self, queues: _Optional[_Iterable[str]] = ..., mode: _Optional[_Union[SubscribeMode, str]] = ..., weights: _Optional[_Mapping[str, int]] = ..., max_in_flight: _Optional[int] = ..., lease_duration: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., worker_id: _Optional[str] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("subscribe", "ack", "nack", "extend", "credit", "drain")
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    EXTEND_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    subscribe: Subscribe
    ack: AckRequest
    nack: NackRequest
    extend: ExtendLeaseRequest
    credit: Credit
    drain: Drain
    def __init__(self, subscribe: _Optional[_Union[Subscribe, _Mapping]] = ..., ack: _Optional[_Union[AckRequest, _Mapping]] = ..., nack: _Optional[_Union[NackRequest, _Mapping]] = ..., extend: _Optional[_Union[ExtendLeaseRequest, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ...) -> None: ...

class Drain(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Settled(_message.Message):
    __slots__ = ("task_id", "lease_id", "operation", "lease_expire_time", "error")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lease_id: str
    operation: SettleOperation
    lease_expire_time: _timestamp_pb2.Timestamp
    error: _status_pb2.Status
    def __init__(self, task_id: _Optional[str] = ..., lease_id: _Optional[str] = ..., operation: _Optional[_Union[SettleOperation, str]] = ..., lease_expire_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class LeaseLost(_message.Message):
    __slots__ = ("task_id", "lease_id", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lease_id: str
    reason: str
    def __init__(self, task_id: _Optional[str] = ..., lease_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Draining(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("task", "settled", "lease_lost", "draining")
    TASK_FIELD_NUMBER: _ClassVar[int]
    SETTLED_FIELD_NUMBER: _ClassVar[int]
    LEASE_LOST_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    task: LeasedTask
    settled: Settled
    lease_lost: LeaseLost
    draining: Draining
    def __init__(self, task: _Optional[_Union[LeasedTask, _Mapping]] = ..., settled: _Optional[_Union[Settled, _Mapping]] = ..., lease_lost: _Optional[_Union[LeaseLost, _Mapping]] = ..., draining: _Optional[_Union[Draining, _Mapping]] = ...) -> None: ...
