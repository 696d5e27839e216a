"""`sftrl run` and `sftrl report` end to end with the data pipeline: real stages, tiny settings.

- rl.min_signal: the probe of GRPO from the untrained base predicts no signal; `sftrl run` prints
  the prediction as soon as the probe ends, then skips the RL stage and its eval with the reason,
  and ends successfully; the report shows the cell as skipped (never as zero) with the reason.
- distillation: two experiments whose data sources distil with the same teacher and prompts share
  one distill stage: the second run reuses it and trains on its parquet.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TINY_RL = {"epochs": 1, "global_batch_size": 4, "mini_batch_size": 4, "per_device_batch_size": 16, "num_generations": 4,
           "max_prompt_length": 256, "max_completion_length": 8, "heldout_size": 4, "probe": {"prompts": 8}}


def write(tmp_path: Path, name: str, spec: dict) -> Path:
    base = {"storage": str(tmp_path / "runs"), "models": [{"name": "tiny", "path": "builtin://tiny-qwen2-vl"}],
            "seeds": [0], "sft": {"epochs": 1, "global_batch_size": 8, "per_device_batch_size": 8, "max_length": 256,
                                  "gradient_checkpointing": False},
            "eval": {"benchmarks": ["synthetic"], "limit": 8, "max_new_tokens": 8},
            "resources": {"default": {"gpus_per_node": 0, "nodes": 1, "deepspeed": "none"}},
            "execution": {"max_parallel": 2}}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"apiVersion": "sftrl/v1", "kind": "Experiment", "metadata": {"name": name},
                                 "spec": {**base, **spec}}))
    return p


def sftrl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def test_min_signal_skips_grpo_from_the_base_and_says_why(tmp_path):
    exp = write(tmp_path, "starved", {
        "data": [{"name": "syn", "sft": "builtin://synthetic/sft", "rl": "builtin://synthetic/rl"}],
        "scales": [8], "methods": ["grpo"], "rl": {**TINY_RL, "min_signal": 0.1}})
    r = sftrl("run", str(exp))
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    reason = "starved: 0.00 of prompts had mixed outcomes (rl.min_signal 0.1)"
    probe_line = next(ln for ln in out.splitlines() if "probe: predicted signal" in ln)
    assert "predicted signal 0.00 (8 prompts x 4 rollouts" in probe_line and "RL will be skipped" in probe_line
    skips = [ln for ln in out.splitlines() if "] skip   " in ln]
    assert len(skips) == 2 and all(ln.endswith(reason) for ln in skips)
    assert out.index("probe: predicted signal") < out.index("] skip   ")  # the prediction comes first
    assert "start  rl-" not in out and "2 of 4 stages done, 2 skipped on purpose" in out and "stage(s) failed" not in out
    grpo_row = next(ln for ln in out.splitlines() if ln.split()[:1] == ["grpo"])
    assert grpo_row.split()[-1] == "skipped"  # the cell, not 0.0
    assert f"RL skipped, {reason}" in out

    rep = sftrl("report", str(exp), "-o", str(tmp_path / "report"))
    assert rep.returncode == 0, rep.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| grpo | syn | 8 | skipped |" in md and reason in md and "runs evaluated, 1 skipped" in md
    probes = list(csv.DictReader(open(tmp_path / "report" / "probes.csv")))
    assert [(p["state"], p["predicted_signal"], p["reason"]) for p in probes] == [("skipped", "0.0", reason)]

    plan = sftrl("plan", str(exp))
    assert "2 done, 0 to run, 2 skipped: " + reason in plan.stdout
    assert [ln.split()[1] for ln in plan.stdout.splitlines() if ln.strip().startswith(("rl-", "eval-"))] == \
        ["done", "skipped", "skipped"]  # the base eval, then the starved RL stage and its eval

    again = sftrl("run", str(exp))  # nothing to run; the same skip, the same success
    assert again.returncode == 0 and "start  " not in again.stdout and "(2 already done)" in again.stdout


def test_two_experiments_with_the_same_teacher_and_prompts_share_one_distillation(tmp_path):
    distill = {"teacher": "builtin://synthetic-solver?slip=0.25", "prompts": "builtin://synthetic/rl?n=40",
               "samples_per_prompt": 4}
    common = {"methods": ["sft"], "rl": TINY_RL}
    a = write(tmp_path, "study-a", {**common, "scales": [16],
                                   "data": [{"name": "self", "distill": distill, "rl": "builtin://synthetic/rl"}]})
    b = write(tmp_path, "study-b", {**common, "scales": [24],
                                   "data": [{"name": "again", "distill": distill, "rl": "builtin://synthetic/rl"}]})
    ra = sftrl("run", str(a))
    assert ra.returncode == 0, ra.stdout + ra.stderr
    started = [ln.split()[3] for ln in ra.stdout.splitlines() if "start  distill-" in ln]
    assert len(started) == 1
    rb = sftrl("run", str(b))
    assert rb.returncode == 0, rb.stdout + rb.stderr
    assert "start  distill-" not in rb.stdout and "start  sft-" in rb.stdout  # reused; a new scale trains
    plan_b = json.loads((tmp_path / "runs" / "experiments" / "study-b" / "plan.json").read_text())
    (sft_b,) = [s for s, st in plan_b["stages"].items() if st["kind"] == "sft"]
    assert plan_b["stages"][sft_b]["parents"] == [started[0]]
    res = json.loads((tmp_path / "runs" / "stages" / started[0] / "results.json").read_text())
    assert res["kept_traces"] >= 24 and 0 < res["mean_pass_rate"] < 0.75
    manifest = json.loads((tmp_path / "runs" / "stages" / sft_b / "_SUCCESS").read_text())
    assert manifest["data"]["source"].endswith(f"/stages/{started[0]}/data/sft.parquet") and manifest["data"]["used"] == 24
