"""``sftrl report``: the tables and plots of a study, from storage alone.

Reads ``experiments/<name>/plan.json`` and every stage it names (``_SUCCESS``, ``results.json``,
``samples.jsonl``, ``metrics.jsonl``); never Prometheus. A stage without ``_SUCCESS`` counts as
not done, so a half-finished experiment gives a report with "pending" cells, never zeros.

Layers: ``load_experiment`` (I/O) -> ``compute_report`` (pure, numbers from ``report.stats``)
-> ``report.render`` (Markdown, HTML, CSV, PNG, text) -> ``build_report`` writes them. The
dataclasses they pass along live in ``report.model``, which imports neither.

Example::

    >>> from controller.report.load import build_report                      # doctest: +SKIP
    >>> res = build_report("file:///data/runs", "sft-vs-rl")             # doctest: +SKIP
    >>> print(res.main_text)                                             # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from controller import status as stage_status
from controller.report.model import Curve, DataUse, ExperimentData, Report, ReportResult, StageState
from controller.report.stats import (
    BenchResult,
    PairResult,
    ReportConfig,
    RunData,
    RunInfo,
    Table,
    build_pairs,
    build_table,
    rl_summary,
    split_columns,
)
from job_runtime.io import scratch
from job_runtime.io import storage as sto
from job_runtime.contract import (
    LOG_TXT,
    METRICS_JSONL,
    PLAN_JSON,
    REPORT_DIR,
    RESULTS_JSON,
    SAMPLES_JSONL,
    STAGE_JSON,
    experiment_uri,
    stage_uri,
)

DEFAULT_STORAGE = "./runs"


class ReportError(Exception):
    """A user-facing problem ("X, because Y. Do Z."); the CLI prints it without a traceback."""


# --- loading (the only I/O) -------------------------------------------------------------------


def _parse_runs(plan: dict[str, Any], issues: list[str]) -> list[RunInfo]:
    out = []
    for i, r in enumerate(plan.get("runs") or []):
        try:
            out.append(
                RunInfo(
                    run=str(r["run"]),
                    model=str(r["model"]),
                    method=str(r["method"]),
                    data=None if r.get("data") is None else str(r["data"]),
                    scale=None if r.get("scale") is None else int(r["scale"]),
                    seed=None if r.get("seed") is None else int(r["seed"]),
                    train=tuple(str(s) for s in r.get("train") or ()),
                    eval=str(r["eval"]),
                )
            )
        except (KeyError, TypeError, ValueError) as e:
            issues.append(f"plan.json runs[{i}] was skipped, because it is malformed ({type(e).__name__}: {e}). Re-plan the experiment.")
    return out


def _lines(uri: str) -> list[str]:
    return [ln for ln in sto.read_text(uri).splitlines() if ln.strip()]


def load_eval(root: str, info: RunInfo, issues: list[str]) -> RunData:
    """A run's eval results; nothing is read unless the eval stage has its _SUCCESS."""
    uri = stage_uri(root, info.eval)
    rd = RunData(info, complete=sto.is_complete(uri))
    if not rd.complete:
        return rd
    items: dict[str, dict[str, bool]] = {}
    if sto.exists(sto.join(uri, SAMPLES_JSONL)):
        bad = dup = 0
        for line in _lines(sto.join(uri, SAMPLES_JSONL)):
            try:
                row = json.loads(line)
                bench, iid, correct = str(row["benchmark"]), str(row["id"]), row["correct"]
                if not isinstance(correct, bool):
                    raise TypeError("correct is not a boolean")
            except (json.JSONDecodeError, KeyError, TypeError):
                bad += 1
                continue
            if iid in items.setdefault(bench, {}):
                dup += 1
                continue
            items[bench][iid] = correct
        if bad or dup:
            issues.append(
                f"{info.run}: {bad} malformed and {dup} duplicate rows of stages/{info.eval}/{SAMPLES_JSONL} were skipped, "
                "because each row needs benchmark, a unique id and a boolean correct. Check the eval stage's scorer."
            )
    results: dict[str, Any] = {}
    if sto.exists(sto.join(uri, RESULTS_JSON)):
        try:
            results = dict(sto.read_json(sto.join(uri, RESULTS_JSON)).get("benchmarks") or {})
        except (json.JSONDecodeError, AttributeError, TypeError):
            issues.append(f"{info.run}: stages/{info.eval}/{RESULTS_JSON} is unreadable, because it is not the expected JSON; scores come from samples. Re-run the eval stage.")
    for bench in sorted(set(results) | set(items)):
        its = items.get(bench, {})
        entry = results.get(bench)
        if isinstance(entry, dict) and isinstance(entry.get("score"), (int, float)):
            res = BenchResult(float(entry["score"]), str(entry.get("metric", "accuracy")), its)
            if res.metric == "accuracy" and its and abs(res.score - sum(its.values()) / len(its)) > 1e-6:
                issues.append(f"{info.run}/{bench}: results.json score {res.score:.4f} differs from the samples' accuracy, because the two files disagree. The table shows the score; re-run the eval stage.")
        elif its:
            res = BenchResult(sum(its.values()) / len(its), "accuracy", its)
        else:
            issues.append(f"{info.run}/{bench}: no score, because results.json has no numeric score and there are no samples.")
            continue
        rd.results[bench] = res
    return rd


