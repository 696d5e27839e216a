"""HallusionBench: lmms-lab/HallusionBench, splits image and non_image (1,129 yes/no questions).

Upstream asks GPT-4 whether a response says yes, no or neither; judge-free, the response's answer
(boxed, answer phrase, short last line, else its first word) is read as yes (1) or no (0); anything
else is wrong, as upstream's "uncertain" is. Metrics (upstream's utils): aAcc, accuracy over all
questions (the headline); fAcc, figures whose every question is right (key: category,
subcategory, set_id, figure_id); qAcc, questions right on every figure variant (key: category,
subcategory, set_id, question_id).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from job_runtime.eval.answers import clean_answer, find_answer
from job_runtime.eval.benchmarks.base import Benchmark, Verdict, accuracy_by, load_rows

_YES = re.compile(r"^(?:yes|true|correct|right)\b", re.IGNORECASE)
_NO = re.compile(r"^(?:no|not|false|incorrect|wrong)\b", re.IGNORECASE)


def yes_no(response: str) -> str | None:
    """'1' for yes, '0' for no, None when the response says neither.

    >>> yes_no("Yes, the line is longer."), yes_no("<think>..</think> \\\\boxed{No}"), yes_no("It depends.")
    ('1', '0', None)
    """
    ans, _ = find_answer(response, lenient=True)
    for text in (ans, (response or "").strip()):
        t = clean_answer(text or "")
        if _YES.match(t):
            return "1"
        if _NO.match(t):
            return "0"
    words = set(re.findall(r"\b(yes|no)\b", (response or "").lower()))
    return {"yes": "1", "no": "0"}[words.pop()] if len(words) == 1 else None


def _key(row: dict[str, Any], last: str) -> str:
    return "_".join(str(row.get(f)) for f in ("category", "subcategory", "set_id", last))


def all_right(rows: list[dict[str, Any]], correct: list[bool], last: str) -> dict[str, Any]:
    groups: dict[str, bool] = defaultdict(lambda: True)
    for r, ok in zip(rows, correct):
        groups[_key(r, last)] &= bool(ok)
    n = len(groups)
    return {"accuracy": sum(groups.values()) / n if n else 0.0, "correct": sum(groups.values()), "total": n}


class HallusionBench(Benchmark):
    name = "hallusionbench"
    hf_id = "lmms-lab/HallusionBench"
    split = "image"
    splits = ("image", "non_image")
    metric = "aAcc"
    answer_field = "gt_answer"
    required = ("question", "category", "subcategory", "set_id", "figure_id", "question_id")

    def load(self, source=None, limit=None):
        if source:
            return super().load(source, limit)
        rows: list[dict[str, Any]] = []
        for split in self.splits:
            self.split = split
            rows += load_rows(self, None)[0]
        self.split, self.base_dir = "image", None
        return self.prepare(rows[:limit] if limit else rows)

    def validate(self, row):
        if not isinstance(row, dict):
            return "it is not a JSON object"
        for f in (self.answer_field, *self.required):
            if row.get(f) is None:
                return f"it has no '{f}' field"
        return None

    def item_id(self, row: dict[str, Any]) -> str:
        return _key(row, "figure_id") + f"_{row.get('question_id')}"

    def gold(self, row: dict[str, Any]) -> str:
        return str(row["gt_answer"]).strip()

    def question(self, row: dict[str, Any]) -> str:
        return str(row["question"]).strip()

    def official_prompt(self, row: dict[str, Any]) -> str:
        return self.question(row)

    def images(self, row):
        if str(row.get("visual_input", "1")) == "0":
            return []
        return super().images(row)

    def score(self, row: dict[str, Any], response: str) -> Verdict:
        pred = yes_no(response)
        return Verdict(pred, pred is not None and pred == self.gold(row))

    def aggregate(self, rows, verdicts):
        correct = [v.correct for v in verdicts]
        a = sum(correct) / len(correct) if correct else 0.0
        breakdown = {
            "aAcc": a,
            "fAcc": all_right(rows, correct, "figure_id")["accuracy"],
            "qAcc": all_right(rows, correct, "question_id")["accuracy"],
            "figures": all_right(rows, correct, "figure_id"),
            "question_pairs": all_right(rows, correct, "question_id"),
            "category": accuracy_by(rows, verdicts, "category"),
            "subcategory": accuracy_by(rows, verdicts, "subcategory"),
            "correct": sum(correct),
            "total": len(correct),
        }
        return a, breakdown
