"""A worker process for the SIGTERM test: `python drain_worker.py ADDR QUEUE`.

Handles "slow": prints "started <id>" (flushed) and takes 2 s, then returns "finished".
Exits 0 once worker.run() returns (after SIGTERM and the drain).
"""

import logging
import sys
import time

from taskbroker import Worker

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
addr, queue = sys.argv[1], sys.argv[2]
worker = Worker(addr, queues=[queue], concurrency=1)


@worker.task("slow")
def slow(job):
    print(f"started {job.id}", flush=True)
    time.sleep(2)
    return "finished"


worker.run()
print("exited", flush=True)
