"""manifests/: the install without Helm (built by the real `kubectl kustomize`) grants the same
permissions and runs the same hardened pod as the chart; the Kueue example is a consistent GPU pool.
"""

from __future__ import annotations

import functools

import kubernetes_validate
import yaml

from controller.kubernetes.rbac import OPERATOR_PERMISSIONS
from tests.charts.helpers import CHART, K8S_VERSION, find_tool, load_yaml_docs, one, rbac_rules, render, run
from tests.conftest import ROOT

MANIFESTS = ROOT / "manifests"


@functools.lru_cache(maxsize=1)
def _kustomized() -> tuple[dict, ...]:
    out = run([find_tool("kubectl"), "kustomize", str(MANIFESTS)]).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def kustomized() -> list[dict]:
    return [dict(d) for d in _kustomized()]


def test_kustomize_builds_a_valid_operator_install():
    docs = kustomized()
    assert sorted(d["kind"] for d in docs) == sorted(
        ["CustomResourceDefinition", "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment"]
    )
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    for doc in docs:
        if doc["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == "sftrl-system", doc["kind"]


def test_kustomize_rbac_equals_operator_permissions():
    granted = rbac_rules(one(kustomized(), "ClusterRole"))
    assert granted == {(g, r, v) for g, r, verbs in OPERATOR_PERMISSIONS for v in verbs}
    binding = one(kustomized(), "ClusterRoleBinding")
    dep = one(kustomized(), "Deployment")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": dep["spec"]["template"]["spec"]["serviceAccountName"], "namespace": "sftrl-system"}
    ]


def test_kustomize_pod_matches_the_charts():
    dep = one(kustomized(), "Deployment")
    chart_dep = one(render(CHART / "ci" / "minimal-values.yaml"), "Deployment", "sftrl")
    pod, chart_pod = dep["spec"]["template"]["spec"], chart_dep["spec"]["template"]["spec"]
    c, chart_c = pod["containers"][0], chart_pod["containers"][0]
    for key in ("command", "ports", "livenessProbe", "readinessProbe", "securityContext", "resources", "volumeMounts"):
        assert c[key] == chart_c[key], key
    assert pod["securityContext"] == chart_pod["securityContext"] and pod["volumes"] == chart_pod["volumes"]
    assert dep["spec"]["strategy"] == chart_dep["spec"]["strategy"]
    # The ConfigMap sets the same operator settings as the chart's env (HOME aside).
    cm = one(kustomized(), "ConfigMap")
    assert c["envFrom"] == [{"configMapRef": {"name": cm["metadata"]["name"]}}]
    chart_settings = {e["name"] for e in chart_c["env"] if e["name"].startswith("SFTRL_")}
    assert set(cm["data"]) == chart_settings


def test_crd_is_installed_by_both():
    crd = one(kustomized(), "CustomResourceDefinition")
    assert crd == yaml.safe_load((MANIFESTS / "crds" / "sftrl.io_experiments.yaml").read_text())


KUEUE = load_yaml_docs(MANIFESTS / "kueue" / "gpu-pool.yaml")


def test_kueue_example_is_a_consistent_gpu_pool():
    kinds = {d["kind"]: d for d in KUEUE}
    assert {"ResourceFlavor", "ClusterQueue", "LocalQueue"} <= set(kinds)
    for d in KUEUE:
        if d["kind"] != "Namespace":
            assert d["apiVersion"] == "kueue.x-k8s.io/v1beta1", d["kind"]
    flavor, cq, lq = kinds["ResourceFlavor"], kinds["ClusterQueue"], kinds["LocalQueue"]
    assert lq["spec"]["clusterQueue"] == cq["metadata"]["name"]
    group = cq["spec"]["resourceGroups"][0]
    assert "nvidia.com/gpu" in group["coveredResources"]
    for fl in group["flavors"]:
        assert fl["name"] == flavor["metadata"]["name"]
        assert sorted(r["name"] for r in fl["resources"]) == sorted(group["coveredResources"])
        assert next(r for r in fl["resources"] if r["name"] == "nvidia.com/gpu")["nominalQuota"] > 0
    kubernetes_validate.validate(kinds["Namespace"], K8S_VERSION, strict=True)
    assert lq["metadata"]["namespace"] == kinds["Namespace"]["metadata"]["name"]


def test_kueue_scenario_uses_the_example_queue():
    lq = next(d for d in KUEUE if d["kind"] == "LocalQueue")
    ci = yaml.safe_load((CHART / "ci" / "kueue-on-values.yaml").read_text())
    assert ci["kueue"]["queue"] == lq["metadata"]["name"]

