"""examples/python/producer.py and worker.py, end to end against a real broker."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from conftest import REPO, SECURE, python_script

EXAMPLES = REPO / "examples" / "python"


@pytest.mark.skipif(
    SECURE, reason="plain pass only: examples/python/*.py take only an address (no CA or token options)"
)
def test_example_producer_and_worker(broker, tmp_path):
    log = open(tmp_path / "worker.log", "wb")
    worker = python_script(EXAMPLES / "worker.py", broker.addr, stdout=subprocess.PIPE, stderr=log)
    try:
        producer = subprocess.run(
            [sys.executable, str(EXAMPLES / "producer.py"), broker.addr],
            capture_output=True, text=True, timeout=60,
        )
        assert producer.returncode == 0, producer.stdout + producer.stderr
        lines = producer.stdout.splitlines()
        assert lines[0].startswith("email.send ") and "TASK_STATE_SUCCEEDED" in lines[0]
        assert "report.build" in lines[1] and lines[1].endswith("report for 2026-11")
        assert "TASK_STATE_DEAD after 1 attempt(s): not an address: 'nobody'" in lines[2]
        assert lines[3] == "{'sent': True, 'to': 'a@b.c'}"
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=15)
        assert worker.returncode == 0, (tmp_path / "worker.log").read_text()
        assert b"sent email to a@b.c (attempt 1)" in out
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(5)
        log.close()
