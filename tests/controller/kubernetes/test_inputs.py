"""Stage ids on a cluster hash the inputs' content, as `sftrl plan` does (controller/kubernetes/inputs.py):
`sftrl plan`, `sftrl render`, `sftrl submit` (its annotation), the operator and `sftrl status` agree on
them for the same inputs; an s3:// input uploaded again under its key gives new ids on the next
submission and not before; an Experiment made with `kubectl apply` is fingerprinted by the operator
once and the values are kept in its status; `sftrl submit` runs the preflight checks first (exit 2,
nothing created). Real S3 (moto server on loopback); the Kubernetes API is the FAKE of tests/fakes."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml

from controller import cli as lead_cli
from controller.kubernetes import inputs
from controller.kubernetes.cli import main as k8s_main
from controller.kubernetes.operator import ClusterDefaults, Operator
from job_runtime.io import storage
from tests.fakes.fake_kube_apiserver import EXPERIMENTS, JOBS, FakeKubeApiServer
from tests.fakes.kube import connect, submit, tiny_spec

ID = re.compile(r"(?<![-\w])[a-z_]+-[0-9a-f]{12}\b")  # a stage id, not the tail of a bucket name


@pytest.fixture
def fake(tmp_path, monkeypatch):
    srv = FakeKubeApiServer().start(simulate=False)  # jobs stay as created: ids are what is compared
    monkeypatch.setenv("KUBECONFIG", str(srv.write_kubeconfig(tmp_path / "kc")))
    for k in [k for k in os.environ if k.startswith("SFTRL_")]:
        monkeypatch.delenv(k)
    yield srv
    srv.stop()


def _sft_rows(answer: str) -> str:
    return json.dumps({"question": "How many?", "trace": f"<think>{answer}</think> \\boxed{{{answer}}}",
                       "image": "a.png"}) + "\n"


def _file(tmp_path, bucket: str, name: str = "demo"):
    storage.write_text(f"{bucket}/data/sft.jsonl", _sft_rows("2"))
    spec = tiny_spec(f"{bucket}/runs", methods=["sft"],
                     data=[{"name": "syn", "sft": f"{bucket}/data/sft.jsonl", "rl": "builtin://synthetic/rl"}])
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump({"apiVersion": "sftrl/v1", "kind": "Experiment", "metadata": {"name": name},
                                 "spec": spec}))
    return f, spec


def _plan_ids(f, capsys) -> set[str]:
    capsys.readouterr()
    assert lead_cli.main(["plan", str(f)]) == 0
    out = capsys.readouterr().out
    assert "provisional" not in out, out
    return set(ID.findall(out))


def _render_ids(f, out_dir) -> set[str]:
    assert k8s_main(["render", str(f), "-o", str(out_dir)]) == 0
    return {json.loads(p.read_text())["id"] for p in out_dir.glob("*.json")}


def _job_stage_ids(fake) -> set[str]:
    return {j["metadata"]["labels"]["sftrl.io/stage"] for j in fake.objects(JOBS)}


def _status_ids(capsys) -> set[str]:
    capsys.readouterr()
    assert k8s_main(["status", "demo"]) == 0
    out = capsys.readouterr().out
    assert "provisional" not in out, out
    return {line.split()[0] for line in out.splitlines() if line and ID.fullmatch(line.split()[0])}


def test_plan_render_submit_operator_and_status_agree_and_an_edited_input_renames_on_resubmission(
        fake, tmp_path, s3_bucket, capsys):
    f, _ = _file(tmp_path, s3_bucket)
    ids = _plan_ids(f, capsys)
    assert len(ids) == 3 and ids == _render_ids(f, tmp_path / "r1")
    assert k8s_main(["submit", str(f), "-n", "default"]) == 0
    obj = fake.get(EXPERIMENTS, "default", "demo")
    annotated = inputs.from_annotation(obj)
    assert set(annotated) == {f"{s3_bucket}/data/sft.jsonl"}  # builtin:// inputs have nothing to record
    op = Operator(connect(fake, tmp_path), "default", defaults=ClusterDefaults())
    op.cycle()
    st = fake.get(EXPERIMENTS, "default", "demo")["status"]
    assert set(st["stages"]) == ids and "inputs" not in st  # the annotation holds them all
    assert _job_stage_ids(fake) <= ids and _job_stage_ids(fake)
    assert _status_ids(capsys) == ids

    storage.write_text(f"{s3_bucket}/data/sft.jsonl", _sft_rows("3"))  # uploaded again: same size, new ETag
    op.cycle()  # the running Experiment keeps its ids: the annotation was not changed
    assert set(fake.get(EXPERIMENTS, "default", "demo")["status"]["stages"]) == ids
    new = _plan_ids(f, capsys)
    assert new != ids and len(new & ids) == 1  # the base model's eval is unchanged; sft and its eval are new
    assert new == _render_ids(f, tmp_path / "r2")
    assert k8s_main(["submit", str(f), "-n", "default"]) == 0
    assert "updated" in capsys.readouterr().out
    op.cycle()
    assert set(fake.get(EXPERIMENTS, "default", "demo")["status"]["stages"]) == new
    assert _status_ids(capsys) == new


def test_the_operator_fingerprints_an_applied_experiment_once_and_keeps_the_values(fake, tmp_path, s3_bucket, capsys):
    f, spec = _file(tmp_path, s3_bucket)
    ids = _plan_ids(f, capsys)
    submit(fake, "demo", spec)  # as `kubectl apply`: no sftrl.io/inputs annotation
    op = Operator(connect(fake, tmp_path), "default", defaults=ClusterDefaults())
    op.cycle()
    st = fake.get(EXPERIMENTS, "default", "demo")["status"]
    assert set(st["stages"]) == ids
    assert st["inputs"]["generation"] == 1 and set(st["inputs"]["values"]) == {f"{s3_bucket}/data/sft.jsonl"}
    assert _status_ids(capsys) == ids  # status plans with the operator's record

    storage.write_text(f"{s3_bucket}/data/sft.jsonl", _sft_rows("3"))
    restarted = Operator(connect(fake, tmp_path), "default", defaults=ClusterDefaults())
    restarted.cycle()  # a new operator reads the record; it does not fingerprint the edited object again
    assert set(fake.get(EXPERIMENTS, "default", "demo")["status"]["stages"]) == ids


def test_submit_refuses_a_bad_file_before_creating_anything(fake, tmp_path, s3_bucket, capsys):
    f, spec = _file(tmp_path, s3_bucket)
    spec["data"][0]["sft"] = f"{s3_bucket}/data/missing.jsonl"
    (tmp_path / "rl.jsonl").write_text("{}\n")
    spec["data"][0]["rl"] = str(tmp_path / "rl.jsonl")  # exists here, but no pod can read it
    f.write_text(yaml.safe_dump({"apiVersion": "sftrl/v1", "kind": "Experiment", "metadata": {"name": "demo"},
                                 "spec": spec}))
    before = len(fake.calls())
    assert k8s_main(["submit", str(f), "-n", "default"]) == 2
    err = capsys.readouterr().err
    assert f"spec.data[0].sft: {s3_bucket}/data/missing.jsonl does not exist" in err, err
    assert "pods in the cluster cannot read local files" in err and "spec.data[0].rl" in err, err
    assert "Traceback" not in err
    assert fake.calls()[before:] == [] and fake.get(EXPERIMENTS, "default", "demo") is None
    assert not storage.exists(f"{s3_bucket}/runs/stages")
