"""Rendering of a computed :class:`~controller.report.model.Report`: text, Markdown, HTML, CSV and PNG.

The Markdown and HTML pages are built from one list of blocks (heading, paragraph, list, table,
image), so both always say the same thing. Plots use matplotlib's object API with the Agg
canvas (no pyplot, no global backend switch). HTML embeds its PNGs as base64 data URIs.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import re
import shutil
import textwrap
from pathlib import Path
from dataclasses import replace
from typing import Any, Collection, Sequence

from controller.report import pipeline
from controller.report.model import Curve, DataUse, Report
from controller.report.stats import MM_AVG, MM_POOLED, NA, OK, PENDING, SKIPPED, Row, Table, Value, deceptive_windows, rl_summary, signal_series

Block = tuple  # ("h", level, text) | ("p", text) | ("ul", [text]) | ("table", header, rows) | ("img", file, caption)
Cell = Any  # str, or (str, bold)


def label(col: str) -> str:
    return {MM_AVG: "MM avg", MM_POOLED: "MM pooled"}.get(col, col)


def pct(x: float | None, signed: bool = False) -> str:
    """A 0..1 number as a percentage with one decimal.

    >>> pct(0.4567), pct(0.031, signed=True), pct(None)
    ('45.7', '+3.1', '')
    """
    if x is None:
        return ""
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


FAILED = "failed"


def shown(v: Value, r: Row, failed_runs: Collection[str] = ()) -> Value:
    """The value as shown: a pending cell of a row whose run failed reads 'failed' (never 'pending')."""
    if v.status == PENDING and any(run in failed_runs for run in r.runs):
        return replace(v, status=FAILED)
    return v


def cell_text(v: Value, detail: bool = True) -> str:
    """A cell for text and Markdown: score [interval], or mean ± std (min-max, n seeds).

    >>> cell_text(Value(OK, mean=0.5, lo=0.4, hi=0.6, n_seeds=1))
    '50.0 [40.0, 60.0]'
    >>> cell_text(Value(OK, mean=0.5, std=0.02, min=0.48, max=0.52, n_seeds=2, n_expected=2), detail=False)
    '50.0±2.0'
    """
    if v.status != OK:
        return v.status
    seeds = f"{v.n_seeds}/{v.n_expected} seeds" if v.n_seeds < v.n_expected else f"{v.n_seeds} seeds"
    if v.n_seeds > 1:
        s = f"{pct(v.mean)}±{pct(v.std)}"
        if detail:
            s += f" ({pct(v.min)}–{pct(v.max)}, {seeds})"
    else:
        s = pct(v.mean)
        if detail and v.lo is not None:
            s += f" [{pct(v.lo)}, {pct(v.hi)}]"
        if detail and v.n_seeds < v.n_expected:
            s += f" ({seeds})"
    if v.delta is not None:
        s += f" (Δ {pct(v.delta, signed=True)})"
    return s


def _row_head(r: Row) -> list[str]:
    return [r.method, r.data or "–", "–" if r.scale is None else str(r.scale)]


# --- text -----------------------------------------------------------------------------------


def text_table(table: Table, mm_cols: Sequence[str] = (), width: int | None = None, failed_runs: Collection[str] = ()) -> str:
    """The table as aligned plain text, as detailed as ``width`` allows; best marked ``*``."""
    width = width or shutil.get_terminal_size((100, 24)).columns
    legend = "* best in column (per model); [..] 95% interval (Wilson); ±std over seeds; pending: not evaluated yet"
    if any(r.values[c].status == SKIPPED for rows in table.blocks.values() for r in rows for c in table.columns):
        legend += "; skipped: not run on purpose (reasons in the report)"
    if failed_runs:
        legend += "; failed: a stage of the run failed"
    if not table.blocks:
        return "(no runs in the plan)"
    out: list[str] = []
    for detail, name_len in ((True, 99), (False, 99), (False, 8), (False, 5)):
        out = []
        for model, rows in table.blocks.items():
            header = ["method", "data", "scale"] + [label(c)[:name_len] for c in table.columns]
            body = [_row_head(r) + [cell_text(shown(r.values[c], r, failed_runs), detail) + ("*" if r.values[c].best else "")
                                    for c in table.columns] for r in rows]
            widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
            fmt = lambda cells: "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
            out += [model, fmt(header), *(fmt(b) for b in body), ""]
        if max(len(ln) for ln in out) <= width:
            break
    return "\n".join(out + textwrap.wrap(legend, width=max(width, 30), break_on_hyphens=False))


# --- blocks -----------------------------------------------------------------------------------


def _table_block(table: Table, model: str, failed_runs: Collection[str] = ()) -> Block:
    header = ["method", "data", "scale"] + [label(c) for c in table.columns]
    rows = [_row_head(r) + [(cell_text(shown(r.values[c], r, failed_runs)), r.values[c].best) for c in table.columns]
            for r in table.blocks[model]]
    return ("table", header, rows)


def skipped_summary(uses: Sequence[DataUse]) -> tuple[int, str]:
    """(rows skipped in all, 'reason: n; ...' most common first) over training stages.

    >>> skipped_summary([DataUse("r", "s", "sft", "x", 10, 7, {"no answer": 2, "unreadable image": 1}),
    ...                  DataUse("q", "t", "rl", "x", 10, 9, {"no answer": 1})])
    (4, 'no answer: 3; unreadable image: 1')
    """
    from collections import Counter

    total: Counter = Counter()
    for u in uses:
        total.update(u.skipped)
    return sum(total.values()), "; ".join(f"{k}: {v}" for k, v in total.most_common())


def blocks(rep: Report, images: dict[str, str]) -> list[Block]:
    """The document: every section of the report, in order."""
    n_runs, done = len(rep.runs), rep.n_complete
    skipped = sum(1 for r in rep.runs if r.skipped and not r.complete)  # settled: not run on purpose
    failed = rep.failed_stages
    failed_runs = rep.failed_runs
    out: list[Block] = [
        ("h", 1, f"Study report: {rep.experiment}"),
        ("p", f"Storage {rep.root}; generated {rep.generated}. {done} of {n_runs} runs evaluated"
              + (f", {skipped} skipped (see RL readiness)." if skipped else ".")),
    ]
    if failed:
        out.append(("p", f"{len(failed)} stage(s) failed, so {len(failed_runs)} run(s) have no result: their cells read 'failed' "
                         "(see Failed stages). Fix the cause and run `sftrl run` again; finished stages are reused."))
    waiting = n_runs - done - skipped - sum(1 for r in rep.runs if not r.complete and r.info.run in failed_runs)
    if waiting > 0:
        out.append(("p", f"This experiment is not finished: {waiting} run(s) are not evaluated yet, and their cells read "
                         "'pending' (never counted as zero). Re-run `sftrl report` once they finish."))
    mm = "'MM avg' is the mean over the multimodal math benchmarks. " if MM_AVG in rep.main.columns else ""
    out += [("h", 2, "Main results"), ("p", f"Accuracy (%) per benchmark; {mm}One seed: score [95% Wilson interval over items]. Several seeds: mean ± std (min–max). Bold: best in the column for that model.")]
    for model in rep.main.blocks:
        out += [("h", 3, model), _table_block(rep.main, model, failed_runs)]
    if rep.transfer.columns:
        out += [("h", 2, "Transfer"), ("p", "Accuracy (%) on benchmarks outside training; Δ is the change from the base model in points.")]
        for model in rep.transfer.blocks:
            out += [("h", 3, model), _table_block(rep.transfer, model, failed_runs)]
    if failed:
        out += [("h", 2, "Failed stages"),
                ("table", ["stage", "run", "last error", "log"],
                 [[sid, run, s.reason or "no error line recorded", s.log or "not recorded (see `sftrl logs` on a cluster)"]
                  for sid, (run, s) in failed.items()])]
    out += _pair_blocks(rep)
    eff = [f for f in images if f.startswith("efficiency_")]
    out += [("h", 2, "Data efficiency")]
    out += [("img", f, images[f]) for f in eff] or [("p", "No trained runs with a data scale have finished yet.")]
    out += _rl_blocks(rep, images)
    out += pipeline.blocks(rep.pipeline)  # probes (predicted vs measured signal), distillation, decontamination
    out += _data_blocks(rep)
    out += [("h", 2, "Progress"), ("p", "Stage states from storage: done (a _SUCCESS manifest whose files all have their recorded sizes), failed (the last attempt failed: see Failed stages), incomplete (a manifest its files do not match: it will run again), skipped (not run on purpose: rl.min_signal), started (files but no _SUCCESS: running, or stopped), waiting (nothing yet)."),
            ("table", ["run", "stages in order: kind id: state"], [[run, ", ".join(f"{s.kind} {s.id}: {s.state}" for s in st)] for run, st in rep.stages.items()])]
    out += [("h", 2, "Method"), ("ul", [
        f"Intervals ({int(100 * (1 - rep.cfg.alpha))}%), honest at 0% and 100%: an accuracy's is the Wilson score interval; an average over benchmarks draws each benchmark's accuracy from its Jeffreys posterior ({rep.cfg.n_resamples} draws, numpy seed {rep.cfg.seed}); a paired difference A−B uses Newcombe's score interval for paired proportions (method 10).",
        "Seeds: mean, sample standard deviation (ddof=1) and min–max over the seeds that finished.",
        f"Pairs: exact McNemar test (two-sided binomial on the discordant items); a difference is claimed only when p < {rep.cfg.alpha}. 'MM pooled' tests the items of all multimodal benchmarks together. Holm-adjusted p-values are listed in pairs.csv.",
        "Interval and test are two methods: the A−B interval is Newcombe's score interval, the verdict is the exact McNemar test on the discordant items only. The exact test is conservative, so near the threshold the interval can exclude 0 while p >= "
        f"{rep.cfg.alpha}; the verdict always follows the test, and such rows say so.",
        "Scores are each eval stage's results.json headline (the benchmark's official metric); items come from samples.jsonl. Where a headline is not plain item accuracy (e.g. We-Math's strict score) it has no item interval, and paired tests compare item accuracy. Only stages whose _SUCCESS manifest matches their files are read.",
    ])]
    if rep.issues:
        out += [("h", 2, "Warnings"), ("ul", list(rep.issues))]
    return out


def _data_blocks(rep: Report) -> list[Block]:
    out: list[Block] = [("h", 2, "Training data")]
    if not rep.data:
        return out + [("p", "No training stage has finished yet.")]
    total, text = skipped_summary(rep.data)
    head = (f"{total} rows were skipped in all ({text}). A skipped row is malformed (no image, an unreadable or missing image, no question, no answer, ...): it is left out and the next row of the fixed order takes its place."
            if total else "No training row was skipped.")
    rows = [[u.run, f"{u.kind} {u.stage}", u.source, f"{u.used} of {u.total}",
             "; ".join(f"{k}: {v}" for k, v in sorted(u.skipped.items(), key=lambda kv: -kv[1])) or "none"] for u in rep.data]
    return out + [("p", head), ("table", ["run", "stage", "source", "rows used", "skipped by reason"], rows)]


def _pair_blocks(rep: Report) -> list[Block]:
    out: list[Block] = [("h", 2, "SFT vs RL (paired, same items)")]
    if not rep.pairs:
        return out + [("p", "The plan has no SFT-vs-RL pairs on the same model, data and scale.")]
    failed_keys = {(r.info.model, r.info.method, r.info.data, r.info.scale, r.info.seed) for r in rep.runs if r.info.run in rep.failed_runs}
    ran = [p for p in rep.pairs if p.status == OK]
    sig = [p for p in ran if p.p is not None and p.p < rep.cfg.alpha]
    pending = sum(p.status == PENDING for p in rep.pairs)
    out.append(("p", f"{len(ran)} tests ran ({pending} pending or failed); {len(sig)} significant at p < {rep.cfg.alpha}. With {len(ran)} tests about {rep.cfg.alpha * len(ran):.1f} could be significant by chance alone (see p_holm in pairs.csv)."))
    claims = [f"{p.model}, {p.data or '–'}, scale {p.scale}, seed {p.seed}, {label(p.benchmark)}: {p.verdict} ({pct(p.acc_a)} vs {pct(p.acc_b)}, p = {p.p:.3g})" for p in sig]
    if claims:
        out.append(("ul", claims))
    header = ["model", "data", "scale", "seed", "A vs B", "benchmark", "A", "B", "A−B [95% CI]", "A only / B only", "p", "verdict"]
    rows = []
    for p in rep.pairs:
        if p.status == OK:
            rows.append([p.model, p.data or "–", str(p.scale), str(p.seed), f"{p.a} vs {p.b}", label(p.benchmark), pct(p.acc_a), pct(p.acc_b),
                         f"{pct(p.diff, True)} [{pct(p.lo, True)}, {pct(p.hi, True)}]", f"{p.a_only} / {p.b_only}", f"{p.p:.3g}",
                         (verdict_text(p, rep.cfg.alpha), p.p is not None and p.p < rep.cfg.alpha)])
        else:
            side_failed = any((p.model, m, p.data, p.scale, p.seed) in failed_keys for m in (p.a, p.b))
            verdict = FAILED if p.status == PENDING and side_failed else (p.verdict or p.status)
            rows.append([p.model, p.data or "–", str(p.scale), str(p.seed), f"{p.a} vs {p.b}", label(p.benchmark), "", "", "", "", "", verdict])
    return out + [("table", header, rows)]


def verdict_text(p: Any, alpha: float) -> str:
    """The pair's verdict, saying so when its interval excludes 0 but the exact test does not reject.

    >>> from controller.report.stats import PairResult
    >>> verdict_text(PairResult("m", "d", 1, 0, "sft", "grpo", "b", "ok", lo=0.01, hi=0.09, p=0.07, verdict="no significant difference"), 0.05)
    'no significant difference (exact test p = 0.07; the interval excludes 0, see Method)'
    """
    if p.p is not None and p.p >= alpha and p.lo is not None and p.hi is not None and (p.lo > 0 or p.hi < 0):
        return f"{p.verdict} (exact test p = {p.p:.2g}; the interval excludes 0, see Method)"
    return p.verdict


def _rl_blocks(rep: Report, images: dict[str, str]) -> list[Block]:
    out: list[Block] = [("h", 2, "RL training")]
    if not rep.curves:
        return out + [("p", "No RL stage has started yet.")]
    header = ["run", "state", "steps", "reward first → last", "held-out acc. best / last (%)", "signal availability (mean)", "deceptive steps (%)", "deceptive windows (steps)"]
    rows = []
    for c in rep.curves:
        s = rl_summary(c.rows)
        win = _windows(c.rows)
        state = "done" if c.complete else FAILED if c.state == FAILED else "running or stopped"
        rows.append([c.run, state, str(s["steps"]), f"{_f(s['reward_first'])} → {_f(s['reward_last'])}",
                     f"{pct(s['heldout_best'])} / {pct(s['heldout_last'])}", _f(s["signal_mean"]), pct(s["deceptive_share"]),
                     ", ".join(f"{a:g}–{b:g}" for a, b in win) or "none"])
    out += [("p", "Reward is the mean training reward; held-out accuracy (%) is measured during training on a fixed held-out set. Shaded: steps flagged by the deceptive-reward detector (reward rising while held-out accuracy falls). Signal availability: share of rollout groups whose rewards differ (non-zero advantage)."),
            ("table", header, rows)]
    return out + [("img", f, images[f]) for f in images if f.startswith("rl_")]


def _f(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def _windows(rows: Sequence[dict]) -> list[tuple[float, float]]:
    flagged = [r for r in rows if isinstance(r.get("deceptive_reward"), (int, float))]
    return deceptive_windows([r["step"] for r in flagged], [r["deceptive_reward"] for r in flagged])


def markdown(doc: Sequence[Block]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    cell = lambda c: (f"**{esc(c[0])}**" if c[1] else esc(c[0])) if isinstance(c, tuple) else esc(c)  # noqa: E731
    lines: list[str] = []
    for b in doc:
        if b[0] == "h":
            lines += ["#" * b[1] + " " + b[2], ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "ul":
            lines += [f"- {x}" for x in b[1]] + [""]
        elif b[0] == "table":
            lines += ["| " + " | ".join(map(esc, b[1])) + " |", "|" + "---|" * len(b[1])]
            lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in b[2]] + [""]
        elif b[0] == "img":
            lines += [f"![{b[2]}]({b[1]})", ""]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#1d2330;padding:0 1rem}
h1{color:#0b3d91;border-bottom:3px solid #0b3d91}h2{color:#0b3d91;margin-top:2rem;border-bottom:1px solid #c8d1e0}h3{color:#34495e}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}th{background:#0b3d91;color:#fff;padding:.35rem .6rem;text-align:left}
td{padding:.3rem .6rem;border-bottom:1px solid #dde3ec}tr:nth-child(even) td{background:#f2f5fa}
tr td.best,tr:nth-child(even) td.best{font-weight:700;background:#e3f4e1}td.pending{color:#a0611b;font-style:italic}
tr td.failed,tr:nth-child(even) td.failed{color:#b00020;font-weight:600;background:#fde8ea}img{max-width:100%;border:1px solid #dde3ec;margin:.5rem 0}li{margin:.2rem 0}"""


