"""TLS, mTLS and auth in the chart (the tls-auth value set): the objects
(Secret mounts, env, probes on the plaintext health port, ports, KEDA's
TriggerAuthentication, the ServiceMonitor), the render-time checks, and a real
broker ($TASKBROKER_BIN) started with the rendered config and the Secrets
mounted as the pod would see them, against which the `helm test` pod and a
worker run with the credentials the chart gives them."""

from __future__ import annotations

import re
import ssl
import tomllib
import urllib.error
import urllib.request

import grpc
import helm_python
import pytest
import yaml
from helm_python import Chart

from conftest import (CHART, NAMESPACE, RELEASE, ROOT, TOKENS, VALUE_SETS, Kubelet, broker_toml, find, notes, one,
                      render, sha256)
from test_broker_runs_it import config_check, on_path, run_pod
from test_objects import broker_container, broker_workload, env_of

FULLNAME = f"{RELEASE}-taskbroker"
SERVICE = f"{FULLNAME}.{NAMESPACE}.svc"
VALUES = VALUE_SETS["tls-auth"]


def mounts_of(pod: dict, container: dict) -> dict[str, tuple[dict, dict]]:
    """mountPath -> (the volumeMount, its volume)."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container.get("volumeMounts", [])}


def secret_file(pod: dict, container: dict, path: str) -> tuple[str, str]:
    """(Secret name, key) that a file path in the container comes from; fails if no Secret mount holds it."""
    for mount_path, (mount, volume) in mounts_of(pod, container).items():
        if path.startswith(mount_path + "/") and "secret" in volume:
            assert mount.get("readOnly") is True, mount
            name = path.removeprefix(mount_path + "/")
            items = volume["secret"].get("items")
            if items is None:
                return volume["secret"]["secretName"], name
            (key,) = [i["key"] for i in items if i["path"] == name]
            return volume["secret"]["secretName"], key
    raise AssertionError(f"{path} is in no Secret mount of {container['name']}")


# --- The objects -----------------------------------------------------------


def test_the_broker_reads_its_certificate_client_ca_and_tokens_from_read_only_secret_mounts():
    docs = render(VALUES)
    pod = broker_workload(docs)["spec"]["template"]["spec"]
    container = broker_container(docs)
    config = tomllib.loads(broker_toml(docs))
    assert secret_file(pod, container, config["tls_cert"]) == ("tb-tls", "tls.crt")
    assert secret_file(pod, container, config["tls_key"]) == ("tb-tls", "tls.key")
    assert config["tls_cert"].startswith("/etc/taskbroker/tls/")
    assert secret_file(pod, container, config["tls_client_ca"]) == ("tb-client-ca", "ca.crt")
    assert secret_file(pod, container, config["auth"]["tokens_file"]) == ("tb-tokens", "tokens")
    assert config["auth"]["tokens_file"] == "/etc/taskbroker/tokens/tokens"
    assert config["admin_tls"] is True
    # A whole-Secret mount (not subPath), so cert-manager's renewals reach the broker.
    assert not any("subPath" in m for m in container["volumeMounts"])


def test_readiness_asks_the_plaintext_health_port_which_the_pod_declares():
    docs = render(VALUES)
    container = broker_container(docs)
    config = tomllib.loads(broker_toml(docs))
    assert config["health_listen"] == "0.0.0.0:50053"
    assert container["readinessProbe"]["grpc"] == {"port": 50053, "service": ""}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 50051, "admin": 9090, "health": 50053}
    # TCP probes still work on the TLS port (they only connect).
    assert container["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
    assert container["startupProbe"]["tcpSocket"] == {"port": "grpc"}
    service = one(docs, "Service", FULLNAME)
    assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "admin"}, "the health port is the kubelet's only"


def test_principals_become_the_auth_table():
    config = tomllib.loads(broker_toml(render(VALUES)))
    auth = config["auth"]
    assert (auth["enabled"], auth["protect_metrics"], auth["protect_reflection"]) == (True, True, False)
    assert auth["principals"][0] == {"name": "mailer", "token_sha256": sha256(TOKENS["mailer"]),
                                     "grants": [{"actions": ["consume"], "queues": ["emails", "emails.*"]}]}
    assert auth["principals"][2] == {"name": "helm-test", "grants": [
        {"actions": ["enqueue", "consume"], "queues": ["taskbroker-helm-test"]}]}
    assert auth["principals"][4] == {"name": "keda", "mtls_subject": "CN=keda",
                                     "grants": [{"actions": ["inspect"], "queues": ["*"]}]}
    assert auth["principals"][5]["mtls_san"] == "spiffe://cluster.local/ns/jobs/sa/reports"
    assert [p["name"] for p in auth["principals"]] == [p["name"] for p in VALUES["auth"]["principals"]]


def client_containers(docs):
    """(pod spec, container) of every client of the broker in the release."""
    test_pod = one(docs, "Pod")["spec"]
    out = [(test_pod, c) for c in test_pod["initContainers"] + test_pod["containers"]]
    for name in ("mailer", "reports"):
        spec = one(docs, "Deployment", f"{FULLNAME}-worker-{name}")["spec"]["template"]["spec"]
        out += [(spec, c) for c in spec["containers"]]
    return out


def test_every_client_gets_https_the_ca_alone_and_its_own_credentials():
    docs = render(VALUES)
    seen = []  # (container, client certificate Secret, token Secret)
    for pod, c in client_containers(docs):
        env = env_of(c)
        assert env["TASKBROKER_SERVER"] == f"https://{SERVICE}:50051", c["name"]
        assert secret_file(pod, c, env["TASKBROKER_TLS_CA"]) == ("tb-tls", "ca.crt")
        for mount, volume in mounts_of(pod, c).values():
            if volume.get("secret", {}).get("secretName") == "tb-tls":
                assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}], "never the broker's key"
        cert = secret_file(pod, c, env["TASKBROKER_CLIENT_CERT"])
        key = secret_file(pod, c, env["TASKBROKER_CLIENT_KEY"])
        assert (cert[1], key[1]) == ("tls.crt", "tls.key") and cert[0] == key[0]
        token = env.get("TASKBROKER_TOKEN")
        seen.append((c["name"], cert[0], token and token["secretKeyRef"]["name"]))
        if token:
            assert token["secretKeyRef"]["key"] == "token"
    assert sorted(seen) == sorted([
        ("worker", "tb-client", "tb-helm-test-token"), ("enqueue", "tb-client", "tb-helm-test-token"),
        ("worker", "tb-client", "tb-mailer-token"),  # the mailer Deployment's container
        ("worker", "tb-reports-client", None),  # the reports worker: its certificate alone
    ])


def test_keda_connects_over_tls_with_its_own_client_certificate():
    docs = render(VALUES)
    (auth,) = find(docs, "TriggerAuthentication")
    assert auth["apiVersion"] == "keda.sh/v1alpha1" and auth["metadata"]["name"] == f"{FULLNAME}-keda"
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {"caCert": ("tb-tls", "ca.crt"), "tlsClientCert": ("tb-keda-client", "tls.crt"),
                    "tlsClientKey": ("tb-keda-client", "tls.key")}
    (scaled,) = find(docs, "ScaledObject")
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["authenticationRef"] == {"name": f"{FULLNAME}-keda"}
        assert trigger["metadata"]["scalerAddress"] == f"{SERVICE}:50051", "the name the certificate carries"
    assert not find(render(VALUE_SETS["workers-keda"]), "TriggerAuthentication"), "none without TLS"
    # TLS without mTLS: the CA alone.
    plain_tls = {**VALUE_SETS["workers-keda"], "tls": {"enabled": True, "secretName": "tb-tls"}}
    (auth,) = find(render(plain_tls), "TriggerAuthentication")
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "caCert", "name": "tb-tls", "key": "ca.crt"}]


def test_the_service_monitor_scrapes_https_with_a_token():
    (monitor,) = find(render(VALUES), "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {"ca": {"secret": {"name": "tb-tls", "key": "ca.crt"}}, "serverName": SERVICE}
    assert endpoint["authorization"] == {"type": "Bearer",
                                         "credentials": {"name": "tb-prometheus-token", "key": "token"}}


def test_mtls_defaults_to_the_servers_ca_and_auth_stays_out_until_asked_for():
    values = {"tls": {"enabled": True, "secretName": "tb-tls", "clientAuth": True},
              "tests": {"clientCertSecret": "tb-client"}}
    docs = render(values)
    config = tomllib.loads(broker_toml(docs))
    assert config["tls_client_ca"] == "/etc/taskbroker/tls/ca.crt"
    assert "auth" not in config and "admin_tls" not in config
    pod = broker_workload(docs)["spec"]["template"]["spec"]
    assert {v["name"] for v in pod["volumes"]} == {"config", "tmp", "tls"}
    plain = tomllib.loads(broker_toml(render({})))
    assert not {"tls_cert", "tls_key", "health_listen", "auth"} & set(plain), "nothing changes without tls/auth"
    assert "TASKBROKER_TLS_CA" not in env_of(one(render({}), "Pod")["spec"]["containers"][0])


@pytest.mark.parametrize(
    "values, message",
    [
        ({"tls": {"enabled": True}}, "tls.secretName: tls.enabled needs"),
        ({"tls": {"clientAuth": True}}, "tls.clientAuth and tls.admin need tls.enabled"),
        ({"tls": {"enabled": True, "secretName": "s", "healthPort": 50051}}, "tls.healthPort (50051) must differ"),
        ({"tls": {"enabled": True, "secretName": "s", "healthPort": 9090}}, "tls.healthPort (9090) must differ"),
        ({"tls": {"enabled": True, "secretName": "s", "healthPort": 9100}, "metrics": {"enabled": True, "port": 9100}},
         "tls.healthPort (9100) must differ"),
        ({"auth": {"enabled": True}, "tests": {"enabled": False}}, "auth.principals: auth.enabled but no principal"),
        ({"auth": {"principals": [{"name": "w", "mtlsSubject": "CN=w"}]}},
         "auth.principals[0]: mtlsSubject and mtlsSan need tls.clientAuth"),
        ({"auth": {"enabled": True, "principals": [{"name": "p"}]}}, "tests.tokenSecret: auth.enabled needs"),
        ({"tls": {"enabled": True, "secretName": "s", "clientAuth": True}},
         "tests.clientCertSecret: tls.clientAuth makes the broker require"),
        ({"tls": {"enabled": True, "secretName": "s", "clientAuth": True}, "tests": {"clientCertSecret": "c"},
          "workers": [{"name": "w", "queues": ["q"], "command": ["x"]}]}, "workers[0].clientCertSecret"),
        ({"tls": {"enabled": True, "secretName": "s", "clientAuth": True}, "tests": {"clientCertSecret": "c"},
          "workers": [{"name": "w", "queues": ["q"], "command": ["x"], "clientCertSecret": "c",
                       "keda": {"enabled": True}}]}, "tls.kedaClientCertSecret: workers[0].keda needs"),
        ({"auth": {"enabled": True, "principals": [{"name": "p"}]}, "tests": {"enabled": False},
          "workers": [{"name": "w", "queues": ["q"], "command": ["x"], "tokenSecret": {"name": "t"},
                       "keda": {"enabled": True}}]}, "KEDA's external scaler sends no token"),
        ({"auth": {"enabled": True, "principals": [{"name": "p"}]}, "tests": {"enabled": False},
          "metrics": {"enabled": True, "serviceMonitor": {"enabled": True}}},
         "metrics.serviceMonitor.bearerTokenSecret: auth.protectMetrics refuses"),
        ({"config": "strict_queues = false\n", "tls": {"enabled": True, "secretName": "s"}},
         "tls and auth are rendered into the generated config"),
    ],
)
def test_settings_the_broker_or_its_clients_would_be_refused_under_fail_the_install(values, message):
    with Chart.load(CHART) as chart, pytest.raises(helm_python.HelmRenderError) as refused:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert message in str(refused.value)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"tls": {"enabeld": True}}, "enabeld"),
        ({"auth": {"principals": [{"name": "p", "grants": [{"actions": ["write"], "queues": ["q"]}]}]}},
         "/auth/principals/0/grants/0/actions/0"),
        ({"auth": {"principals": [{"name": "p", "tokenSha256": "abc"}]}}, "/auth/principals/0/tokenSha256"),
        ({"auth": {"principals": [{"name": "two words"}]}}, "/auth/principals/0/name"),
        ({"workers": [{"name": "w", "queues": ["q"], "command": ["x"], "tokenSecret": {"nam": "t"}}]}, "nam"),
        ({"metrics": {"serviceMonitor": {"bearerTokenSecret": {"name": "Not_A_Name"}}}},
         "/metrics/serviceMonitor/bearerTokenSecret/name"),
    ],
)
def test_the_schema_types_the_security_values(values, message):
    with Chart.load(CHART) as chart, pytest.raises(helm_python.HelmValuesError) as refused:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert message in str(refused.value)


# --- A real broker with the rendered config and the Secrets mounted ---------


@pytest.fixture
def secure_broker(start_broker, cluster_secrets, tmp_path):
    """The chart's broker: its pod's volumes materialized from `cluster_secrets`
    and the ConfigMap, started with the mounted taskbroker.toml (its paths
    mapped into the mounts) and the container's args."""
    docs = render(VALUES)
    kubelet = Kubelet(tmp_path / "broker-pod", cluster_secrets,
                      {FULLNAME: one(docs, "ConfigMap")["data"]})
    container = broker_container(docs)
    kubelet.mount(broker_workload(docs)["spec"]["template"]["spec"], container)
    assert container["args"][:2] == ["serve", "--config"]
    config = kubelet.root / container["args"][2].lstrip("/")
    config.write_text(kubelet.paths_in_toml(config.read_text()))
    return docs, start_broker(config, tls=True)


