"""The Experiment CRD: one file in two places, a valid and structural apiextensions.k8s.io/v1 CRD,
accepting the documented experiment and refusing obvious mistakes, and in step with the pydantic
models of controller/spec.py and the states of controller/reconcile.py.
"""

from __future__ import annotations

from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.charts.helpers import CHART, K8S_VERSION, unknown_fields
from tests.conftest import ROOT

CRD_PATH = ROOT / "manifests" / "crds" / "sftrl.io_experiments.yaml"
CRD = yaml.safe_load(CRD_PATH.read_text())
VERSION = CRD["spec"]["versions"][0]
SCHEMA: dict[str, Any] = VERSION["schema"]["openAPIV3Schema"]
SPEC = SCHEMA["properties"]["spec"]

# The experiment of DESIGN.md as an Experiment object.
DESIGN_EXPERIMENT = yaml.safe_load(
    """
apiVersion: sftrl.io/v1alpha1
kind: Experiment
metadata: {name: sft-vs-rl, namespace: ml}
spec:
  storage: s3://bucket/sftrl
  models:   [{name: qwen2-vl-2b, path: Qwen/Qwen2-VL-2B-Instruct}]
  data:     [{name: qwenvl-distill, sft: s3://b/sft.parquet, rl: s3://b/rl.parquet}]
  scales:   [2000, 20000]
  methods:  [sft, grpo, dapo, sft+grpo]
  seeds:    [0]
  sft:  {epochs: 3, learning_rate: 1.0e-5, global_batch_size: 128, trl: {bf16: true}}
  rl:   {epochs: 2, learning_rate: 1.0e-6, global_batch_size: 512, num_generations: 10,
         reward: {accuracy: 0.9, format: 0.1}}
  eval: {benchmarks: [mathvista, mathvision, mathverse, wemath, gpqa, math500, mmlu]}
  resources: {default: {gpus_per_node: 8, nodes: 1, deepspeed: zero2}, eval: {gpus_per_node: 1, nodes: 1}}
  kubernetes: {namespace: ml, image: ghcr.io/sftrl/runtime:0.1.0, queue: team-a,
               tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]}
status:
  phase: Running
  observedGeneration: 2
  stages: {3f2a9c: succeeded, 9b1d44: running}
  counts: {total: 2, pending: 0, running: 1, succeeded: 1, failed: 0}
  conditions:
    - {type: Valid, status: "True", reason: Validated, message: ok, lastTransitionTime: "2026-01-01T00:00:00Z"}
"""
)


def test_chart_and_manifests_hold_the_same_bytes():
    assert (CHART / "crds" / CRD_PATH.name).read_bytes() == CRD_PATH.read_bytes()


def test_is_a_valid_customresourcedefinition():
    kubernetes_validate.validate(CRD, K8S_VERSION, strict=True)
    names = CRD["spec"]["names"]
    assert CRD["metadata"]["name"] == f"{names['plural']}.{CRD['spec']['group']}" == "experiments.sftrl.io"
    assert (names["kind"], CRD["spec"]["scope"], VERSION["name"]) == ("Experiment", "Namespaced", "v1alpha1")
    assert [v["storage"] for v in CRD["spec"]["versions"]] == [True]
    assert VERSION["subresources"] == {"status": {}}


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for k, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{k}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _nodes(node[key], f"{path}[{key}]")


def test_schema_is_structural():
    """The apiserver's structural-schema rules that a JSON-schema validator does not check."""
    for path, node in _nodes(SCHEMA):
        loose = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
        assert "type" in node or loose, f"{path}: every node needs a type"
        assert not ("properties" in node and "additionalProperties" in node), f"{path}: properties and additionalProperties"
        assert set(node.get("required", [])) <= set(node.get("properties", {})), f"{path}: required field not declared"
        if node.get("x-kubernetes-preserve-unknown-fields") and "type" in node:
            assert node["type"] == "object", path
        for forbidden in ("$ref", "definitions", "dependencies", "patternProperties", "uniqueItems"):
            assert forbidden not in node, f"{path}: {forbidden} is not allowed in a structural schema"


