#!/usr/bin/env python3
"""How fast one Python asyncio worker drains pre-enqueued tasks with an empty handler.

    python clients/python/bench/drain.py [--bin target/release/taskbroker] [--count 50000]
                                         [--concurrency 64] [--baseline]

Starts `taskbroker serve --storage memory` on a free loopback port, enqueues
--count tasks (100-byte payloads) with EnqueueBatch, then times a Worker
(async no-op handler, one Stream, max_in_flight = --concurrency) from start
until every task is acked and the worker has drained and returned. With
--baseline it then does the same with `taskbroker work --concurrency N -- true`
(one process per task) on another queue of the same broker. A sample of tasks
is checked to be SUCCEEDED after each run (outside the timing).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from taskbroker import Client, TaskState, Worker

REPO = Path(__file__).resolve().parents[3]
SUCCEEDED = TaskState.Value("TASK_STATE_SUCCEEDED")
FINAL = {SUCCEEDED, TaskState.Value("TASK_STATE_DEAD"), TaskState.Value("TASK_STATE_CANCELED")}
PAYLOAD = b"x" * 100
#: Bound on any one phase, in seconds.
PHASE_TIMEOUT = 600


def start_broker(binary: str) -> "tuple[subprocess.Popen, str]":
    proc = subprocess.Popen(
        [binary, "serve", "--storage", "memory", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode()
        if line.startswith("listening on "):
            return proc, line.split()[-1]
    sys.exit(f"broker exited ({proc.wait()}) before listening")


def enqueue(client: Client, queue: str, count: int) -> list:
    t0 = time.perf_counter()
    tasks = client.enqueue_many([("noop", PAYLOAD)] * count, queue=queue)
    dt = time.perf_counter() - t0
    print(f"  enqueued {count} tasks into {queue!r} with EnqueueBatch in {dt:.2f}s ({count / dt:,.0f}/s)")
    return tasks


def verify(client: Client, tasks: list, sample: int = 500) -> None:
    picked = random.sample(tasks, min(sample, len(tasks))) + tasks[-64:]
    bad = [t.id for t in picked if client.get(t).state != SUCCEEDED]
    if bad:
        sys.exit(f"  FAIL: {len(bad)} of {len(picked)} sampled tasks not SUCCEEDED, e.g. {bad[0]}")
    print(f"  checked {len(picked)} tasks: all SUCCEEDED")


async def python_worker(addr: str, queue: str, count: int, concurrency: int) -> "tuple[float, float]":
    worker = Worker(addr, queues=[queue], concurrency=concurrency, handle_signals=False)
    done = asyncio.Event()
    seen = 0

    @worker.task("noop")
    async def noop(job):
        nonlocal seen
        seen += 1
        if seen == count:
            done.set()

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    run = asyncio.ensure_future(worker.run_async())
    waiter = asyncio.ensure_future(done.wait())
    finished, _ = await asyncio.wait({run, waiter}, timeout=PHASE_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in finished:
        sys.exit(f"  FAIL: handled {seen} of {count} tasks" + (f": {run.exception()}" if run.done() else ""))
    worker.stop()  # drains: returns once every ack is settled
    await asyncio.wait_for(run, PHASE_TIMEOUT)
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return elapsed, cpu


def cli_worker(binary: str, addr: str, client: Client, tasks: list, concurrency: int) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [binary, "work", "--server", f"http://{addr}", "--queue", tasks[0].queue,
         "--concurrency", str(concurrency), "--", "true"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        # Tasks are leased in FIFO order, so once the last ones are final, all are.
        client.wait(tasks[-1], timeout=PHASE_TIMEOUT)
        for t in tasks[-4 * concurrency:]:
            client.wait(t, timeout=PHASE_TIMEOUT)
        return time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("TASKBROKER_BIN", str(REPO / "target/release/taskbroker")))
    ap.add_argument("--count", type=int, default=50_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--baseline", action="store_true", help="also time `taskbroker work -- true`")
    args = ap.parse_args()
    if not os.path.exists(args.bin):
        sys.exit(f"no broker binary at {args.bin}: cargo build --release (or pass --bin)")

    broker, addr = start_broker(args.bin)
    try:
        client = Client(addr)
        print(f"broker {args.bin} (memory store) on {addr}; {args.count} tasks, concurrency {args.concurrency}")
        print("python asyncio Worker, async no-op handler:")
        tasks = enqueue(client, "py", args.count)
        elapsed, cpu = asyncio.run(python_worker(addr, "py", args.count, args.concurrency))
        print(f"  drained {args.count} in {elapsed:.2f}s: {args.count / elapsed:,.0f} tasks/s "
              f"(worker process CPU {cpu:.2f}s, {cpu / args.count * 1e6:.0f} us/task)")
        verify(client, tasks)
        if args.baseline:
            print("taskbroker work -- true:")
            tasks = enqueue(client, "cli", args.count)
            elapsed = cli_worker(args.bin, addr, client, tasks, args.concurrency)
            print(f"  drained {args.count} in {elapsed:.2f}s: {args.count / elapsed:,.0f} tasks/s")
            verify(client, tasks)
        client.close()
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait(30)


if __name__ == "__main__":
    main()
