"""The experiment file: every error at once, with its path, 'did you mean', exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controller import spec
from tests.conftest import ROOT

EXAMPLES = ROOT / "examples"


@pytest.mark.parametrize("name", ["quickstart.yaml", "paper.yaml"])
def test_examples_validate(name):
    exp = spec.load(EXAMPLES / name)
    assert exp.spec.models and exp.spec.methods


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


def _broken(tmp_path: Path) -> Path:
    raw = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    raw["spec"]["scales"] = [-5]
    raw["spec"]["methods"] = ["sft", "gpro"]
    raw["spec"]["rl"]["num_generations"] = 1
    raw["spec"]["rl"]["learning_rat"] = 0.1
    raw["spec"]["modles"] = []
    return _write(tmp_path, yaml.safe_dump(raw))


def test_every_error_at_once_with_paths_and_suggestions(tmp_path):
    with pytest.raises(spec.SpecError) as e:
        spec.load(_broken(tmp_path))
    problems = "\n".join(e.value.problems)
    assert "spec.scales: scale -5 must be >= 1" in problems
    assert "spec.methods[1]: 'gpro' is not one of" in problems and "did you mean 'grpo'" in problems
    assert "spec.rl.num_generations: must be >= 2" in problems
    assert "spec.rl.learning_rat: unknown key 'learning_rat'; did you mean 'learning_rate'?" in problems
    assert "spec.modles: unknown key 'modles'; did you mean 'models'?" in problems
    assert len(e.value.problems) == 5


def test_cli_validate_exit_2_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "controller.cli", "validate", str(_broken(tmp_path))],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr + r.stdout
    assert "5 problems" in r.stderr and "did you mean 'grpo'" in r.stderr


def test_yaml_syntax_error_names_the_line(tmp_path):
    p = _write(tmp_path, "apiVersion: sftrl/v1\nkind: Experiment\nspec:\n  models: [a\n  scales: 1\n")
    r = subprocess.run([sys.executable, "-m", "controller.cli", "validate", str(p)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "YAML syntax error at line" in r.stderr


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(spec.SpecError, match="file not found"):
        spec.load(tmp_path / "nope.yaml")
    with pytest.raises(spec.SpecError, match="must be a YAML mapping"):
        spec.load(_write(tmp_path, "- a\n- b\n"))


def test_methods_need_their_datasets(tmp_path):
    raw = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    del raw["spec"]["data"][0]["sft"]
    with pytest.raises(spec.SpecError, match="has no 'sft' dataset"):
        spec.validate_dict(raw)


def test_dump_roundtrips_with_defaults():
    exp = spec.load(EXAMPLES / "quickstart.yaml")
    again = spec.validate_dict(yaml.safe_load(spec.dump(exp)))
    assert again == exp


def test_unknown_benchmark_is_refused_with_a_suggestion():
    raw = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    raw["spec"]["eval"]["benchmarks"] = ["mathvsta"]
    with pytest.raises(spec.SpecError) as e:
        spec.validate_dict(raw)
    assert "spec.eval.benchmarks: unknown benchmark 'mathvsta'; did you mean 'mathvista'?" in e.value.problems[0]


def test_a_data_source_gives_or_builds_its_sft_traces():
    raw = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    distilled = raw["spec"]["data"][1]
    assert "distill" in distilled and "sft" not in distilled
    distilled["sft"] = "builtin://synthetic/sft"
    with pytest.raises(spec.SpecError, match="data 'distilled' has both 'sft' and 'distill'.*Keep one of them"):
        spec.validate_dict(raw)
    del distilled["sft"], distilled["distill"]
    with pytest.raises(spec.SpecError, match="Add data\\[\\].sft, or data\\[\\].distill to build one"):
        spec.validate_dict(raw)


def test_distill_section_errors_have_paths_and_suggestions():
    raw = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    d = raw["spec"]["data"][1]["distill"]
    d["samples_per_promt"] = d.pop("samples_per_prompt")
    del d["teacher"]
    raw["spec"]["rl"]["min_signal"] = 1.5
    with pytest.raises(spec.SpecError) as e:
        spec.validate_dict(raw)
    problems = "\n".join(e.value.problems)
    assert "spec.data[1].distill.samples_per_promt: unknown key 'samples_per_promt'; did you mean 'samples_per_prompt'?" in problems
    assert "spec.data[1].distill.teacher: is required" in problems
    assert "spec.rl.min_signal: must be <= 1" in problems


def test_a_gpu_teacher_needs_gpus_for_its_distill_stage():
    raw = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    raw["spec"]["data"][1]["distill"]["teacher"] = "Qwen/Qwen2.5-VL-7B-Instruct"
    with pytest.raises(spec.SpecError, match="resources.default.gpus_per_node is 0, but the distill stages of "
                                             "Qwen/Qwen2.5-VL-7B-Instruct need a GPU"):
        spec.validate_dict(raw)
    raw["spec"]["resources"]["distill"] = {"gpus_per_node": 1, "nodes": 1, "deepspeed": "none"}
    spec.validate_dict(raw)  # the other stages of the builtin model stay on CPU
