"""The chart's config and commands, run by the real broker binary
($TASKBROKER_BIN): the ConfigMap's TOML passes `taskbroker config check`,
and the `helm test` pod's and the workers' command lines work against a real
`taskbroker serve` on 127.0.0.1 started with the rendered config."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import QUEUES, ROUTES, SCHEDULES, VALUE_SETS, broker_toml, one, render

TIMEOUT = 60


def config_check(binary: Path, toml: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "taskbroker.toml"
    path.write_text(toml)
    return subprocess.run([str(binary), "config", "check", str(path)], capture_output=True, text=True,
                          timeout=TIMEOUT)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_configmap_passes_the_brokers_own_config_check(values, taskbroker_bin, tmp_path):
    run = config_check(taskbroker_bin, broker_toml(render(values)), tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith(": ok")


def test_structured_values_become_the_brokers_toml():
    config = tomllib.loads(broker_toml(render(VALUE_SETS["structured-queues"])))
    assert config["strict_queues"] is True
    assert config["max_payload_bytes"] == 4194304 and config["max_message_bytes"] == 134217728
    assert config["shutdown_grace"] == "20s"
    assert set(config["queues"]) == set(QUEUES) | {"taskbroker-helm-test"}, "strict: the test queue is declared"
    assert config["queues"]["default"] == {
        "lease_duration": "30s", "max_attempts": 5,
        "retry_backoff": {"initial": "1s", "max": "10m", "multiplier": 2, "jitter": 0.2},
    }
    assert config["queues"]["emails"] == {
        "default_priority": 3, "retention": "72h", "dedup_window": "10m",
        "max_in_flight": 20, "per_key_max_in_flight": 2, "rate_limit": "50/s", "rate_burst": 10,
    }
    assert config["queues"]["browsers"] == {"max_in_flight": 5, "semaphores": ["selenium"]}
    assert config["semaphores"] == {"selenium": {"limit": 5}}
    assert config["queues"]["reports.daily"]["retry_backoff"]["multiplier"] == 1.5
    assert config["routes"] == [
        {"kind": "email.*", "queue": "emails", "priority": 7, "headers": {"tenant": "acme", "tier": "gold"}},
        {"kind": "report.daily", "queue": "reports.daily"},
        {"kind": "browse.*", "queue": "browsers", "semaphores": ["selenium"]},
    ]
    assert ROUTES[0]["headers"] == config["routes"][0]["headers"]
    assert config["schedules"] == [
        {"name": "nightly-report", "cron": "0 3 * * *", "timezone": "Europe/Berlin", "queue": "reports.daily",
         "kind": "report.build", "payload": '{"scope":"all"}', "headers": {"source": "cron"}, "catch_up": "all"},
        {"name": "heartbeat", "every": "15m", "queue": "emails", "kind": "ping"},
    ]
    assert SCHEDULES[0]["payload"] == config["schedules"][0]["payload"]


def test_strings_are_escaped_for_toml(taskbroker_bin, tmp_path):
    tricky = 'say "hi"\\ \u00e9 <tag> & co'
    values = {"routes": [{"kind": tricky, "headers": {"x-quote": tricky}, "queue": "q"}]}
    toml = broker_toml(render(values))
    assert tomllib.loads(toml)["routes"][0] == {"kind": tricky, "queue": "q", "headers": {"x-quote": tricky}}
    run = config_check(taskbroker_bin, toml, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_config_check_is_real_a_rendered_bad_value_fails_it(taskbroker_bin, tmp_path):
    """The schema cannot see that initial > max; the broker's check does."""
    values = {"queues": {"q": {"retryBackoff": {"initial": "1h", "max": "1s", "multiplier": 2, "jitter": 0}}}}
    run = config_check(taskbroker_bin, broker_toml(render(values)), tmp_path)
    assert run.returncode == 64, run.stdout + run.stderr
    assert "queues.q.retry_backoff.initial: must be <= max" in run.stderr


def on_path(binary: Path, tmp_path: Path) -> dict:
    """An environment whose PATH finds `taskbroker` (the image's /usr/local/bin)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    link = bindir / "taskbroker"
    if not link.exists():
        link.symlink_to(binary)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBROKER_")}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    return env


def container_command(c: dict) -> list[str]:
    """What the container runs: command (or the image's ENTRYPOINT, taskbroker) + args."""
    return c.get("command", ["taskbroker"]) + c.get("args", [])


def run_pod(spec: dict, server: str, env: dict, container_env=None) -> subprocess.CompletedProcess:
    """Runs the Pod's sidecars in the background and its container to the end.

    `container_env(container)`, if given, adds that container's own env (as
    the kubelet resolves it); TASKBROKER_SERVER always points at `server`."""

    def env_of(c: dict) -> dict:
        return {**env, **(container_env(c) if container_env else {}), "TASKBROKER_SERVER": server}

    sidecars = [subprocess.Popen(container_command(c), env=env_of(c), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    try:
        (main,) = spec["containers"]
        return subprocess.run(container_command(main), env=env_of(main), capture_output=True, text=True,
                              timeout=TIMEOUT)
    finally:
        for p in sidecars:
            p.terminate()
            p.wait(timeout=TIMEOUT)


@pytest.mark.parametrize("name", ["embedded", "structured-queues", "raw-config"])
def test_the_helm_test_pod_passes_against_a_broker_with_the_charts_config(
        name, start_broker, taskbroker_bin, tmp_path):
    docs = render(VALUE_SETS[name])
    config = tmp_path / "taskbroker.toml"
    config.write_text(broker_toml(docs))
    broker = start_broker(config)
    test_pod = one(docs, "Pod")
    for c in test_pod["spec"]["initContainers"] + test_pod["spec"]["containers"]:
        assert {"name": "TASKBROKER_SERVER", "value": "http://tb-taskbroker.jobs.svc:50051"} in c["env"]
    run = run_pod(test_pod["spec"], broker.url, on_path(taskbroker_bin, tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert '"TASK_STATE_SUCCEEDED"' in run.stdout and "taskbroker " in run.stdout, run.stdout


def test_the_helm_test_pod_fails_when_no_worker_settles_its_task(start_broker, taskbroker_bin, tmp_path):
    """The test is not vacuous: a worker whose command fails makes it fail."""
    docs = render({})
    spec = one(docs, "Pod")["spec"]
    spec["initContainers"][0]["args"][-2:] = ["taskbroker", "no-such-subcommand"]
    broker = start_broker()
    # The task is retried until it is dead (5 attempts with backoff): bound it
    # by enqueueing with one attempt.
    spec["containers"][0]["args"] += ["--max-attempts", "1"]
    run = run_pod(spec, broker.url, on_path(taskbroker_bin, tmp_path))
    assert run.returncode != 0
    assert '"TASK_STATE_DEAD"' in run.stdout, run.stdout + run.stderr


def test_a_worker_deployments_command_line_works(start_broker, taskbroker_bin, tmp_path):
    docs = render(VALUE_SETS["workers-keda"])
    mailer = one(docs, "Deployment", "tb-taskbroker-worker-mailer")["spec"]["template"]["spec"]
    broker = start_broker()
    env = on_path(taskbroker_bin, tmp_path)
    producer = {"name": "producer", "command": ["taskbroker"],
                "args": ["enqueue", "--queue", "emails.bulk", "--kind", "email.send", "--payload", "a@b.c", "--wait"]}
    run = run_pod({"initContainers": [{**mailer["containers"][0], "restartPolicy": "Always"}],
                   "containers": [producer]}, broker.url, env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "sent a@b.c" in run.stdout
