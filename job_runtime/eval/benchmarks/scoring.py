"""Scoring many responses: in this process, or split across forked worker processes.

math-verify's timeouts use signal.alarm, which only works in a main thread; every worker process
has its own main thread, so workers keep the timeouts (threads would not). Workers are forked,
so they start in milliseconds with the parent's modules (and caches) already loaded, and they read
the rows from the parent's memory: only index ranges and verdicts are pickled.

>>> from job_runtime.eval.benchmarks.registry import get
>>> bench = get("math500")
>>> rows = [{"unique_id": "a", "problem": "1+1", "answer": "2"}, {"unique_id": "b", "problem": "2+2", "answer": "4"}]
>>> [v.correct for v in score_rows(bench, rows, ["\\\\boxed{2}", "The answer is 5."])]
[True, False]
>>> entry = result_entry(bench, rows, score_rows(bench, rows, ["\\\\boxed{2}", "5"], protocol="strict"), protocol="strict")
>>> entry["score"], entry["protocol"]
(0.5, 'strict')
"""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Any

from job_runtime.eval.benchmarks.base import SCORER, Benchmark, Verdict, check_protocol
from job_runtime.eval.benchmarks.registry import get

PARALLEL_MIN_ROWS = 400  # below this, forking costs more than it saves


_FORKED: tuple[list[dict[str, Any]], list[str]] = ([], [])  # the rows a forked worker reads (not pickled)


def _score_chunk(args: tuple[str, int, int, str]) -> list[Verdict]:
    name, start, end, protocol = args
    bench = get(name)
    rows, responses = _FORKED
    return [bench.verdict(rows[i], responses[i], protocol) for i in range(start, end)]


def default_workers() -> int:
    """Worker processes for scoring: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def score_rows(
    bench: Benchmark, rows: list[dict[str, Any]], responses: list[str], workers: int = 1, protocol: str = "official"
) -> list[Verdict]:
    """One Verdict per (row, response) under `protocol`, in order; `workers` > 1 forks that many processes."""
    check_protocol(protocol)
    if len(rows) != len(responses):
        raise ValueError(f"{len(rows)} rows but {len(responses)} responses. Pass one response per row.")
    responses = [r if isinstance(r, str) else "" for r in responses]
    if workers <= 1 or len(rows) < PARALLEL_MIN_ROWS or "fork" not in mp.get_all_start_methods():
        return [bench.verdict(r, resp, protocol) for r, resp in zip(rows, responses)]
    chunks = workers * 4
    size = -(-len(rows) // chunks)
    jobs = [(bench.name, i, min(i + size, len(rows)), protocol) for i in range(0, len(rows), size)]
    global _FORKED
    _FORKED = (rows, responses)  # forked workers inherit them: only index ranges and verdicts cross a pipe
    try:
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_score_chunk, jobs)
    finally:
        _FORKED = ([], [])
    return [v for part in parts for v in part]


def result_entry(
    bench: Benchmark,
    rows: list[dict[str, Any]],
    verdicts: list[Verdict],
    scorer: dict[str, Any] | None = None,
    protocol: str = "official",
) -> dict[str, Any]:
    """The results.json entry of one benchmark: score, metric, n, protocol, breakdown, scorer."""
    score, breakdown = bench.aggregate(rows, verdicts)
    methods: dict[str, int] = {}
    for v in verdicts:
        methods[v.method] = methods.get(v.method, 0) + 1
    scorer = dict(scorer or SCORER)
    scorer["verdicts_by"] = methods
    scorer["protocol"] = protocol
    return {"score": float(score), "metric": bench.metric, "n": len(verdicts), "protocol": protocol,
            "breakdown": breakdown, "scorer": scorer}
