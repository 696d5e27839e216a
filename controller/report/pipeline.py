"""The report's data-pipeline sections: distillation yield, decontamination, the RL-readiness probes.

- **Probes**: for every RL run, the signal its probe predicted (share of prompts whose rollouts got
  different rewards) next to the signal the RL stage then measured (first step and mean), or the
  reason it was skipped (rl.min_signal).
- **Distillation**: per distill stage, the yield -- prompts with a verified trace, mean pass rate,
  kept traces, mean trace length.
- **Decontamination**: per training stage, the rows dropped because they matched an item of a
  benchmark of the experiment, by benchmark.

`load` reads storage (plan.json's runs and gates, each stage's results.json) and works out which
stages are skipped through the same pure `controller.reconcile.apply_gates` the run loop uses;
`blocks`, `csv_files` and `signal_lines` are pure renderings of the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from controller import gates as gates_mod
from controller.reconcile import Gate, Observed, State, apply_gates
from job_runtime.contract import RESULTS_JSON, stage_uri
from job_runtime.io import storage as sto


@dataclass
class ProbeRow:
    run: str
    probe: str
    rl: str
    state: str  # done | waiting | skipped (of the RL stage)
    predicted: float | None = None  # the probe's mixed_share
    pass_at_1: float | None = None
    pass_at_k: float | None = None
    prompts: int | None = None
    samples: int | None = None
    measured_first: float | None = None  # the RL stage's first-step signal availability
    measured_mean: float | None = None
    reason: str | None = None


@dataclass
class DistillRow:
    data: str
    stage: str
    teacher: str
    figures: dict[str, Any] = field(default_factory=dict)  # the distill stage's results.json


@dataclass
class DecontamRow:
    data: str
    kind: str
    stage: str
    dropped: dict[str, int] = field(default_factory=dict)  # benchmark -> rows


@dataclass
class Pipeline:
    probes: list[ProbeRow] = field(default_factory=list)
    distills: list[DistillRow] = field(default_factory=list)
    decontam: list[DecontamRow] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # stage id -> reason
    benchmarks: list[str] = field(default_factory=list)


def _results(root: str, sid: str, done: Mapping[str, bool]) -> dict[str, Any] | None:
    if not done.get(sid):
        return None
    try:
        res = sto.read_json(sto.join(stage_uri(root, sid), RESULTS_JSON))
    except (sto.StorageError, ValueError, OSError):
        return None
    return res if isinstance(res, dict) else None


def topological(dag: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """The dag in an order where parents come first (plan.json stores its stages sorted by id).

    >>> list(topological({"c": ("b",), "a": (), "b": ("a",)}))
    ['a', 'b', 'c']
    """
    out: dict[str, tuple[str, ...]] = {}

    def visit(sid: str, path: tuple[str, ...] = ()) -> None:
        if sid in out or sid in path or sid not in dag:
            return
        for p in dag[sid]:
            visit(p, path + (sid,))
        out[sid] = dag[sid]

    for sid in sorted(dag):
        visit(sid)
    return out


def skipped_stages(root: str, plan: Mapping[str, Any], done: Mapping[str, bool]) -> dict[str, str]:
    """stage id -> reason for the stages of plan.json that will not run (rl.min_signal)."""
    gates = {sid: Gate(str(g["probe"]), float(g["min_signal"])) for sid, g in (plan.get("gates") or {}).items()
             if isinstance(g, dict) and "probe" in g and "min_signal" in g}
    if not gates:
        return {}
    stages = plan.get("stages") or {}
    dag = topological({sid: tuple((st or {}).get("parents") or ()) + tuple((st or {}).get("after") or ())
                       for sid, st in stages.items()})
    observed = {sid: Observed(State.SUCCEEDED if done.get(sid) else State.PENDING) for sid in dag}
    outputs = {sid: stage_uri(root, sid) for sid in dag}
    signals = gates_mod.signals(gates, outputs, observed, {})
    return gates_mod.skipped(apply_gates(dag, observed, gates, signals))


def load(root: str, plan: Mapping[str, Any], done: Mapping[str, bool]) -> Pipeline:
    """Everything the pipeline sections show, from storage; ``done``: stage id -> has _SUCCESS."""
    out = Pipeline(skipped=skipped_stages(root, plan, done), benchmarks=list(plan.get("benchmarks") or []))
    stages = plan.get("stages") or {}
    seen_probe: set[tuple[str, str]] = set()
    seen_decon: set[str] = set()
    for r in plan.get("runs") or []:
        if not isinstance(r, dict):
            continue
        train = [str(s) for s in r.get("train") or []]
        probe = r.get("probe")
        if probe and train and (r["run"], probe) not in seen_probe:
            seen_probe.add((r["run"], probe))
            rl = train[-1]
            row = ProbeRow(str(r["run"]), str(probe), rl,
                           "skipped" if rl in out.skipped else "done" if done.get(rl) else "waiting",
                           reason=out.skipped.get(rl))
            pres = _results(root, probe, done) or {}
            row.predicted = gates_mod.predicted_signal(pres)
            row.pass_at_1, row.pass_at_k = pres.get("pass_at_1"), pres.get("pass_at_k")
            row.prompts, row.samples = pres.get("prompts"), pres.get("samples")
            rres = _results(root, rl, done) or {}
            row.measured_first = rres.get("first_step_signal_availability")
            row.measured_mean = rres.get("mean_signal_availability")
            out.probes.append(row)
        distill = r.get("distill")
        if distill and all(d.stage != distill for d in out.distills):
            res = _results(root, distill, done)
            out.distills.append(DistillRow(str(r.get("data")), str(distill), str((res or {}).get("teacher", "")), res or {}))
        for sid in ([distill] if distill else []) + train:
            if sid in seen_decon:
                continue
            res = _results(root, sid, done)
            dec = (res or {}).get("decontamination")
            if isinstance(dec, dict) and isinstance(dec.get("dropped"), dict):
                seen_decon.add(sid)
                kind = str((stages.get(sid) or {}).get("kind", sid.split("-")[0]))
                out.decontam.append(DecontamRow(str(r.get("data")), kind, sid, {str(k): int(v) for k, v in dec["dropped"].items()}))
    return out


# --- rendering (pure) -----------------------------------------------------------------------------


def _f(x: Any, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else "–"


def signal_lines(p: Pipeline) -> list[str]:
    """Lines for `sftrl run`'s summary: predicted next to measured signal, or the skip reason."""
    lines = []
    for row in p.probes:
        pred = f"predicted {_f(row.predicted)} (probe: {row.prompts or '?'} prompts x {row.samples or '?'} rollouts)"
        if row.state == "skipped":
            lines.append(f"  {row.run:<40} {pred}; RL skipped, {row.reason}")
        elif row.measured_first is not None:
            lines.append(f"  {row.run:<40} {pred}; measured {_f(row.measured_first)} at step 1, "
                         f"{_f(row.measured_mean)} on average")
        elif row.predicted is not None:
            lines.append(f"  {row.run:<40} {pred}; RL {row.state}")
    if not lines:
        return []
    return ["RL-readiness probes (signal = share of prompts whose rollouts got different rewards):\n" + "\n".join(lines)]


