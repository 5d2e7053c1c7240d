"""The Worker against a real broker: settle, retry control, leases, concurrency, drain, reconnect."""

from __future__ import annotations

import asyncio
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

from conftest import FAST_RETRIES, Broker, python_script, running

import taskbroker
from taskbroker import Client, NoRetry, Retry, Worker

S = taskbroker.TaskState
SUCCEEDED, DEAD, CANCELED, READY = (
    S.Value(n) for n in ("TASK_STATE_SUCCEEDED", "TASK_STATE_DEAD", "TASK_STATE_CANCELED", "TASK_STATE_READY")
)
HERE = Path(__file__).resolve().parent


def test_return_values_become_ack_results(broker):
    client = Client(broker.addr, **broker.conn)
    worker = Worker(broker.addr, **broker.conn, queues=["results"], concurrency=4)
    worker.register("bytes", lambda job: b"\x00raw")
    worker.register("str", lambda job: "text")
    worker.register("none", lambda job: None)

    @worker.task("json")
    async def as_json(job):
        return [1, "a", {"payload": job.text()}]

    @worker.task("meta")
    def meta(job):
        return {"id": job.id, "kind": job.kind, "queue": job.queue, "headers": job.headers,
                "attempt": job.attempt, "max_attempts": job.max_attempts, "priority": job.priority,
                "content_type": job.content_type, "json": job.json(), "cancelled": job.cancelled,
                "task_id": job.task.id, "lease_id": bool(job.lease_id)}

    tasks = {k: client.enqueue(k, "p", queue="results") for k in ("bytes", "str", "none", "json")}
    tasks["meta"] = client.enqueue("meta", {"x": 1}, queue="results", headers={"tenant": "acme"}, priority=4,
                                   max_attempts=7)
    with running(worker):
        done = {k: client.wait(t, timeout=10) for k, t in tasks.items()}
    m = tasks["meta"]
    assert client.result_json(done["meta"]) == {
        "id": m.id, "kind": "meta", "queue": "results", "headers": {"tenant": "acme"}, "attempt": 1,
        "max_attempts": 7, "priority": 4, "content_type": "application/json", "json": {"x": 1},
        "cancelled": False, "task_id": m.id, "lease_id": True,
    }
    assert all(d.state == SUCCEEDED for d in done.values())
    assert done["bytes"].result == b"\x00raw"
    assert done["str"].result == b"text"
    assert done["none"].result == b""
    assert client.result_json(done["json"]) == [1, "a", {"payload": "p"}]


def test_an_exception_nacks_with_the_traceback_tail_and_is_retried(broker):
    client = Client(broker.addr, **broker.conn)
    worker = Worker(broker.addr, **broker.conn, queues=["fail"], concurrency=2)

    @worker.task("always")
    def always(job):
        raise ValueError(f"boom on attempt {job.attempt}")

    @worker.task("flaky")
    async def flaky(job):
        if job.attempt == 1:
            raise RuntimeError("first try fails")
        return {"attempt": job.attempt}

    @worker.task("self-cancelled")
    async def self_cancelled(job):
        inner = asyncio.ensure_future(asyncio.sleep(10))
        inner.cancel()
        await inner  # raises CancelledError out of the handler: a failure, not a lost lease

    cancelled = client.enqueue("self-cancelled", queue="fail", max_attempts=1)
    dead = client.enqueue("always", queue="fail", max_attempts=2)
    flaky_task = client.enqueue("flaky", queue="fail", max_attempts=3)
    with running(worker):
        dead = client.wait(dead, timeout=10)
        ok = client.wait(flaky_task, timeout=10)
        cancelled = client.wait(cancelled, timeout=10)
    assert dead.state == DEAD and dead.attempt == 2
    assert "Traceback (most recent call last)" in dead.last_error
    assert dead.last_error.rstrip().endswith("ValueError: boom on attempt 2")
    assert ok.state == SUCCEEDED and client.result_json(ok) == {"attempt": 2}
    assert cancelled.state == DEAD and "CancelledError" in cancelled.last_error


