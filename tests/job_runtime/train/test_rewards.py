"""Reward functions: EasyR1's format rule, verified accuracy, weighting, custom rewards, TRL's forms."""

from __future__ import annotations

import doctest
import sys
import types

import pytest

from job_runtime.train import rewards
from job_runtime.contract import RewardWeights
from job_runtime.train.rewards import (
    RewardConfigError,
    accuracy_reward,
    combined,
    lenient_accuracy_reward,
    completion_text,
    format_reward,
    load_custom,
    weighted,
)


def conv(text: str) -> list[dict]:
    """TRL's conversational completion."""
    return [{"role": "assistant", "content": text}]


def test_doctests():
    result = doctest.testmod(rewards)
    assert result.attempted >= 15 and result.failed == 0


@pytest.mark.parametrize(
    "text,expected",
    [
        ("<think>2+2</think> \\boxed{4}", 1.0),
        ("<think>\nmulti\nline\n</think>\nso \\boxed{4}.", 1.0),  # DOTALL, text after the box
        ("< think >a</ think >\\boxed{4}", 1.0),  # spaces around < > / collapse (Qwen2.5-VL-32B style)
        ("<think>a \\boxed{4}", 0.0),  # no </think>
        ("<think>a</think> 4", 0.0),  # no box
        ("\\boxed{4} <think>a</think>", 0.0),  # box before the think block
        ("a</think> \\boxed{4}", 0.0),  # no opening tag
        ("<think>a</think> \\boxed{1} \\boxed{2}", 1.0),  # two boxes: the format holds
        ("<think>a</think> \\boxed{\\frac{1}{2}}", 1.0),  # nested braces
        ("", 0.0),
    ],
)
def test_format_reward(text, expected):
    assert format_reward([text]) == [expected]
    assert format_reward([conv(text)]) == [expected]


@pytest.mark.parametrize(
    "text,gold,choices,study,lenient",
    [
        ("<think>.</think> \\boxed{7}", "7", None, 1.0, 1.0),
        ("<think>.</think> \\boxed{8}", "7", None, 0.0, 0.0),
        ("<think>\\boxed{7}</think> \\boxed{1} and finally \\boxed{8}", "8", None, 1.0, 1.0),  # last box wins
        ("<think>.</think> \\boxed{\\frac{3}{4}}", "0.75", None, 1.0, 1.0),  # fraction vs decimal
        ("<think>.</think> \\boxed{0.5}", "\\frac{1}{2}", None, 1.0, 1.0),
        ("<think>.</think> \\boxed{\\{1, 2\\}}", "\\{1,2\\}", None, 1.0, 1.0),  # nested braces in the box
        ("<think>.</think> \\boxed{5 cm}", "5", None, 1.0, 1.0),  # a unit around the right number
        ("<think>.</think> \\boxed{2/4}", "1/2", None, 0.0, 1.0),  # mathruler: an unreduced fraction is wrong
        # mathruler knows no options: a letter is graded against the gold text as it is.
        ("<think>.</think> \\boxed{B}", "dog", ["cat", "dog"], 0.0, 1.0),
        ("<think>.</think> \\boxed{dog}", "B", ["cat", "dog"], 0.0, 1.0),
        ("<think>.</think> \\boxed{B}", "B", ["cat", "dog"], 1.0, 1.0),
        ("<think>.</think> \\boxed{A}", "dog", ["cat", "dog"], 0.0, 0.0),
        ("<think>it is 7", "7", None, 0.0, 0.0),  # no final answer at all
        # Unboxed correct answers: EasyR1 (the study) gives 0, sftrl's lenient extraction gives credit.
        ("<think>3 + 4</think> The answer is 7.", "7", None, 0.0, 1.0),
        ("<think>3 + 4</think> Final answer: 7", "7", None, 0.0, 1.0),
        ("<think>3 + 4</think> <answer>7</answer>", "7", None, 0.0, 1.0),
        ("<think>3 + 4</think> \\boxed{7", "7", None, 0.0, 0.0),  # a box that never closes
    ],
)
def test_accuracy_reward_study_and_lenient(text, gold, choices, study, lenient):
    kwargs = {"answer": [gold]}
    if choices is not None:
        kwargs["choices"] = [choices]
    for fn, expected in ((accuracy_reward, study), (lenient_accuracy_reward, lenient)):
        assert fn([text], **kwargs) == [expected], fn.__name__
        assert fn([conv(text)], **kwargs) == [expected], fn.__name__


