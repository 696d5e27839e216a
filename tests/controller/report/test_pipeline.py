"""The report's data-pipeline sections from storage alone: probes (predicted vs measured), skipped
cells with their reason, distillation yield, decontamination counts."""

from __future__ import annotations

import json
from pathlib import Path

from controller.report import pipeline
from controller.report.load import compute_report, load_experiment
from controller.report.render import csv_files, markdown, blocks
from job_runtime.io import storage

REASON = "starved: 0.02 of prompts had mixed outcomes (rl.min_signal 0.1)"


def _stage(root: Path, sid: str, results: dict | None = None, done: bool = True) -> None:
    d = root / "stages" / sid
    d.mkdir(parents=True, exist_ok=True)
    if results is not None:
        (d / "results.json").write_text(json.dumps(results))
    if done:
        storage.publish(d, storage.normalize(str(d)), stage=sid)


def _experiment(root: Path) -> None:
    stages = {
        "eval-000000000001": {"kind": "eval", "parents": []},
        "probe-00000000000a": {"kind": "probe", "parents": []},
        "rl-00000000000a": {"kind": "rl", "parents": [], "after": ["probe-00000000000a"]},
        "eval-00000000000a": {"kind": "eval", "parents": ["rl-00000000000a"]},
        "distill-00000000000b": {"kind": "distill", "parents": []},
        "sft-00000000000b": {"kind": "sft", "parents": ["distill-00000000000b"]},
        "probe-00000000000b": {"kind": "probe", "parents": ["sft-00000000000b"]},
        "rl-00000000000b": {"kind": "rl", "parents": ["sft-00000000000b"], "after": ["probe-00000000000b"]},
        "eval-00000000000b": {"kind": "eval", "parents": ["rl-00000000000b"]},
    }
    runs = [
        {"run": "m-base", "model": "m", "method": "base", "data": None, "scale": None, "seed": None, "train": [],
         "eval": "eval-000000000001"},
        {"run": "m-grpo-d-8-s0", "model": "m", "method": "grpo", "data": "d", "scale": 8, "seed": 0,
         "train": ["rl-00000000000a"], "eval": "eval-00000000000a", "probe": "probe-00000000000a"},
        {"run": "m-sft-grpo-d-8-s0", "model": "m", "method": "sft+grpo", "data": "d", "scale": 8, "seed": 0,
         "train": ["sft-00000000000b", "rl-00000000000b"], "eval": "eval-00000000000b", "probe": "probe-00000000000b",
         "distill": "distill-00000000000b"},
    ]
    gates = {"rl-00000000000a": {"probe": "probe-00000000000a", "min_signal": 0.1},
             "rl-00000000000b": {"probe": "probe-00000000000b", "min_signal": 0.1}}
    plan = {"experiment": "x", "storage": str(root), "benchmarks": ["synthetic", "mathvista"], "stages": stages,
            "runs": runs, "gates": gates}
    (root / "experiments" / "x").mkdir(parents=True)
    (root / "experiments" / "x" / "plan.json").write_text(json.dumps(plan, sort_keys=True))  # sorted, as stored
    _stage(root, "eval-000000000001", {"benchmarks": {"synthetic": {"score": 0.0}}})
    _stage(root, "probe-00000000000a", {"mixed_share": 0.02, "pass_at_1": 0.0, "pass_at_k": 0.0, "prompts": 50, "samples": 4})
    _stage(root, "distill-00000000000b", {"teacher": "builtin://synthetic-solver", "prompts": 40, "prompts_with_verified": 30,
                                          "mean_pass_rate": 0.5, "kept_traces": 30, "mean_trace_chars": 48.0,
                                          "decontamination": {"dropped": {"synthetic": 0, "mathvista": 2}}})
    _stage(root, "sft-00000000000b", {"decontamination": {"dropped": {"synthetic": 1, "mathvista": 0}}})
    _stage(root, "probe-00000000000b", {"mixed_share": 0.6, "pass_at_1": 0.4, "pass_at_k": 0.8, "prompts": 50, "samples": 4})
    _stage(root, "rl-00000000000b", {"first_step_signal_availability": 0.55, "mean_signal_availability": 0.5,
                                     "decontamination": {"dropped": {"synthetic": 0, "mathvista": 3}}})
    _stage(root, "eval-00000000000b", {"benchmarks": {"synthetic": {"score": 0.5}}})


def test_skips_predictions_yield_and_decontamination_from_storage(tmp_path):
    _experiment(tmp_path)
    data = load_experiment(str(tmp_path), "x")
    p = data.pipeline
    assert p.skipped == {"rl-00000000000a": REASON, "eval-00000000000a": REASON}  # through plan.json's sorted stages
    a, b = p.probes
    assert (a.state, a.predicted, a.reason, a.measured_first) == ("skipped", 0.02, REASON, None)
    assert (b.state, b.predicted, b.measured_first, b.measured_mean, b.pass_at_k) == ("done", 0.6, 0.55, 0.5, 0.8)
    assert [(d.stage, d.figures["kept_traces"]) for d in p.distills] == [("distill-00000000000b", 30)]
    assert [(d.kind, d.dropped) for d in p.decontam] == [
        ("distill", {"synthetic": 0, "mathvista": 2}), ("sft", {"synthetic": 1, "mathvista": 0}),
        ("rl", {"synthetic": 0, "mathvista": 3})]
    skipped_run = next(r for r in data.runs if r.info.method == "grpo")
    assert skipped_run.skipped == REASON and not skipped_run.complete

    lines = "\n".join(pipeline.signal_lines(p))
    assert f"predicted 0.02 (probe: 50 prompts x 4 rollouts); RL skipped, {REASON}" in lines
    assert "predicted 0.60 (probe: 50 prompts x 4 rollouts); measured 0.55 at step 1, 0.50 on average" in lines

    rep = compute_report(data)
    md = markdown(blocks(rep, {}))
    assert "| grpo | d | 8 | skipped |" in md and "1 skipped (see RL readiness)" in md and "not finished" not in md
    assert "| m-sft-grpo-d-8-s0 | probe-00000000000b | 0.60 | 0.400 | 0.800 | rl-00000000000b | 0.55 | 0.50 | done |" in md
    assert "| d | distill-00000000000b | builtin://synthetic-solver | 40 | 30 | 0.500 | 30 | 48.0 |" in md
    assert "| d | rl rl-00000000000b | 0 | 3 |" in md
    csvs = csv_files(rep)
    assert csvs["probes.csv"][1][3:5] == ["skipped", 0.02] and csvs["decontamination.csv"][0] == ["data", "kind", "stage", "synthetic", "mathvista"]


def test_a_probe_that_predicts_enough_skips_nothing(tmp_path):
    _experiment(tmp_path)
    d = tmp_path / "stages" / "probe-00000000000a"
    (d / "results.json").write_text(json.dumps({"mixed_share": 0.3}))
    assert pipeline.load(str(tmp_path), json.loads((tmp_path / "experiments" / "x" / "plan.json").read_text()),
                         {}).skipped == {}  # nothing done: nothing known
    data = load_experiment(str(tmp_path), "x")
    assert data.pipeline.skipped == {} and data.pipeline.probes[0].state == "waiting"
