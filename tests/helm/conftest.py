"""Shared helpers of the Helm chart's checks: the value sets, rendering with the
real Helm 4 library (helm-python-sdk, no helm binary, nothing downloaded), and
a real broker for the commands the chart runs.

Run by ./scripts/test as `python -m pytest -q tests/helm` (packages from
tests/helm/requirements.txt, the broker from $TASKBROKER_BIN).
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import shutil
import subprocess
import tempfile
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
CRD_KINDS = {"ServiceMonitor", "ScaledObject", "TriggerAuthentication"}

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

def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# Bearer tokens of the tls-auth value set, as `taskbroker token new` makes
# them; the chart only ever sees their hashes (values or the tokens Secret).
TOKENS = {
    "mailer": "tbk_6d61696c6572d1f0c6e5b3a4a2f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2",
    "producer": "tbk_70726f6475636572a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718",
    "helm-test": "tbk_68656c6d2d74657374f0e1d2c3b4a5968778695a4b3c2d1e0f1e2d3c4b5a6978",
    "prometheus": "tbk_70726f6d65746865757309f8e7d6c5b4a392817f6e5d4c3b2a1908f7e6d5c4b3",
}
# The tls-auth set's Secrets that hold tokens (the test and the worker pods'
# tokenSecret, the ServiceMonitor's bearerTokenSecret, the broker's tokens
# file); the certificate Secrets are made by the `cluster_secrets` fixture.
TOKEN_SECRETS = {
    "tb-mailer-token": {"token": TOKENS["mailer"]},
    "tb-helm-test-token": {"token": TOKENS["helm-test"]},
    "tb-prometheus-token": {"token": TOKENS["prometheus"]},
    "tb-producer-token": {"token": TOKENS["producer"]},
    # Only helm-test's hash lives here: a token can be added or rotated
    # without a new release.
    "tb-tokens": {"tokens": f"# SHA256HEX NAME\n{sha256(TOKENS['helm-test'])} helm-test\n"},
}

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
    "tls-auth": {
        # TLS from a cert-manager Secret, mTLS against a separate client CA,
        # HTTPS admin port, [auth] with token and certificate principals, a
        # tokens Secret, and every client of the release given its credentials.
        "storage": "redis",
        "redis": {"existingSecret": "redis-credentials", "existingSecretKey": "url"},
        "tls": {"enabled": True, "secretName": "tb-tls", "clientAuth": True, "clientCaSecretName": "tb-client-ca",
                "admin": True, "healthPort": 50053, "kedaClientCertSecret": "tb-keda-client"},
        "auth": {"enabled": True, "tokensSecret": "tb-tokens", "principals": [
            {"name": "mailer", "tokenSha256": sha256(TOKENS["mailer"]),
             "grants": [{"actions": ["consume"], "queues": ["emails", "emails.*"]}]},
            {"name": "producer", "tokenSha256": sha256(TOKENS["producer"]),
             "grants": [{"actions": ["enqueue", "inspect"], "queues": ["emails", "emails.*"]}]},
            {"name": "helm-test",  # its hash is in the tokens Secret
             "grants": [{"actions": ["enqueue", "consume"], "queues": ["taskbroker-helm-test"]}]},
            {"name": "prometheus", "tokenSha256": sha256(TOKENS["prometheus"]),
             "grants": [{"actions": ["inspect"], "queues": ["*"]}]},
            {"name": "keda", "mtlsSubject": "CN=keda",
             "grants": [{"actions": ["inspect"], "queues": ["*"]}]},
            {"name": "reports", "mtlsSan": "spiffe://cluster.local/ns/jobs/sa/reports",
             "grants": [{"actions": ["consume"], "queues": ["reports"]}]},
        ]},
        "metrics": {"enabled": True, "serviceMonitor": {
            "enabled": True, "bearerTokenSecret": {"name": "tb-prometheus-token", "key": "token"}}},
        "tests": {"tokenSecret": {"name": "tb-helm-test-token", "key": "token"}, "clientCertSecret": "tb-client"},
        "workers": [
            {"name": "mailer", "queues": ["emails", "emails.bulk"], "command": ["sh", "-c", 'echo "sent $(cat)"'],
             "tokenSecret": {"name": "tb-mailer-token", "key": "token"}, "clientCertSecret": "tb-client",
             "keda": {"enabled": True, "maxReplicaCount": 5}},
            # A client-library worker identified by its certificate alone.
            {"name": "reports", "wrap": False, "queues": ["reports"], "command": ["python", "-m", "reports.worker"],
             "clientCertSecret": "tb-reports-client"},
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
    """A real `taskbroker serve --storage memory` on 127.0.0.1:0, with `config` if given.

    With `tls`, the config's TLS is on: the URL is https://, and the plaintext
    health port and the admin port (moved to 127.0.0.1:0) are read from the
    broker's start-up lines into `health` and `admin` (HOST:PORT)."""

    def __init__(self, binary: Path, config: Path | None = None, *, tls: bool = False):
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBROKER_")}
        args = [str(binary), "serve", "--storage", "memory", "--listen", "127.0.0.1:0"]
        if config is not None:
            args += ["--config", str(config)]
        expected = {"listening on "}
        if tls:
            args += ["--health-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
            expected |= {"health at ", "dashboard at "}
        printed = {}
        self.stderr = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE, stderr=self.stderr, stdin=subprocess.DEVNULL, text=True, env=env,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            for line in self.proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=30)
            except queue.Empty:
                line = None
            if line is None:  # exited (a bad config, a missing file) or silent for 30 s
                self.stop()
                self.stderr.seek(0)
                pytest.fail(f"the broker did not print {sorted(expected - set(printed))}: {self.stderr.read()[-3000:]}")
            for prefix in expected:
                if line.startswith(prefix):
                    printed[prefix] = line.removeprefix(prefix).strip()
            if set(printed) == expected:
                break
        self.url = ("https://" if tls else "http://") + printed["listening on "]
        self.health = printed.get("health at ")
        self.admin = printed.get("dashboard at ")

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

    def start(config: Path | None = None, *, tls: bool = False) -> Broker:
        started.append(Broker(taskbroker_bin, config, tls=tls))
        return started[-1]

    yield start
    for b in started:
        b.stop()


