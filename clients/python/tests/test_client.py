"""The producer API (Client, AsyncClient) against a real broker."""

from __future__ import annotations

import asyncio
import json
import datetime as dt
import threading
import time
import uuid

import pytest
from conftest import running

import taskbroker
from taskbroker import AsyncClient, Client, Worker
from taskbroker.errors import (
    InvalidArgument,
    TaskFinished,
    TaskNotFound,
    Timeout,
    Unavailable,
    Unsupported,
)
from taskbroker.v1 import producer_pb2, task_pb2

S = taskbroker.TaskState


def test_enqueue_and_wait_returns_the_finished_task(broker):
    client = Client(broker.addr, **broker.conn)
    worker = Worker(broker.addr, **broker.conn, queues=["emails"], concurrency=2)

    @worker.task("email.send")
    def send(job):
        return {"sent": job.json()["to"], "attempt": job.attempt}

    task = client.enqueue("email.send", {"to": "a@b.c"}, queue="emails")
    assert isinstance(task, taskbroker.Task)
    assert task.id and task.state == S.Value("TASK_STATE_READY")
    with running(worker):
        done = client.wait(task.id, timeout=10)
    assert done.id == task.id
    assert done.state == S.Value("TASK_STATE_SUCCEEDED")
    assert done.attempt == 1
    assert client.result_json(done) == {"sent": "a@b.c", "attempt": 1}
    assert taskbroker.result_json(done) == {"sent": "a@b.c", "attempt": 1}
    client.close()


def test_enqueue_sets_every_field(broker):
    with Client(broker.addr, **broker.conn) as client:
        t = client.enqueue(
            "k", {"a": [1, 2]}, queue="fields", priority=7, headers={"tenant": "acme"},
            dedup_key="d-1", max_attempts=3,
        )
        assert (t.queue, t.kind, t.priority, t.max_attempts, t.dedup_key) == ("fields", "k", 7, 3, "d-1")
        # Enqueue answers without the payload (GetTask returns it).
        assert t.payload == b"" and client.get(t).payload == b'{"a":[1,2]}'
        assert t.content_type == "application/json"
        assert t.headers["tenant"] == "acme"
        text = client.enqueue("k", "héllo", queue="fields")
        assert client.get(text).payload == "héllo".encode() and text.content_type.startswith("text/plain")
        raw = client.enqueue("k", b"\x00\x01", queue="fields", content_type="application/x-thing")
        assert client.get(raw).payload == b"\x00\x01" and raw.content_type == "application/x-thing"
        # The same dedup_key returns the unfinished task.
        again = client.enqueue("k", {"other": 1}, queue="fields", dedup_key="d-1")
        assert again.id == t.id


def test_delay_and_run_at_schedule_the_task(broker):
    with Client(broker.addr, **broker.conn) as client:
        now = time.time()
        delayed = client.enqueue("k", queue="later", delay=dt.timedelta(seconds=60))
        assert delayed.state == S.Value("TASK_STATE_SCHEDULED")
        assert delayed.scheduled_time.ToSeconds() >= now + 59
        at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
        scheduled = client.enqueue("k", queue="later", run_at=at)
        assert scheduled.state == S.Value("TASK_STATE_SCHEDULED")
        assert abs(scheduled.scheduled_time.ToSeconds() - at.timestamp()) < 1


def test_a_repeated_request_id_returns_the_first_task(broker):
    with Client(broker.addr, **broker.conn) as client:
        rid = uuid.uuid4().hex
        first = client.enqueue("k", b"1", queue="idem", request_id=rid)
        second = client.enqueue("k", b"2", queue="idem", request_id=rid)
        assert second.id == first.id and client.get(second).payload == b"1"