def html_page(doc: Sequence[Block], images: dict[str, bytes], title: str) -> str:
    """A self-contained page: inline CSS, images as base64 data URIs."""
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title><style>{CSS}</style></head><body>"]
    for b in doc:
        if b[0] == "h":
            parts.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            parts.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b[1]) + "</ul>")
        elif b[0] == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b[1])
            body = []
            for r in b[2]:
                tds = []
                for c in r:
                    text, bold = c if isinstance(c, tuple) else (c, False)
                    cls = " class='best'" if bold else " class='pending'" if text in (PENDING, NA, SKIPPED) else " class='failed'" if text == FAILED else ""
                    tds.append(f"<td{cls}>{'<b>' + e(text) + '</b>' if bold else e(text)}</td>")
                body.append("<tr>" + "".join(tds) + "</tr>")
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
        elif b[0] == "img":
            data = base64.b64encode(images[b[1]]).decode("ascii")
            parts.append(f"<figure><img alt='{e(b[2])}' src='data:image/png;base64,{data}'><figcaption>{e(b[2])}</figcaption></figure>")
    return "\n".join(parts + ["</body></html>"])


# --- CSV --------------------------------------------------------------------------------------

VALUE_FIELDS = ["status", "mean", "ci_lo", "ci_hi", "std", "min", "max", "n_seeds", "n_expected", "n_items", "best"]