@pytest.fixture(scope="session")
def helm_version() -> str:
    return helm_python.helm_sdk_version()


def openssl(*args: str, cwd: Path) -> None:
    run = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"openssl {' '.join(args)}: {run.stderr}"


@pytest.fixture(scope="session")
def cluster_secrets(tmp_path_factory) -> dict[str, dict[str, str]]:
    """The Secrets the tls-auth value set names, as the cluster would hold
    them: a server certificate from one CA (what cert-manager puts in tb-tls:
    tls.crt, tls.key, ca.crt) naming the Service and 127.0.0.1, client
    certificates from a second CA (tb-client-ca), and the token Secrets."""
    if shutil.which("openssl") is None:
        pytest.fail("the TLS checks make certificates with openssl: apt-get install openssl (./scripts/test does)")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

    def ca(name: str) -> None:
        openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
                "-subj", f"/CN={name}", cwd=d)

    def leaf(name: str, issuer: str, subject: str, ext: str) -> dict[str, str]:
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)
        (d / f"{name}.ext").write_text(f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n{ext}\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.crt", "-CAkey", f"{issuer}.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
        return {"tls.crt": (d / f"{name}.crt").read_text(), "tls.key": (d / f"{name}.key").read_text()}

    ca("server-ca")
    ca("client-ca")
    server = leaf("server", "server-ca", "/CN=tb-taskbroker",
                  "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:tb-taskbroker.jobs.svc,IP:127.0.0.1")
    client = "extendedKeyUsage=clientAuth"
    return {
        "tb-tls": {**server, "ca.crt": (d / "server-ca.crt").read_text()},
        "tb-client-ca": {"ca.crt": (d / "client-ca.crt").read_text()},
        "tb-client": leaf("client", "client-ca", "/CN=helm-worker", client),
        "tb-keda-client": leaf("keda", "client-ca", "/CN=keda", client),
        "tb-reports-client": leaf("reports", "client-ca", "/CN=reports",
                                  client + "\nsubjectAltName=URI:spiffe://cluster.local/ns/jobs/sa/reports"),
        **TOKEN_SECRETS,
    }


class Kubelet:
    """Does for a process on this machine what the kubelet does for a
    container: materializes its Secret, ConfigMap and emptyDir volumes at their
    mountPath under `root` (only the listed `items` when given; a missing key
    fails, as it fails the pod), resolves its env (value and secretKeyRef), and
    maps absolute paths inside those mounts to where they are under `root`.
    Paths outside every mount are left alone, so a path the chart names but
    does not mount is missing for the broker as it would be in the pod."""

    def __init__(self, root: Path, secrets: dict[str, dict[str, str]], configmaps: dict[str, dict[str, str]]):
        self.root, self.secrets, self.configmaps = root, secrets, configmaps
        self.mounts: list[str] = []

    def mount(self, pod: dict, container: dict) -> None:
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for m in container.get("volumeMounts", []):
            volume = volumes[m["name"]]
            target = self.root / m["mountPath"].lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            self.mounts.append(m["mountPath"])
            if "secret" in volume:
                source, data = volume["secret"], self.secrets[volume["secret"]["secretName"]]
            elif "configMap" in volume:
                source, data = volume["configMap"], self.configmaps[volume["configMap"]["name"]]
            else:
                assert "emptyDir" in volume, volume
                continue
            files = {i["path"]: data[i["key"]] for i in source["items"]} if "items" in source else data
            for name, content in files.items():
                (target / name).write_text(content)

    def path(self, path: str) -> str:
        if any(path == mp or path.startswith(mp.rstrip("/") + "/") for mp in self.mounts):
            return str(self.root / path.lstrip("/"))
        return path

    def paths_in_toml(self, text: str) -> str:
        return re.sub(r'"(/[^"]*)"', lambda m: f'"{self.path(m[1])}"', text)

    def env(self, container: dict) -> dict[str, str]:
        env = {}
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = self.path(e["value"]) if e["value"].startswith("/") else e["value"]
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                env[e["name"]] = self.secrets[ref["name"]][ref["key"]]
        return env
