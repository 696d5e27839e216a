"""MMLU, generative: cais/mmlu, config all, split test (14,042 items).

The model writes a free response instead of scoring option likelihoods. The official prompt is
the simple-evals template (think step by step, last line "Answer: $LETTER"). Scoring: the option
letter the response names (or the option text) must be the answer (an index 0-3 or a letter).
Rows without an id get "<subject>-<position>". Breakdown: accuracy per subject.
"""

from __future__ import annotations

import hashlib
from typing import Any

from job_runtime.eval.answers import LETTERS, extract_choice
from job_runtime.eval.benchmarks.base import Benchmark, Verdict, accuracy_by

OFFICIAL = (
    "Answer the following multiple choice question. The last line of your response should be of the following "
    "format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step before answering."
    "\n\n{question}\n\n{options}"
)


class MMLU(Benchmark):
    name = "mmlu"
    hf_id = "cais/mmlu"
    hf_config = "all"
    split = "test"
    required = ("question", "choices")

    def prepare(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, r in enumerate(rows):
            r.setdefault("id", f"{r.get('subject', 'mmlu')}-{i}")
        return rows

    def item_id(self, row: dict[str, Any]) -> str:
        if row.get("id") is not None:
            return str(row["id"])
        digest = hashlib.sha256(str(row["question"]).encode()).hexdigest()[:10]
        return f"{row.get('subject', 'mmlu')}-{digest}"

    def validate(self, row: dict[str, Any]) -> str | None:
        if not isinstance(row, dict):
            return "it is not a JSON object"
        for f in ("question", "choices", "answer"):
            if row.get(f) is None:
                return f"it has no '{f}' field"
        return None

    def choices(self, row: dict[str, Any]) -> list[str] | None:
        return [str(c) for c in row["choices"]]

    def gold(self, row: dict[str, Any]) -> str:
        a = row["answer"]
        return LETTERS[int(a)] if isinstance(a, int) or str(a).isdigit() else str(a).strip().upper()

    def question(self, row: dict[str, Any]) -> str:
        opts = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(self.choices(row) or []))
        return f"{str(row['question']).strip()}\n{opts}"

    def official_prompt(self, row: dict[str, Any]) -> str:
        opts = "\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(self.choices(row) or []))
        return OFFICIAL.format(question=str(row["question"]).strip(), options=opts)

    def score(self, row: dict[str, Any], response: str) -> Verdict:
        letter, ext = extract_choice(response, self.choices(row))
        return Verdict(letter or ext, letter == self.gold(row))

    def aggregate(self, rows, verdicts):
        score, breakdown = super().aggregate(rows, verdicts)
        breakdown["subject"] = accuracy_by(rows, verdicts, "subject")
        return score, breakdown
