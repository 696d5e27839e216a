"""Bad input for Kubernetes: names that would make invalid objects, GPU stages with zero GPUs.

controller/spec.py refuses these at validate time with the field named; settings spec.py does not
check yet (queue, Secret/ServiceAccount/PriorityClass names, node selector values, empty image)
are refused by controller/kubernetes/render.py before anything reaches the cluster, also naming the field.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from controller.kubernetes import render
from controller.plan import build_plan
from controller.spec import SpecError, validate_dict


def _raw() -> dict[str, Any]:
    return {"apiVersion": "sftrl/v1", "kind": "Experiment", "metadata": {"name": "ok"},
            "spec": {"storage": "s3://bucket/runs",
                     "models": [{"name": "qwen2-vl-2b", "path": "Qwen/Qwen2-VL-2B-Instruct"}],
                     "data": [{"name": "distill", "sft": "s3://b/sft.parquet", "rl": "s3://b/rl.parquet"}],
                     "scales": [1000], "methods": ["sft+grpo"],
                     "resources": {"default": {"gpus_per_node": 8}}}}


def _problems(edit: Callable[[dict[str, Any]], None]) -> list[str]:
    raw = _raw()
    edit(raw)
    with pytest.raises(SpecError) as e:
        validate_dict(raw)
    return e.value.problems


def test_the_base_fixture_is_valid():
    exp = validate_dict(_raw())
    assert all(render.webhook_errors(render.render_job(s, exp)) == [] for s in build_plan(exp).stages.values())


@pytest.mark.parametrize("field,edit", [
    ("metadata.name", lambda r: r["metadata"].update(name="SFT_vs_RL")),
    ("metadata.name", lambda r: r["metadata"].update(name="a" * 41)),
    ("metadata.name", lambda r: r["metadata"].update(name="-starts-with-dash")),
    ("spec.models[0].name", lambda r: r["spec"]["models"][0].update(name="Qwen2-VL")),
    ("spec.models[0].name", lambda r: r["spec"]["models"][0].update(name="qwen2 vl")),
    ("spec.data[0].name", lambda r: r["spec"]["data"][0].update(name="distill_v2")),
    ("spec.kubernetes.namespace", lambda r: r["spec"].update(kubernetes={"namespace": "ML Team"})),
])
def test_names_that_would_make_invalid_kubernetes_names_are_refused(field, edit):
    problems = _problems(edit)
    assert any(p.startswith(f"{field}:") and "not a valid name" in p for p in problems), problems


@pytest.mark.parametrize("kind", ["default", "sft", "rl", "eval"])
def test_zero_gpus_for_a_gpu_stage_is_refused_with_the_field_named(kind):
    def edit(r):
        r["spec"]["resources"][kind] = {"gpus_per_node": 0, "deepspeed": "none"}

    problems = _problems(edit)
    assert any(f"resources.{kind}.gpus_per_node is 0" in p and "need a GPU" in p for p in problems), problems


def test_zero_gpus_is_fine_for_the_builtin_cpu_model():
    raw = _raw()
    raw["spec"]["models"] = [{"name": "tiny", "path": "builtin://tiny-qwen2-vl"}]
    raw["spec"]["resources"] = {"default": {"gpus_per_node": 0, "nodes": 1, "deepspeed": "none"}}
    raw["spec"]["sft"] = {"global_batch_size": 8, "per_device_batch_size": 8}
    raw["spec"]["rl"] = {"global_batch_size": 8, "per_device_batch_size": 4, "num_generations": 2}  # updates of 2 x 2
    exp = validate_dict(raw)
    job = render.render_job(next(iter(build_plan(exp).stages.values())), exp)
    assert job["spec"]["nprocPerNode"] == "1"


def test_every_problem_is_reported_at_once():
    def edit(r):
        r["metadata"]["name"] = "Bad Name"
        r["spec"]["kubernetes"] = {"namespace": "Bad NS"}

    problems = _problems(edit)
    assert any(p.startswith("metadata.name:") for p in problems)
    assert any(p.startswith("spec.kubernetes.namespace:") for p in problems)


UNCHECKED_BY_SPEC = [
    ("spec.kubernetes.queue", lambda r: r["spec"].update(kubernetes={"queue": "Team A"})),
    ("spec.kubernetes.storage_secret", lambda r: r["spec"].update(kubernetes={"storage_secret": "S3_Creds"})),
    ("spec.kubernetes.service_account", lambda r: r["spec"].update(kubernetes={"service_account": "Runner SA"})),
    ("spec.kubernetes.priority_class", lambda r: r["spec"].update(kubernetes={"priority_class": "High!"})),
    ("spec.kubernetes.image_pull_secrets[0]", lambda r: r["spec"].update(kubernetes={"image_pull_secrets": ["Reg Cred"]})),
    ("spec.kubernetes.node_selector.gpu", lambda r: r["spec"].update(kubernetes={"node_selector": {"gpu": "A 100"}})),
    ("spec.resources.rl.node_selector.pool", lambda r: r["spec"]["resources"].update(
        rl={"gpus_per_node": 8, "node_selector": {"pool": "rl pool"}})),
    ("spec.kubernetes.image", lambda r: r["spec"].update(kubernetes={"image": " "})),
]


@pytest.mark.parametrize("field,edit", UNCHECKED_BY_SPEC)
def test_other_kubernetes_names_are_refused_before_reaching_the_cluster(field, edit):
    raw = _raw()
    edit(raw)
    bad = validate_dict(_raw())
    # Bypass the spec's checks (as a hand-built Experiment would) to show render refuses them too.
    k8s = raw["spec"].get("kubernetes", {})
    bad.spec.kubernetes = bad.spec.kubernetes.model_copy(update=k8s)
    rl = raw["spec"]["resources"].get("rl")
    if rl:
        bad.spec.resources.rl = bad.spec.resources.default.model_copy(update=rl)
    with pytest.raises(render.RenderError) as e:
        render.render_job(next(s for s in build_plan(bad).stages.values() if s.kind == "rl"), bad)
    assert field in str(e.value) and "because" in str(e.value) and "Fix" in str(e.value)


@pytest.mark.parametrize("field,edit", UNCHECKED_BY_SPEC)
def test_spec_checks_every_kubernetes_name(field, edit):
    problems = _problems(edit)
    assert any(field in p for p in problems)


def test_submit_leaves_a_local_storage_path_to_the_cluster_default(capsys):
    from controller.kubernetes.cli import _cluster_storage

    raw = {"spec": {"storage": "./runs", "models": []}}
    assert "storage" not in _cluster_storage(raw, None, watch=False)["spec"]
    assert "pods cannot reach" in capsys.readouterr().out
    assert _cluster_storage(raw, "s3://b/p", watch=False)["spec"]["storage"] == "s3://b/p"
    assert _cluster_storage(raw, None, watch=True)["spec"]["storage"] == "./runs"  # the loop runs here
    assert _cluster_storage({"spec": {"storage": "s3://b/x"}}, None, False)["spec"]["storage"] == "s3://b/x"
