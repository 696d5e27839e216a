"""The quickstart's synthetic visual-arithmetic set (job_runtime.builtin.synthetic, split test).

Rows come from ``generate('test', n, seed=0)`` (n = EvalParams.limit, default 100), or from a
``builtin://synthetic/test?n=..&seed=..`` URI or a file given as eval.data.synthetic. Both prompt
styles are the study's format prompt (the task has no other). Scoring: the extracted answer (the
last ``\\boxed{}`` first) must equal the gold count.
"""

from __future__ import annotations

from typing import Any

from job_runtime.eval.benchmarks.base import Benchmark
from job_runtime.prompts import format_question

DEFAULT_N = 100
SEED = 0


class Synthetic(Benchmark):
    name = "synthetic"
    hf_id = "builtin://synthetic/test"
    split = "test"

    def load(self, source: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        from job_runtime.builtin import synthetic

        self.base_dir = None
        if source and source.startswith("builtin://"):
            rows = synthetic.load_uri(source)
            return rows[:limit] if limit else rows
        if source:
            return super().load(source, limit)
        return synthetic.generate("test", limit or DEFAULT_N, seed=SEED)

    def official_prompt(self, row: dict[str, Any]) -> str:
        return format_question(self.question(row))
