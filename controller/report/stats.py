"""The numbers of a study report, as pure functions (no I/O, no plotting).

Inputs are :class:`RunData` (what storage holds for one planned run); outputs are tables of
:class:`Value` cells and :class:`PairResult` comparisons that ``report.render`` turns into
Markdown, HTML, CSV, text and plots.

Uncertainty, stated once. Every interval stays honest at 0% and 100%: a bootstrap over items
collapses there to a zero-width interval ([0, 0] for 0 of 64 correct), which claims certainty
that 64 items cannot give.

- 95% interval of an accuracy: the Wilson score interval (Wilson 1927; recommended by Brown, Cai
  and DasGupta 2001), closed form, never zero-width.
- An average over benchmarks: each benchmark's accuracy drawn from its Jeffreys posteriors
  Beta(k + 1/2, n - k + 1/2), independently, ``n_resamples`` times (seeded), and the percentile
  interval of their mean. For one benchmark this is the Jeffreys interval.
- A paired difference acc(A) - acc(B) on the same items: Newcombe's hybrid score interval for paired
  proportions (Newcombe 1998, Stat Med 17:2635, method 10; Altman et al. 2000, "Statistics with
  confidence", p. 52): Wilson intervals of both accuracies combined with the correlation of the
  pairs. The same formula as biostatUZH's ``confIntPairedProportion`` and contingencytables'
  ``Newcombe_square_and_add_CI_paired_2x2``.
- SFT vs RL: exact McNemar test, i.e. a two-sided exact binomial test (p = 1/2) on the
  discordant items; "A beats B" only when p < alpha. Holm-adjusted p-values over every test
  that ran are attached for reference.
- Seeds: mean, sample std (ddof=1) and min-max across the seeds that finished.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Iterable, Sequence

import numpy as np

MULTIMODAL: tuple[str, ...] = ("mathvista", "mathvision", "mathverse", "wemath", "synthetic")
TRANSFER: tuple[str, ...] = ("gpqa", "math500", "mmlu", "hallusionbench", "mmbench")
METHOD_ORDER: tuple[str, ...] = ("base", "sft", "grpo", "dapo", "sft+grpo", "sft+dapo")
# (A, B): compared on the same model, data, scale and seed.
PAIRS: tuple[tuple[str, str], ...] = (
    ("sft", "grpo"),
    ("sft", "dapo"),
    ("sft+grpo", "grpo"),
    ("sft+dapo", "dapo"),
    ("sft+grpo", "sft"),
    ("sft+dapo", "sft"),
)
MM_AVG = "mm_avg"  # column: mean over the multimodal benchmarks
MM_POOLED = "mm_pooled"  # pairs: McNemar over the pooled items of every multimodal benchmark

OK, PENDING, NA = "ok", "pending", "n/a"
SKIPPED = "skipped"  # not run on purpose (e.g. rl.min_signal ruled out a starved RL stage): never a zero


@dataclass(frozen=True)
class ReportConfig:
    n_resamples: int = 2000  # Monte Carlo draws of the interval of an average over benchmarks
    seed: int = 0
    alpha: float = 0.05


@dataclass(frozen=True)
class RunInfo:
    """One run of plan.json."""

    run: str
    model: str
    method: str
    data: str | None
    scale: int | None
    seed: int | None
    train: tuple[str, ...]
    eval: str

    @property
    def cell(self) -> tuple[str, str, str | None, int | None]:
        return (self.model, self.method, self.data, self.scale)


@dataclass
class BenchResult:
    score: float  # results.json headline (0..1)
    metric: str = "accuracy"
    items: dict[str, bool] = field(default_factory=dict)  # samples.jsonl: item id -> correct

    @property
    def itemwise(self) -> bool:
        """The headline is the plain accuracy over the items (e.g. 'accuracy', HallusionBench's
        aAcc), so an interval of a proportion of items is its interval; not so for We-Math's strict score."""
        return bool(self.items) and abs(self.score - sum(self.items.values()) / len(self.items)) <= 1e-6


@dataclass
class RunData:
    info: RunInfo
    complete: bool  # the eval stage has _SUCCESS
    results: dict[str, BenchResult] = field(default_factory=dict)
    skipped: str | None = None  # why the run's stages will not run (controller.reconcile.apply_gates)


