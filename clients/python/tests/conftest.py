"""Fixtures: a real `taskbroker serve` per test, and a worker running on a thread.

The broker binary is $TASKBROKER_BIN, else the repository's target/debug/taskbroker.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[3]
#: Seconds any one test may take before the run is aborted with every thread's stack.
TEST_WATCHDOG = 120
#: Seconds to wait for the broker to say it is listening.
START_TIMEOUT = 20

#: Fast retries so nack -> retry tests take milliseconds, not the default 1 s backoff.
FAST_RETRIES = """
[queues.default]
retry_backoff = { initial = "50ms", max = "200ms", multiplier = 2.0, jitter = 0.0 }
"""


def broker_bin() -> str:
    path = os.environ.get("TASKBROKER_BIN") or str(REPO / "target" / "debug" / "taskbroker")
    if not os.path.exists(path):
        pytest.fail(
            f"taskbroker binary not found at {path}: build it with `cargo build` in {REPO} "
            "or set TASKBROKER_BIN",
            pytrace=False,
        )
    return path


class Broker:
    """A `taskbroker serve` subprocess; ``addr`` is where it listens."""

    def __init__(self, tmp: Path, *, config: str = FAST_RETRIES, storage: str = "memory",
                 data_dir: Optional[Path] = None) -> None:
        self.tmp = tmp
        self.storage = storage
        self.data_dir = data_dir
        self.config = tmp / f"taskbroker-{id(self)}.toml"
        self.config.write_text(config)
        self.proc: Optional[subprocess.Popen] = None
        self.addr = ""
        self.log = tmp / f"broker-{id(self)}.log"

    def start(self, listen: str = "127.0.0.1:0") -> "Broker":
        cmd = [broker_bin(), "serve", "--config", str(self.config), "--storage", self.storage, "--listen", listen]
        if self.data_dir is not None:
            cmd += ["--data-dir", str(self.data_dir)]
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, cwd=self.tmp)
        log.close()
        lines: "queue.Queue[str]" = queue.Queue()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for raw in self.proc.stdout:
                lines.put(raw.decode(errors="replace"))
            lines.put("")

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                pytest.fail(f"broker did not print 'listening on' within {START_TIMEOUT}s; log: {self.log}")
            if not line:
                pytest.fail(f"broker exited ({self.proc.wait()}) before listening: {self.log.read_text()[-2000:]}")
            if line.startswith("listening on "):
                self.addr = line.split()[-1]
                return self

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """No test hangs the suite: after TEST_WATCHDOG seconds dump every stack and exit."""
    faulthandler.dump_traceback_later(TEST_WATCHDOG, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator:
    started: List[Broker] = []

    def make(**kwargs) -> Broker:
        b = Broker(tmp_path, **kwargs)
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def broker(make_broker) -> Broker:
    return make_broker().start()


@contextlib.contextmanager
def running(worker, timeout: float = 20) -> Iterator[None]:
    """Runs ``worker.run()`` on a thread; on exit stops it and fails if it does not return in time."""
    errors: List[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as e:  # surfaced below
            errors.append(e)

    t = threading.Thread(target=run, name="worker", daemon=True)
    t.start()
    try:
        yield
    finally:
        worker.stop()
        t.join(timeout)
        if t.is_alive():
            pytest.fail(f"worker did not stop within {timeout}s")
    if errors:
        raise errors[0]


def python_script(path: Path, *args: str, **popen) -> subprocess.Popen:
    """Starts a Python script with this interpreter (and so this venv's taskbroker)."""
    return subprocess.Popen([sys.executable, str(path), *args], **popen)
