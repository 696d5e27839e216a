"""What the rendered chart promises: least-privilege RBAC equal to controller/kubernetes/rbac.py, a hardened
operator pod running `sftrl operator`, storage and queue settings reaching the operator, and
monitoring objects that select what they should.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from controller.kubernetes.rbac import OPERATOR_PERMISSIONS, allowed
from tests.charts.helpers import (
    CHART,
    NAMESPACE,
    RELEASE,
    by_kind,
    find_tool,
    one,
    rbac_rules,
    render,
    rendered_pytorchjob,
)

CI = {p.name.removesuffix("-values.yaml"): p for p in (CHART / "ci").glob("*-values.yaml")}
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


def _container(docs, name=RELEASE):
    dep = one(docs, "Deployment", name)
    return dep, dep["spec"]["template"]["spec"]["containers"][0]


def _env(container) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _permissions() -> set[tuple[str, str, str]]:
    return {(g, r, v) for g, r, verbs in OPERATOR_PERMISSIONS for v in verbs}


# --- RBAC ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario, kind", [("minimal", "ClusterRole"), ("monitoring-off", "Role")])
def test_rbac_grants_exactly_operator_permissions(scenario, kind):
    docs = render(CI[scenario])
    roles = by_kind(docs, "Role") + by_kind(docs, "ClusterRole")
    assert [r["kind"] for r in roles] == [kind]
    granted = rbac_rules(roles[0])
    assert granted - _permissions() == set(), "the chart grants more than OPERATOR_PERMISSIONS"
    assert _permissions() - granted == set(), "the chart grants less than OPERATOR_PERMISSIONS"


@pytest.mark.parametrize("scenario", sorted(CI))
def test_rbac_has_no_wildcards(scenario):
    for role in by_kind(render(CI[scenario]), "Role") + by_kind(render(CI[scenario]), "ClusterRole"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert not any("*" in item for item in rule.get(field, [])), f"wildcard in {field}: {rule}"


def test_operator_permissions_constant_is_well_formed():
    assert len({(g, r) for g, r, _ in OPERATOR_PERMISSIONS}) == len(OPERATOR_PERMISSIONS), "repeated resource"
    assert all("*" not in g + r + "".join(v) for g, r, v in OPERATOR_PERMISSIONS)
    assert allowed("", "pods", "list") and not allowed("", "secrets", "get") and not allowed("", "pods", "delete")


@pytest.mark.parametrize("scenario", ["minimal", "monitoring-off"])
def test_binding_gives_the_role_to_the_operators_service_account(scenario):
    docs = render(CI[scenario])
    binding = (by_kind(docs, "RoleBinding") + by_kind(docs, "ClusterRoleBinding"))[0]
    role = (by_kind(docs, "Role") + by_kind(docs, "ClusterRole"))[0]
    dep, _ = _container(docs)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role["kind"], "name": role["metadata"]["name"]}
    sa = dep["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    assert one(docs, "ServiceAccount")["metadata"]["name"] == sa


# --- the operator pod ----------------------------------------------------------------------------


def test_operator_runs_sftrl_operator_hardened():
    docs = render(CI["minimal"])
    dep, c = _container(docs)
    pod = dep["spec"]["template"]["spec"]
    assert c["command"] == ["sftrl", "operator"] and "args" not in c
    assert c["image"] == f"ghcr.io/sftrl/controller:{APP_VERSION}"
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"] is True
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # A read-only root filesystem needs a writable /tmp.
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    # One writer of Experiment status: no leader election, so never two pods at once.
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}


def test_port_value_reaches_probes_service_and_operator():
    docs = render(CI["minimal"], sets=("operator.port=9090",))
    _, c = _container(docs)
    assert c["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert _env(c)["SFTRL_PORT"] == "9090"
    svc = one(docs, "Service", RELEASE)
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    test_pod = one(docs, "Pod")
    assert test_pod["spec"]["containers"][0]["command"][-1] == f"http://{svc['metadata']['name']}.{NAMESPACE}.svc:9090/healthz"


def test_cli_provides_the_operator_command():
    proc = subprocess.run([find_tool("sftrl"), "operator", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"`sftrl operator --help` failed, the chart's command would too:\n{proc.stderr}"


def test_helm_test_hook_checks_healthz():
    pod = one(render(CI["minimal"]), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    cmd = pod["spec"]["containers"][0]["command"]
    assert cmd[0] == "wget" and cmd[-1].endswith(":8080/healthz")
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


# --- settings that reach the operator ------------------------------------------------------------


def test_minimal_settings():
    _, c = _container(render(CI["minimal"]))
    env = _env(c)
    assert env["SFTRL_STORAGE"] == "s3://sftrl-artifacts/sftrl"
    assert env["SFTRL_IMAGE"] == f"ghcr.io/sftrl/runtime:{APP_VERSION}"
    assert env["SFTRL_QUEUE"] == "" and env["SFTRL_PUSHGATEWAY"] == "" and env["SFTRL_WATCH_NAMESPACE"] == ""
    assert "envFrom" not in c and "AWS_ENDPOINT_URL_S3" not in env


def test_default_runtime_image_matches_the_experiment_default():
    from controller.spec import KubernetesSpec

    _, c = _container(render(CI["minimal"]))
    assert _env(c)["SFTRL_IMAGE"] == KubernetesSpec().image


def test_external_s3_settings():
    docs = render(CI["external-s3"])
    _, c = _container(docs)
    env = _env(c)
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio.minio.svc:9000" and env["AWS_REGION"] == "us-east-1"
    assert env["SFTRL_STORAGE"] == "s3://sftrl/runs" and env["SFTRL_STORAGE_SECRET"] == "sftrl-s3"
    assert c["envFrom"] == [{"secretRef": {"name": "sftrl-s3"}}]
    accounts = {sa["metadata"]["name"]: sa for sa in by_kind(docs, "ServiceAccount")}
    assert accounts["sftrl"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("role/sftrl-operator")
    runtime = accounts[env["SFTRL_SERVICE_ACCOUNT"]]
    assert runtime["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("role/sftrl-runtime")
    assert runtime["automountServiceAccountToken"] is False


def test_kueue_and_pushgateway_settings():
    docs = render(CI["kueue-on"])
    _, c = _container(docs)
    env = _env(c)
    assert env["SFTRL_QUEUE"] == "team-a"
    assert env["SFTRL_IMAGE"] == "ghcr.io/sftrl/runtime:0.1.0-cu130"
    svc = one(docs, "Service", "sftrl-pushgateway")
    port = svc["spec"]["ports"][0]["port"]
    assert env["SFTRL_PUSHGATEWAY"] == f"http://{svc['metadata']['name']}.{NAMESPACE}.svc:{port}"
    _, pgw = _container(docs, "sftrl-pushgateway")
    assert pgw["securityContext"]["readOnlyRootFilesystem"] is True
    assert one(docs, "ServiceMonitor", "sftrl-pushgateway")["spec"]["endpoints"][0]["honorLabels"] is True


def test_namespace_scope_watches_the_release_namespace_only():
    docs = render(CI["minimal"], sets=("rbac.scope=namespace",))
    _, c = _container(docs)
    assert _env(c)["SFTRL_WATCH_NAMESPACE"] == NAMESPACE
    assert one(docs, "PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


# --- monitoring ------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario, release", [("minimal", "kube-prometheus-stack"), ("external-s3", "prometheus")])
def test_monitors_carry_the_release_label_and_select_their_targets(scenario, release):
    docs = render(CI[scenario])
    for kind in ("PodMonitor", "ServiceMonitor", "PrometheusRule"):
        for d in by_kind(docs, kind):
            assert d["metadata"]["labels"]["release"] == release, f"{kind} misses release={release}"
    pm = one(docs, "PodMonitor")
    assert pm["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/part-of": "sftrl", "app.kubernetes.io/component": "stage"}}
    assert [e["port"] for e in pm["spec"]["podMetricsEndpoints"]] == ["metrics"]
    sm = one(docs, "ServiceMonitor", RELEASE)
    svc = one(docs, "Service", RELEASE)
    labels = svc["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()), "ServiceMonitor misses the Service"
    assert [e["port"] for e in sm["spec"]["endpoints"]] == [p["name"] for p in svc["spec"]["ports"]] == ["metrics"]
    # The operator pod itself is not a training stage.
    dep, _ = _container(docs)
    assert dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] != "stage"


def test_rules_and_dashboard_are_embedded_from_their_files():
    docs = render(CI["external-s3"])
    rules = yaml.safe_load((CHART / "rules" / "sftrl-rules.yaml").read_text())
    assert one(docs, "PrometheusRule")["spec"]["groups"] == rules["groups"]
    cm = one(docs, "ConfigMap", "sftrl-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert json.loads(cm["data"]["sftrl.json"]) == json.loads((CHART / "dashboards" / "sftrl.json").read_text())


def test_monitoring_off_renders_no_prometheus_objects():
    docs = render(CI["monitoring-off"])
    assert not [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert not [d for d in by_kind(docs, "ConfigMap") if "grafana_dashboard" in d["metadata"].get("labels", {})]


def test_podmonitor_selects_rank0_of_rendered_pytorchjobs():
    """controller/kubernetes/render.py's pods carry the labels and the port the chart's PodMonitor selects."""
    job = rendered_pytorchjob()
    pm = one(render(CI["minimal"]), "PodMonitor")
    selector = pm["spec"]["selector"]["matchLabels"]
    port = pm["spec"]["podMetricsEndpoints"][0]["port"]
    for role, template in ((r, s["template"]) for r, s in job["spec"]["pytorchReplicaSpecs"].items()):
        labels = template["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in selector.items()), f"{role} pods escape the PodMonitor"
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert port in [p["name"] for p in master["ports"]], "rank 0 has no port named like the PodMonitor's"
