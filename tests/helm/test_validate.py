"""The chart against Helm's own checks and the Kubernetes API schemas.

- `helm lint --strict` (Helm 4, through helm-python-sdk) for every value set
  and both Kubernetes versions: no warning, no error.
- Every rendered object validated by `kubernetes-validate --strict` (the
  Kubernetes JSON schemas bundled in its wheel) for both versions; objects of
  CRD kinds, which it cannot check, are checked field by field in
  test_objects.py.
- values.schema.json refuses typos and bad values at install time.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import helm_python
import pytest
import yaml
from helm_python import Chart

from conftest import CHART, CRD_KINDS, KUBE_VERSIONS, VALUE_SETS, render

WARNING = 2


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_strict_passes(values, kube):
    report = helm_python.lint(CHART, values=values, strict=True, kube_version=f"v{kube}")
    problems = [m for m in report["messages"] if m["severity"] >= WARNING]
    assert report["total_charts_linted"] == 1
    assert not problems and not report["errors"], problems or report["errors"]


def kubernetes_validate(path: Path, kube: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "-k", kube, str(path)],
        capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_object_passes_the_kubernetes_schema(values, kube, tmp_path):
    docs = render(values)
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    run = kubernetes_validate(path, kube)
    assert run.returncode == 0, run.stdout + run.stderr
    passed = re.findall(r"^INFO .* passed for resource (\S+) against version", run.stdout, re.M)
    builtin = [f"{d['kind'].lower()}/{d['metadata']['name']}" for d in docs if d["kind"] not in CRD_KINDS]
    assert sorted(passed) == sorted(builtin), run.stdout
    for line in run.stdout.splitlines():
        if line.startswith("WARN"):
            assert any(f"kind {k} " in line for k in CRD_KINDS), line


def test_kubernetes_validate_rejects_a_broken_manifest(tmp_path):
    """The validator is strict: a misspelt field in a rendered object fails."""
    docs = render({})
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["servce"] = ""
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    run = kubernetes_validate(path, KUBE_VERSIONS[0])
    assert run.returncode == 1, run.stdout
    assert "servce" in run.stdout


@pytest.mark.parametrize(
    "values, message",
    [
        ({"replica": 3}, "additional properties 'replica' not allowed"),
        ({"broker": {"strictQueue": True}}, "additional properties 'strictQueue' not allowed"),
        ({"queues": {"emails": {"maxAttempt": 3}}}, "additional properties 'maxAttempt' not allowed"),
        ({"storage": "postgres"}, "storage"),
        ({"queues": {"emails": {"leaseDuration": "thirty seconds"}}}, "leaseDuration"),
        ({"queues": {"bad/name": {}}}, "bad/name"),
        ({"routes": [{"kind": "a.*", "queue": "q", "priority": 10}]}, "priority"),
        ({"workers": [{"name": "w", "queues": ["q"], "command": ["x"], "concurency": 2}]}, "concurency"),
        ({"redis": {"url": "http://redis:6379"}}, "url"),
        ({"metrics": {"serviceMonitor": {"enabld": True}}}, "enabld"),
    ],
)
def test_the_schema_refuses_a_bad_value_at_install(values, message):
    with Chart.load(CHART) as chart, pytest.raises(helm_python.HelmValuesError) as refused:
        chart.render(values, name="tb", namespace="jobs", is_install=True)
    assert message in str(refused.value)
    report = helm_python.lint(CHART, values=values, strict=True)
    assert any(message in e for e in report["errors"]), report


def test_every_object_in_the_schema_refuses_unknown_keys():
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    loose = []

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
                loose.append(path)
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")

    walk(schema, "")
    # The root admits `global`, which Helm passes to every chart; nothing else.
    assert loose == [], loose
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"]), set(values) - set(schema["properties"])
    assert set(schema["properties"]) - {"global"} == set(values), "every value has a default in values.yaml"


@pytest.mark.parametrize(
    "values, message",
    [
        ({"terminationGracePeriodSeconds": 12}, "terminationGracePeriodSeconds (12) must exceed"),
        ({"config": "strict_queues = true\n", "queues": {"q": {}}}, "not both"),
        ({"broker": {"strictQueues": True}, "routes": [{"kind": "a", "queue": "nowhere"}]},
         'routes[0].queue: "nowhere" is not declared'),
        ({"autoscaling": {"enabled": True}}, "autoscaling needs storage: redis"),
    ],
)
def test_inconsistent_values_fail_with_a_message(values, message):
    with Chart.load(CHART) as chart, pytest.raises(helm_python.HelmRenderError) as refused:
        chart.render(values, name="tb", namespace="jobs", is_install=True)
    assert message in str(refused.value)