@dataclass
class Value:
    """One table cell: a single run's score with its interval, or a mean over seeds."""

    status: str = PENDING  # ok | pending | n/a
    mean: float | None = None
    lo: float | None = None  # 95% interval (one seed): Wilson, or Jeffreys draws for an average
    hi: float | None = None
    std: float | None = None  # across seeds (two or more)
    min: float | None = None
    max: float | None = None
    n_seeds: int = 0  # seeds that contributed
    n_expected: int = 1  # seeds planned for the cell
    n_items: int | None = None
    best: bool = False
    delta: float | None = None  # change from the base model (transfer table)
    note: str = ""


@dataclass
class Row:
    model: str
    method: str
    data: str | None
    scale: int | None
    runs: list[str]
    values: dict[str, Value]

    @property
    def is_base(self) -> bool:
        return self.method == "base"


@dataclass
class Table:
    columns: list[str]
    blocks: dict[str, list[Row]]  # model -> rows, base first


@dataclass
class PairResult:
    model: str
    data: str | None
    scale: int | None
    seed: int | None
    a: str
    b: str
    benchmark: str
    status: str = PENDING  # ok | pending | n/a
    n: int = 0  # items scored for both
    acc_a: float | None = None
    acc_b: float | None = None
    diff: float | None = None  # acc_a - acc_b
    lo: float | None = None
    hi: float | None = None
    a_only: int = 0  # items A got right and B wrong
    b_only: int = 0
    p: float | None = None
    p_holm: float | None = None
    verdict: str = ""


# --- primitives -------------------------------------------------------------------------------


def _z(alpha: float) -> float:
    """Two-sided standard normal quantile: 1.959964 for alpha 0.05."""
    return NormalDist().inv_cdf(1 - alpha / 2)