def load_metrics(root: str, stage_id: str, issues: list[str], complete: bool = True) -> list[dict[str, Any]]:
    """metrics.jsonl rows with an integer step, sorted by step; other rows are counted.

    The torn last line of a stage still running is expected and not reported.
    """
    uri = sto.join(stage_uri(root, stage_id), METRICS_JSONL)
    if not sto.exists(uri):
        return []
    rows, bad = [], []
    lines = _lines(uri)
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
            row["step"] = int(row["step"])
            rows.append(row)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            bad.append(i)
    if bad and not (not complete and bad == [len(lines) - 1]):
        issues.append(f"stages/{stage_id}/{METRICS_JSONL}: {len(bad)} malformed rows skipped, because each row needs an integer step. Check the stage's metrics logging.")
    return sorted(rows, key=lambda r: r["step"])


def _stage_state(root: str, sid: str, kind: str) -> StageState:
    st = stage_status.stage_status(stage_uri(root, sid))
    return StageState(sid, kind, st.state, st.reason, st.log)


def load_data_use(root: str, run: str, sid: str, kind: str, issues: list[str]) -> DataUse | None:
    """The rows a finished training stage used and skipped (results.json ``data``, else the manifest's)."""
    uri = stage_uri(root, sid)
    data: Any = None
    try:
        if sto.exists(sto.join(uri, RESULTS_JSON)):
            data = (sto.read_json(sto.join(uri, RESULTS_JSON)) or {}).get("data")
        if not isinstance(data, dict):
            data = ((sto.read_manifest(uri) or {}).get("data"))
    except (json.JSONDecodeError, AttributeError):
        data = None
    if not isinstance(data, dict):
        return None
    try:
        skipped = {str(k): int(v) for k, v in (data.get("skipped") or {}).items()}
        return DataUse(run, sid, kind, str(data.get("source", "")), int(data.get("total") or 0), int(data.get("used") or 0), skipped)
    except (TypeError, ValueError, AttributeError):
        issues.append(f"stages/{sid}: its data record is malformed, because the skipped counts are not numbers. Re-run the stage.")
        return None


def read_plan(root: str, name: str) -> dict[str, Any]:
    """experiments/<name>/plan.json (what the last `sftrl run` of that name saved)."""
    plan_uri = sto.join(experiment_uri(root, name), PLAN_JSON)
    if not sto.exists(plan_uri):
        raise ReportError(
            f"Experiment '{name}' has no plan at {plan_uri}, because it has not been run with this storage. "
            "Run `sftrl run <experiment.yaml>` first, or pass --storage with the experiment's storage root."
        )
    try:
        return sto.read_json(plan_uri)
    except json.JSONDecodeError as e:
        raise ReportError(f"{plan_uri} is not valid JSON, because {e}. Re-run `sftrl run` to rewrite the plan.") from None


