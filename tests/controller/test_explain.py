"""`sftrl plan --explain`: every training stage of examples/paper.yaml pinned in a golden file
(SFTRL_UPDATE_GOLDEN=1 rewrites it), the study's values checked one by one, and the CLI."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from controller import cli
from controller.explain import ExplainError, explain
from controller.plan import build_plan
from controller.spec import load

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "examples" / "paper.yaml"
GOLDEN = ROOT / "manifests" / "golden" / "explain-paper.txt"


def _paper() -> str:
    exp = load(PAPER)
    return explain(exp, build_plan(exp))


def test_paper_explanation_matches_the_golden_file():
    text = _paper()
    if os.environ.get("SFTRL_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), (
        "the explained arguments of examples/paper.yaml changed; if intended, regenerate with "
        "SFTRL_UPDATE_GOLDEN=1 pytest tests/controller/test_explain.py")


def _block(text: str, header: str) -> str:
    """The block of the stage group whose runs line contains `header`."""
    for block in text.split("\n\n"):
        if header in block.split("\n")[1 if block.startswith(("rl", "sft")) else 0]:
            return block
    raise AssertionError(f"no block for {header}")


def _value(block: str, name: str) -> tuple[str, str]:
    m = re.search(rf"^    {re.escape(name)}\s+(\S+(?:, \S+ \S+)*)\s+(recipe \w+|experiment|default|derived|sftrl)", block, re.M)
    assert m, f"{name} not in block"
    return m.group(1), m.group(2)


def test_every_stage_is_explained_once():
    exp = load(PAPER)
    plan = build_plan(exp)
    text = _paper()
    for sid, st in plan.stages.items():
        assert text.count(sid) == 1, sid


def test_the_table_values_for_the_paper_stages():
    text = _paper()
    grpo = _block(text, "qwen2.5-vl-3b grpo self-distill 2000 s0")
    dapo = _block(text, "qwen2.5-vl-3b dapo self-distill 2000 s0")
    sft = _block(text, "qwen2.5-vl-3b sft self-distill 2000 s0")
    want_grpo = {
        "steps_per_generation": ("40", "derived"), "gradient_accumulation_steps": ("10", "derived"),
        "beta": ("0.01", "recipe easyr1"), "epsilon_high": ("0.3", "recipe easyr1"), "delta": ("3", "recipe easyr1"),
        "lr_scheduler_type": ("constant", "recipe easyr1"), "weight_decay": ("0.01", "recipe easyr1"),
        "mini_batch_size": ("128", "recipe easyr1"), "updates_per_rollout_batch": ("4", "derived"),
        "accuracy_rule": ("mathruler", "recipe easyr1"), "max_prompt_length": ("2048", "recipe easyr1"),
        "min_pixels": ("262144", "recipe easyr1"), "max_pixels": ("4194304", "recipe easyr1"),
        "heldout_temperature": ("0.6", "recipe easyr1"), "heldout_top_p": ("0.95", "recipe easyr1"),
        "heldout_every_steps": ("20", "recipe easyr1"), "online_filtering": ("False", "recipe easyr1"),
    }
    for name, want in want_grpo.items():
        assert _value(grpo, name) == want, name
    assert "loss_type" not in grpo  # "dapo" is TRL's default: EasyR1's token mean over the update
    want_dapo = {"epsilon_high": ("0.28", "recipe easyr1"), "online_filtering": ("True", "recipe easyr1"),
                 "filter_key": ("overall", "recipe easyr1"), "filter_low": ("0.01", "default"),
                 "filter_high": ("0.99", "default"), "mini_rollout_batch_size": ("128", "recipe easyr1"),
                 "overlong_buffer": ("0", "recipe easyr1")}
    for name, want in want_dapo.items():
        assert _value(dapo, name) == want, name
    assert not re.search(r"^    beta ", dapo, re.M)  # beta 0 = TRL's default: no KL for dapo
    want_sft = {"freeze_vision_tower": ("True", "recipe llamafactory"),
                "freeze_multi_modal_projector": ("True", "recipe llamafactory"),
                "max_length": ("2048", "recipe llamafactory"), "image_max_pixels": ("262144", "recipe llamafactory"),
                "lr_scheduler_type": ("cosine", "recipe llamafactory"), "warmup_steps": ("0.1", "recipe llamafactory")}
    for name, want in want_sft.items():
        assert _value(sft, name) == want, name


def test_cli_explains_one_stage_or_refuses_an_unknown_one(capsys):
    exp = load(PAPER)
    sid = next(s for s in build_plan(exp).stages if s.startswith("rl-"))
    assert cli.main(["plan", "--explain", str(PAPER), sid[:9]]) == 0
    out = capsys.readouterr().out
    assert sid in out and "steps_per_generation" in out and "sft stage" not in out
    assert cli.main(["plan", "--explain", str(PAPER), "rl-nope"]) == 2
    assert "STAGE 'rl-nope' matches no stage" in capsys.readouterr().err
    with pytest.raises(ExplainError):
        explain(exp, build_plan(exp), "zz")
