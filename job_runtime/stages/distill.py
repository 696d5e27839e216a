"""The ``distill`` stage: a teacher's verified reasoning traces become an SFT dataset.

The paper's SFT data are made by rejection sampling: a teacher VLM answers each training question
several times and only responses that reach the right answer in the right format are kept. This
stage does that for a data source written as ``data[].distill`` in the experiment:

setup   DistillParams; the prompts (job_runtime.stages.sampling.load_prompts: RL-style rows with
        image, question and answer, in the fixed subset order, at most ``max_prompts``),
        decontaminated against the experiment's benchmarks before any generation;
run     the teacher -- the eval stage's generation backends (vLLM on GPUs, HF otherwise), or the
        synthetic task's offline solver for ``builtin://synthetic-solver`` -- samples
        ``samples_per_prompt`` responses per prompt; each is verified by the study's rewards
        (job_runtime.train.rewards.weighted: the accuracy reward and the format reward must both
        be 1); per prompt, up to ``keep_per_prompt`` verified traces are kept, shortest first,
        duplicates (same text up to whitespace) removed;
publish ``data/sft.parquet`` (contract.DISTILL_DATA: id, images, question, trace, answer,
        choices, pass_rate; read by the sft stages of the data source through
        job_runtime.io.data), results.json (the yield: prompts with a verified trace, mean pass
        rate, kept traces, mean trace length), samples.jsonl (every response with its verdicts)
        and metrics.jsonl (``distill/*``), then _SUCCESS.

A teacher that verifies nothing fails the stage with the yield figures (a data source of zero
traces cannot be trained on), before any sft stage starts.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from pydantic import ValidationError

from job_runtime.contract import (
    DISTILL_DATA,
    METRICS_JSONL,
    RESULTS_JSON,
    SAMPLES_JSONL,
    DistillParams,
    EvalParams,
    RewardWeights,
    StageConfig,
)
from job_runtime.errors import StageError
from job_runtime.io import storage
from job_runtime.stages import sampling

log = logging.getLogger(__name__)


def verified(s: sampling.Scored) -> list[bool]:
    """Which responses of a prompt pass verification: accuracy and format rewards both 1."""
    return [a >= 1.0 and f >= 1.0 for a, f in zip(s.accuracy, s.format)]


def keep(responses: list[str], ok: list[bool], n: int) -> list[int]:
    """Indices of up to n verified responses: shortest first, ties by sample order, duplicates dropped.

    >>> keep(["long answer", "a", "b", "a ", "zz"], [True, True, False, True, True], 3)
    [1, 4, 0]
    """
    seen: set[str] = set()
    out = []
    for j in sorted((j for j, good in enumerate(ok) if good), key=lambda j: (len(responses[j].strip()), j)):
        text = " ".join(responses[j].split())
        if text in seen:
            continue
        seen.add(text)
        out.append(j)
        if len(out) == n:
            break
    return out


def yield_figures(scored: list[sampling.Scored], kept: list[list[int]], tokens: Any = None) -> dict[str, Any]:
    """The yield of a distillation (pure): how many prompts and traces survived verification.

    >>> from job_runtime.stages.sampling import Prompt, Scored
    >>> p = Prompt("a", "q", b"", "1")
    >>> g = [Scored(p, ["ab", "abcd"], [[1, 1], [1, 0]], [1, .9]), Scored(p, ["x", "y"], [[0, 0], [1, 1]], [.1, .1])]
    >>> f = yield_figures(g, [[0], []])
    >>> f["prompts_with_verified"], f["mean_pass_rate"], f["kept_traces"], f["mean_trace_chars"]
    (1, 0.25, 1, 2.0)
    """
    n = len(scored)
    rates = [sum(verified(s)) / len(s.responses) for s in scored]
    traces = [s.responses[j] for s, ks in zip(scored, kept) for j in ks]
    with_verified = sum(1 for r in rates if r > 0)
    out: dict[str, Any] = {
        "prompts": n,
        "samples_per_prompt": len(scored[0].responses) if scored else 0,
        "responses": sum(len(s.responses) for s in scored),
        "prompts_with_verified": with_verified,
        "prompts_with_verified_share": with_verified / n if n else 0.0,
        "mean_pass_rate": sum(rates) / n if n else 0.0,
        "accuracy_rate": _mean([a for s in scored for a in s.accuracy]),
        "format_rate": _mean([f for s in scored for f in s.format]),
        "kept_traces": len(traces),
        "mean_trace_chars": _mean([len(t) for t in traces]),
        "mean_trace_tokens": _mean([len(tokens(t)) for t in traces]) if tokens is not None and traces else None,
    }
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _tokenizer(backend: Any):
    """A function text -> token ids from the backend's processor, or None (the solver has none)."""
    tok = getattr(getattr(backend, "processor", None), "tokenizer", None)
    return (lambda text: tok(text, add_special_tokens=False)["input_ids"]) if tok is not None else None