def load_experiment(root: str, name: str, plan: dict[str, Any] | None = None) -> ExperimentData:
    """Everything the report needs from storage, for ``plan`` (a Plan.to_json(); default: the saved plan.json)."""
    root = sto.normalize(root)
    if plan is None:
        plan = read_plan(root, name)
    issues: list[str] = []
    infos = _parse_runs(plan, issues)
    stages = plan.get("stages") or {}
    runs = [load_eval(root, i, issues) for i in infos]
    benchmarks = list(plan.get("benchmarks") or sorted({b for r in runs for b in r.results}))
    state: dict[str, StageState] = {}
    progress: dict[str, list[StageState]] = {}
    curves: list[Curve] = []
    data: list[DataUse] = []
    for info in infos:
        progress[info.run] = []
        for sid in (*info.train, info.eval):
            kind = (stages.get(sid) or {}).get("kind", "?")
            if sid not in state:
                state[sid] = _stage_state(root, sid, kind)
                if kind == "rl" and state[sid].state != "waiting":
                    done = state[sid].state == "done"
                    curves.append(Curve(info.run, sid, done, load_metrics(root, sid, issues, complete=done), state[sid].state))
                if kind in ("sft", "rl") and state[sid].state == "done":
                    use = load_data_use(root, info.run, sid, kind, issues)
                    if use is not None:
                        data.append(use)
            progress[info.run].append(state[sid])
    from controller.report import pipeline

    finished = {sid: state[sid].state == "done" if sid in state else sto.is_complete(stage_uri(root, sid)) for sid in stages}
    pipe = pipeline.load(root, plan, finished)
    for rd in runs:
        rd.skipped = pipe.skipped.get(rd.info.eval)
    for st in state.values():  # rl.min_signal: a gated stage and what follows it read "skipped", not "waiting"
        if st.id in pipe.skipped and st.state != "done":
            st.state, st.reason = "skipped", pipe.skipped[st.id]
    for info in infos:  # a run whose eval stage is done is complete, though a parent may be invalid now
        if any(s.state == "incomplete" for s in progress[info.run]):
            bad = next(s for s in progress[info.run] if s.state == "incomplete")
            issues.append(f"{info.run}: stage {bad.id} is not done, because {bad.reason}; `sftrl run` will redo it.")
    return ExperimentData(str(plan.get("experiment", name)), root, benchmarks, runs, progress, curves, issues, data, pipe)


# --- the pure part ----------------------------------------------------------------------------


def compute_report(data: ExperimentData, cfg: ReportConfig = ReportConfig(), generated: str | None = None) -> Report:
    """Tables, pairs and diagnostics from loaded data (no I/O)."""
    main_cols, mm_cols, transfer_cols = split_columns(data.benchmarks)
    return Report(
        experiment=data.experiment,
        root=data.root,
        generated=generated or time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        cfg=cfg,
        mm_cols=mm_cols,
        main=build_table(data.runs, main_cols, mm_cols, cfg),
        transfer=build_table(data.runs, transfer_cols, mm_cols, cfg, delta=True),
        pairs=build_pairs(data.runs, data.benchmarks, mm_cols, cfg),
        curves=data.curves,
        stages=data.stages,
        runs=data.runs,
        issues=data.issues,
        data=data.data,
        pipeline=data.pipeline,
    )


# --- entry points -----------------------------------------------------------------------------