def test_the_recipe_picks_the_accuracy_rule():
    """easyr1 (the study default) grades an unboxed correct answer 0; the lenient option gives it credit."""
    from job_runtime.contract import RLParams
    from job_runtime.recipes import resolve_rl

    text, gold = "<think>3 + 4</think> The answer is 7.", "7"
    for params, expected in (
        (RLParams(), 0.0),
        (RLParams(reward={"accuracy_rule": "lenient"}), 1.0),
        (RLParams(recipe="trl"), 1.0),
        (RLParams(recipe="trl", reward={"accuracy_rule": "mathruler"}), 0.0),
    ):
        rule = resolve_rl(params, "grpo", 1)["accuracy_rule"]
        funcs, _ = weighted(params.reward, rule)
        assert funcs[0].__name__ == "accuracy_reward"  # the logged key is the same under both rules
        assert funcs[0]([text], answer=[gold]) == [expected], (params.recipe, rule)


def test_accuracy_needs_the_answer_column():
    with pytest.raises(ValueError, match="'answer' column"):
        accuracy_reward(["\\boxed{1}"])


def test_column_length_mismatch_is_caught():
    with pytest.raises(ValueError, match="2 values for 1 completions"):
        accuracy_reward(["\\boxed{1}"], answer=["1", "2"])


def test_extra_trl_columns_are_ignored():
    out = accuracy_reward(["\\boxed{1}"], answer=["1"], prompts=["q"], completion_ids=[[1]], trainer_state=None)
    assert out == [1.0]


def test_completion_text_forms():
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "x"}]}]) == "x"
    assert completion_text({"role": "assistant", "content": "y"}) == "y"
    assert completion_text(None) == ""


def test_weighted_matches_trl_and_keeps_component_names():
    funcs, ws = weighted(RewardWeights(accuracy=0.9, format=0.1))
    assert [f.__name__ for f in funcs] == ["accuracy_reward", "format_reward"]  # rewards/<name>/mean keys
    assert ws == [0.9, 0.1]
    texts = ["<think>.</think> \\boxed{4}", "\\boxed{4}", "<think>.</think> \\boxed{5}", "nothing"]
    total = combined(RewardWeights())(texts, answer=["4"] * 4)
    assert total == [1.0, 0.9, 0.1, 0.0]
    assert combined(RewardWeights(accuracy=1.0, format=0.0))(texts, answer=["4"] * 4) == [1.0, 1.0, 0.0, 0.0]


def test_custom_reward_by_import_path(monkeypatch):
    mod = types.ModuleType("my_rewards")
    mod.brevity = lambda completions, **kw: [1.0 / (1 + len(completion_text(c))) for c in completions]  # type: ignore[attr-defined]
    mod.not_callable = 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "my_rewards", mod)
    funcs, ws = weighted(RewardWeights(custom={"my_rewards.brevity": 0.5}))
    assert funcs[-1] is mod.brevity and ws[-1] == 0.5
    assert combined(RewardWeights(accuracy=0, format=0, custom={"my_rewards.brevity": 1.0}))(["x"], answer=["1"]) == [0.5]
    with pytest.raises(RewardConfigError, match="'my_rewards.missing' could not be imported"):
        load_custom("my_rewards.missing")
    with pytest.raises(RewardConfigError, match="not callable"):
        load_custom("my_rewards.not_callable")
    with pytest.raises(RewardConfigError, match="not a dotted path"):
        load_custom("brevity")


def test_grpo_trainer_accepts_the_functions():
    """TRL calls each function with completions and the dataset columns; names become log keys."""
    from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: F401 - importable with these functions

    funcs, _ = weighted(RewardWeights())
    prompts = [[{"role": "user", "content": "q"}]] * 2
    completions = [conv("<think>a</think> \\boxed{3}"), conv("\\boxed{2}")]
    for f in funcs:
        out = f(prompts=prompts, completions=completions, completion_ids=[[1], [2]], answer=["3", "3"])
        assert len(out) == 2 and all(isinstance(x, float) for x in out)
