"""The eval stage: generate on every benchmark of EvalParams.benchmarks, score, publish.

setup   validate the parameters, resolve every benchmark and load its rows (EvalParams.data
        overrides, EvalParams.limit) before the model is loaded, so missing data fails in seconds
        with the benchmark's name and the ``eval.data`` key to set;
run     build the generation backend (job_runtime.eval.generation: vLLM when usable, else HF), then per
        benchmark: prompts (the study's format prompt, or each benchmark's own with
        ``prompt: official``), responses, verdicts by the benchmark's judge-free rules (plus the
        optional LLM extractor of EvalParams.judge), the official headline and breakdowns;
publish results.json ({"benchmarks": {name: {score, metric, n, breakdown, scorer}}, ...}),
        samples.jsonl (one row per item: benchmark, id, prompt, response, extracted, correct,
        gold, method) and metrics.jsonl (``eval_accuracy/<name>``), then storage.publish writes
        _SUCCESS last. A file:// output is written in place; s3:// goes through a temp folder.

>>> from job_runtime.contract import EvalParams
>>> EvalParams(benchmarks=["synthetic"], limit=4).benchmarks
['synthetic']
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from pydantic import ValidationError

from job_runtime.io import scratch, storage
from job_runtime.eval.benchmarks.base import Benchmark, BenchmarkDataError
from job_runtime.eval.benchmarks.registry import UnknownBenchmark, get
from job_runtime.eval.benchmarks.scoring import result_entry, score_rows
from job_runtime.contract import METRICS_JSONL, RESULTS_JSON, SAMPLES_JSONL, SUCCESS, EvalParams, StageConfig
from job_runtime.errors import StageError

log = logging.getLogger(__name__)

CHUNK = 1024  # requests per generation call: bounds the images held in memory at once


def _stage_error(msg: str) -> Exception:
    return StageError(msg)


@contextlib.contextmanager
def _workdir(output: str) -> Iterator[Path]:
    if storage.is_local(output):
        path = storage.local_path(output)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = scratch.mkdtemp("eval")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def setup(cfg: StageConfig) -> tuple[EvalParams, list[tuple[Benchmark, list[dict[str, Any]]]]]:
    """Validated parameters and every benchmark with its rows (raises a StageError on bad input)."""
    try:
        params = EvalParams.model_validate(cfg.params)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise _stage_error(f"eval.{where} is invalid, because {first['msg']}. Fix it in the experiment's eval section.") from None
    loaded = []
    for name in params.benchmarks:
        try:
            bench = get(name)
            rows = bench.load(params.data.get(name) or params.data.get(bench.name), params.limit)
        except (UnknownBenchmark, BenchmarkDataError) as e:
            raise _stage_error(str(e)) from None
        if not rows:
            raise _stage_error(f"Benchmark '{name}' loaded no rows. Check eval.data.{name} and eval.limit.")
        log.info("%s: %d items", bench.name, len(rows))
        loaded.append((bench, rows))
    return params, loaded


def evaluate(bench: Benchmark, rows: list[dict[str, Any]], backend, params: EvalParams, judge=None):
    """(results entry, sample rows, generation seconds) of one benchmark."""
    from job_runtime.eval.generation import Request

    responses: list[str] = []
    prompts: list[str] = []
    t0 = time.time()
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        try:
            reqs = [Request(bench.prompt(r, params.prompt), bench.images(r)) for r in chunk]
        except BenchmarkDataError as e:
            raise _stage_error(str(e)) from None
        prompts += [r.prompt for r in reqs]
        responses += backend.generate(reqs)
    gen_s = time.time() - t0
    verdicts = score_rows(bench, rows, responses, workers=1, protocol=params.protocol)
    if judge is not None:
        verdicts = judge.rescue(bench, rows, responses, verdicts, params.protocol)
    entry = result_entry(bench, rows, verdicts, judge.describe() if judge is not None else None, params.protocol)
    samples = [
        {
            "benchmark": bench.name,
            "id": bench.item_id(r),
            "prompt": p,
            "response": resp,
            "extracted": v.extracted,
            "correct": bool(v.correct),
            "gold": bench.gold(r),
            "method": v.method,
            "protocol": params.protocol,
        }
        for r, p, resp, v in zip(rows, prompts, responses, verdicts)
    ]
    return entry, samples, gen_s


def run(cfg: StageConfig) -> None:
    """Evaluate cfg.model on the benchmarks of cfg.params and publish under cfg.output."""
    from job_runtime.eval.generation import GenerationError, make_backend
    from job_runtime.metrics import StageMetrics

    params, loaded = setup(cfg)
    with _workdir(cfg.output) as out:
        for stale in (SUCCESS, METRICS_JSONL, RESULTS_JSON, SAMPLES_JSONL):  # a rerun after a failure starts clean
            (out / stale).unlink(missing_ok=True)
        try:
            backend = make_backend(cfg.model, params)
        except GenerationError as e:
            raise _stage_error(str(e)) from None
        judge = None
        if params.judge:
            from job_runtime.eval.benchmarks.judge import Judge

            judge = Judge(params.judge)
        results: dict[str, Any] = {
            "model": cfg.model,
            "stage": cfg.id,
            "backend": backend.name,
            "prompt": params.prompt,
            "params": params.model_dump(),
            "benchmarks": {},
            "generation_seconds": {},
        }
        metrics = StageMetrics(cfg, out / METRICS_JSONL)
        try:
            with open(out / SAMPLES_JSONL, "w", encoding="utf-8") as samples_file:
                for bench, rows in loaded:
                    entry, samples, gen_s = evaluate(bench, rows, backend, params, judge)
                    results["benchmarks"][bench.name] = entry
                    results["generation_seconds"][bench.name] = round(gen_s, 3)
                    for s in samples:
                        samples_file.write(json.dumps(s, ensure_ascii=False, default=str) + "\n")
                    metrics.log(0, {f"eval_accuracy/{bench.name}": entry["score"]})
                    log.info("%s: %s = %.4f (n=%d, %.1f s generating)", bench.name, entry["metric"], entry["score"], entry["n"], gen_s)
        finally:
            metrics.close()
        (out / RESULTS_JSON).write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        storage.publish(out, cfg.output, kind="eval", stage=cfg.id)
