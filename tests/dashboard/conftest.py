"""Fixtures of the dashboard's browser test: a real `taskbroker serve`
(memory store, free ports), gRPC stubs generated from proto/ at run time, and
headless Chromium driven by selenium through Debian's chromium-driver.

Run by ./scripts/test as `python -m pytest -q tests/dashboard` (packages from
tests/dashboard/requirements.txt, the broker from $TASKBROKER_BIN, chromium and
chromium-driver from apt). A missing browser or driver fails; it never skips.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
START_TIMEOUT = 30.0  # seconds for the broker's address lines


def _generate_stubs(out_dir: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "taskbroker" / "v1").glob("*.proto"))
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}", f"--python_out={out_dir}",
           f"--grpc_python_out={out_dir}", *protos]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"protoc failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")


@pytest.fixture(scope="session")
def pb():
    """The generated modules: pb.admin, pb.admin_grpc, pb.producer, ..."""
    out = Path(tempfile.mkdtemp(prefix="taskbroker-dashboard-stubs-"))
    _generate_stubs(out)
    # The generated modules import each other as `taskbroker.v1.*`, a name the
    # Python client (clients/python, installed editable in the same venv, with
    # an import hook that wins over sys.path) also has: these packages are
    # the generated directories, whatever else is installed.
    for name, path in (("taskbroker", out / "taskbroker"), ("taskbroker.v1", out / "taskbroker" / "v1")):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules[name] = package
    from taskbroker.v1 import admin_pb2, admin_pb2_grpc, producer_pb2, producer_pb2_grpc
    from taskbroker.v1 import worker_pb2, worker_pb2_grpc

    class Stubs:
        admin, admin_grpc = admin_pb2, admin_pb2_grpc
        producer, producer_grpc = producer_pb2, producer_pb2_grpc
        worker, worker_grpc = worker_pb2, worker_pb2_grpc

    yield Stubs
    shutil.rmtree(out, ignore_errors=True)


def _binary() -> Path:
    path = Path(os.environ.get("TASKBROKER_BIN") or ROOT / "target" / "debug" / "taskbroker")
    if not path.is_file():
        pytest.fail(f"no taskbroker binary at {path}: run `cargo build` (or set TASKBROKER_BIN)")
    return path


class Broker:
    """A `taskbroker serve` process: `grpc` is HOST:PORT, `url` the dashboard."""

    def __init__(self, log: Path):
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBROKER_")}
        env["RUST_LOG"] = "info"
        self.log = log
        self._log_file = open(log, "ab")
        self.proc = subprocess.Popen(
            [str(_binary()), "serve", "--storage", "memory", "--listen", "127.0.0.1:0",
             "--admin-listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log_file, env=env, text=True,
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        self.grpc = self.url = None
        while self.grpc is None or self.url is None:
            try:
                line = lines.get(timeout=START_TIMEOUT).strip()
            except queue.Empty:
                self.stop()
                pytest.fail(f"the broker printed no addresses within {START_TIMEOUT}s; log:\n{log.read_text()}")
            if line.startswith("listening on "):
                self.grpc = line.removeprefix("listening on ")
            elif line.startswith("dashboard at "):
                self.url = line.removeprefix("dashboard at ").rstrip("/")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker.log")
    yield b
    b.stop()


def _find(name: str, *candidates: str) -> str:
    for c in (shutil.which(name), *candidates):
        if c and Path(c).is_file():
            return c
    pytest.fail(f"{name} is missing: apt-get install -y chromium chromium-driver (./scripts/test does)")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _find("chromium", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,900", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    service = Service(executable_path=_find("chromedriver", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
