"""What the chart renders: workloads per mode, probes, hardening, the config
checksum, Secrets, PDB/HPA/NetworkPolicy, workers and their KEDA objects,
and the CRD objects kubernetes-validate cannot check."""

from __future__ import annotations

import tomllib

import pytest

from conftest import NAMESPACE, RELEASE, VALUE_SETS, broker_toml, find, notes, one, pod_specs, render

FULLNAME = f"{RELEASE}-taskbroker"
SERVICE = f"{FULLNAME}.{NAMESPACE}.svc"


def broker_workload(docs):
    (w,) = [d for d in docs if d["kind"] in ("StatefulSet", "Deployment")
            and d["metadata"]["labels"]["app.kubernetes.io/component"] == "broker"]
    return w


def broker_container(docs):
    (c,) = broker_workload(docs)["spec"]["template"]["spec"]["containers"]
    return c


def env_of(container) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_embedded_is_one_broker_on_a_volume():
    docs = render(VALUE_SETS["embedded"])
    sts = one(docs, "StatefulSet")
    spec = sts["spec"]
    assert spec["replicas"] == 1
    assert spec["serviceName"] == f"{FULLNAME}-headless"
    assert one(docs, "Service", f"{FULLNAME}-headless")["spec"]["clusterIP"] == "None"
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == 65532
    container = broker_container(docs)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == "/var/lib/taskbroker" == env_of(container)["TASKBROKER_DATA_DIR"]
    assert env_of(container)["TASKBROKER_STORAGE"] == "embedded"
    assert not find(docs, "Deployment") and not find(docs, "PodDisruptionBudget") and not find(docs, "Secret")


def test_redis_mode_is_a_deployment_of_replicas_with_the_url_from_a_secret():
    docs = render(VALUE_SETS["redis-3-replicas"])
    dep = broker_workload(docs)
    assert dep["kind"] == "Deployment" and dep["spec"]["replicas"] == 3
    assert not find(docs, "StatefulSet") and not find(docs, "PersistentVolumeClaim")
    env = env_of(broker_container(docs))
    assert env["TASKBROKER_STORAGE"] == "redis"
    assert env["TASKBROKER_REDIS_URL"] == {"secretKeyRef": {"name": "redis-credentials", "key": "url"}}
    assert not find(docs, "Secret"), "existingSecret: the chart creates none"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    keys = [c["topologyKey"] for c in dep["spec"]["template"]["spec"]["topologySpreadConstraints"]]
    assert keys == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]