def test_retry_after_and_no_retry(broker):
    client = Client(broker.addr, **broker.conn)
    worker = Worker(broker.addr, **broker.conn, queues=["ctl"], concurrency=2)
    seen = []

    @worker.task("later")
    def later(job):
        seen.append((job.attempt, time.monotonic()))
        if job.attempt == 1:
            raise Retry("not yet", after=0.6)
        return "second"

    @worker.task("give-up")
    async def give_up(job):
        raise NoRetry("the payload is unusable")

    retried = client.enqueue("later", queue="ctl", max_attempts=5)
    refused = client.enqueue("give-up", queue="ctl", max_attempts=5)
    with running(worker):
        retried = client.wait(retried, timeout=10)
        refused = client.wait(refused, timeout=10)
    assert retried.state == SUCCEEDED and retried.result == b"second" and retried.attempt == 2
    assert [a for a, _ in seen] == [1, 2]
    assert seen[1][1] - seen[0][1] >= 0.5, "Retry(after=0.6) must delay the next attempt"
    assert refused.state == DEAD and refused.attempt == 1
    assert refused.last_error == "the payload is unusable"


def test_an_unknown_kind_is_nacked_without_retry(broker):
    client = Client(broker.addr, **broker.conn)
    worker = Worker(broker.addr, **broker.conn, queues=["mixed"])
    worker.register("known", lambda job: "ok")
    t = client.enqueue("unknown.kind", queue="mixed", max_attempts=5)
    with running(worker):
        done = client.wait(t, timeout=10)
    assert done.state == DEAD and done.attempt == 1
    assert "no handler for kind 'unknown.kind'" in done.last_error and "known" in done.last_error


def test_a_3s_handler_keeps_its_1s_lease(make_broker):
    b = make_broker(config=FAST_RETRIES + 'lease_duration = "1s"\n').start()
    client = Client(b.addr, **b.conn)
    calls = []
    worker = Worker(b.addr, **b.conn, queues=["long"], concurrency=2)

    @worker.task("sync-slow")
    def sync_slow(job):
        calls.append(job.id)
        time.sleep(3)
        return "sync done"

    @worker.task("async-slow")
    async def async_slow(job):
        calls.append(job.id)
        await asyncio.sleep(3)
        return "async done"

    s = client.enqueue("sync-slow", queue="long")
    a = client.enqueue("async-slow", queue="long")
    leased = time.monotonic()
    with running(worker):
        s, a = client.wait(s, timeout=15), client.wait(a, timeout=15)
    assert time.monotonic() - leased >= 3
    for t, result in ((s, b"sync done"), (a, b"async done")):
        assert t.state == SUCCEEDED and t.result == result
        assert t.attempt == 1, "the lease expired and the task was redelivered"
    assert sorted(calls) == sorted([s.id, a.id])


def test_lease_lost_cancels_the_handler(broker):
    client = Client(broker.addr, **broker.conn)
    worker = Worker(broker.addr, **broker.conn, queues=["lost"], concurrency=1)
    started: "queue.Queue[str]" = queue.Queue()
    cancelled: "queue.Queue[tuple]" = queue.Queue()

    @worker.task("async-forever")
    async def async_forever(job):
        started.put(job.id)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.put(("async", job.id, job.lost_reason, job.cancelled))
            raise
        return "not reached"

    @worker.task("sync-until-cancelled")
    def sync_until_cancelled(job):
        started.put(job.id)
        got = job.cancel_event.wait(60)
        cancelled.put(("sync", job.id, job.lost_reason, got))
        return "discarded"

    with running(worker):
        for kind in ("async-forever", "sync-until-cancelled"):
            t = client.enqueue(kind, queue="lost")
            assert started.get(timeout=10) == t.id
            client.cancel(t)
            how, task_id, reason, flag = cancelled.get(timeout=10)
            assert (task_id, reason, flag) == (t.id, "canceled", True)
            assert client.get(t).state == CANCELED
        # The lost tasks freed their slot: concurrency 1 still takes new work.
        worker.register("quick", lambda job: "ok")
        after = client.enqueue("quick", queue="lost")
        assert client.wait(after, timeout=10).state == SUCCEEDED


