"""Fixtures: a real `taskbroker serve` per test, and a worker running on a thread.

The broker binary is $TASKBROKER_BIN, else the repository's target/debug/taskbroker.

TASKBROKER_TEST_SECURE=1 is the secure pass: every broker serves TLS with a
certificate from a test CA made at start (the openssl CLI) and has auth on
with one token, and every client connects with ``**broker.conn`` (that CA and
token; empty in the plain pass). scripts/test runs the suite once each way.
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import pytest

from taskbroker import TLS

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


def _secure_pass() -> bool:
    value = os.environ.get("TASKBROKER_TEST_SECURE", "")
    if value not in ("", "0", "1"):
        raise pytest.UsageError(f"TASKBROKER_TEST_SECURE must be 1 (secure pass), 0 or unset, not {value!r}")
    return value == "1"


#: True in the secure pass (TASKBROKER_TEST_SECURE=1): TLS and auth on every broker.
SECURE = _secure_pass()


@dataclass(frozen=True)
class Principal:
    """An ``[[auth.principals]]`` entry: ``grants`` is the TOML of its grants array."""

    name: str
    token: str
    grants: str

    def toml(self) -> str:
        digest = hashlib.sha256(self.token.encode()).hexdigest()
        return f'[[auth.principals]]\nname = "{self.name}"\ntoken_sha256 = "{digest}"\ngrants = {self.grants}\n'


@dataclass(frozen=True)
class Security:
    """The secure pass's test CA, the server certificate it signed, and the suite's principal."""

    ca: Path
    server_cert: Path
    server_key: Path
    #: May do everything on every queue: the token every client of the suite sends.
    tests: Principal


def make_certificates(directory: Path) -> Dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 and localhost signed by it, as PEM files."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl CLI is needed for the secure pass: apt-get install openssl", pytrace=False)

    def openssl(*args: str) -> None:
        done = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            pytest.fail(f"openssl {' '.join(args)} failed: {done.stderr}", pytrace=False)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=taskbroker test CA")
    (directory / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    openssl("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-out", "server.pem", "-extfile", "server.ext")
    return {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}


@pytest.fixture(scope="session")
def security(tmp_path_factory) -> Optional[Security]:
    """The secure pass's certificates and token; None in the plain pass."""
    if not SECURE:
        return None
    files = make_certificates(tmp_path_factory.mktemp("certs"))
    everything = '[{ actions = ["enqueue", "consume", "inspect", "admin"], queues = ["*"] }]'
    return Security(files["ca"], files["cert"], files["key"], Principal("tests", secrets.token_hex(32), everything))


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
    """A `taskbroker serve` subprocess; ``addr`` is where it listens.

    With ``security`` (the secure pass) it serves TLS and checks tokens: the
    suite's principal may do everything, ``principals`` are added beside it.
    """

    def __init__(self, tmp: Path, *, config: str = FAST_RETRIES, storage: str = "memory",
                 data_dir: Optional[Path] = None, security: Optional[Security] = None,
                 principals: Sequence[Principal] = ()) -> None:
        self.tmp = tmp
        self.storage = storage
        self.data_dir = data_dir
        self.security = security
        self.config = tmp / f"taskbroker-{id(self)}.toml"
        if security is not None:
            # Top-level keys before the test's tables, [auth] after them.
            config = (f'tls_cert = "{security.server_cert}"\ntls_key = "{security.server_key}"\n{config}\n'
                      "[auth]\nenabled = true\n" + "".join(p.toml() for p in [security.tests, *principals]))
        elif principals:
            raise ValueError("principals need the secure pass (a broker with auth on)")
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
    def conn(self) -> Dict[str, Any]:
        """Keyword arguments for Client, AsyncClient and Worker: the CA and token in the secure pass."""
        if self.security is None:
            return {}
        return {"tls": TLS(ca=str(self.security.ca)), "token": self.security.tests.token}

    def script_args(self) -> List[str]:
        """The CA and token as arguments for a test's client script (see drain_worker.py)."""
        if self.security is None:
            return []
        return ["--ca", str(self.security.ca), "--token", self.security.tests.token]

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
def make_broker(tmp_path: Path, security: Optional[Security]) -> Iterator:
    started: List[Broker] = []

    def make(**kwargs) -> Broker:
        b = Broker(tmp_path, security=security, **kwargs)
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
