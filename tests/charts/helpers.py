"""Shared helpers of the chart, manifest and image tests: find helm, render the chart, validate.

Everything here runs real tools (helm, kubectl kustomize) or real schemas (kubernetes-validate's
Kubernetes JSON schemas, the prometheus-operator CRDs in ../shared/crds). Rendering is cached per
values set, so the suite runs `helm template` once per scenario.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import yaml

from tests.conftest import ROOT, missing, require_shared

CHART = ROOT / "charts" / "sftrl"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
K8S_VERSION = "1.33.0"  # the kubectl/helm of scripts/install-helm.sh's package; kubernetes-validate ships it
RELEASE, NAMESPACE = "sftrl", "sftrl-system"
MONITORING_KINDS = {"PodMonitor": "podmonitors", "ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules"}


def find_tool(name: str) -> str:
    """A tool in .venv/bin (where scripts/install-helm.sh puts it) or on PATH, else fail/skip."""
    venv = ROOT / ".venv" / "bin" / name
    path = str(venv) if venv.exists() else shutil.which(name)
    if path is None:
        missing(f"tool '{name}' is not on PATH nor in .venv/bin; run scripts/install-helm.sh")
    return path  # type: ignore[return-value]


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HELM_CACHE_HOME="/tmp/sftrl-helm-cache", HELM_CONFIG_HOME="/tmp/sftrl-helm-config")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([find_tool("helm"), *args], check=check)


@functools.lru_cache(maxsize=None)
def _render(values: tuple[str, ...], sets: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--include-crds"]
    for v in values:
        args += ["-f", v]
    for s in sets:
        args += ["--set", s]
    out = helm(*args).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def render(*values: Path | str, sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The chart's objects for these values files (and --set pairs), CRDs included."""
    return [dict(d) for d in _render(tuple(str(v) for v in values), sets)]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The only object of a kind (with that name, when given)."""
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


@functools.lru_cache(maxsize=None)
def crd_schema(plural: str) -> dict[str, Any]:
    """openAPIV3Schema of a prometheus-operator CRD from ../shared/crds."""
    path = require_shared("crds", f"monitoring.coreos.com_{plural}.yaml")
    crd = next(d for d in yaml.safe_load_all(path.read_text()) if d)
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def unknown_fields(obj: Any, schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """Paths of keys the schema does not declare (the API server would silently prune them)."""
    if isinstance(obj, dict) and schema.get("type") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            if key in props:
                yield from unknown_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                yield from unknown_fields(value, extra, f"{path}.{key}")
            elif not props and extra is None:
                continue  # a free-form object
            else:
                yield f"{path}.{key}"
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            yield from unknown_fields(item, schema["items"], f"{path}[{i}]")


def rbac_rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples a Role/ClusterRole grants."""
    out = set()
    for rule in role["rules"]:
        assert not rule.get("nonResourceURLs") and not rule.get("resourceNames"), rule
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    out.add((g, r, v))
    return out


def versions_env() -> dict[str, str]:
    """images/versions.env as a dict (KEY=VALUE lines; # comments)."""
    out = {}
    for line in (ROOT / "images" / "versions.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def rendered_pytorchjob(nodes: int = 2) -> dict[str, Any]:
    """A PyTorchJob as controller/kubernetes/render.py renders it for a small GPU experiment."""
    from controller.kubernetes import render as render_mod
    from controller.plan import build_plan
    from controller.spec import validate_dict

    exp = validate_dict({"metadata": {"name": "demo"}, "spec": {
        "storage": "s3://b/p", "models": [{"name": "m", "path": "Qwen/Qwen2-VL-2B-Instruct"}],
        "data": [{"name": "d", "sft": "s3://b/sft.parquet", "rl": "s3://b/rl.parquet"}],
        "scales": [100], "methods": ["sft"],
        "resources": {"default": {"gpus_per_node": 8, "nodes": nodes}}}})
    stage = next(s for s in build_plan(exp).stages.values() if s.kind == "sft")
    return render_mod.render_job(stage, exp)
