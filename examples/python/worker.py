#!/usr/bin/env python3
"""A taskbroker worker: runs email.send and report.build tasks from the "emails" queue.

    pip install -e 'clients/python'        # once
    python examples/python/worker.py [HOST:PORT]

Stops on SIGTERM or Ctrl-C after finishing the tasks it is running.
"""

import asyncio
import logging
import sys

from taskbroker import NoRetry, Worker

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
addr = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
worker = Worker(addr, queues=["emails"], concurrency=8)


@worker.task("email.send")
def send_email(job):  # a plain function runs on a thread pool
    to = job.json()["to"]
    if "@" not in to:
        raise NoRetry(f"not an address: {to!r}")  # DEAD at once, no retries
    print(f"sent email to {to} (attempt {job.attempt})", flush=True)
    return {"sent": True, "to": to}


@worker.task("report.build")
async def build_report(job):  # a coroutine runs on the event loop
    await asyncio.sleep(0.1)
    return f"report for {job.json()['month']}"


worker.run()