def _value_row(v: Value) -> list[Any]:
    return [v.status, v.mean, v.lo, v.hi, v.std, v.min, v.max, v.n_seeds, v.n_expected, v.n_items, int(v.best)]


def csv_files(rep: Report) -> dict[str, list[list[Any]]]:
    """main, transfer, pairs, efficiency, runs and rl tables as rows (header first); numbers 0..1."""
    key = ["model", "method", "data", "scale", "runs", "column"]
    main = [key + VALUE_FIELDS] + [[r.model, r.method, r.data, r.scale, " ".join(r.runs), c] + _value_row(r.values[c])
                                   for rows in rep.main.blocks.values() for r in rows for c in rep.main.columns]
    transfer = [key + VALUE_FIELDS + ["delta_vs_base"]] + [[r.model, r.method, r.data, r.scale, " ".join(r.runs), c] + _value_row(r.values[c]) + [r.values[c].delta]
                                                           for rows in rep.transfer.blocks.values() for r in rows for c in rep.transfer.columns]
    pairs = [["model", "data", "scale", "seed", "a", "b", "benchmark", "status", "n_items", "acc_a", "acc_b", "diff", "diff_lo", "diff_hi", "a_only", "b_only", "p_mcnemar", "p_holm", "verdict"]]
    pairs += [[p.model, p.data, p.scale, p.seed, p.a, p.b, p.benchmark, p.status, p.n, p.acc_a, p.acc_b, p.diff, p.lo, p.hi, p.a_only, p.b_only, p.p, p.p_holm, p.verdict] for p in rep.pairs]
    col = _efficiency_column(rep)
    eff = [["model", "method", "data", "scale", "column"] + VALUE_FIELDS]
    eff += [[r.model, r.method, r.data, r.scale, col] + _value_row(r.values[col]) for rows in rep.main.blocks.values() for r in rows] if col else []
    runs = [["run", "model", "method", "data", "scale", "seed", "eval_stage", "complete", "benchmark", "score", "metric", "n_items", "n_correct"]]
    for rd in rep.runs:
        i = rd.info
        runs += [[i.run, i.model, i.method, i.data, i.scale, i.seed, i.eval, int(rd.complete), b, res.score, res.metric, len(res.items), sum(res.items.values())] for b, res in sorted(rd.results.items())]
        if not rd.complete:
            runs.append([i.run, i.model, i.method, i.data, i.scale, i.seed, i.eval, 0, "", None, "", None, None])
    rl = [["run", "stage", "complete", "steps", "reward_first", "reward_last", "heldout_best", "heldout_last", "signal_mean", "deceptive_share", "deceptive_windows"]]
    for c in rep.curves:
        s = rl_summary(c.rows)
        rl.append([c.run, c.stage, int(c.complete), s["steps"], s["reward_first"], s["reward_last"], s["heldout_best"], s["heldout_last"], s["signal_mean"], s["deceptive_share"], ";".join(f"{a:g}-{b:g}" for a, b in _windows(c.rows))])
    return {"main.csv": main, "transfer.csv": transfer, "pairs.csv": pairs, "efficiency.csv": eff, "runs.csv": runs, "rl.csv": rl,
            **pipeline.csv_files(rep.pipeline)}


