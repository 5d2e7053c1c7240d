#!/usr/bin/env python3
"""Enqueues tasks for examples/python/worker.py and waits for their outcome.

    python examples/python/producer.py [HOST:PORT]

Exit status 0 when every task ended as expected.
"""

import sys

from taskbroker import Client, TaskState

addr = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
client = Client(addr)

sent = client.enqueue("email.send", {"to": "a@b.c"}, queue="emails")
report = client.enqueue("report.build", {"month": "2026-11"}, queue="emails", priority=5)
bad = client.enqueue("email.send", {"to": "nobody"}, queue="emails")

ok = True
for task in (sent, report, bad):
    done = client.wait(task.id, timeout=30)
    state = TaskState.Name(done.state)
    outcome = done.result.decode() if done.result else done.last_error
    print(f"{done.kind} {done.id}: {state} after {done.attempt} attempt(s): {outcome}")
    ok &= (state == "TASK_STATE_DEAD") == (task is bad)

print(client.result_json(client.get(sent.id)))
sys.exit(0 if ok else 1)
