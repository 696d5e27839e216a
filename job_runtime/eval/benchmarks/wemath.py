"""We-Math (testmini, 1,740 items: 525 problems, each a multi-step question and its one-step
sub-questions): We-Math/We-Math, split testmini.

Extraction: a boxed or <answer> letter first; else the authors' rule (evaluation/accuracy.py):
the text after the last "Answer", stripped of ``<>:.``, whose first character is a letter A-H;
else an answer phrase or a short last line naming an option (job_runtime.eval.answers).

Metric (evaluation/four_dimensional_metrics.py): per problem, with s = its sub-questions and m
its multi-step question:

- IK (insufficient knowledge): some s wrong and m wrong;
- IG (inadequate generalisation): every s right and m wrong;
- CM (complete mastery): strict every s right and m right; loose some s right and m right;
- RM (rote memorisation): strict some s wrong and m right; loose every s wrong and m right;
- score = (N - 0.5 IG - RM - IK) / N with N problems (525), strict and loose.

The headline is the strict score. Breakdown: the counts and rates (IK, IG, CM over N; RM over
CM + RM as upstream), one/two/three-step accuracy (S1, S2, S3) and plain accuracy.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from job_runtime.eval.answers import LETTERS, choice_letter, extract_choice, find_answer
from job_runtime.eval.benchmarks.base import Benchmark, Verdict

OFFICIAL_PROMPT = (
    "Now, we require you to solve a multiple-choice math question. Please briefly describe your thought process "
    "and provide the final answer(option).\nQuestion: {question}\nOption: {option}\nRegarding the format, please "
    "answer following the template below, and be sure to include two <> symbols:\n<Thought process>: <<your thought "
    "process>> <Answer>: <<your option>>"
)
_OPTION = re.compile(r"(?:^|;)\s*([A-H])\.\s*(?![;\s]*$|;)")


def parse_options(option: str) -> list[str]:
    """'A. 300;B. 400; E. No correct answer' -> ['300', '400', ..., 'No correct answer'].

    >>> parse_options("A. 5π;B. 4π; C. No correct answer")
    ['5π', '4π', 'No correct answer']
    >>> parse_options("A. to shape ;C.; B. to shape ;C.; C. none")
    ['to shape ;C.', 'to shape ;C.', 'none']
    """
    option = option or ""
    starts = []
    for m in _OPTION.finditer(option):
        if m.group(1) == LETTERS[len(starts)]:  # "Shape ;C.;" inside a text is not option C
            starts.append(m)
    out = []
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(option)
        out.append(option[m.end() : end].strip().rstrip(";").strip())
    return out


def official_letter(response: str) -> str | None:
    """The authors' rule: after the last 'Answer', strip <>:. and take a first letter A-H.

    >>> official_letter("<Thought process>: <<...>> <Answer>: <<B>>"), official_letter("none")
    ('B', None)
    """
    tail = (response or "").split("Answer")[-1].strip()
    tail = re.sub(r"[><:.]", "", tail).strip()
    return tail[0] if tail and tail[0] in "ABCDEFGH" else None


def four_dimensional(rows: list[dict[str, Any]], correct: list[bool]) -> dict[str, Any]:
    """IK, IG, CM, RM counts, rates and strict/loose scores over complete problems (see module doc)."""
    groups: dict[str, dict[str, bool]] = defaultdict(dict)
    for row, ok in zip(rows, correct):
        groups[str(row["ID"])][str(row["key"])] = bool(ok)
    counts = dict.fromkeys(("IK", "IG", "CM_strict", "CM_loose", "RM_strict", "RM_loose"), 0)
    n = 0
    for keys in groups.values():
        steps = next((int(k[0]) for k in keys if re.match(r"\dsteps_", k)), None)
        if steps is None:
            continue
        subs = [keys.get(f"{steps}steps_{i}") for i in range(1, steps + 1)]
        multi = keys.get(f"{steps}steps_multi")
        if multi is None or any(s is None for s in subs):
            continue  # an incomplete problem (a limit cut it): upstream's merge leaves it out too
        n += 1
        all_s, any_s = all(subs), any(subs)
        if multi:
            counts["CM_strict"] += all_s
            counts["CM_loose"] += any_s
            counts["RM_strict"] += not all_s
            counts["RM_loose"] += not any_s
        else:
            counts["IG"] += all_s
            counts["IK"] += not all_s
    rate = lambda x, d: x / d if d else 0.0  # noqa: E731
    return {
        "problems": n,
        "counts": counts,
        "rates": {
            "IK": rate(counts["IK"], n),
            "IG": rate(counts["IG"], n),
            "CM_strict": rate(counts["CM_strict"], n),
            "CM_loose": rate(counts["CM_loose"], n),
            "RM_strict": rate(counts["RM_strict"], counts["CM_strict"] + counts["RM_strict"]),
            "RM_loose": rate(counts["RM_loose"], counts["CM_loose"] + counts["RM_loose"]),
        },
        "score_strict": rate(n - 0.5 * counts["IG"] - counts["RM_strict"] - counts["IK"], n),
        "score_loose": rate(n - 0.5 * counts["IG"] - counts["RM_loose"] - counts["IK"], n),
    }


class WeMath(Benchmark):
    name = "wemath"
    hf_id = "We-Math/We-Math"
    split = "testmini"
    id_field = "ID"
    metric = "score_strict"
    required = ("key", "option")

    def item_id(self, row: dict[str, Any]) -> str:
        return f"{row['ID']}@{row['key']}"

    def choices(self, row: dict[str, Any]) -> list[str] | None:
        return parse_options(str(row.get("option") or "")) or None

    def question(self, row: dict[str, Any]) -> str:
        opts = self.choices(row) or []
        lines = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(opts))
        return f"{str(row['question']).strip()}\nChoices:\n{lines}" if opts else str(row["question"]).strip()

    def official_prompt(self, row: dict[str, Any]) -> str:
        return OFFICIAL_PROMPT.format(question=row["question"], option=row.get("option", ""))

    def score(self, row: dict[str, Any], response: str) -> Verdict:
        gold = str(row["answer"]).strip()
        choices = self.choices(row)
        ans, method = find_answer(response)
        letter = choice_letter(ans, choices) if method in ("boxed", "tag") else None
        if letter is None and "Answer" in (response or ""):
            letter = official_letter(response)
        if letter is None:
            letter, ans = extract_choice(response, choices)
        return Verdict(letter or ans, letter == gold)

    def aggregate(self, rows, verdicts):
        correct = [v.correct for v in verdicts]
        fd = four_dimensional(rows, correct)

        def acc(pred) -> float | None:
            sel = [c for r, c in zip(rows, correct) if pred(str(r["key"]))]
            return sum(sel) / len(sel) if sel else None

        breakdown = {
            **fd,
            "accuracy": sum(correct) / len(correct) if correct else 0.0,
            "S1": acc(lambda k: not k.endswith("multi")),
            "S2": acc(lambda k: k == "2steps_multi"),
            "S3": acc(lambda k: k == "3steps_multi"),
            "correct": sum(correct),
            "total": len(correct),
        }
        return fd["score_strict"], breakdown
