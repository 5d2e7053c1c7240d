"""A worker process for the SIGTERM test: `python drain_worker.py ADDR QUEUE [--ca PEM --token TOKEN]`.

Handles "slow": prints "started <id>" (flushed) and takes 2 s, then returns "finished".
Exits 0 once worker.run() returns (after SIGTERM and the drain).
"""

import argparse
import logging
import sys
import time

from taskbroker import TLS, Worker

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
parser = argparse.ArgumentParser()
parser.add_argument("addr")
parser.add_argument("queue")
parser.add_argument("--ca", help="the test CA (the secure pass)")
parser.add_argument("--token", help="the bearer token (the secure pass)")
args = parser.parse_args()
tls = TLS(ca=args.ca) if args.ca else None
worker = Worker(args.addr, queues=[args.queue], concurrency=1, tls=tls, token=args.token)


@worker.task("slow")
def slow(job):
    print(f"started {job.id}", flush=True)
    time.sleep(2)
    return "finished"


worker.run()
print("exited", flush=True)