def build_report(root_uri: str, experiment_name: str, out_dir: str | None = None, cfg: ReportConfig = ReportConfig(),
                 plan: dict[str, Any] | None = None) -> ReportResult:
    """Write report.md, report.html, CSVs and PNGs for an experiment; returns what was written.

    ``out_dir`` is a path or a storage URI (default ``<root>/experiments/<name>/report``). Works
    on a finished or a still-running experiment. ``plan`` (a Plan.to_json()) is what to report;
    default: the plan.json the last run of that name saved.
    """
    try:
        from controller.report import render as report_render  # matplotlib only when a report is written

        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ReportError(f"Cannot draw the report's plots, because {e}. Do: pip install 'sftrl[report]' (matplotlib).") from None

    root = sto.normalize(root_uri)
    data = load_experiment(root, experiment_name, plan)
    rep = compute_report(data, cfg)
    out = sto.normalize(out_dir) if out_dir else sto.join(experiment_uri(root, experiment_name), REPORT_DIR)
    tmp = None
    local = sto.local_path(out) if sto.is_local(out) else (tmp := scratch.mkdtemp("report"))
    try:
        files = report_render.write_all(rep, local)
        if tmp is not None:
            sto.upload_dir(local, out)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return ReportResult(out, files, report_render.text_table(rep.main, rep.mm_cols, failed_runs=rep.failed_runs), rep)


def main_table_text(root_uri: str, experiment_name: str, width: int | None = None) -> str:
    """The main table as plain text fitting ``width`` columns (default: the terminal's).

    Best per model and column marked ``*``; unfinished cells read ``pending``.
    """
    from controller.report.render import text_table

    data = load_experiment(sto.normalize(root_uri), experiment_name)
    main_cols, mm_cols, _ = split_columns(data.benchmarks)
    cfg = ReportConfig()
    failed = {run for run, st in data.stages.items() if any(s.state == "failed" for s in st)}
    return text_table(build_table(data.runs, main_cols, mm_cols, cfg), mm_cols, width, failed)


def summary_text(root_uri: str, experiment_name: str, out_dir: str | None = None, width: int | None = None) -> str:
    """Write the full report to ``out_dir`` and return the text ``sftrl run`` prints at its end.

    The text is the main table and one line on the SFT-vs-RL tests.
    """
    from controller.report.render import text_table

    res = build_report(root_uri, experiment_name, out_dir)
    rep = res.report
    ran = [p for p in rep.pairs if p.p is not None]
    sig = [p for p in ran if p.p < rep.cfg.alpha]  # type: ignore[operator]
    line = (f"SFT vs RL: {len(sig)} of {len(ran)} paired tests significant at p < {rep.cfg.alpha} "
            f"(details: {sto.join(res.out, 'report.html')})")
    from controller.report.pipeline import signal_lines

    return "\n\n".join([text_table(rep.main, rep.mm_cols, width, rep.failed_runs), *_versus_base(rep),
                         *_signal_lines(rep), *signal_lines(rep.pipeline), *_data_lines(rep), *_failed_lines(rep), line])


def _data_lines(rep: Report) -> list[str]:
    """Skipped training rows, added up by reason over every finished training stage."""
    from controller.report.render import skipped_summary

    total, text = skipped_summary(rep.data)
    if not total:
        return []
    return [f"Training data: {total} rows skipped ({text}); per stage in the report's Training data section."]


def _failed_lines(rep: Report) -> list[str]:
    failed = rep.failed_stages
    if not failed:
        return []
    lines = [f"  {sid} ({run}): {s.reason or 'no error line recorded'}; log: {s.log or 'not recorded'}"
             for sid, (run, s) in failed.items()]
    return [f"{len(failed)} stage(s) failed (their cells read 'failed'):\n" + "\n".join(lines)]


def _versus_base(rep: Report) -> list[str]:
    """One line per model: each method's change from the base model on the headline column."""
    col = "mm_avg" if "mm_avg" in rep.main.columns else (rep.main.columns[0] if rep.main.columns else None)
    out = []
    for model, rows in rep.main.blocks.items():
        base = next((r.values.get(col) for r in rows if r.is_base), None) if col else None
        if base is None or base.mean is None:
            continue
        parts = []
        for r in rows:
            v = r.values.get(col)
            if r.is_base or v is None or v.mean is None:
                continue
            scale = f" @{r.scale}" if r.scale is not None else ""
            parts.append(f"{r.method}{scale} {100 * (v.mean - base.mean):+.1f}")
        if parts:
            out.append(f"{model}, change from base on {col} (points): " + ", ".join(parts))
    return out


