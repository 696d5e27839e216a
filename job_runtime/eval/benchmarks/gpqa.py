"""GPQA diamond (198 items): Idavidrein/gpqa, config gpqa_diamond, split train.

The four options (the correct answer and three incorrect ones) are shuffled per item with a
fixed seed: the permutation is a function of the item's Record ID (sha256), so the letter order
is the same on every run, machine and Python version. The study prompt lists them as (A)..(D);
the official prompt is the authors' zero-shot template ("What is the correct answer to this
question: ...", answering "The correct answer is (X)"). Scoring: the option letter named by the
response (or the option text) must be the correct one. Breakdown: accuracy per high-level domain.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from job_runtime.eval.answers import LETTERS, extract_choice
from job_runtime.eval.benchmarks.base import Benchmark, Verdict, accuracy_by

SHUFFLE_SEED = 0
OPTION_FIELDS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def shuffled_options(row: dict[str, Any], seed: int = SHUFFLE_SEED) -> tuple[list[str], str]:
    """(options in the item's fixed order, the correct letter).

    >>> row = {"Record ID": "r1", "Correct Answer": "c", "Incorrect Answer 1": "x",
    ...        "Incorrect Answer 2": "y", "Incorrect Answer 3": "z"}
    >>> shuffled_options(row) == shuffled_options(dict(row)), sorted(shuffled_options(row)[0])
    (True, ['c', 'x', 'y', 'z'])
    """
    options = [str(row[f]).strip() for f in OPTION_FIELDS]
    key = hashlib.sha256(f"gpqa:{seed}:{row.get('Record ID') or row.get('Question')}".encode()).digest()
    order = list(range(4))
    random.Random(int.from_bytes(key[:8], "big")).shuffle(order)
    shuffled = [options[i] for i in order]
    return shuffled, LETTERS[order.index(0)]


class GPQA(Benchmark):
    name = "gpqa"
    hf_id = "Idavidrein/gpqa"
    hf_config = "gpqa_diamond"
    split = "train"
    id_field = "Record ID"
    answer_field = "Correct Answer"
    required = ("Question",) + OPTION_FIELDS[1:]

    def choices(self, row: dict[str, Any]) -> list[str] | None:
        return shuffled_options(row)[0]

    def gold(self, row: dict[str, Any]) -> str:
        return shuffled_options(row)[1]

    def question(self, row: dict[str, Any]) -> str:
        opts = self.choices(row) or []
        return f"{str(row['Question']).strip()}\n" + "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(opts))

    def official_prompt(self, row: dict[str, Any]) -> str:
        opts = self.choices(row) or []
        listed = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(opts))
        return (f"What is the correct answer to this question: {str(row['Question']).strip()}\n\nChoices:\n{listed}\n\n"
                'Format your response as follows: "The correct answer is (insert answer here)"')

    def score(self, row: dict[str, Any], response: str) -> Verdict:
        letter, ext = extract_choice(response, self.choices(row))
        return Verdict(letter or ext, letter == self.gold(row))

    def aggregate(self, rows, verdicts):
        score, breakdown = super().aggregate(rows, verdicts)
        breakdown["domain"] = accuracy_by(rows, verdicts, "High-level domain")
        return score, breakdown
