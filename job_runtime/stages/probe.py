"""The ``probe`` stage: is the policy ready for RL? Rollouts of it on a fixed sample of the RL prompts.

GRPO learns only from groups whose rollouts got different rewards: a group that is all right or all
wrong has zero advantage (TRL logs the share of such groups as ``frac_reward_zero_std``). Before an
RL stage spends its GPUs, the planner puts a probe in front of it that samples ``samples``
rollouts (default ``rl.num_generations``) of the policy RL will start from (the base model or the
SFT stage's output) on the first ``prompts`` prompts of the RL subset, with the RL stage's
sampling (temperature, top_p, max completion length) and scores them with the RL stage's reward.

setup   ProbeRun parameters; the prompts (job_runtime.stages.sampling.load_prompts: the first N
        usable rows of the RL source in the fixed subset order, decontaminated as the RL stage
        decontaminates them) before the model is loaded;
run     the eval stage's generation backend (vLLM on GPUs, HF otherwise), k rollouts per prompt,
        every rollout scored by the study's reward (job_runtime.train.rewards, weighted as GRPO
        weighs it);
publish results.json -- ``mixed_share`` (prompts whose rollouts did not all get the same total
        reward: the predicted signal availability, ``1 - frac_reward_zero_std``), ``pass_at_1``
        (mean share of accurate rollouts), ``pass_at_k`` (prompts with at least one accurate
        rollout), ``all_correct_share``, ``all_wrong_share``, the reward mean, its mean
        within-group standard deviation and its overall spread -- samples.jsonl (one row per
        rollout) and metrics.jsonl (``probe/*``), then _SUCCESS.

Not modelled: DAPO's overlong shaping and dynamic sampling (the probe predicts the signal of the
study reward itself), and the RL stage's removal of prompts longer than rl.max_prompt_length.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from typing import Any

from pydantic import ValidationError

from job_runtime.contract import METRICS_JSONL, RESULTS_JSON, SAMPLES_JSONL, EvalParams, ProbeRun, StageConfig
from job_runtime.errors import StageError
from job_runtime.io import storage
from job_runtime.stages import sampling

log = logging.getLogger(__name__)


def summarize(scored: list[sampling.Scored]) -> dict[str, Any]:
    """The probe's figures from scored groups (pure).

    >>> from job_runtime.stages.sampling import Prompt, Scored
    >>> p = Prompt("a", "q", b"", "1")
    >>> g = [Scored(p, ["x"] * 4, [[1, 0, 0, 0], [1, 1, 1, 1]], [1.0, 0.1, 0.1, 0.1]),
    ...      Scored(p, ["x"] * 4, [[0, 0, 0, 0], [1, 1, 1, 1]], [0.1] * 4)]
    >>> s = summarize(g)
    >>> s["mixed_share"], s["pass_at_1"], s["pass_at_k"], s["all_wrong_share"]
    (0.5, 0.125, 0.5, 0.5)
    """
    n = len(scored)
    if n == 0:
        raise ValueError("no prompts were probed")
    mixed = [sampling.has_signal(s.totals) for s in scored]
    acc = [sum(1 for a in s.accuracy if a >= 1.0) / len(s.accuracy) for s in scored]
    totals = [t for s in scored for t in s.totals]
    return {
        "prompts": n,
        "samples": len(scored[0].responses),
        "mixed_share": sum(mixed) / n,
        "pass_at_1": sum(acc) / n,
        "pass_at_k": sum(1 for a in acc if a > 0) / n,
        "all_correct_share": sum(1 for a in acc if a == 1.0) / n,
        "all_wrong_share": sum(1 for a in acc if a == 0.0) / n,
        "reward_mean": sum(totals) / len(totals),
        "reward_std": statistics.pstdev(totals) if len(totals) > 1 else 0.0,
        "reward_group_std_mean": sum(sampling.group_std(s.totals) for s in scored) / n,
        "reward_components": {
            name: sum(sum(part) for part in [s.parts[f] for s in scored]) / len(totals)
            for f, name in enumerate(scored[0].names)
        },
    }


def setup(cfg: StageConfig) -> tuple[ProbeRun, list[sampling.Prompt], Any]:
    """Validated parameters, the probed prompts, and the decontamination index (or None)."""
    from job_runtime.eval.contamination import ContaminationSetupError, index_for
    from job_runtime.io.data import DataError

    try:
        params = ProbeRun.model_validate(cfg.params)
    except ValidationError as e:
        first = e.errors()[0]
        raise StageError(f"probe parameter {'.'.join(str(x) for x in first['loc'])} of stage {cfg.id} is invalid, "
                         f"because {first['msg']}. Re-plan the experiment (rl.probe).") from None
    if "train" not in cfg.data:
        raise StageError(f"probe stage {cfg.id} has no data.train (the RL prompts), because its stage.json lists only "
                         f"{sorted(cfg.data)}. Re-plan the experiment.")
    try:
        contamination = index_for(cfg.decontaminate)
        prompts, _ = sampling.load_prompts(cfg.data["train"], cfg.scale or params.prompts,
                                           contamination.reason if contamination else None)
    except (DataError, ContaminationSetupError) as e:
        raise StageError(str(e)) from None
    return params, prompts, contamination


def run(cfg: StageConfig) -> None:
    """Sample, score and publish the probe of cfg.model on cfg.data['train']."""
    from job_runtime.metrics import StageMetrics

    if not sampling.rank_zero():
        log.info("probe %s: rank %s has nothing to do (the stage runs on rank 0)", cfg.id, os.environ["RANK"])
        return
    params, prompts, contamination = setup(cfg)
    if storage.is_complete(cfg.output):
        log.info("probe %s: already complete; nothing to do", cfg.id)
        return
    gen = EvalParams(temperature=params.temperature, top_p=params.top_p, max_new_tokens=params.max_new_tokens,
                     batch_size=params.batch_size, generation=params.generation)
    with sampling.workdir(cfg.output, "probe") as out:
        for stale in (METRICS_JSONL, RESULTS_JSON, SAMPLES_JSONL):
            (out / stale).unlink(missing_ok=True)
        backend = sampling.make_backend(cfg.model, gen, cfg.seed, "rl.generation")
        responses = sampling.sample(backend, prompts, params.samples, params.min_pixels, params.max_pixels)
        scored = sampling.score(prompts, responses, params.reward)
        results = {"kind": "probe", "model": cfg.model, "stage": cfg.id, "backend": backend.name,
                   **summarize(scored), "temperature": params.temperature, "max_new_tokens": params.max_new_tokens,
                   "decontamination": contamination.summary() if contamination else None}
        with open(out / SAMPLES_JSONL, "w", encoding="utf-8") as f:
            for s in scored:
                for j, resp in enumerate(s.responses):
                    row = {"id": s.prompt.id, "sample": j, "response": resp, "reward": s.totals[j],
                           **{name: s.parts[i][j] for i, name in enumerate(s.names)}}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        metrics = StageMetrics(cfg, out / METRICS_JSONL)
        try:
            metrics.log(0, {"probe/mixed_share": results["mixed_share"], "probe/pass_at_1": results["pass_at_1"],
                            "probe/pass_at_k": results["pass_at_k"]})
        finally:
            metrics.close()
        (out / RESULTS_JSON).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        log.info("probe %s: %d prompts x %d rollouts: mixed outcomes %.2f (predicted signal), pass@1 %.3f, "
                 "pass@%d %.3f", cfg.id, results["prompts"], params.samples, results["mixed_share"],
                 results["pass_at_1"], params.samples, results["pass_at_k"])
        storage.publish(out, cfg.output, kind="probe", stage=cfg.id)