def _signal_lines(rep: Report) -> list[str]:
    """Signal availability of every RL run: the share of prompt groups whose rollouts did not all
    get the same reward (1 - TRL's frac_reward_zero_std); 0 means GRPO had nothing to learn from."""
    lines = []
    for c in rep.curves:
        s = rl_summary(c.rows)
        if s["signal_mean"] is None:
            continue
        starved = "  (starved: no group had a learning signal)" if s["signal_mean"] == 0 else ""
        held = ""
        if s["heldout_last"] is not None:
            held = f"; held-out accuracy {100 * s['heldout_first']:.1f} -> {100 * s['heldout_last']:.1f}"
        lines.append(f"  {c.run:<40} mean {s['signal_mean']:.2f} over {s['steps']} steps{held}{starved}")
    if not lines:
        return []
    return ["RL signal availability (share of prompt groups whose rollouts got different rewards):\n" + "\n".join(lines)]


SpecResolver = Callable[[str], tuple[str, str]]  # experiment file -> (name, storage root)


def _yaml_resolver(path: str) -> tuple[str, str]:
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ReportError(f"Cannot read {path}, because {e}. Pass a readable experiment file.") from None
    name = ((doc or {}).get("metadata") or {}).get("name") if isinstance(doc, dict) else None
    if not name:
        raise ReportError(f"{path} has no metadata.name, because the field is missing. Add `metadata: {{name: ...}}`.")
    return str(name), str(((doc.get("spec") or {}).get("storage")) or DEFAULT_STORAGE)


def resolve_experiment(experiment: str, storage_root: str | None, resolver: SpecResolver | None = None) -> tuple[str, str]:
    """(storage root URI, experiment name) from a .yaml file, a storage URI of experiments/<name>, or a name.

    >>> resolve_experiment("s3://b/p/experiments/demo", None)
    ('s3://b/p', 'demo')
    """
    if experiment.endswith((".yaml", ".yml")):
        if not Path(experiment).is_file():
            raise ReportError(f"Experiment file {experiment} does not exist, because no file is at that path. Check the path.")
        name, root = (resolver or _yaml_resolver)(experiment)
        return sto.normalize(storage_root or root), name
    marker = "/experiments/"
    if marker in experiment.rstrip("/") and ("://" in experiment or Path(experiment).exists()):
        root, _, name = experiment.rstrip("/").rpartition(marker)
        return sto.normalize(root), name
    return sto.normalize(storage_root or DEFAULT_STORAGE), experiment


def report_command(experiment: str, out: str | None = None, storage: str | None = None, resolver: SpecResolver | None = None,
                   plan: dict[str, Any] | None = None) -> int:
    """CLI glue for ``sftrl report``: write the report, print where it is and the main table.

    ``experiment``: an experiment file (.yaml), a storage URI of ``experiments/<name>``, or a name
    under ``storage`` (default ./runs). ``resolver`` maps an experiment file to (name, storage)
    (default: read metadata.name and spec.storage with PyYAML). ``plan`` (a Plan.to_json(), as
    ``sftrl report FILE`` builds from the file) is reported instead of the saved plan.json.
    Returns the exit code.
    """
    try:
        if plan is not None:
            root, name = sto.normalize(str(plan["storage"])), str(plan["experiment"])
        else:
            root, name = resolve_experiment(experiment, storage, resolver)
        res = build_report(root, name, out, plan=plan)
    except (ReportError, sto.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rep = res.report
    print(f"Report of '{name}' ({rep.n_complete}/{len(rep.runs)} runs evaluated): {sto.join(res.out, 'report.html')}")
    print(f"  also report.md and {sum(f.endswith('.csv') for f in res.files)} CSV, {sum(f.endswith('.png') for f in res.files)} PNG files there")
    for issue in rep.issues:
        print(f"warning: {issue}", file=sys.stderr)
    print()
    print(res.main_text)
    return 0


__all__ = [
    "Report",
    "ReportError",
    "ReportResult",
    "build_report",
    "compute_report",
    "load_experiment",
    "main_table_text",
    "report_command",
    "summary_text",
    "resolve_experiment",
]
