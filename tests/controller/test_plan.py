"""The stage DAG: content-addressed, shared stages, nested runs; `sftrl plan` output."""

from __future__ import annotations

import subprocess
import sys

import yaml

from controller import spec
from controller.plan import build_plan
from tests.conftest import ROOT

EXAMPLES = ROOT / "examples"


def _paper():
    return build_plan(spec.load(EXAMPLES / "paper.yaml"))


def test_paper_matrix_shape():
    plan = _paper()
    s = spec.load(EXAMPLES / "paper.yaml").spec
    trained = len(s.models) * len(s.data) * len(s.scales) * len(s.methods) * len(s.seeds)
    assert len(plan.runs) == trained + len(s.models)  # + one base run per model
    kinds = [st.kind for st in plan.stages.values()]
    cells = len(s.models) * len(s.data) * len(s.scales) * len(s.seeds)
    assert kinds.count("sft") == cells  # shared by sft and sft+grpo
    assert kinds.count("rl") == cells * 3  # grpo, dapo, sft+grpo
    assert kinds.count("eval") == trained + len(s.models)


def test_sft_stage_is_shared_by_sft_and_sft_grpo():
    plan = _paper()
    by = {(r.model, r.data, r.scale, r.seed, r.method): r for r in plan.runs}
    for (m, d, sc, se, method), r in by.items():
        if method == "sft":
            twin = by[(m, d, sc, se, "sft+grpo")]
            assert twin.train[0] == r.train[0]
            assert plan.stages[twin.train[1]].parents == (r.train[0],)


def test_topological_order_and_parent_model_uris():
    plan = _paper()
    seen = set()
    for sid, st in plan.stages.items():
        assert all(p in seen for p in st.parents)
        seen.add(sid)
        for p in st.parents:
            assert st.config.model == f"{plan.stages[p].config.output}/model"


def test_ids_are_stable_and_ignore_labels_and_resources():
    raw = yaml.safe_load((EXAMPLES / "paper.yaml").read_text())
    a = build_plan(spec.validate_dict(raw))
    raw["metadata"]["name"] = "another-name"
    raw["spec"]["resources"]["default"]["gpus_per_node"] = 4
    b = build_plan(spec.validate_dict(raw))
    assert list(a.stages) == list(b.stages)
    raw["spec"]["sft"]["learning_rate"] = 2e-5
    c = build_plan(spec.validate_dict(raw))
    changed = set(c.stages) - set(a.stages)
    # every SFT stage, everything downstream of one, changes; GRPO/DAPO from base and base evals do not
    assert {c.stages[s].kind for s in changed} == {"sft", "rl", "eval"}
    assert len(set(a.stages) & set(c.stages)) > 0


def test_extending_the_matrix_keeps_existing_stages():
    raw = yaml.safe_load((EXAMPLES / "paper.yaml").read_text())
    a = build_plan(spec.validate_dict(raw))
    raw["spec"]["seeds"] = [0, 1]
    b = build_plan(spec.validate_dict(raw))
    assert set(a.stages) <= set(b.stages)


def test_plan_json_contract():
    j = _paper().to_json()
    assert {"experiment", "storage", "benchmarks", "stages", "runs"} <= set(j)
    base = [r for r in j["runs"] if r["method"] == "base"]
    assert base and all(r["train"] == [] and r["scale"] is None for r in base)
    for r in j["runs"]:
        assert r["eval"] in j["stages"] and all(t in j["stages"] for t in r["train"])


def test_no_auto_left_in_deepspeed_configs():
    for st in _paper().stages.values():
        if st.config.deepspeed is not None:
            assert '"auto"' not in str(st.config.deepspeed).replace("'", '"')


def test_cli_plan_shows_shared_sft_stage(tmp_path):
    r = subprocess.run([sys.executable, "-m", "controller.cli", "plan", str(EXAMPLES / "paper.yaml"), "--no-status"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "shared by 2 runs" in r.stdout


def test_cli_plan_with_unreachable_storage_still_shows_the_plan():
    import os

    env = {**os.environ, "SFTRL_S3_ENDPOINT": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "y", "SFTRL_S3_RETRIES": "1", "SFTRL_S3_MAX_ATTEMPTS": "1"}
    r = subprocess.run([sys.executable, "-m", "controller.cli", "plan", str(EXAMPLES / "paper.yaml")],
                       capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert "cannot tell which stages are done" in r.stderr and "(status unknown)" in r.stdout
    assert "shared by 2 runs" in r.stdout
