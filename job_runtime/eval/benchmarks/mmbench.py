"""MMBench (English, dev): lmms-lab/MMBench, config en, split dev, with circular evaluation.

Circular evaluation (the authors' CircularEval): a question with n options is asked n times with
the options rotated; it counts as right only when every pass is right. Rows whose index is below
1,000,000 are base questions; copy k of a question has index + k x 1,000,000. Loaded data that
holds only base questions is expanded here; data that already holds the copies is used as is.
Scoring a pass: the option letter the response names (or the option text) must be the answer.
Headline: circular accuracy; breakdown: vanilla accuracy (first pass only) and circular accuracy
per category and l2-category.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from job_runtime.eval.answers import LETTERS, extract_choice
from job_runtime.eval.benchmarks.base import Benchmark, Verdict

COPY = 1_000_000


def _present(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and str(v).strip().lower() not in ("", "nan", "none")


def options(row: dict[str, Any]) -> list[str]:
    out = []
    for letter in LETTERS[:8]:
        if not _present(row.get(letter)):
            break
        out.append(str(row[letter]).strip())
    return out


def circular(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every base question followed by its rotations (answer letter rotated along).

    >>> rows = circular([{"index": 7, "A": "x", "B": "y", "answer": "B"}])
    >>> [(r["index"], r["A"], r["B"], r["answer"]) for r in rows]
    [(7, 'x', 'y', 'B'), (1000007, 'y', 'x', 'A')]
    """
    if any(int(r["index"]) >= COPY for r in rows):
        return rows
    out = []
    for r in rows:
        opts = options(r)
        gold = LETTERS.index(str(r["answer"]).strip())
        for k in range(max(1, len(opts))):
            copy = dict(r, index=int(r["index"]) + k * COPY)
            for i in range(len(opts)):
                copy[LETTERS[i]] = opts[(i + k) % len(opts)]
            copy["answer"] = LETTERS[(gold - k) % len(opts)] if opts else r["answer"]
            out.append(copy)
    return out


class MMBench(Benchmark):
    name = "mmbench"
    hf_id = "lmms-lab/MMBench"
    hf_config = "en"
    split = "dev"
    metric = "circular_accuracy"
    id_field = "index"
    required = ("question", "A")

    def prepare(self, rows):
        return circular(rows)

    def choices(self, row: dict[str, Any]) -> list[str] | None:
        return options(row)

    def question(self, row: dict[str, Any]) -> str:
        text = str(row["question"]).strip()
        if _present(row.get("hint")):
            text = f"Hint: {str(row['hint']).strip()}\nQuestion: {text}"
        return text + "\nOptions:\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options(row)))

    def official_prompt(self, row: dict[str, Any]) -> str:
        return self.question(row) + "\nPlease select the correct answer from the options above."

    def score(self, row: dict[str, Any], response: str) -> Verdict:
        letter, ext = extract_choice(response, options(row))
        return Verdict(letter or ext, letter == str(row["answer"]).strip())

    def aggregate(self, rows, verdicts):
        groups: dict[int, bool] = defaultdict(lambda: True)
        first: dict[int, bool] = {}
        meta: dict[int, dict[str, Any]] = {}
        for r, v in zip(rows, verdicts):
            base, k = int(r["index"]) % COPY, int(r["index"]) // COPY
            groups[base] &= v.correct
            meta.setdefault(base, r)
            if k == 0:
                first[base] = v.correct
        n = len(groups)
        score = sum(groups.values()) / n if n else 0.0

        def per(field: str) -> dict[str, Any]:
            tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            for base, ok in groups.items():
                row = meta[base]
                t = tally[str(row.get(field, row.get(field.upper(), row.get(field.replace("l2", "L2")))))]
                t[0] += ok
                t[1] += 1
            return {k: {"accuracy": c / t, "correct": c, "total": t} for k, (c, t) in sorted(tally.items())}

        breakdown = {
            "questions": n,
            "passes": len(verdicts),
            "circular_correct": sum(groups.values()),
            "vanilla_accuracy": sum(first.values()) / len(first) if first else 0.0,
            "category": per("category"),
            "l2-category": per("l2-category"),
        }
        return score, breakdown
