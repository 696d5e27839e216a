"""Stage -> PyTorchJob: the real CRD schema, the training operator's webhook rules, the
kubeflow-training models, and golden files (SFTRL_UPDATE_GOLDEN=1 rewrites them)."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.kubernetes import render
from controller.plan import build_plan
from controller.spec import Experiment, load, validate_dict
from job_runtime.contract import EXIT_CONFIG, EXIT_FAILED, EXIT_RETRYABLE, StageConfig
from tests.conftest import ROOT, require_shared

GOLDEN = ROOT / "manifests" / "golden"
EXAMPLES = ROOT / "examples"
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(require_shared("crds", "kubeflow.org_pytorchjobs.yaml").read_text())
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return _crd_schema()


def _paper() -> Experiment:
    return load(EXAMPLES / "paper.yaml")


def _options() -> Experiment:
    return load(GOLDEN / "all-options" / "experiment.yaml")


def _without_queue(exp: Experiment) -> Experiment:
    raw = exp.model_dump(mode="json")
    raw["spec"]["kubernetes"]["queue"] = None
    return validate_dict(raw)


def _experiment(name: str) -> Experiment:
    if name == "paper":
        return _paper()
    if name == "paper-no-queue":
        return _without_queue(_paper())
    return _options() if name == "all-options" else load(EXAMPLES / f"{name}.yaml")


def _pruned(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the API server would silently prune (not in the structural schema)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out: list[str] = []
    if isinstance(obj, dict) and schema.get("type") == "object":
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        for k, v in obj.items():
            if props is not None and k in props:
                out += _pruned(v, props[k], f"{path}.{k}")
            elif isinstance(extra, dict):
                out += _pruned(v, extra, f"{path}.{k}")
            elif props is not None and path != ".metadata":
                out.append(f"{path}.{k}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(obj):
            out += _pruned(v, schema["items"], f"{path}[{i}]")
    return out


# --- every job of every example: CRD schema + webhook + no pruned fields ----------------------------


@pytest.mark.parametrize("name", ["paper", "paper-no-queue", "all-options", "quickstart"])
def test_every_job_validates_against_crd_schema_and_webhook_rules(name, crd):
    import jsonschema

    exp = _experiment(name)
    plan = build_plan(exp)
    jobs = render.render_plan(plan, exp)
    assert len(jobs) == len(plan.stages) > 0
    validator = jsonschema.Draft7Validator(crd)
    shapes = set()
    for job, cfg in jobs:
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(job)]
        assert errors == [], f"{job['metadata']['name']}: {errors}"
        assert render.webhook_errors(job) == [], job["metadata"]["name"]
        assert _pruned(job, crd) == [], job["metadata"]["name"]
        for k, v in job["metadata"]["labels"].items():
            assert len(v) <= 63 and LABEL_VALUE.match(v), (k, v)
        shapes.add(("Worker" in job["spec"]["pytorchReplicaSpecs"],
                    render.QUEUE_LABEL in job["metadata"]["labels"]))
    if name in ("paper", "all-options"):
        assert shapes == {(True, True), (False, True)}  # multi- and single-node, queued
    if name == "paper-no-queue":
        assert shapes == {(True, False), (False, False)}


def test_paper_distill_and_probe_stages_are_one_job_each_with_their_own_resources(crd):
    """examples/paper.yaml builds its self-distilled source: one PyTorchJob per distill and probe stage,
    valid against the real PyTorchJob CRD, with the GPUs of resources.distill / resources.probe."""
    import jsonschema

    exp = _paper()
    plan = build_plan(exp)
    jobs = {cfg.id: (job, cfg) for job, cfg in render.render_plan(plan, exp)}
    for kind in ("distill", "probe"):
        stages = [s for s in plan.stages.values() if s.kind == kind]
        assert stages, kind
        res = getattr(exp.spec.resources, kind)
        for st in stages:
            job, cfg = jobs[st.id]
            assert list(jsonschema.Draft7Validator(crd).iter_errors(job)) == [] and render.webhook_errors(job) == []
            master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
            assert master["command"][:4] == ["torchrun", "-m", "job_runtime", kind]
            assert master["resources"]["limits"]["nvidia.com/gpu"] == str(res.gpus_per_node)
            assert "Worker" not in job["spec"]["pytorchReplicaSpecs"] and job["spec"]["nprocPerNode"] == "1"
            assert cfg.deepspeed is None and job["metadata"]["labels"][render.L_KIND] == kind
    assert len([s for s in plan.stages.values() if s.kind == "distill"]) == 1
    assert len([s for s in plan.stages.values() if s.kind == "probe"]) == len({s.after for s in plan.stages.values() if s.kind == "rl"})


def test_round_trip_through_kubeflow_training_models_is_lossless():
    from controller.kubernetes.executor import sanitize, to_model
    from kubeflow.training.models import KubeflowOrgV1PyTorchJob

    for exp in (_options(), _experiment("quickstart")):
        for job, _ in render.render_plan(build_plan(exp), exp):
            assert isinstance(to_model(job), KubeflowOrgV1PyTorchJob)
            assert sanitize(job) == job  # no field the models do not know, nothing lost


def test_pruning_check_catches_a_misspelt_field(crd):
    exp = _options()
    job = render.render_job(next(iter(build_plan(exp).stages.values())), exp)
    job["spec"]["runPolicy"]["backofLimit"] = 3
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    assert set(_pruned(job, crd)) == {
        ".spec.runPolicy.backofLimit", ".spec.pytorchReplicaSpecs.Master.template.spec.containers[0].imagePullPolice"}


# --- what a job says ----------------------------------------------------------------------------------


def _by_kind(exp: Experiment) -> dict[str, tuple[dict[str, Any], StageConfig]]:
    out: dict[str, tuple[dict[str, Any], StageConfig]] = {}
    for job, cfg in render.render_plan(build_plan(exp), exp):
        out.setdefault(cfg.kind, (job, cfg))
    return out


def test_job_contents_of_the_all_options_fixture():
    exp = _options()
    jobs = _by_kind(exp)
    rl, rl_cfg = jobs["rl"]
    spec = rl["spec"]
    assert spec["nprocPerNode"] == "4" and "elasticPolicy" not in spec
    master, worker = spec["pytorchReplicaSpecs"]["Master"], spec["pytorchReplicaSpecs"]["Worker"]
    assert (master["replicas"], worker["replicas"]) == (1, 3)  # 4 nodes
    assert master["restartPolicy"] == worker["restartPolicy"] == "ExitCode"
    assert spec["runPolicy"] == {"backoffLimit": render.BACKOFF_LIMIT, "activeDeadlineSeconds": render.ACTIVE_DEADLINE_SECONDS,
                                 "ttlSecondsAfterFinished": render.TTL_AFTER_FINISHED_SECONDS, "cleanPodPolicy": "Running"}
    pod = master["template"]["spec"]
    (c,) = pod["containers"]
    assert c["name"] == "pytorch" and c["image"] == "registry.example.com/sftrl/runtime:0.1.0"
    uri = f"s3://sftrl-golden/runs/stages/{rl_cfg.id}/stage.json"
    assert c["command"] == ["torchrun", "-m", "job_runtime", "rl", "--config", uri]
    assert not any(a.startswith(("--nnodes", "--node-rank", "--master")) for a in c["command"])  # PET_* decide
    assert c["resources"] == {"requests": {"nvidia.com/gpu": "4", "cpu": "32", "memory": "480Gi"},
                              "limits": {"nvidia.com/gpu": "4"}}
    assert c["envFrom"] == [{"secretRef": {"name": "sftrl-s3"}}]
    assert not any("SECRET" in e["name"] or "KEY" in e["name"] for e in c["env"])  # credentials only by reference
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}}]
    assert pod["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["serviceAccountName"] == "sftrl-runtime" and pod["priorityClassName"] == "research-batch"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "sftrl.io/pool": "rl"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    # rank 0 alone exposes the metrics port; its stage.json tells it to serve there
    assert {"name": "metrics", "containerPort": render.METRICS_PORT, "protocol": "TCP"} in c["ports"]
    assert all(p["name"] != "metrics" for p in worker["template"]["spec"]["containers"][0]["ports"])
    assert rl_cfg.metrics_port == render.METRICS_PORT
    labels = rl["metadata"]["labels"]
    assert labels == {**master["template"]["metadata"]["labels"], render.QUEUE_LABEL: "gpu-team"}
    assert {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/part-of", "app.kubernetes.io/component",
                                   "app.kubernetes.io/managed-by", "sftrl.io/experiment", "sftrl.io/stage",
                                   "sftrl.io/kind")} == {
        "app.kubernetes.io/name": "sftrl", "app.kubernetes.io/part-of": "sftrl", "app.kubernetes.io/component": "stage",
        "app.kubernetes.io/managed-by": "sftrl-operator", "sftrl.io/experiment": "all-options",
        "sftrl.io/stage": rl_cfg.id, "sftrl.io/kind": "rl"}
    store = render.storage_key(rl_cfg.output.rsplit("/stages/", 1)[0])
    assert labels["sftrl.io/storage"] == store
    assert rl["metadata"]["namespace"] == "research" and rl["metadata"]["name"] == f"sftrl-{rl_cfg.id}-{store}"
    assert "ownerReferences" not in rl["metadata"]  # rendered without a cluster: no owner to name
    ev, _ = jobs["eval"]
    assert set(ev["spec"]["pytorchReplicaSpecs"]) == {"Master"} and ev["spec"]["nprocPerNode"] == "1"
    ev_pod = ev["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert ev_pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}  # rl's pool stays rl's
    assert ev_pod["volumes"][0]["emptyDir"]["sizeLimit"] == "8Gi"  # 8Gi per GPU by default


def test_cpu_stage_requests_no_gpu_and_runs_one_process():
    job, _ = _by_kind(load(EXAMPLES / "quickstart.yaml"))["sft"]
    c = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in json.dumps(c["resources"]) and job["spec"]["nprocPerNode"] == "1"


def test_exit_codes_fit_the_exit_code_restart_policy():
    # ExitCode: 1-127 are permanent (not restarted), 128-255 are retried by the training operator
    assert 1 <= EXIT_FAILED <= 127 and 1 <= EXIT_CONFIG <= 127 and 128 <= EXIT_RETRYABLE <= 255


def test_names_are_deterministic_dns1035_and_parse_back():
    exp = _options()
    a = [j["metadata"]["name"] for j, _ in render.render_plan(build_plan(exp), exp)]
    b = [j["metadata"]["name"] for j, _ in render.render_plan(build_plan(_options()), _options())]
    assert a == b and len(set(a)) == len(a)
    store = render.storage_key(build_plan(exp).root)
    for n in a:
        assert render.DNS1035.match(n) and len(n) <= render.MAX_JOB_NAME
        sid, attempt = render.stage_of_job(n)
        assert attempt == 1 and render.job_name(sid, store) == n
    long = render.job_name("eval-" + "f" * 60, store, 12)
    assert len(long) <= render.MAX_JOB_NAME and long.endswith(f"-{store}-12") and render.DNS1035.match(long)
    assert render.job_name("distill-0123456789ab", store, 99) == f"sftrl-distill-0123456789ab-{store}-99"  # room
    assert render.stage_of_job("some-other-job") is None
    # an all-digit hash is still a stage id, not an attempt number (found by bench/k8s_scale.py)
    assert render.stage_of_job("sftrl-sft-679830671884-12345678") == ("sft-679830671884", 1)
    assert render.stage_of_job("sftrl-sft-679830671884-12345678-3") == ("sft-679830671884", 3)
    job = render.render_job(next(iter(build_plan(exp).stages.values())), exp, attempt=4)
    assert render.stage_of(job) == (job["metadata"]["labels"]["sftrl.io/stage"], 4)
    assert render.store_of(job) == store == render.store_of({"metadata": {"name": job["metadata"]["name"]}})
    # the same stage on another storage root is another job
    other = _options()
    other.spec.storage = "s3://another-bucket/sftrl"
    b = [j["metadata"]["name"] for j, _ in render.render_plan(build_plan(other), other)]
    assert [render.stage_of_job(n) for n in a] == [render.stage_of_job(n) for n in b] and not set(a) & set(b)


def test_webhook_rules_each_catch_their_case():
    exp = _options()
    rl = _by_kind(exp)["rl"][0]
    assert render.webhook_errors(rl) == []

    def broken(edit) -> list[str]:
        j = copy.deepcopy(rl)
        edit(j)
        return render.webhook_errors(j)

    rs = lambda j: j["spec"]["pytorchReplicaSpecs"]  # noqa: E731
    assert any("Master" in e for e in broken(lambda j: rs(j).pop("Master")))
    assert any("must be 1" in e for e in broken(lambda j: rs(j)["Master"].update(replicas=2)))
    assert any("name pytorch" in e for e in broken(
        lambda j: rs(j)["Worker"]["template"]["spec"]["containers"][0].update(name="main")))
    assert any("image" in e for e in broken(lambda j: rs(j)["Master"]["template"]["spec"]["containers"][0].pop("image")))
    assert any("nProcPerNode" in e for e in broken(lambda j: j["spec"].update(elasticPolicy={"nProcPerNode": 4})))
    assert any("Evaluator" in e for e in broken(lambda j: rs(j).update(Evaluator=rs(j)["Worker"])))
    assert any("DNS-1035" in e for e in broken(lambda j: j["metadata"].update(name="9-starts-with-digit")))
    assert any("managedBy" in e for e in broken(lambda j: j["spec"]["runPolicy"].update(managedBy="me")))


def test_bad_kubernetes_names_are_refused_with_the_field_named():
    # spec validation refuses these first (tests/controller/test_spec_k8s.py); render is the second
    # line of defence for an Experiment built without validation.
    exp = _options()
    exp.spec.kubernetes = exp.spec.kubernetes.model_copy(update={"queue": "GPU team"})
    with pytest.raises(render.RenderError, match=r"spec\.kubernetes\.queue 'GPU team'"):
        render.render_job(next(iter(build_plan(exp).stages.values())), exp)
    exp.spec.kubernetes = exp.spec.kubernetes.model_copy(update={"queue": None, "storage_secret": "S3_Creds"})
    with pytest.raises(render.RenderError, match=r"spec\.kubernetes\.storage_secret"):
        render.render_job(next(iter(build_plan(exp).stages.values())), exp)


# --- `sftrl render` and the golden files ---------------------------------------------------------------


def _golden_inputs() -> dict[str, Path]:
    out = {p.parent.name: p for p in sorted(GOLDEN.glob("*/experiment.yaml"))}
    for p in sorted(EXAMPLES.glob("*.yaml")):
        storage = (yaml.safe_load(p.read_text()).get("spec") or {}).get("storage", "./runs")
        if "://" in storage and not storage.startswith("file://"):  # local roots differ per machine
            out[p.stem] = p
    return out


def _golden_selection(out_dir: Path, exp: Experiment) -> list[str]:
    """Golden files hold the first job of each (kind, nodes) shape, with its stage.json."""
    seen, names = set(), []
    for job, cfg in render.render_plan(build_plan(exp), exp):
        shape = (cfg.kind, "Worker" in job["spec"]["pytorchReplicaSpecs"])
        if shape not in seen:
            seen.add(shape)
            names += [f"{job['metadata']['name']}.yaml", f"{job['metadata']['name']}.stage.json"]
    return names


@pytest.mark.parametrize("name", sorted(_golden_inputs()))
def test_render_matches_golden(name, tmp_path):
    from controller.kubernetes.cli import main

    src = _golden_inputs()[name]
    assert main(["render", str(src), "-o", str(tmp_path), "--no-fingerprints"]) == 0  # offline: URI-only ids
    exp = load(src)
    wanted = _golden_selection(tmp_path, exp)
    gold = GOLDEN / name
    if os.environ.get("SFTRL_UPDATE_GOLDEN") == "1":
        gold.mkdir(parents=True, exist_ok=True)
        for old in gold.glob("sftrl-*"):
            old.unlink()
        for f in wanted:
            (gold / f).write_text((tmp_path / f).read_text())
    have = sorted(p.name for p in gold.glob("sftrl-*"))
    assert have == sorted(wanted), f"golden files of {name} are stale: run SFTRL_UPDATE_GOLDEN=1 pytest {__file__}"
    for f in wanted:
        assert (tmp_path / f).read_text() == (gold / f).read_text(), (
            f"{name}/{f} differs from the golden file; if the change is intended, regenerate with "
            f"SFTRL_UPDATE_GOLDEN=1 pytest tests/controller/kubernetes/test_render.py")


def test_cli_render_writes_every_job_and_its_stage_json(tmp_path, capsys):
    from controller.kubernetes.cli import main

    exp = _options()
    assert main(["render", str(GOLDEN / "all-options" / "experiment.yaml"), "-o", str(tmp_path), "--no-fingerprints"]) == 0
    plan = build_plan(exp)
    for sid, stage in plan.stages.items():
        job = yaml.safe_load((tmp_path / f"{render.stage_job_name(stage)}.yaml").read_text())
        cfg = StageConfig.model_validate_json((tmp_path / f"{render.stage_job_name(stage)}.stage.json").read_text())
        assert cfg.id == sid and cfg.metrics_port == render.METRICS_PORT
        assert job["metadata"]["annotations"][render.A_CONFIG] == f"{stage.config.output}/stage.json"
    assert f"{len(plan.stages)} PyTorchJobs" in capsys.readouterr().out


def test_cli_render_reports_a_bad_file_without_traceback(tmp_path, capsys):
    from controller.kubernetes.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: sftrl/v1\nkind: Experiment\nmetadata: {name: Bad_Name}\nspec: {}\n")
    assert main(["render", str(bad), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "metadata.name" in err and "Traceback" not in err