def test_enqueue_many_keeps_order_across_batches_and_reports_bad_items(broker):
    with Client(broker.addr, **broker.conn) as client:
        items = [{"kind": "k", "payload": {"i": i}} for i in range(1500)]
        tasks = client.enqueue_many(items, queue="many")
        assert len(tasks) == 1500
        assert [client.get(t).payload for t in tasks[:3]] == [b'{"i":0}', b'{"i":1}', b'{"i":2}']
        assert client.get(tasks[-1]).payload == b'{"i":1499}' and all(t.queue == "many" for t in tasks)
        mixed = client.enqueue_many([("k", "ok"), {"kind": "k", "priority": 42}, "k"], queue="many",
                                    return_exceptions=True)
        assert isinstance(mixed[0], taskbroker.Task) and isinstance(mixed[2], taskbroker.Task)
        assert isinstance(mixed[1], InvalidArgument)
        assert [v.field for v in mixed[1].field_violations] == ["priority"]
        with pytest.raises(InvalidArgument):
            client.enqueue_many([{"kind": ""}])


def test_get_cancel_and_their_errors(broker):
    with Client(broker.addr, **broker.conn) as client:
        t = client.enqueue("k", queue="c")
        assert client.get(t.id).state == S.Value("TASK_STATE_READY")
        assert client.cancel(t).state == S.Value("TASK_STATE_CANCELED")
        assert client.get(t).state == S.Value("TASK_STATE_CANCELED")
        assert client.wait(t, timeout=5).state == S.Value("TASK_STATE_CANCELED")
        with pytest.raises(TaskNotFound) as e:
            client.get("01ARZ3NDEKTSV4RRFFQ69G5FAV")
        assert e.value.reason == "TASK_NOT_FOUND" and e.value.metadata["task_id"] == "01ARZ3NDEKTSV4RRFFQ69G5FAV"
        assert isinstance(e.value, taskbroker.NotFound)


def test_cancel_of_a_finished_task_is_task_finished(broker):
    with Client(broker.addr, **broker.conn) as client:
        worker = Worker(broker.addr, **broker.conn, queues=["fin"])
        worker.register("k", lambda job: None)
        t = client.enqueue("k", queue="fin")
        with running(worker):
            client.wait(t, timeout=10)
        with pytest.raises(TaskFinished) as e:
            client.cancel(t)
        assert isinstance(e.value, taskbroker.FailedPrecondition)


def test_bad_input_is_invalid_argument_naming_the_field(broker):
    with Client(broker.addr, **broker.conn) as client:
        with pytest.raises(InvalidArgument) as e:
            client.enqueue("k", queue="q", priority=10)
        err = e.value
        assert err.reason == "INVALID_ARGUMENT"
        assert [v.field for v in err.field_violations] == ["priority"]
        assert "priority" in str(err)
        with pytest.raises(InvalidArgument) as e:
            client.enqueue("k", queue="bad queue name!")
        assert [v.field for v in e.value.field_violations] == ["queue"]


def test_wait_times_out(broker):
    with Client(broker.addr, **broker.conn) as client:
        t = client.enqueue("k", queue="nobody")
        started = time.monotonic()
        with pytest.raises(Timeout) as e:
            client.wait(t.id, timeout=0.5)
        assert 0.4 < time.monotonic() - started < 5
        assert isinstance(e.value, TimeoutError) and "TASK_STATE_READY" in str(e.value)


def test_concurrency_key_needs_an_api_that_has_it(broker):
    has_field = "concurrency_key" in producer_pb2.EnqueueRequest.DESCRIPTOR.fields_by_name
    with Client(broker.addr, **broker.conn) as client:
        if has_field:  # the proto grew the field: it must reach the broker
            t = client.enqueue("k", queue="ck", concurrency_key="tenant-1")
            assert t.id
        else:
            with pytest.raises(Unsupported, match="concurrency_key"):
                client.enqueue("k", queue="ck", concurrency_key="tenant-1")


