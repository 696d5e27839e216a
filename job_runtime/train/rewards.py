"""Reward functions for the rl stage: EasyR1's format and accuracy rewards, weighted.

Every reward is a pure function ``(completions, **columns) -> list[float]`` as TRL's GRPOTrainer
calls it: ``completions`` are plain strings or TRL's conversational form
(``[{"role": "assistant", "content": ...}]``), and the dataset's other columns (``answer``,
``choices``, ...) arrive as keyword lists, one value per completion.

- `format_reward`: 1.0 when the response fully matches ``<think>.*</think>.*\\boxed\\{.*\\}.*``
  (DOTALL) after whitespace around ``<``, ``>`` and ``/`` is removed -- EasyR1's rule.
- `accuracy_reward` (``rl.reward.accuracy_rule: mathruler``, the study's): EasyR1's rule
  (examples/reward_function/math.py): 1.0 when the content of the *last* ``\\boxed{}`` of the whole
  response is the gold ``answer`` under mathruler's ``grade_answer``
  (`job_runtime.eval.mathruler`); a response without a box earns 0, whatever it says.
- `lenient_accuracy_reward` (``accuracy_rule: lenient``): sftrl's eval extraction
  (`job_runtime.eval.answers.extract_answer`: the last box, else an answer after ``</think>``, a
  "final answer" line, ``<answer>`` tags, "answer is", a choice letter) judged by
  `job_runtime.eval.answers.is_correct` (letters through a ``choices`` column, math-verify). It
  rewards unboxed answers that EasyR1 scores 0, so weak models look less starved than in the paper.
- `weighted` / `build`: the functions and weights for TRL (``reward_funcs`` + ``reward_weights``),
  so TRL logs each component (``rewards/accuracy_reward/mean``, ``rewards/format_reward/mean``)
  and their weighted sum (``reward``). Custom rewards are named by dotted import path.

>>> format_reward(["<think>2 + 2</think> so \\\\boxed{4}", "\\\\boxed{4}"])
[1.0, 0.0]
>>> accuracy_reward([[{"role": "assistant", "content": "<think>.</think> \\\\boxed{4}"}]], answer=["4"])
[1.0]
>>> accuracy_reward(["<think>.</think> The answer is 4."], answer=["4"]), lenient_accuracy_reward(["<think>.</think> The answer is 4."], answer=["4"])
([0.0], [1.0])
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Callable, Sequence

from job_runtime.contract import AccuracyRule, RewardWeights
from job_runtime.eval import mathruler
from job_runtime.eval.answers import extract_answer, is_correct

RewardFn = Callable[..., list[float]]

_FORMAT = re.compile(r"<think>.*</think>.*\\boxed\{.*\}.*", re.DOTALL)
_SPACES = re.compile(r"\s*(<|>|/)\s*")


class RewardConfigError(ValueError):
    """A custom reward could not be imported; the message names it."""


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the last message of TRL's conversational form.

    >>> completion_text("hi"), completion_text([{"role": "assistant", "content": "hi"}])
    ('hi', 'hi')
    >>> completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    'ab'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)) and completion:
        content = completion[-1].get("content", "") if isinstance(completion[-1], dict) else completion[-1]
        if isinstance(content, list):
            return "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return "" if content is None else str(content)
    return ""


def format_reward(completions: Sequence[Any], **_: Any) -> list[float]:
    """EasyR1's format reward: think block, then a boxed answer (whitespace around tags ignored).

    >>> format_reward(["< think >a</ think > \\\\boxed{1}"])      # spaces inside tags collapse
    [1.0]
    >>> format_reward(["<think>a \\\\boxed{1}"])                   # no </think>
    [0.0]
    >>> format_reward(["<think>a</think> \\\\boxed{1} \\\\boxed{2}"])  # two boxes still match the format
    [1.0]
    >>> format_reward(["<think>a</think> the answer is 1"])       # no box
    [0.0]
    """
    out = []
    for c in completions:
        text = _SPACES.sub(r"\1", completion_text(c))
        out.append(1.0 if _FORMAT.fullmatch(text) else 0.0)
    return out


def _column(values: Any, n: int) -> list[Any]:
    if values is None:
        return [None] * n
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        return [values] * n
    if len(values) != n:
        raise ValueError(f"a reward column has {len(values)} values for {n} completions")
    return list(values)


def accuracy_reward(completions: Sequence[Any], answer: Sequence[str] | None = None, **_: Any) -> list[float]:
    """EasyR1's accuracy reward: the last ``\\boxed{}`` graded by mathruler's rules, no box = 0.

    >>> accuracy_reward(["<think>.</think> \\\\boxed{1} then \\\\boxed{2}"], answer=["2"])  # the last box counts
    [1.0]
    >>> accuracy_reward(["\\\\boxed{\\\\frac{1}{2}}", "\\\\boxed{2/4}"], answer=["0.5", "1/2"])  # unreduced: wrong
    [1.0, 0.0]
    """
    golds = _golds(completions, answer)
    return [mathruler.accuracy(completion_text(c), str(g)) if g is not None else 0.0 for c, g in zip(completions, golds)]


def lenient_accuracy_reward(
    completions: Sequence[Any], answer: Sequence[str] | None = None, choices: Sequence[Any] | None = None, **_: Any
) -> list[float]:
    """1.0 when sftrl's eval extraction finds the gold `answer` (letters via `choices`).

    >>> lenient_accuracy_reward(["\\\\boxed{\\\\frac{1}{2}}"], answer=["0.5"])                   # fraction vs decimal
    [1.0]
    >>> lenient_accuracy_reward(["\\\\boxed{B}", "\\\\boxed{cat}"], answer=["dog", "dog"], choices=[["cat", "dog"]] * 2)
    [1.0, 0.0]
    >>> lenient_accuracy_reward(["no answer"], answer=["3"])
    [0.0]
    """
    golds, opts = _golds(completions, answer), _column(choices, len(completions))
    out = []
    for c, gold, ch in zip(completions, golds, opts):
        pred = extract_answer(completion_text(c))
        ok = pred is not None and gold is not None and is_correct(pred, str(gold), list(ch) if ch else None)
        out.append(1.0 if ok else 0.0)
    return out


def _golds(completions: Sequence[Any], answer: Any) -> list[Any]:
    if answer is None:
        raise ValueError("accuracy_reward needs an 'answer' column in the training data. Add one to the RL rows.")
    return _column(answer, len(completions))


ACCURACY_RULES: dict[str, RewardFn] = {"mathruler": accuracy_reward, "lenient": lenient_accuracy_reward}


def accuracy_for(rule: AccuracyRule) -> RewardFn:
    """The accuracy reward of a rule, named ``accuracy_reward`` (TRL logs rewards/<name>/mean).

    >>> accuracy_for("lenient").__name__, accuracy_for("lenient")(["Answer: 4"], answer=["4"])
    ('accuracy_reward', [1.0])
    """
    fn = ACCURACY_RULES[rule]
    if fn is accuracy_reward:
        return fn

    def named(completions: Sequence[Any], **columns: Any) -> list[float]:
        return fn(completions, **columns)

    named.__name__ = "accuracy_reward"
    return named


def load_custom(path: str) -> RewardFn:
    """A reward function by dotted import path ``package.module.function``.

    >>> load_custom("job_runtime.train.rewards.format_reward").__name__
    'format_reward'
    """
    module, _, name = path.rpartition(".")
    if not module:
        raise RewardConfigError(
            f"Custom reward '{path}' is not a dotted path, because it has no module part. "
            "Write rl.reward.custom as {'package.module.function': weight}."
        )
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise RewardConfigError(
            f"Custom reward '{path}' could not be imported, because {type(e).__name__}: {e}. "
            "Check the module is installed in the runtime image and the function name is right."
        ) from None
    if not callable(fn):
        raise RewardConfigError(f"Custom reward '{path}' is not callable. Point it at a function.")
    return fn


def weighted(weights: RewardWeights, rule: AccuracyRule = "mathruler") -> tuple[list[RewardFn], list[float]]:
    """(reward functions, weights) for TRL: accuracy, format, then custom rewards in name order.

    TRL sums ``weight x reward`` per completion and logs each function's mean under
    ``rewards/<function name>/mean``. Zero-weight components are kept, so they are still logged.

    >>> fns, ws = weighted(RewardWeights())
    >>> [f.__name__ for f in fns], ws
    (['accuracy_reward', 'format_reward'], [0.9, 0.1])
    """
    funcs: list[RewardFn] = [accuracy_for(rule), format_reward]
    ws = [float(weights.accuracy), float(weights.format)]
    for path in sorted(weights.custom):
        funcs.append(load_custom(path))
        ws.append(float(weights.custom[path]))
    return funcs, ws


build = weighted


def combined(weights: RewardWeights, rule: AccuracyRule = "mathruler") -> RewardFn:
    """One function returning the weighted sum (for callers that take a single reward).

    >>> combined(RewardWeights())(["<think>.</think> \\\\boxed{4}"], answer=["4"])
    [1.0]
    """
    funcs, ws = weighted(weights, rule)

    def total(completions: Sequence[Any], **columns: Any) -> list[float]:
        parts = [f(completions, **columns) for f in funcs]
        return [round(sum(w * p[i] for w, p in zip(ws, parts)), 10) for i in range(len(completions))]

    total.__name__ = "reward"
    return total
