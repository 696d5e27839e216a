"""MATH-500: HuggingFaceH4/MATH-500, split test (500 items).

Scoring: the final answer (last ``\\boxed{}`` first; job_runtime.eval.answers' order) must be
equivalent to the reference answer: normalised string, value, tuple, or math-verify. The
official prompt is the common "Please reason step by step, and put your final answer within
\\boxed{}." Breakdown: accuracy per level and per subject.
"""

from __future__ import annotations

from typing import Any

from job_runtime.eval.answers import extract_answer, is_correct
from job_runtime.eval.benchmarks.base import Benchmark, Verdict, accuracy_by


class Math500(Benchmark):
    name = "math500"
    hf_id = "HuggingFaceH4/MATH-500"
    split = "test"
    id_field = "unique_id"
    required = ("problem",)

    def question(self, row: dict[str, Any]) -> str:
        return str(row["problem"]).strip()

    def official_prompt(self, row: dict[str, Any]) -> str:
        return f"{self.question(row)}\nPlease reason step by step, and put your final answer within \\boxed{{}}."

    def score(self, row: dict[str, Any], response: str) -> Verdict:
        pred = extract_answer(response, lenient=True)
        return Verdict(pred, is_correct(pred, str(row["answer"])))

    def aggregate(self, rows, verdicts):
        score, breakdown = super().aggregate(rows, verdicts)
        breakdown["level"] = accuracy_by(rows, verdicts, "level")
        breakdown["subject"] = accuracy_by(rows, verdicts, "subject")
        return score, breakdown