def setup(cfg: StageConfig) -> tuple[DistillParams, list[sampling.Prompt], Any]:
    """Validated parameters, the prompts to distil, and the decontamination index (or None)."""
    from job_runtime.eval.contamination import ContaminationSetupError, index_for
    from job_runtime.io.data import DataError

    try:
        params = DistillParams.model_validate(cfg.params)
    except ValidationError as e:
        first = e.errors()[0]
        raise StageError(f"distill parameter {'.'.join(str(x) for x in first['loc'])} of stage {cfg.id} is invalid, "
                         f"because {first['msg']}. Fix data[].distill in the experiment.") from None
    uri = cfg.data.get("prompts") or params.prompts
    try:
        contamination = index_for(cfg.decontaminate)
        prompts, report = sampling.load_prompts(uri, params.max_prompts,
                                                contamination.reason if contamination else None, cap=True)
    except (DataError, ContaminationSetupError) as e:
        raise StageError(str(e)) from None
    log.info("distill %s: %s", cfg.id, report.summary())
    return params, prompts, contamination


def _parquet(rows: list[dict[str, Any]], path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("id", pa.string()), ("images", pa.list_(pa.binary())), ("question", pa.string()), ("trace", pa.string()),
        ("answer", pa.string()), ("choices", pa.list_(pa.string())), ("pass_rate", pa.float64()),
        ("source_id", pa.string()),
    ])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), str(path))


def run(cfg: StageConfig) -> None:
    """Distil cfg.model's verified traces on cfg.data['prompts'] into data/sft.parquet under cfg.output."""
    from job_runtime.metrics import StageMetrics

    if not sampling.rank_zero():
        log.info("distill %s: rank %s has nothing to do (the stage runs on rank 0)", cfg.id, os.environ["RANK"])
        return
    params, prompts, contamination = setup(cfg)
    if storage.is_complete(cfg.output):
        log.info("distill %s: already complete; nothing to do", cfg.id)
        return
    gen = EvalParams(temperature=params.temperature, top_p=params.top_p, max_new_tokens=params.max_new_tokens,
                     batch_size=params.batch_size, generation=params.generation)
    with sampling.workdir(cfg.output, "distill") as out:
        for stale in (METRICS_JSONL, RESULTS_JSON, SAMPLES_JSONL, DISTILL_DATA):
            (out / stale).unlink(missing_ok=True)
        backend = sampling.make_backend(cfg.model, gen, cfg.seed, "data[].distill.generation")
        responses = sampling.sample(backend, prompts, params.samples_per_prompt)
        scored = sampling.score(prompts, responses, params.reward or RewardWeights())
        oks = [verified(s) for s in scored]
        kept = [keep(s.responses, ok, params.keep_per_prompt) for s, ok in zip(scored, oks)]
        figures = yield_figures(scored, kept, _tokenizer(backend))
        results = {"kind": "distill", "teacher": cfg.model, "stage": cfg.id, "backend": backend.name, **figures,
                   "keep_per_prompt": params.keep_per_prompt, "temperature": params.temperature,
                   "decontamination": contamination.summary() if contamination else None}
        rows = []
        with open(out / SAMPLES_JSONL, "w", encoding="utf-8") as f:
            for s, ok, ks in zip(scored, oks, kept):
                rate = sum(ok) / len(ok)
                for rank, j in enumerate(ks):
                    rows.append({"id": f"{s.prompt.id}-t{rank}", "images": [s.prompt.image],
                                 "question": s.prompt.text, "trace": s.responses[j].strip(), "answer": s.prompt.answer,
                                 "choices": s.prompt.choices, "pass_rate": rate, "source_id": s.prompt.id})
                for j, resp in enumerate(s.responses):
                    f.write(json.dumps({"id": s.prompt.id, "sample": j, "response": resp,
                                        **{name: s.parts[i][j] for i, name in enumerate(s.names)},
                                        "verified": ok[j], "kept": j in ks}, ensure_ascii=False) + "\n")
        (out / RESULTS_JSON).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if not rows:
            raise StageError(
                f"distill {cfg.id}: teacher {cfg.model} produced no verified trace, because none of its "
                f"{figures['responses']} responses on {figures['prompts']} prompts had both the right answer and "
                f"the format (accuracy rate {figures['accuracy_rate']:.3f}, format rate {figures['format_rate']:.3f}). "
                "Use a stronger teacher, more samples_per_prompt, or check the prompts' answers."
            )
        _parquet(rows, out / DISTILL_DATA)
        metrics = StageMetrics(cfg, out / METRICS_JSONL)
        try:
            metrics.log(0, {"distill/pass_rate": figures["mean_pass_rate"], "distill/kept_traces": figures["kept_traces"]})
        finally:
            metrics.close()
        log.info("distill %s: %d of %d prompts have a verified trace; mean pass rate %.3f; kept %d traces, "
                 "mean %s chars", cfg.id, figures["prompts_with_verified"], figures["prompts"],
                 figures["mean_pass_rate"], figures["kept_traces"], _fmt(figures["mean_trace_chars"]))
        storage.publish(out, cfg.output, kind="distill", stage=cfg.id, kept_traces=figures["kept_traces"])


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"

