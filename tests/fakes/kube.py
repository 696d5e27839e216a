"""Helpers for tests that talk to the FAKE Kubernetes API server (tests/fakes/fake_kube_apiserver.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT
from tests.fakes.fake_kube_apiserver import EXPERIMENTS, FakeKubeApiServer

EXPERIMENT_CRD = ROOT / "manifests" / "crds" / "sftrl.io_experiments.yaml"


def tiny_spec(storage: str, methods: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """A small CPU experiment spec (builtin model): sft, grpo and sft+grpo give 9 stages (2 of them probes)."""
    spec: dict[str, Any] = {
        "storage": storage,
        "models": [{"name": "tiny", "path": "builtin://tiny-qwen2-vl"}],
        "data": [{"name": "syn", "sft": "builtin://synthetic/sft", "rl": "builtin://synthetic/rl"}],
        "scales": [16],
        "methods": methods or ["sft", "grpo", "sft+grpo"],
        "eval": {"benchmarks": ["synthetic"]},
        "resources": {"default": {"gpus_per_node": 0, "nodes": 1, "deepspeed": "none"}},
        "execution": {"max_parallel": 4, "max_attempts": 3, "backoff_seconds": 0},
    }
    spec.update(extra)
    return spec


def experiment_cr(name: str, spec: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "sftrl.io/v1alpha1", "kind": "Experiment",
            "metadata": {"name": name, "namespace": namespace}, "spec": copy.deepcopy(spec)}


def submit(server: FakeKubeApiServer, name: str, spec: dict[str, Any], namespace: str = "default") -> None:
    server.put_object(EXPERIMENTS, experiment_cr(name, spec, namespace))


def connect(server: FakeKubeApiServer, tmp: Path, **kw: Any):
    """A KubeApi talking to the fake through a kubeconfig file, as users and the operator do."""
    from controller.kubernetes import executor as k8s

    kc = server.write_kubeconfig(tmp / "kubeconfig")
    client, _ = k8s.connect(str(kc))
    kw.setdefault("backoff_s", 0.01)
    return k8s.KubeApi(client, **kw)


def _openapi_to_jsonschema(s: Any) -> Any:
    """OpenAPI v3 `nullable` -> JSON Schema type lists, recursively."""
    if isinstance(s, dict):
        out = {k: _openapi_to_jsonschema(v) for k, v in s.items()}
        if out.pop("nullable", False) and "type" in out:
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(s, list):
        return [_openapi_to_jsonschema(v) for v in s]
    return s


def experiment_schema() -> dict[str, Any]:
    """The Experiment CRD's openAPIV3Schema as JSON Schema."""
    crd = yaml.safe_load(EXPERIMENT_CRD.read_text())
    return _openapi_to_jsonschema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
