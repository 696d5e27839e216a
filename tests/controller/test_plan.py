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
        assert all(p in seen for p in plan.dag()[sid])
        seen.add(sid)
        for p in st.parents:
            if plan.stages[p].kind == "distill":  # a data parent: the SFT traces it built
                assert st.config.data["train"] == f"{plan.stages[p].config.output}/data/sft.parquet"
            else:
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
    # every SFT stage, everything downstream of one (the probe before sft+grpo too), changes; GRPO/DAPO from
    # base, their probes and base evals do not
    assert {c.stages[s].kind for s in changed} == {"sft", "probe", "rl", "eval"}
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


# --- distill and probe stages -------------------------------------------------------------------------


def _distill_spec(**over):
    raw = yaml.safe_load((EXAMPLES / "paper.yaml").read_text())
    raw["spec"].update(over)
    return raw


def test_one_distill_stage_serves_every_model_scale_and_method():
    plan = _paper()
    distills = [s for s in plan.stages.values() if s.kind == "distill"]
    assert len(distills) == 1
    d = distills[0]
    sfts = [s for s in plan.stages.values() if s.kind == "sft" and s.labels.data == "self-distill"]
    assert len(sfts) == 4 * 2  # models x scales
    for s in sfts:  # every sft stage of the source reads the distill stage's parquet
        assert s.parents == (d.id,) and s.config.data == {"train": f"{d.config.output}/data/sft.parquet"}
    assert {r.distill for r in plan.runs if r.data == "self-distill" and r.method.startswith("sft")} == {d.id}
    assert d.config.model == "Qwen/Qwen2.5-VL-7B-Instruct" and d.config.params["reward"] == {"accuracy": 0.9, "format": 0.1, "custom": {},
                                                                                   "accuracy_rule": "mathruler"}
    assert d.config.deepspeed is None  # generation only


def test_two_experiments_with_the_same_teacher_and_prompts_share_the_distill_stage():
    a = build_plan(spec.validate_dict(_distill_spec()))
    raw = _distill_spec(models=[{"name": "other", "path": "Qwen/Qwen2-VL-2B-Instruct"}], scales=[500], methods=["sft"])
    raw["metadata"]["name"] = "another-study"
    raw["spec"]["data"][0]["name"] = "renamed"  # labels, not content
    b = build_plan(spec.validate_dict(raw))
    da = [s.id for s in a.stages.values() if s.kind == "distill"]
    db = [s.id for s in b.stages.values() if s.kind == "distill"]
    assert da == db
    raw["spec"]["data"][0]["distill"]["samples_per_prompt"] = 4  # another distillation
    c = build_plan(spec.validate_dict(raw))
    assert [s.id for s in c.stages.values() if s.kind == "distill"] != da


def test_a_probe_guards_every_rl_stage_without_entering_its_id():
    plan = _paper()
    rls = [s for s in plan.stages.values() if s.kind == "rl"]
    for s in rls:
        (probe,) = s.after
        p = plan.stages[probe]
        assert p.kind == "probe" and p.parents == s.parents and p.config.model == s.config.model
        assert p.config.data == {"train": s.config.data["train"]} and p.config.params["samples"] == 10
        rl = s.config.params  # the probe samples and scores as the RL stage will
        assert {k: p.config.params[k] for k in ("temperature", "top_p", "max_new_tokens", "reward", "min_pixels")} == {
            "temperature": rl["temperature"], "top_p": rl["top_p"], "max_new_tokens": rl["max_completion_length"],
            "reward": {**rl["reward"], "accuracy_rule": "mathruler"},  # the easyr1 recipe's grader, resolved
            "min_pixels": 262144}  # and its image bounds
        assert p.config.scale == min(256, s.config.scale) and p.config.seed == s.config.seed
        assert plan.gates[s.id].probe == probe and plan.gates[s.id].min_signal == 0.05
        assert plan.dag()[s.id] == s.parents + (probe,)
    # grpo and dapo from the same base on the same data share one probe; probes of 2000 and 20000 too
    # (256 prompts, the first of one fixed order)
    assert len({s.after for s in rls}) < len(rls)
    from_base = {(s.labels.model, s.labels.data) for s in rls if not s.parents}
    assert len({s.after for s in rls if not s.parents}) == len(from_base)
    raw = yaml.safe_load((EXAMPLES / "paper.yaml").read_text())
    raw["spec"]["rl"]["probe"] = {"prompts": 64}
    raw["spec"]["rl"]["min_signal"] = None
    other = build_plan(spec.validate_dict(raw))
    assert {s.id for s in other.stages.values() if s.kind == "rl"} == {s.id for s in rls}  # RL ids unchanged
    assert not other.gates
    raw["spec"]["rl"]["probe"] = {"enabled": False}
    off = build_plan(spec.validate_dict(raw))
    assert not [s for s in off.stages.values() if s.kind == "probe"] and all(not s.after for s in off.stages.values())


def test_decontamination_follows_the_benchmarks_and_enters_training_ids():
    plan = _paper()
    for s in plan.stages.values():
        d = s.config.decontaminate
        if s.kind in ("sft", "rl", "probe", "distill"):
            assert d is not None and d.benchmarks == plan.benchmarks and d.ngram == 8
        else:
            assert d is None
    raw = yaml.safe_load((EXAMPLES / "paper.yaml").read_text())
    raw["spec"]["decontamination"] = {"enabled": False}
    off = build_plan(spec.validate_dict(raw))
    changed = {off.stages[s].kind for s in set(off.stages) - set(plan.stages)}
    assert changed == {"sft", "rl", "probe", "distill", "eval"}  # evals downstream of training change too
    assert all(s.config.decontaminate is None for s in off.stages.values())


def test_plan_json_records_probes_gates_and_ordering():
    j = _paper().to_json()
    assert j["gates"] and all(set(g) == {"probe", "min_signal"} for g in j["gates"].values())
    for sid in j["gates"]:
        assert j["stages"][sid]["after"] == [j["gates"][sid]["probe"]]
    assert all(r["probe"] in j["stages"] for r in j["runs"] if r["method"] not in ("base", "sft"))


def test_a_distill_source_without_rl_methods_needs_no_usable_rl_layout():
    """The distill stage's accuracy rule comes from the RL recipe; an experiment without RL methods may
    leave the RL batch layout unusable and still plan (the rule is read, not the layout)."""
    raw = _distill_spec(methods=["sft"])
    raw["spec"]["rl"].update(global_batch_size=4, per_device_batch_size=7)  # 1 prompt x 10 rollouts per update: no fit
    plan = build_plan(spec.validate_dict(raw))
    (d,) = [s for s in plan.stages.values() if s.kind == "distill"]
    assert d.config.params["reward"]["accuracy_rule"] == "mathruler"
    raw["spec"]["rl"]["recipe"] = "trl"
    plan = build_plan(spec.validate_dict(raw))
    (d,) = [s for s in plan.stages.values() if s.kind == "distill"]
    assert d.config.params["reward"]["accuracy_rule"] == "lenient"
