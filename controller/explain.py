"""`sftrl plan --explain EXPERIMENT [STAGE]`: the resolved training arguments of each stage. Pure.

For every training stage of the plan: each TRL config field that differs from TRL's default
(`recipes.TRL_GRPO_DEFAULTS` / `TRL_SFT_DEFAULTS`), then what sftrl does around TRL (mini-batches,
reward rule, online filter, held-out decoding), the processor's pixel bounds and the frozen modules,
each with its source: ``recipe <name>`` (and the EasyR1 / LLaMA-Factory file it comes from),
``experiment`` (set in the file), ``default`` (the field's default, the paper's value), ``derived``
(computed from others) or ``sftrl`` (operational). The resolution is the one the stages run
(`recipes.resolve_rl` / `resolve_sft`), so what is printed is what trains.

Stages whose explanation is identical (the same settings for other data, scales or seeds) are
printed once, with all their ids. Eval stages do not train and are listed by id only.
"""

from __future__ import annotations

from typing import Any

from controller.plan import Plan, Stage
from controller.spec import Experiment
from job_runtime.contract import RLParams, SFTParams
from job_runtime.recipes import TRL_GRPO_DEFAULTS, TRL_SFT_DEFAULTS, Resolved, Setting, resolve_rl, resolve_sft

_RL_PIXELS = ("min_pixels", "max_pixels")
_SFT_PIXELS = ("image_min_pixels", "image_max_pixels")
_SFT_FROZEN = ("freeze_vision_tower", "freeze_multi_modal_projector")


class ExplainError(ValueError):
    """The STAGE argument names no stage of the plan."""


def world_size(exp: Experiment, kind: str) -> int:
    res = exp.spec.resources.for_kind(kind)
    return max(res.gpus_per_node, 1) * res.nodes


def resolve_stage(exp: Experiment, stage: Stage) -> Resolved:
    cfg = stage.config
    if stage.kind == "rl":
        return resolve_rl(RLParams.model_validate(cfg.params), cfg.algorithm, world_size(exp, "rl"), seed=cfg.seed)
    return resolve_sft(SFTParams.model_validate(cfg.params), world_size(exp, "sft"), seed=cfg.seed)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()) or "{}"
    return "none" if value is None else str(value)


def _row(name: str, s: Setting) -> str:
    note = f"  ({s.note})" if s.note else ""
    return f"    {name:<36} {_fmt(s.value):<14} {s.source}{note}"


def explain_stage(exp: Experiment, stage: Stage) -> list[str]:
    """The explanation lines of one training stage (without its header)."""
    r = resolve_stage(exp, stage)
    rl = stage.kind == "rl"
    defaults = TRL_GRPO_DEFAULTS if rl else TRL_SFT_DEFAULTS
    res = exp.spec.resources.for_kind(stage.kind)
    out = [f"  trl.{'GRPOConfig' if rl else 'SFTConfig'}, fields that differ from TRL 1.16's defaults:"]
    for name, s in r.trl.items():
        if name not in defaults or s.value != defaults[name]:
            out.append(_row(name, s))
    if res.gpus_per_node > 0:
        out.append(_row("bf16", Setting(True, "derived", "GPU resources")))
    ds = stage.config.deepspeed
    if ds:
        zero = ds.get("zero_optimization", {}).get("stage")
        out.append(_row("deepspeed", Setting(f"ZeRO-{zero}", "derived", f"resources.{stage.kind}, model size")))
    pixels, frozen = (_RL_PIXELS, ()) if rl else (_SFT_PIXELS, _SFT_FROZEN)
    out.append("  sftrl around TRL:")
    for name, s in r.runtime.items():
        if name not in pixels and name not in frozen:
            out.append(_row(name, s))
    out.append("  processor pixel bounds (images resized before the processor):")
    out += [_row(name, r.runtime[name]) for name in pixels]
    out.append("  frozen modules:")
    if rl:
        out.append(_row("none", Setting("-", f"recipe {r['recipe']}",
                                        "EasyR1 worker.actor.model.freeze_vision_tower: false"
                                        if r["recipe"] == "easyr1" else "all trained")))
    else:
        out += [_row(name, r.runtime[name]) for name in frozen]
    return out


def _describe(stage: Stage) -> str:
    lb = stage.labels
    return f"{lb.model} {lb.method} {lb.data} {lb.scale} s{lb.seed}".strip()


def explain(exp: Experiment, plan: Plan, stage: str | None = None) -> str:
    """The text `sftrl plan --explain` prints: every training stage, or the one named by id (or id prefix)."""
    stages = list(plan.stages.values())
    if stage is not None:
        stages = [s for s in stages if s.id == stage] or [s for s in stages if s.id.startswith(stage)]
        if len(stages) != 1:
            found = "no stage" if not stages else f"{len(stages)} stages"
            raise ExplainError(
                f"STAGE '{stage}' matches {found} of experiment {plan.experiment}, because it must be one stage id "
                "or a unique prefix. Run `sftrl plan FILE` to list the stage ids."
            )
    groups: dict[tuple[str, ...], list[Stage]] = {}
    evals: list[str] = []
    for st in stages:
        if st.kind in ("eval", "distill", "probe"):  # generation only: nothing trains
            evals.append(st.id)
            continue
        groups.setdefault((st.kind, *explain_stage(exp, st)), []).append(st)
    lines = [f"experiment {plan.experiment}: resolved training arguments"]
    for key, members in groups.items():
        kind, body = key[0], list(key[1:])
        ids = ", ".join(m.id for m in members)
        lines.append(f"\n{kind} stage{'s' if len(members) > 1 else ''} {ids}")
        lines.append(f"  runs: {'; '.join(_describe(m) for m in members)}")
        lines += body
    if evals:
        lines.append(f"\neval, distill and probe stages (no training): {', '.join(evals)}")
    return "\n".join(lines) + "\n"
