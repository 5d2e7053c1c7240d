"""Shared helpers of the Helm chart's checks: the value sets, rendering with the
real Helm 4 library (helm-python-sdk, no helm binary, nothing downloaded), and
a real broker for the commands the chart runs.

Run by ./scripts/test as `python -m pytest -q tests/helm` (packages from
tests/helm/requirements.txt, the broker from $TASKBROKER_BIN).
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

try:
    import helm_python
    from helm_python import Chart
except ImportError as e:  # fail loudly, with the install command
    raise ImportError(
        f"{e}: the Helm checks need tests/helm/requirements.txt; run ./scripts/test, or "
        "target/venv/bin/python -m pip install -r tests/helm/requirements.txt"
    ) from e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "taskbroker"
RELEASE = "tb"
NAMESPACE = "jobs"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a recent one.
KUBE_VERSIONS = ["1.30.0", "1.33.0"]
# Kinds from CRDs; kubernetes-validate has no schema for them.
CRD_KINDS = {"ServiceMonitor", "ScaledObject"}

QUEUES = {
    "default": {
        "leaseDuration": "30s",
        "maxAttempts": 5,
        "retryBackoff": {"initial": "1s", "max": "10m", "multiplier": 2.0, "jitter": 0.2},
    },
    "emails": {"defaultPriority": 3, "retention": "72h", "dedupWindow": "10m", "maxInFlight": 20,
               "perKeyMaxInFlight": 2, "rateLimit": "50/s", "rateBurst": 10},
    "browsers": {"maxInFlight": 5, "semaphores": ["selenium"]},
    "reports.daily": {"maxAttempts": 1, "leaseDuration": "1h", "retryBackoff": {
        "initial": "500ms", "max": "1m", "multiplier": 1.5, "jitter": 0.0}},
}
ROUTES = [
    {"kind": "email.*", "headers": {"tenant": "acme", "tier": "gold"}, "queue": "emails", "priority": 7},
    {"kind": "report.daily", "queue": "reports.daily"},
    {"kind": "browse.*", "queue": "browsers", "semaphores": ["selenium"]},
]

SCHEDULES = [
    {"name": "nightly-report", "cron": "0 3 * * *", "timezone": "Europe/Berlin", "queue": "reports.daily",
     "kind": "report.build", "payload": '{"scope":"all"}', "headers": {"source": "cron"}, "catchUp": "all"},
    {"name": "heartbeat", "every": "15m", "queue": "emails", "kind": "ping"},
]

# The value sets every check runs on.
VALUE_SETS = {
    "embedded": {},
    "redis-3-replicas": {
        "storage": "redis",
        "replicas": 3,
        "redis": {"existingSecret": "redis-credentials", "existingSecretKey": "url"},
    },
    "structured-queues": {
        "storage": "redis",
        "redis": {"url": "redis://:s3cret@redis-0.redis:26379,redis://redis-1.redis:26379",
                  "sentinelMaster": "mymaster"},
        "broker": {"strictQueues": True, "maxPayloadBytes": 4194304, "maxMessageBytes": 134217728,
                   "shutdownGraceSeconds": 20},
        "terminationGracePeriodSeconds": 40,
        "queues": QUEUES,
        "routes": ROUTES,
        "semaphores": {"selenium": {"limit": 5}},
        "schedules": SCHEDULES,
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
        "networkPolicy": {"enabled": True,
                          "from": [{"namespaceSelector": {"matchLabels": {"team": "producers"}}}]},
        "metrics": {"enabled": True, "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    },
    "workers-keda": {
        "storage": "redis",
        "redis": {"url": "redis://10.0.0.1:6379,redis://10.0.0.2:6379", "cluster": True},
        "workers": [
            {"name": "mailer", "queues": ["emails", "emails.bulk"],
             "command": ["sh", "-c", 'echo "sent $(cat)"'], "concurrency": 4, "lease": "2m",
             "image": {"repository": "registry.example/mailer", "tag": "1.2.0"},
             "keda": {"enabled": True, "minReplicaCount": 0, "maxReplicaCount": 20,
                      "metadata": {"targetPerReplica": "8"}}},
            {"name": "sdk", "wrap": False, "queues": ["reports"], "replicas": 2,
             "command": ["python", "-m", "reports.worker"],
             "env": [{"name": "LOG_LEVEL", "value": "debug"}],
             "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}},
        ],
    },
    "raw-config": {
        # strict_queues: the raw file must declare the `helm test` queue itself.
        "config": 'strict_queues = true\nshutdown_grace = "10s"\n\n[queues.default]\nmax_attempts = 3\n\n'
                  '[queues.taskbroker-helm-test]\n',
    },
}


def render(values: dict, *, name: str = RELEASE) -> list[dict]:
    """Every object the chart renders for `values` (hooks included, NOTES.txt not)."""
    with Chart.load(CHART) as chart:
        files = chart.render(values, name=name, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def notes(values: dict) -> str:
    with Chart.load(CHART) as chart:
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for path, text in files.items() if path.endswith("NOTES.txt"))


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"exactly one {kind} {name or ''}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    """(object name, pod spec) of every workload and bare Pod."""
    specs = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            specs.append((d["metadata"]["name"], d["spec"]["template"]["spec"]))
        elif d["kind"] == "Pod":
            specs.append((d["metadata"]["name"], d["spec"]))
    return specs


def broker_toml(docs: list[dict]) -> str:
    return one(docs, "ConfigMap")["data"]["taskbroker.toml"]


@pytest.fixture(scope="session")
def taskbroker_bin() -> Path:
    path = Path(os.environ.get("TASKBROKER_BIN") or ROOT / "target" / "debug" / "taskbroker")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no broker binary at {path}: run `cargo build` (or set TASKBROKER_BIN)")
    return path


class Broker:
    """A real `taskbroker serve --storage memory` on 127.0.0.1:0, with `config` if given."""

    def __init__(self, binary: Path, config: Path | None = None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBROKER_")}
        args = [str(binary), "serve", "--storage", "memory", "--listen", "127.0.0.1:0"]
        if config is not None:
            args += ["--config", str(config)]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, env=env,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=30)
            except queue.Empty:
                self.stop()
                pytest.fail("the broker did not print `listening on ADDR` within 30 s")
            if line.startswith("listening on "):
                self.url = "http://" + line.removeprefix("listening on ").strip()
                return

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start_broker(taskbroker_bin: Path):
    """Starts brokers (`start_broker(config=None)`) and stops them after the test."""
    started = []

    def start(config: Path | None = None) -> Broker:
        started.append(Broker(taskbroker_bin, config))
        return started[-1]

    yield start
    for b in started:
        b.stop()


@pytest.fixture(scope="session")
def helm_version() -> str:
    return helm_python.helm_sdk_version()