def _efficiency_column(rep: Report) -> str | None:
    cols = rep.main.columns
    return MM_AVG if MM_AVG in cols else (cols[0] if cols else None)


# --- plots ------------------------------------------------------------------------------------


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def slug(s: str) -> str:
    """A file-name-safe form of a name.

    >>> slug("qwen2.5-vl/3b sft+grpo")
    'qwen2.5-vl_3b_sft_grpo'
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "x"


def _err(v: Value) -> tuple[float, float]:
    """Error bar below/above in points: the Wilson interval (one seed) or ±std (seeds)."""
    if v.lo is not None and v.hi is not None and v.mean is not None:
        return 100 * (v.mean - v.lo), 100 * (v.hi - v.mean)
    return 100 * (v.std or 0.0), 100 * (v.std or 0.0)


def efficiency_plot(model: str, rows: Sequence[Row], col: str) -> bytes | None:
    fig = efficiency_figure(model, rows, col)
    return None if fig is None else _png(fig)


def efficiency_figure(model: str, rows: Sequence[Row], col: str) -> Any:
    """Accuracy against data scale, one line per method (and data source); base as a dashed line."""
    from matplotlib.figure import Figure

    lines: dict[str, list[tuple[int, Value]]] = {}
    datas = {r.data for r in rows if not r.is_base}
    for r in rows:
        v = r.values[col]
        if not r.is_base and r.scale is not None and v.status == OK:
            lines.setdefault(r.method + (f" ({r.data})" if len(datas) > 1 else ""), []).append((r.scale, v))
    if not lines:
        return None
    scales = sorted({s for pts in lines.values() for s, _ in pts})
    single = len(scales) == 1  # one scale: a narrow figure around it, not three points stretched over the width
    fig = Figure(figsize=(3.6 if single else 7, 4.5))
    ax = fig.subplots()
    log = len(scales) > 1 and scales[-1] / max(scales[0], 1) >= 10
    span = (scales[-1] - scales[0]) or 1
    for j, (name, pts) in enumerate(lines.items()):
        pts.sort(key=lambda p: p[0])
        shift = (j - (len(lines) - 1) / 2) * 0.02  # dodge overlapping error bars
        xs = [s * (1 + shift) if log else s + shift * (span if not single else 10) for s, _ in pts]
        ys = [100 * v.mean for _, v in pts]  # type: ignore[operator]
        err = [_err(v) for _, v in pts]
        ax.errorbar(xs, ys, yerr=[[e[0] for e in err], [e[1] for e in err]], marker="o", capsize=3, label=name)
    base = next((r.values[col] for r in rows if r.is_base and r.values[col].status == OK), None)
    if base is not None:
        ax.axhline(100 * base.mean, color="grey", linestyle="--", label="base")  # type: ignore[operator]
    if log:
        ax.set_xscale("log")
    if single:
        ax.set_xlim(scales[0] - 0.5, scales[0] + 0.5)  # dodged points sit side by side in the middle
    ax.set_xticks(scales, [str(s) for s in scales])
    ax.set(xlabel="training examples (data scale)", ylabel=f"{label(col)} accuracy (%)", title=f"{model}: data efficiency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def rl_plot(c: Curve) -> bytes | None:
    fig = rl_figure(c)
    return None if fig is None else _png(fig)


def rl_figure(c: Curve) -> Any:
    """Reward and held-out accuracy (%) on twin axes, deceptive windows shaded; signal availability below."""
    from matplotlib.figure import Figure

    if not c.rows:
        return None
    fig = Figure(figsize=(8, 6))
    ax, ax_sig = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    r = [(x["step"], x["reward"]) for x in c.rows if isinstance(x.get("reward"), (int, float))]
    a = [(x["step"], 100 * x["heldout_accuracy"]) for x in c.rows if isinstance(x.get("heldout_accuracy"), (int, float))]
    handles = []
    if r:
        handles += ax.plot(*zip(*r), color="tab:blue", label="training reward")
    ax.set_ylabel("training reward", color="tab:blue")
    ax2 = ax.twinx()
    if a:
        handles += ax2.plot(*zip(*a), color="tab:orange", marker="o", label="held-out accuracy")
    ax2.set_ylabel("held-out accuracy (%)", color="tab:orange")  # percent, as in every table
    for i, (s, e) in enumerate(_windows(c.rows)):
        span = ax.axvspan(s, e if e > s else s + 0.5, color="tab:red", alpha=0.18, label="deceptive reward" if i == 0 else None)
        if i == 0:
            handles.append(span)
    if handles:
        ax.legend(handles=handles, labels=[h.get_label() for h in handles], fontsize=8, loc="lower right")
    ax.set_title(f"{c.run}" + ("" if c.complete else " (failed)" if c.state == FAILED else " (not finished)"))
    ax.grid(alpha=0.3)
    steps, sig = signal_series(c.rows)
    if sig:
        ax_sig.plot(steps, sig, color="tab:green")
    ax_sig.set(ylabel="signal availability", xlabel="step", ylim=(-0.05, 1.05))
    ax_sig.grid(alpha=0.3)
    return fig


def plots(rep: Report) -> dict[str, bytes]:
    """File name -> PNG bytes for every plot the data allows."""
    out: dict[str, bytes] = {}
    col = _efficiency_column(rep)
    for model, rows in rep.main.blocks.items():
        png = efficiency_plot(model, rows, col) if col else None
        if png:
            out[f"efficiency_{slug(model)}.png"] = png
    for c in rep.curves:
        png = rl_plot(c)
        if png:
            name = f"rl_{slug(c.run)}.png"
            out[name if name not in out else f"rl_{slug(c.run)}_{slug(c.stage)[:12]}.png"] = png
    return out


def write_all(rep: Report, out_dir: Path) -> list[str]:
    """Write report.md, report.html, the CSVs and PNGs into out_dir; returns the names written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [*out_dir.glob("efficiency_*.png"), *out_dir.glob("rl_*.png")]:
        old.unlink()  # plots of an earlier report that this one may not redraw
    pngs = plots(rep)
    captions = {f: (f"Data efficiency: {f[len('efficiency_'):-4]}" if f.startswith("efficiency_") else f"RL training: {f[3:-4]}") for f in pngs}
    doc = blocks(rep, captions)
    written = []
    for name, data in pngs.items():
        (out_dir / name).write_bytes(data)
        written.append(name)
    for name, rows in csv_files(rep).items():
        with open(out_dir / name, "w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows([["" if x is None else x for x in row] for row in rows])
        written.append(name)
    (out_dir / "report.md").write_text(markdown(doc))
    (out_dir / "report.html").write_text(html_page(doc, pngs, f"sftrl report: {rep.experiment}"))
    return written + ["report.md", "report.html"]