def blocks(p: Pipeline) -> list[tuple]:
    """Report blocks (see controller.report.render.markdown): probes, distillation, decontamination."""
    out: list[tuple] = []
    if p.probes:
        out += [("h", 2, "RL readiness: predicted vs measured signal"),
                ("p", "Before each RL stage a probe samples rollouts of its starting policy on a fixed sample of its prompts. "
                      "Predicted signal: share of prompts whose rollouts got different rewards. Measured: the RL stage's "
                      "signal availability (1 − frac_reward_zero_std) at its first step and on average. A skipped RL stage "
                      "was ruled out by rl.min_signal; its cells read 'skipped', never zero."),
                ("table", ["run", "probe", "predicted", "pass@1", "pass@k", "RL stage", "measured (step 1)", "measured (mean)", "state"],
                 [[r.run, r.probe, _f(r.predicted), _f(r.pass_at_1, 3), _f(r.pass_at_k, 3), r.rl, _f(r.measured_first),
                   _f(r.measured_mean), r.reason if r.state == "skipped" else r.state] for r in p.probes])]
    if p.distills:
        out += [("h", 2, "Distilled data sources"),
                ("p", "Teacher responses verified by the study's accuracy and format rewards; kept: verified traces, "
                      "shortest first, duplicates removed."),
                ("table", ["data", "stage", "teacher", "prompts", "with a verified trace", "mean pass rate", "kept traces", "mean trace length (chars)"],
                 [[d.data, d.stage, d.teacher or "–", str(d.figures.get("prompts", "–")), str(d.figures.get("prompts_with_verified", "–")),
                   _f(d.figures.get("mean_pass_rate"), 3), str(d.figures.get("kept_traces", "–")), _f(d.figures.get("mean_trace_chars"), 1)]
                  for d in p.distills])]
    if p.decontam:
        benches = p.benchmarks or sorted({b for d in p.decontam for b in d.dropped})
        out += [("h", 2, "Decontamination"),
                ("p", "Training rows dropped because their question (word 8-grams) or image (perceptual hash) matched an "
                      "item of a benchmark of this experiment."),
                ("table", ["data", "stage", *benches], [[d.data, f"{d.kind} {d.stage}", *(str(d.dropped.get(b, 0)) for b in benches)]
                                                         for d in p.decontam])]
    return out


def csv_files(p: Pipeline) -> dict[str, list[list[Any]]]:
    """probes.csv, distill.csv and decontamination.csv (numbers 0..1)."""
    probes = [["run", "probe", "rl_stage", "state", "predicted_signal", "pass_at_1", "pass_at_k", "prompts", "samples",
               "measured_first_step", "measured_mean", "reason"]]
    probes += [[r.run, r.probe, r.rl, r.state, r.predicted, r.pass_at_1, r.pass_at_k, r.prompts, r.samples,
                r.measured_first, r.measured_mean, r.reason] for r in p.probes]
    keys = ["prompts", "prompts_with_verified", "mean_pass_rate", "kept_traces", "mean_trace_chars", "mean_trace_tokens"]
    distill = [["data", "stage", "teacher", *keys]] + [[d.data, d.stage, d.teacher, *(d.figures.get(k) for k in keys)] for d in p.distills]
    benches = p.benchmarks or sorted({b for d in p.decontam for b in d.dropped})
    decon = [["data", "kind", "stage", *benches]] + [[d.data, d.kind, d.stage, *(d.dropped.get(b, 0) for b in benches)] for d in p.decontam]
    return {"probes.csv": probes, "distill.csv": distill, "decontamination.csv": decon}