def test_concurrency_key_and_semaphores_reach_the_broker_and_come_back(make_broker):
    b = make_broker(config="[semaphores.selenium]\nlimit = 1\n").start()
    with Client(b.addr, **b.conn) as client:
        t = client.enqueue("k", queue="browsers", concurrency_key="tenant-1", semaphores=["selenium"])
        got = client.get(t.id)
        assert (got.concurrency_key, list(got.semaphores)) == ("tenant-1", ["selenium"])
        with pytest.raises(InvalidArgument) as e:
            client.enqueue("k", queue="browsers", semaphores=["nope"])
        assert [v.field for v in e.value.field_violations] == ["semaphores"]


def test_a_dependent_waits_for_its_dependency_and_reads_its_result(broker):
    with Client(broker.addr, **broker.conn) as client:
        worker = Worker(broker.addr, **broker.conn, queues=["parts"])
        worker.register("part", lambda job: {"sum": 1})
        part = client.enqueue("part", {"n": 1}, queue="parts")
        join = client.enqueue("join", queue="joins", depends_on=[part], on_dependency_failure="run", ttl=60)
        assert join.state == task_pb2.TASK_STATE_WAITING
        assert (list(join.depends_on), join.pending_dependencies) == ([part.id], 1)
        assert join.on_dependency_failure == task_pb2.DEPENDENCY_FAILURE_POLICY_RUN
        assert join.HasField("expire_time")
        with running(worker):
            client.wait(part, timeout=10)
        assert client.get(join).state == task_pb2.TASK_STATE_READY
        deps = client.get_dependencies(join)
        assert [(d.id, json.loads(d.result)) for d in deps] == [(part.id, {"sum": 1})]
        with pytest.raises(ValueError):
            client.enqueue("join", depends_on=[part], on_dependency_failure="maybe")


def test_unavailable_is_retried_until_the_broker_is_up(make_broker):
    b = make_broker().start()
    port = b.port
    b.stop()
    with Client(f"127.0.0.1:{port}", **b.conn, retry_for=0) as client:
        with pytest.raises(Unavailable):
            client.get("01ARZ3NDEKTSV4RRFFQ69G5FAV")
    late = make_broker()
    starter = threading.Timer(0.5, late.start, kwargs={"listen": f"127.0.0.1:{port}"})
    starter.start()
    try:
        with Client(f"http://127.0.0.1:{port}", **late.conn, retry_for=20) as client:
            t = client.enqueue("k", queue="retried")
            assert client.get(t.id).queue == "retried"
    finally:
        starter.join(30)


def test_async_client(broker):
    async def main():
        async with AsyncClient(broker.addr, **broker.conn) as client:
            worker = Worker(broker.addr, **broker.conn, queues=["aq"], concurrency=4, handle_signals=False)

            @worker.task("double")
            async def double(job):
                return {"n": job.json()["n"] * 2}

            run = asyncio.ensure_future(worker.run_async())
            try:
                t = await client.enqueue("double", {"n": 21}, queue="aq")
                done = await client.wait(t.id, timeout=10)
                assert client.result_json(done) == {"n": 42}
                many = await client.enqueue_many([("double", {"n": i}) for i in range(5)], queue="aq")
                results = [client.result_json(await client.wait(m, timeout=10)) for m in many]
                assert results == [{"n": 2 * i} for i in range(5)]
                later = await client.enqueue("double", {"n": 1}, queue="aq", delay=60)
                assert (await client.get(later.id)).state == S.Value("TASK_STATE_SCHEDULED")
                assert (await client.cancel(later.id)).state == S.Value("TASK_STATE_CANCELED")
                with pytest.raises(TaskNotFound):
                    await client.get("01ARZ3NDEKTSV4RRFFQ69G5FAV")
                with pytest.raises(Timeout):
                    await client.wait((await client.enqueue("x", queue="idle")).id, timeout=0.3)
            finally:
                worker.stop()
                await asyncio.wait_for(run, 20)

    asyncio.run(main())
