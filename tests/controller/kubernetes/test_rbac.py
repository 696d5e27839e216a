"""The operator's RBAC is exactly what its code calls: no permission unused, none missing.

The calls are read from the source (every KubeApi method the operator and the executor invoke);
the chart and kustomize install grant exactly controller/kubernetes/rbac.py's list (tests/charts).
"""

from __future__ import annotations

import ast

from controller.kubernetes import rbac
from tests.conftest import ROOT

# KubeApi method -> the permission it needs.
METHOD_PERMISSION = {
    "list_jobs": ("kubeflow.org", "pytorchjobs", "list"),
    "create_job": ("kubeflow.org", "pytorchjobs", "create"),
    "delete_job": ("kubeflow.org", "pytorchjobs", "delete"),
    "list_experiments": ("sftrl.io", "experiments", "list"),
    "get_experiment": ("sftrl.io", "experiments", "get"),
    "create_experiment": ("sftrl.io", "experiments", "create"),
    "replace_experiment": ("sftrl.io", "experiments", "update"),
    "patch_experiment": ("sftrl.io", "experiments", "patch"),
    "patch_experiment_status": ("sftrl.io", "experiments/status", "patch"),
    "create_event": ("", "events", "create"),
    "list_pods": ("", "pods", "list"),
    "stream_log": ("", "pods/log", "get"),
}


def _called_methods(path, skip_classes=("KubeApi",)) -> set[str]:
    tree = ast.parse(path.read_text())
    skipped = {id(n) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and c.name in skip_classes
               for n in ast.walk(c)}
    return {n.func.attr for n in ast.walk(tree)
            if id(n) not in skipped and isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr in METHOD_PERMISSION}


def test_kube_api_wrapper_has_no_unmapped_method():
    tree = ast.parse((ROOT / "controller/kubernetes/executor.py").read_text())
    api = next(c for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and c.name == "KubeApi")
    public = {f.name for f in api.body if isinstance(f, ast.FunctionDef) and not f.name.startswith("_")}
    assert public <= set(METHOD_PERMISSION), f"map the new KubeApi methods: {public - set(METHOD_PERMISSION)}"


def test_operator_permissions_equal_what_the_operator_code_calls():
    used = _called_methods(ROOT / "controller/kubernetes/operator.py") | _called_methods(ROOT / "controller/kubernetes/executor.py")
    needed: dict[tuple[str, str], set[str]] = {}
    for m in used:
        g, r, v = METHOD_PERMISSION[m]
        needed.setdefault((g, r), set()).add(v)
    granted = {(g, r): set(v) for g, r, v in rbac.OPERATOR_PERMISSIONS}
    assert granted == needed