def pod_kubelet(tmp_path, cluster_secrets, name: str, pod: dict) -> Kubelet:
    kubelet = Kubelet(tmp_path / name, cluster_secrets, {})
    for c in pod.get("initContainers", []) + pod["containers"]:
        kubelet.mount(pod, c)
    return kubelet


def test_the_helm_test_pod_passes_over_mtls_with_its_token(secure_broker, cluster_secrets, taskbroker_bin,
                                                           tmp_path):
    docs, broker = secure_broker
    pod = one(docs, "Pod")["spec"]
    kubelet = pod_kubelet(tmp_path, cluster_secrets, "test-pod", pod)
    run = run_pod(pod, broker.url, on_path(taskbroker_bin, tmp_path), kubelet.env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert '"TASK_STATE_SUCCEEDED"' in run.stdout, run.stdout


@pytest.mark.parametrize("drop, refusal", [
    # The certificate alone names no principal.
    ({"TASKBROKER_TOKEN"}, "Unauthenticated: the client certificate matches no principal"),
    # The broker ends the handshake (the CLI reports the call as cancelled).
    ({"TASKBROKER_CLIENT_CERT", "TASKBROKER_CLIENT_KEY"}, "taskbroker: "),
    # The system's roots do not know the cluster's CA.
    ({"TASKBROKER_TLS_CA"}, "UnknownIssuer"),
])
def test_without_each_credential_the_test_pod_is_refused(drop, refusal, secure_broker, cluster_secrets,
                                                         taskbroker_bin, tmp_path):
    """The credentials the chart hands out are each needed: the checks above are not vacuous."""
    docs, broker = secure_broker
    pod = one(docs, "Pod")["spec"]
    (enqueue,) = pod["containers"]
    kubelet = pod_kubelet(tmp_path, cluster_secrets, "test-pod", pod)
    env = {k: v for k, v in kubelet.env(enqueue).items() if k not in drop}
    run = run_pod({"containers": [enqueue]}, broker.url, {**on_path(taskbroker_bin, tmp_path), **env})
    assert run.returncode != 0, run.stdout
    assert "TASK_STATE" not in run.stdout
    assert refusal in run.stderr, run.stderr


def test_a_worker_with_its_token_and_certificate_runs_tasks(secure_broker, cluster_secrets, taskbroker_bin,
                                                            tmp_path):
    docs, broker = secure_broker
    mailer = one(docs, "Deployment", f"{FULLNAME}-worker-mailer")["spec"]["template"]["spec"]
    kubelet = pod_kubelet(tmp_path, cluster_secrets, "mailer-pod", mailer)
    (worker,) = mailer["containers"]
    # A producer in the cluster: the same CA and client certificate, its own token.
    producer = {**worker, "name": "producer", "command": ["taskbroker"],
                "args": ["enqueue", "--queue", "emails.bulk", "--kind", "email.send", "--payload", "a@b.c", "--wait"],
                "env": [e for e in worker["env"] if e["name"] != "TASKBROKER_TOKEN"]
                + [{"name": "TASKBROKER_TOKEN", "valueFrom": {"secretKeyRef": {"name": "tb-producer-token",
                                                                               "key": "token"}}}]}
    run = run_pod({"initContainers": [{**worker, "restartPolicy": "Always"}], "containers": [producer]},
                  broker.url, on_path(taskbroker_bin, tmp_path), kubelet.env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "sent a@b.c" in run.stdout


SERVING = b"\x08\x01"  # grpc.health.v1.HealthCheckResponse{status: SERVING}


def health_check(address: str) -> bytes:
    with grpc.insecure_channel(address) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=lambda b: b, response_deserializer=lambda b: b)
        return check(b"", timeout=10)  # HealthCheckRequest{service: ""}


def test_the_probe_port_answers_plaintext_grpc_health_and_the_tls_port_does_not(secure_broker):
    """What the kubelet's readiness probe does: a plaintext gRPC health check."""
    _, broker = secure_broker
    assert health_check(broker.health) == SERVING
    with pytest.raises(grpc.RpcError):
        health_check(broker.url.removeprefix("https://"))


def scrape(url: str, ca: str, token: str | None) -> tuple[int, str]:
    context = ssl.create_default_context(cadata=ca)
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def test_metrics_are_https_and_need_the_service_monitors_token(secure_broker, cluster_secrets):
    docs, broker = secure_broker
    (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    ca = cluster_secrets[endpoint["tlsConfig"]["ca"]["secret"]["name"]]["ca.crt"]
    credentials = endpoint["authorization"]["credentials"]
    token = cluster_secrets[credentials["name"]][credentials["key"]]
    url = broker.admin.rstrip("/") + endpoint["path"]
    assert url.startswith("https://")
    status, body = scrape(url, ca, token)
    assert status == 200 and "taskbroker_" in body
    assert scrape(url, ca, None)[0] == 401
    assert scrape(url, ca, TOKENS["mailer"])[0] == 403, "a token without inspect on * is refused"


def test_the_readmes_tls_and_tokens_example_installs_and_passes_the_config_check(taskbroker_bin, tmp_path):
    """The values of README's "Kubernetes with TLS and tokens" render, lint and configure a valid broker."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("#### Kubernetes with TLS and tokens"):readme.index("### Upgrades and rollbacks")]
    (values_text,) = [b for b in re.findall(r"```yaml\n(.*?)```", section, re.S) if b.startswith("tls:")]
    values = yaml.safe_load(values_text)
    docs = render(values)
    report = helm_python.lint(CHART, values=values, strict=True)
    assert not report["errors"] and not [m for m in report["messages"] if m["severity"] >= 2], report
    run = config_check(taskbroker_bin, broker_toml(docs), tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    mailer = one(docs, "Deployment", f"{FULLNAME}-worker-mailer")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(mailer)["TASKBROKER_TOKEN"] == {"secretKeyRef": {"name": "tb-mailer-token", "key": "token"}}
    assert broker_container(docs)["readinessProbe"]["grpc"]["port"] == 50052


def test_notes_give_the_https_address_and_the_ca():
    text = notes(VALUES)
    assert f"https://{SERVICE}:50051" in text
    assert "CA of Secret tb-tls" in text and "port 50053 for probes" in text
    assert "--tls-ca ca.crt --tls-cert client.crt --tls-key client.key --token" in text
    assert "asks for a token" in text and "has no login" not in text