def wilson_ci(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion of k out of n.

    >>> [round(x, 4) for x in wilson_ci(0, 64)], [round(x, 4) for x in wilson_ci(64, 64)]
    ([0.0, 0.0566], [0.9434, 1.0])
    """
    if n <= 0:
        raise ValueError("an interval needs at least one item")
    z = _z(alpha)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def accuracy_ci(k: int, n: int, cfg: ReportConfig = ReportConfig()) -> tuple[float, float]:
    """95% (1 - cfg.alpha) interval of an accuracy of k correct out of n items: Wilson's.

    >>> lo, hi = accuracy_ci(50, 100)
    >>> 0.40 < lo < 0.41 and 0.59 < hi < 0.60
    True
    """
    return wilson_ci(k, n, cfg.alpha)


def stratified_mean_ci(counts: Sequence[tuple[int, int]], cfg: ReportConfig = ReportConfig()) -> tuple[float, float]:
    """Interval of the mean of several accuracies [(k, n), ...], each drawn from its Jeffreys posterior.

    >>> lo, hi = stratified_mean_ci([(50, 100), (80, 100)])
    >>> lo < 0.65 < hi
    True
    >>> stratified_mean_ci([(0, 50), (0, 80)])[1] > 0   # never [0, 0]
    True
    """
    if not counts or any(n <= 0 for _, n in counts):
        raise ValueError("an interval needs at least one item per benchmark")
    rng = np.random.default_rng(cfg.seed)
    draws = np.stack([rng.beta(k + 0.5, n - k + 0.5, size=cfg.n_resamples) for k, n in counts])
    lo, hi = np.quantile(draws.mean(axis=0), [cfg.alpha / 2, 1 - cfg.alpha / 2])
    return float(lo), float(hi)


def paired_diff_ci(both: int, a_only: int, b_only: int, neither: int, cfg: ReportConfig = ReportConfig()) -> tuple[float, float]:
    """Newcombe's hybrid score interval of acc(A) - acc(B) on the same items (see the module docstring).

    >>> lo, hi = paired_diff_ci(40, 30, 10, 20)
    >>> 0.05 < lo < 0.2 < hi < 0.35
    True
    >>> lo, hi = paired_diff_ci(50, 0, 0, 0)   # all items right for both: not a certain 0
    >>> lo < 0 < hi
    True
    """
    n = both + a_only + b_only + neither
    if n <= 0:
        raise ValueError("an interval needs at least one item")
    p1, p2 = (both + a_only) / n, (both + b_only) / n
    l1, u1 = wilson_ci(both + a_only, n, cfg.alpha)
    l2, u2 = wilson_ci(both + b_only, n, cfg.alpha)
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    phi = 0.0
    if margins > 0:
        cross = both * neither - a_only * b_only
        if cross > n / 2:
            phi = (cross - n / 2) / math.sqrt(margins)
        elif cross < 0:
            phi = cross / math.sqrt(margins)
    d = p1 - p2
    lo = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = d + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return max(-1.0, lo), min(1.0, hi)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of a_only ~ Bin(a_only + b_only, 1/2).

    Equal to ``scipy.stats.binomtest(a_only, a_only + b_only, 0.5).pvalue``.

    >>> mcnemar_exact(0, 0), round(mcnemar_exact(10, 2), 4), mcnemar_exact(3, 3)
    (1.0, 0.0386, 1.0)
    """
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    term, tail = 1, 1  # C(n, 0)
    for i in range(1, k + 1):
        term = term * (n - i + 1) // i
        tail += term
    return min(1.0, 2 * tail / 2**n)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = round(running, 12)
    return out


def seed_summary(scores: Sequence[float]) -> dict[str, float | None]:
    """Mean, sample std (ddof=1; None for one seed), min and max of per-seed scores.

    >>> seed_summary([0.5, 0.7])["std"] == float(np.std([0.5, 0.7], ddof=1))
    True
    """
    arr = np.asarray(scores, dtype=float)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else None,
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


def deceptive_windows(steps: Sequence[float], flags: Sequence[float]) -> list[tuple[float, float]]:
    """Step spans flagged deceptive: from a flagged row to the next unflagged row (or the last row).

    >>> deceptive_windows([10, 20, 30, 40, 50], [0, 1, 1, 0, 1])
    [(20, 40), (50, 50)]
    """
    out: list[tuple[float, float]] = []
    start = None
    for i, (s, f) in enumerate(zip(steps, flags)):
        if f and start is None:
            start = s
        elif not f and start is not None:
            out.append((start, s))
            start = None
    if start is not None:
        out.append((start, steps[-1]))
    return out


def rl_summary(rows: Sequence[dict]) -> dict[str, float | int | None]:
    """Headline numbers of an RL stage's metrics.jsonl rows (sorted by step)."""

    def series(key: str) -> list[float]:
        return [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]

    reward, acc, sig, flags = series("reward"), series("heldout_accuracy"), signal_series(rows)[1], series("deceptive_reward")
    return {
        "steps": int(rows[-1]["step"]) if rows else 0,
        "reward_first": reward[0] if reward else None,
        "reward_last": reward[-1] if reward else None,
        "heldout_first": acc[0] if acc else None,
        "heldout_best": max(acc) if acc else None,
        "heldout_last": acc[-1] if acc else None,
        "signal_mean": float(np.mean(sig)) if sig else None,
        "deceptive_share": float(np.mean([f > 0 for f in flags])) if flags else None,
    }


def signal_series(rows: Sequence[dict]) -> tuple[list[float], list[float]]:
    """(steps, signal availability): the logged key, else 1 - frac_reward_zero_std."""
    steps, vals = [], []
    for r in rows:
        v = r.get("signal_availability")
        if not isinstance(v, (int, float)) and isinstance(r.get("frac_reward_zero_std"), (int, float)):
            v = 1.0 - r["frac_reward_zero_std"]
        if isinstance(v, (int, float)):
            steps.append(r["step"])
            vals.append(float(v))
    return steps, vals


# --- tables -----------------------------------------------------------------------------------


def run_value(rd: RunData, column: str, mm_cols: Sequence[str], cfg: ReportConfig) -> Value:
    """One run's cell: the headline score and its interval over items."""
    if rd.skipped and not rd.complete:
        return Value(SKIPPED, note=rd.skipped)
    if not rd.complete:
        return Value(PENDING)
    if column == MM_AVG:
        parts = [rd.results.get(b) for b in mm_cols]
        if not mm_cols or any(p is None for p in parts):
            return Value(NA, note="a multimodal benchmark is missing")
        mean = float(np.mean([p.score for p in parts]))  # type: ignore[union-attr]
        counts = [(sum(p.items.values()), len(p.items)) for p in parts]  # type: ignore[union-attr]
        v = Value(OK, mean=mean, n_seeds=1, n_items=sum(n for _, n in counts))
        if all(p.itemwise for p in parts):  # type: ignore[union-attr]
            v.lo, v.hi = stratified_mean_ci(counts, cfg)
        else:
            v.note = "a score that is not item accuracy: no item interval"
        return v
    res = rd.results.get(column)
    if res is None:
        return Value(NA, note="not in results.json")
    v = Value(OK, mean=res.score, n_seeds=1, n_items=len(res.items) or None)
    if res.itemwise:
        v.lo, v.hi = accuracy_ci(sum(res.items.values()), len(res.items), cfg)
    elif res.items:
        v.note = f"metric {res.metric} is not item accuracy: no item interval"
    return v


def cell_value(runs: Sequence[RunData], column: str, mm_cols: Sequence[str], cfg: ReportConfig) -> Value:
    """A cell over its seeds: one seed keeps its interval; several give mean, std and min-max."""
    per_run = [run_value(rd, column, mm_cols, cfg) for rd in runs]
    ok = [v for v in per_run if v.status == OK]
    if not ok:
        status = next((st for st in (PENDING, SKIPPED) if any(v.status == st for v in per_run)), NA)
        return Value(status, n_expected=len(runs), note=per_run[0].note if per_run else "")
    if len(ok) == 1:
        v = ok[0]
        v.n_expected = len(runs)
    else:
        s = seed_summary([v.mean for v in ok])  # type: ignore[misc]
        v = Value(OK, mean=s["mean"], std=s["std"], min=s["min"], max=s["max"], n_seeds=len(ok), n_expected=len(runs))
    if v.n_seeds < v.n_expected:
        v.note = f"{v.n_seeds}/{v.n_expected} seeds done"
    return v


def _sort_key(key: tuple, data_order: Sequence[str | None]) -> tuple:
    model, method, data, scale = key
    m = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    d = data_order.index(data) if data in data_order else len(data_order)
    return (method != "base", d, -1 if scale is None else scale, m, method)


def group_cells(runs: Sequence[RunData]) -> dict[str, dict[tuple, list[RunData]]]:
    """model -> cell (model, method, data, scale) -> runs (seeds), in plan order."""
    out: dict[str, dict[tuple, list[RunData]]] = {}
    for rd in runs:
        out.setdefault(rd.info.model, {}).setdefault(rd.info.cell, []).append(rd)
    return out


def build_table(
    runs: Sequence[RunData], columns: Sequence[str], mm_cols: Sequence[str], cfg: ReportConfig, delta: bool = False
) -> Table:
    """Rows per model (base first, then data, scale, method), best per column marked per model.

    With ``delta`` every non-base cell also carries its change from the base model's score.
    """
    data_order: list[str | None] = []
    for rd in runs:
        if rd.info.data not in data_order:
            data_order.append(rd.info.data)
    blocks: dict[str, list[Row]] = {}
    for model, cells in group_cells(runs).items():
        rows = [
            Row(model, k[1], k[2], k[3], [r.info.run for r in rs], {c: cell_value(rs, c, mm_cols, cfg) for c in columns})
            for k, rs in sorted(cells.items(), key=lambda kv: _sort_key(kv[0], data_order))
        ]
        for c in columns:
            ok = [r.values[c] for r in rows if r.values[c].status == OK]
            if len(ok) > 1:
                top = max(v.mean for v in ok)  # type: ignore[type-var]
                for v in ok:
                    v.best = v.mean == top
            base = next((r.values[c] for r in rows if r.is_base and r.values[c].status == OK), None)
            if delta and base is not None:
                for r in rows:
                    if not r.is_base and r.values[c].status == OK:
                        r.values[c].delta = r.values[c].mean - base.mean  # type: ignore[operator]
        blocks[model] = rows
    return Table(list(columns), blocks)


def _pair_items(ra: RunData, rb: RunData, bench: str, mm_cols: Sequence[str]) -> tuple[dict, dict]:
    if bench == MM_POOLED:
        ia = {(b, i): c for b in mm_cols if b in ra.results for i, c in ra.results[b].items.items()}
        ib = {(b, i): c for b in mm_cols if b in rb.results for i, c in rb.results[b].items.items()}
        return ia, ib
    ea, eb = ra.results.get(bench), rb.results.get(bench)
    return (ea.items if ea else {}), (eb.items if eb else {})


def compare_pair(ra: RunData, rb: RunData, bench: str, mm_cols: Sequence[str], cfg: ReportConfig) -> PairResult:
    """McNemar and paired interval of run A against run B on the items both scored."""
    i = ra.info
    pr = PairResult(i.model, i.data, i.scale, i.seed, i.method, rb.info.method, bench)
    if not (ra.complete and rb.complete):
        why = next((r.skipped for r in (ra, rb) if r.skipped and not r.complete), None)
        if why:
            pr.status, pr.verdict = SKIPPED, f"skipped ({why})"
        return pr
    ia, ib = _pair_items(ra, rb, bench, mm_cols)
    common = sorted(set(ia) & set(ib), key=str)
    if not common:
        pr.status, pr.verdict = NA, "no common scored items"
        return pr
    both = sum(1 for k in common if ia[k] and ib[k])
    a_only = sum(1 for k in common if ia[k] and not ib[k])
    b_only = sum(1 for k in common if ib[k] and not ia[k])
    n = len(common)
    pr.status, pr.n, pr.a_only, pr.b_only = OK, n, a_only, b_only
    pr.acc_a, pr.acc_b = (both + a_only) / n, (both + b_only) / n
    pr.diff = pr.acc_a - pr.acc_b
    pr.lo, pr.hi = paired_diff_ci(both, a_only, b_only, n - both - a_only - b_only, cfg)
    pr.p = mcnemar_exact(a_only, b_only)
    if pr.p < cfg.alpha and a_only != b_only:
        pr.verdict = f"{pr.a} beats {pr.b}" if a_only > b_only else f"{pr.b} beats {pr.a}"
    else:
        pr.verdict = "no significant difference"
    return pr


def build_pairs(runs: Sequence[RunData], benchmarks: Sequence[str], mm_cols: Sequence[str], cfg: ReportConfig) -> list[PairResult]:
    """Every planned SFT-vs-RL pair on the same model, data, scale and seed, per benchmark.

    The pooled multimodal comparison comes first; Holm-adjusted p-values over all tests that ran
    are attached for reference (verdicts use the unadjusted p, as the study does).
    """
    index = {(r.info.model, r.info.method, r.info.data, r.info.scale, r.info.seed): r for r in runs}
    out: list[PairResult] = []
    benches = ([MM_POOLED] if len(mm_cols) > 1 else []) + list(benchmarks)
    seen: set[tuple] = set()
    for r in runs:
        model, data, scale, seed = r.info.model, r.info.data, r.info.scale, r.info.seed
        if (model, data, scale, seed) in seen:
            continue
        seen.add((model, data, scale, seed))
        for a, b in PAIRS:
            ra, rb = index.get((model, a, data, scale, seed)), index.get((model, b, data, scale, seed))
            if ra is not None and rb is not None:
                out.extend(compare_pair(ra, rb, bench, mm_cols, cfg) for bench in benches)
    ran = [p for p in out if p.p is not None]
    for p, adj in zip(ran, holm([p.p for p in ran])):  # type: ignore[misc]
        p.p_holm = adj
    return out


def split_columns(benchmarks: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
    """(main columns, multimodal benchmarks, transfer benchmarks); mm_avg ends the main columns
    when there are two or more multimodal benchmarks to average.

    >>> split_columns(["mathvista", "gpqa", "wemath", "custom"])
    (['mathvista', 'wemath', 'custom', 'mm_avg'], ['mathvista', 'wemath'], ['gpqa'])
    """
    benchmarks = list(dict.fromkeys(benchmarks))
    transfer = [b for b in benchmarks if b in TRANSFER]
    main = [b for b in benchmarks if b not in TRANSFER]
    mm = [b for b in main if b in MULTIMODAL]
    return main + ([MM_AVG] if len(mm) > 1 else []), mm, transfer