def _peak(handler_kind: str, broker: Broker) -> int:
    client = Client(broker.addr, **broker.conn)
    worker = Worker(broker.addr, **broker.conn, queues=[f"cap-{handler_kind}"], concurrency=3)
    lock = threading.Lock()
    now = [0]
    peak = [0]

    def enter():
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])

    def leave():
        with lock:
            now[0] -= 1

    if handler_kind == "async":
        @worker.task("work")
        async def work(job):
            enter()
            await asyncio.sleep(0.15)
            leave()
    else:
        @worker.task("work")
        def work(job):
            enter()
            time.sleep(0.15)
            leave()

    tasks = client.enqueue_many(["work"] * 12, queue=f"cap-{handler_kind}")
    with running(worker):
        assert all(client.wait(t, timeout=15).state == SUCCEEDED for t in tasks)
    return peak[0]


def test_concurrency_cap_is_honoured(broker):
    assert _peak("async", broker) == 3
    assert _peak("sync", broker) == 3


def test_weighted_mode_serves_every_queue(broker):
    client = Client(broker.addr, **broker.conn)
    worker = Worker(broker.addr, **broker.conn, queues=["heavy", "light"], concurrency=2, mode="weighted",
                    weights={"heavy": 3, "light": 1})
    worker.register("k", lambda job: job.queue)
    tasks = client.enqueue_many(["k"] * 6, queue="heavy") + client.enqueue_many(["k"] * 2, queue="light")
    with running(worker):
        results = [client.wait(t, timeout=10).result for t in tasks]
    assert results == [b"heavy"] * 6 + [b"light"] * 2


def test_sigterm_drains_the_running_task_and_exits(broker, tmp_path):
    client = Client(broker.addr, **broker.conn)
    log = open(tmp_path / "worker.log", "wb")
    proc = python_script(HERE / "drain_worker.py", broker.addr, "drain", *broker.script_args(),
                         stdout=subprocess.PIPE, stderr=log)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x.decode().strip()) for x in proc.stdout], daemon=True).start()
    try:
        t = client.enqueue("slow", queue="drain")
        assert lines.get(timeout=15) == f"started {t.id}"
        proc.send_signal(signal.SIGTERM)
        # Enqueued after the drain began: this worker must leave it alone.
        untouched = client.enqueue("slow", queue="drain")
        assert proc.wait(15) == 0, (tmp_path / "worker.log").read_text()
        assert lines.get(timeout=5) == "exited"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log.close()
    done = client.get(t)
    assert done.state == SUCCEEDED and done.result == b"finished"
    assert done.attempt == 1, "the task was redelivered instead of finished"
    left = client.get(untouched)
    assert left.state == READY and left.attempt == 0


def test_the_worker_reconnects_after_a_broker_restart(make_broker, tmp_path):
    data = tmp_path / "data"
    first = make_broker(storage="embedded", data_dir=data).start()
    port = first.port
    client = Client(first.addr, **first.conn)
    worker = Worker(first.addr, **first.conn, queues=["rc"], concurrency=2, max_reconnect_delay=0.5)
    worker.register("echo", lambda job: job.payload)
    with running(worker):
        assert client.wait(client.enqueue("echo", b"before", queue="rc"), timeout=10).result == b"before"
        first.stop()
        second = make_broker(storage="embedded", data_dir=data).start(listen=f"127.0.0.1:{port}")
        assert second.addr == first.addr
        after = client.enqueue("echo", b"after", queue="rc")
        done = client.wait(after, timeout=20)
    assert done.state == SUCCEEDED and done.result == b"after"


def test_drain_timeout_gives_running_tasks_back(broker):
    client = Client(broker.addr, **broker.conn)
    worker = Worker(broker.addr, **broker.conn, queues=["stuck"], drain_timeout=0.5)
    started = threading.Event()
    lost = []

    @worker.task("stuck")
    async def stuck(job):
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            lost.append(job.lost_reason)
            raise

    t = client.enqueue("stuck", queue="stuck")
    with running(worker):
        assert started.wait(10)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 10, "the drain did not give up after drain_timeout"
    assert lost == ["stopped"]
    back = client.get(t)
    assert back.state == READY and back.attempt == 1, "the task was not given back to the broker"


def test_a_refused_subscription_is_raised_not_retried(broker):
    worker = Worker(broker.addr, **broker.conn, queues=["not a queue name!"])
    worker.register("k", lambda job: None)
    started = time.monotonic()
    try:
        worker.run()
    except taskbroker.InvalidArgument as e:
        assert [v.field for v in e.field_violations] == ["queues[0]"]
    else:
        raise AssertionError("run() returned although the broker refused the subscription")
    assert time.monotonic() - started < 10