def test_printer_columns_point_at_declared_fields():
    cols = {c["name"]: c for c in VERSION["additionalPrinterColumns"]}
    assert list(cols) == ["Phase", "Done", "Total", "Age"]
    for col in cols.values():
        node: dict[str, Any] = SCHEMA
        for part in col["jsonPath"].lstrip(".").split("."):
            if part == "creationTimestamp" and node is SCHEMA["properties"]["metadata"]:
                node = {"type": "string"}
                break
            node = node["properties"][part]
        assert node["type"] == {"date": "string"}.get(col["type"], col["type"]), col


def _accepts(obj: dict[str, Any]) -> list[str]:
    errors = [e.message for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(obj)]
    return errors + [f"unknown field {p}" for p in unknown_fields(obj, SCHEMA)]


def test_accepts_the_design_experiment():
    assert _accepts(DESIGN_EXPERIMENT) == []


@pytest.mark.parametrize(
    "path, value",
    [
        (("methods",), ["sft", "ppo"]),
        (("scales",), [0]),
        (("models",), []),
        (("models",), [{"name": "Qwen 3B", "path": "Qwen/x"}]),
        (("kubernetes", "image_pull_secret"), "typo"),
        (("executions",), {"max_parallel": 2}),
        (("resources", "default", "nodes"), 0),
    ],
    ids=["bad-method", "scale-0", "no-models", "bad-model-name", "unknown-kubernetes-key", "unknown-spec-key", "nodes-0"],
)
def test_refuses_obvious_mistakes(path, value):
    obj = yaml.safe_load(yaml.safe_dump(DESIGN_EXPERIMENT))
    node = obj["spec"]
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    assert _accepts(obj) != []


EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_accepts_every_example_as_an_experiment_object(path):
    doc = yaml.safe_load(path.read_text())
    obj = {"apiVersion": "sftrl.io/v1alpha1", "kind": "Experiment", "metadata": doc["metadata"], "spec": doc["spec"]}
    assert _accepts(obj) == []


def test_status_enums_match_reconcile():
    from controller.reconcile import Phase, State

    status = SCHEMA["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == [p.value for p in Phase]
    assert status["stages"]["additionalProperties"]["enum"] == [s.value for s in State]
    assert set(status["counts"]["properties"]) == {"total"} | {s.value for s in State}


def test_spec_fields_match_the_experiment_models():
    """Every field of controller/spec.py's models is in the CRD, and nothing else."""
    from controller import spec
    pairs = [
        (SPEC, spec.ExperimentSpec),
        (SPEC["properties"]["models"]["items"], spec.ModelSpec),
        (SPEC["properties"]["data"]["items"], spec.DataSpec),
        (SPEC["properties"]["resources"], spec.ResourcesSpec),
        (SPEC["properties"]["kubernetes"], spec.KubernetesSpec),
        (SPEC["properties"]["execution"], spec.ExecutionSpec),
    ]
    resources_model = spec.ResourcesSpec.model_fields["default"].annotation
    for kind in ("default", "sft", "rl", "eval", "distill", "probe"):
        pairs.append((SPEC["properties"]["resources"]["properties"][kind], resources_model))
    for node, model in pairs:
        declared, fields = set(node["properties"]), set(model.model_fields)
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert declared <= fields, f"{model.__name__}: CRD declares {declared - fields} the model lacks"
        else:
            assert declared == fields, f"{model.__name__}: CRD {sorted(declared ^ fields)} differ from the model"
        required = {n for n, f in model.model_fields.items() if f.is_required()}
        assert set(node.get("required", [])) == required, model.__name__
    assert SPEC["properties"]["methods"]["items"]["enum"] == list(spec.METHODS)
    assert SPEC["properties"]["models"]["items"]["properties"]["name"]["pattern"] == spec.LABEL_RE.pattern