def test_a_redis_url_in_values_goes_into_a_secret_the_chart_creates():
    values = VALUE_SETS["structured-queues"]
    docs = render(values)
    secret = one(docs, "Secret", f"{FULLNAME}-redis")
    assert secret["stringData"] == {"redis-url": values["redis"]["url"]}
    env = env_of(broker_container(docs))
    assert env["TASKBROKER_REDIS_URL"] == {"secretKeyRef": {"name": f"{FULLNAME}-redis", "key": "redis-url"}}
    assert env["TASKBROKER_REDIS_SENTINEL"] == "mymaster"
    assert values["redis"]["url"] not in str(broker_workload(docs)), "the URL (a password) stays in the Secret"


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_probes_check_the_grpc_port(values):
    docs = render(values)
    container = broker_container(docs)
    (port,) = [p for p in container["ports"] if p["name"] == "grpc"]
    assert port["containerPort"] == 50051
    assert env_of(container)["TASKBROKER_LISTEN"] == "0.0.0.0:50051"
    readiness = container["readinessProbe"]
    tls = values.get("tls", {})
    # With TLS the kubelet (no TLS client) asks the plaintext health port.
    health = tls.get("healthPort", 50052) if tls.get("enabled") else 50051
    assert readiness["grpc"] == {"port": health, "service": ""}, "native gRPC health of the whole server"
    assert container["livenessProbe"]["tcpSocket"] == {"port": "grpc"}, "liveness must not depend on storage"
    assert container["startupProbe"]["tcpSocket"] == {"port": "grpc"}
    service = one(docs, "Service", FULLNAME)
    (sport,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert sport["targetPort"] == "grpc" and sport["port"] == 50051 and sport["appProtocol"] == "grpc"
    assert service["spec"]["selector"] == broker_workload(docs)["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_grace_period_outlasts_the_prestop_sleep_and_the_drain(values):
    docs = render(values)
    pod = broker_workload(docs)["spec"]["template"]["spec"]
    pre_stop = broker_container(docs)["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = tomllib.loads(broker_toml(docs))["shutdown_grace"]
    assert grace.endswith("s")
    assert pod["terminationGracePeriodSeconds"] > pre_stop + int(grace[:-1])


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_pod_and_container_is_hardened(values):
    specs = pod_specs(render(values))
    assert specs
    for name, pod in specs:
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert psc["runAsUser"] == 65532, name
        assert pod["automountServiceAccountToken"] is False, name
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (name, c["name"])
            assert sc["runAsNonRoot"] is True, (name, c["name"])


def test_platform_assigned_ids_can_be_left_out():
    docs = render({"podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None}})
    psc = broker_workload(docs)["spec"]["template"]["spec"]["securityContext"]
    assert psc == {"runAsNonRoot": True, "fsGroupChangePolicy": "OnRootMismatch",
                   "seccompProfile": {"type": "RuntimeDefault"}}


def checksum(values):
    return broker_workload(render(values))["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def test_the_config_checksum_rolls_the_pods_exactly_when_the_config_changes():
    base = {"queues": {"emails": {"maxAttempts": 3}}}
    assert checksum(base) == checksum(base)
    assert checksum(base) != checksum({"queues": {"emails": {"maxAttempts": 4}}})
    assert checksum(base) != checksum({**base, "broker": {"strictQueues": True}})
    assert checksum(base) == checksum({**base, "replicas": 5, "resources": {}}), "unrelated values keep it"
    assert checksum({}) != checksum({"config": "strict_queues = true\n"})


def test_a_new_redis_url_rolls_the_pods_too():
    a = broker_workload(render({"storage": "redis", "redis": {"url": "redis://a:6379"}}))
    b = broker_workload(render({"storage": "redis", "redis": {"url": "redis://b:6379"}}))
    key = "checksum/redis-url"
    assert a["spec"]["template"]["metadata"]["annotations"][key] != b["spec"]["template"]["metadata"]["annotations"][key]


def test_autoscaling_owns_the_replica_count():
    docs = render(VALUE_SETS["structured-queues"])
    dep = broker_workload(docs)
    assert "replicas" not in dep["spec"], "the HPA, not helm upgrade, sets replicas"
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_the_network_policy_admits_this_release_and_the_listed_peers():
    docs = render(VALUE_SETS["structured-queues"])
    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == broker_workload(docs)["spec"]["selector"]["matchLabels"]
    (rule,) = policy["spec"]["ingress"]
    own, listed = rule["from"]
    assert own["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "taskbroker", "app.kubernetes.io/instance": RELEASE}
    assert listed == {"namespaceSelector": {"matchLabels": {"team": "producers"}}}
    assert {p["port"] for p in rule["ports"]} == {"grpc", "admin"}
    test_pod = one(docs, "Pod")
    assert own["podSelector"]["matchLabels"].items() <= test_pod["metadata"]["labels"].items()


def test_the_service_monitor_scrapes_the_admin_port():
    docs = render(VALUE_SETS["structured-queues"])
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "admin", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    service = one(docs, "Service", FULLNAME)
    assert any(p["name"] == "admin" and p["port"] == 9090 for p in service["spec"]["ports"])
    assert service["metadata"]["labels"].items() >= monitor["spec"]["selector"]["matchLabels"].items()
    assert any(p["name"] == "admin" for p in broker_container(docs)["ports"])
    env = {e["name"]: e.get("value") for e in broker_container(docs)["env"]}
    assert env["TASKBROKER_ADMIN_LISTEN"] == "0.0.0.0:9090", "the admin port listens on the pod network"
    assert "/metrics on port 9090" in notes(VALUE_SETS["structured-queues"])


def test_metrics_and_keda_objects_are_off_by_default():
    docs = render({})
    assert not find(docs, "ServiceMonitor") and not find(docs, "ScaledObject")
    assert not any(p["name"] == "admin" for p in broker_container(docs)["ports"])
    env = {e["name"]: e.get("value") for e in broker_container(docs)["env"]}
    assert env["TASKBROKER_ADMIN_LISTEN"] == "127.0.0.1:9090", "the admin port stays on loopback"


def test_workers_run_taskbroker_work_on_their_queues():
    docs = render(VALUE_SETS["workers-keda"])
    mailer = one(docs, "Deployment", f"{FULLNAME}-worker-mailer")
    (c,) = mailer["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "registry.example/mailer:1.2.0"
    assert c["command"] == ["taskbroker"]
    assert c["args"] == ["work", "--queue", "emails", "--queue", "emails.bulk", "--concurrency", "4",
                         "--lease", "2m", "--", "sh", "-c", 'echo "sent $(cat)"']
    assert env_of(c)["TASKBROKER_SERVER"] == f"http://{SERVICE}:50051"
    assert "replicas" not in mailer["spec"], "KEDA owns the replica count"
    sdk = one(docs, "Deployment", f"{FULLNAME}-worker-sdk")
    (c,) = sdk["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python", "-m", "reports.worker"] and "args" not in c
    assert env_of(c)["TASKBROKER_QUEUES"] == "reports" and env_of(c)["LOG_LEVEL"] == "debug"
    assert sdk["spec"]["replicas"] == 2
    selectors = [d["spec"]["selector"]["matchLabels"] for d in (mailer, sdk, broker_workload(docs))]
    assert all(a != b for i, a in enumerate(selectors) for b in selectors[i + 1:]), "no workload adopts another's pods"
    service = one(docs, "Service", FULLNAME)
    for worker in (mailer, sdk):
        labels = worker["spec"]["template"]["metadata"]["labels"]
        assert not service["spec"]["selector"].items() <= labels.items(), "the Service never routes to workers"


def test_keda_scales_each_worker_on_the_brokers_external_scaler():
    docs = render(VALUE_SETS["workers-keda"])
    (scaled,) = find(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": f"{FULLNAME}-worker-mailer"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 20)
    assert [t["type"] for t in spec["triggers"]] == ["external-push", "external-push"]
    assert [t["metadata"] for t in spec["triggers"]] == [
        {"scalerAddress": f"{SERVICE}:50051", "queue": q, "targetPerReplica": "8"}
        for q in ("emails", "emails.bulk")
    ]
    for t in spec["triggers"]:
        assert all(isinstance(v, str) for v in t["metadata"].values()), "KEDA metadata values are strings"
    assert "KEDA ScaledObject on the broker's external scaler" in notes(VALUE_SETS["workers-keda"])


def test_the_helm_test_hook_runs_a_worker_and_waits_for_its_task():
    docs = render({})
    pod = one(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] <= 300
    (worker,) = spec["initContainers"]
    assert worker["restartPolicy"] == "Always", "a native sidecar, stopped when the test container ends"
    (enqueue,) = spec["containers"]
    assert enqueue["args"][0] == "enqueue" and "--wait" in enqueue["args"]
    assert worker["args"][:3] == ["work", "--queue", enqueue["args"][enqueue["args"].index("--queue") + 1]]
    assert not find(render({"tests": {"enabled": False}}), "Pod")


def test_zero_is_a_value_not_a_missing_one():
    worker = {"name": "w", "queues": ["q"], "command": ["true"], "replicas": 0, "terminationGracePeriodSeconds": 0,
              "keda": {"enabled": True, "minReplicaCount": 0, "cooldownPeriod": 0}}
    docs = render({"storage": "redis", "workers": [worker]})
    scaled = one(docs, "ScaledObject")["spec"]
    assert (scaled["minReplicaCount"], scaled["cooldownPeriod"]) == (0, 0)
    dep = one(docs, "Deployment", f"{FULLNAME}-worker-w")
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 0
    worker["keda"]["enabled"] = False
    dep = one(render({"storage": "redis", "workers": [worker]}), "Deployment", f"{FULLNAME}-worker-w")
    assert dep["spec"]["replicas"] == 0


def test_notes_tell_how_to_reach_the_broker():
    text = notes({})
    assert f"http://{SERVICE}:50051" in text
    assert f"port-forward svc/{FULLNAME} 50051:50051" in text
    assert f"helm test {RELEASE}" in text
