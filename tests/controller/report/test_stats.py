"""The report's statistics, recomputed independently: scipy's Wilson intervals and binomial tests, a
second implementation of Newcombe's paired interval and of Holm's step-down, explicit item
resampling, and coverage simulated where a bootstrap collapses (accuracies near 0% or 100%)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from controller.report.stats import (
    MM_AVG,
    BenchResult,
    ReportConfig,
    RunData,
    RunInfo,
    accuracy_ci,
    build_pairs,
    build_table,
    cell_value,
    compare_pair,
    deceptive_windows,
    holm,
    mcnemar_exact,
    paired_diff_ci,
    rl_summary,
    seed_summary,
    split_columns,
    stratified_mean_ci,
)

CFG = ReportConfig()


@pytest.mark.parametrize("a_only,b_only", [(0, 0), (0, 1), (1, 0), (3, 3), (10, 2), (2, 10), (7, 8), (0, 40), (25, 60), (1500, 1400), (2900, 3000)])
def test_mcnemar_equals_scipy_exact_binomial(a_only, b_only):
    n = a_only + b_only
    expected = binomtest(a_only, n, 0.5, alternative="two-sided").pvalue if n else 1.0
    assert mcnemar_exact(a_only, b_only) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def _index_bootstrap(correct: np.ndarray, b: int = 4000, seed: int = 7) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), size=(b, len(correct)))].mean(axis=1)
    return tuple(np.quantile(means, [0.025, 0.975]))  # type: ignore[return-value]


@pytest.mark.parametrize("k,n", [(0, 64), (1, 64), (30, 100), (120, 200), (5, 50), (490, 500), (64, 64)])
def test_accuracy_interval_is_wilson(k, n):
    lo, hi = accuracy_ci(k, n, CFG)
    want = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert (lo, hi) == pytest.approx((want.low, want.high), abs=1e-12)
    assert lo <= k / n <= hi and hi - lo > 0.01  # never zero-width, also at 0% and 100%


def _coverage(interval, truth: float, draw, trials: int = 3000, seed: int = 11) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(trials):
        lo, hi = interval(draw(rng))
        hits += lo <= truth <= hi
    return hits / trials


def _exact_coverage(n: int, p: float) -> float:
    from scipy.stats import binom

    return float(sum(binom.pmf(k, n, p) for k in range(n + 1) if accuracy_ci(k, n, CFG)[0] <= p <= accuracy_ci(k, n, CFG)[1]))


@pytest.mark.parametrize("p,n", [(0.01, 50), (0.02, 64), (0.5, 100), (0.985, 128)])
def test_accuracy_interval_covers_the_truth_near_the_bounds(p, n):
    """Exact coverage of the 95% interval. A bootstrap gives [0, 0] whenever 0 of n are right: at 1%
    accuracy and 50 items that is 60% of the time, so it covers the truth at most 40% of the time."""
    assert _exact_coverage(n, p) >= 0.90


def test_accuracy_interval_is_95_percent_on_average():
    grid = np.linspace(0.005, 0.995, 199)
    assert np.mean([_exact_coverage(64, p) for p in grid]) == pytest.approx(0.95, abs=0.01)


def test_stratified_mean_matches_item_resampling_and_stays_honest_at_the_bounds():
    rng = np.random.default_rng(3)
    a, b = np.array([1] * 60 + [0] * 140), np.array([1] * 90 + [0] * 60)
    sims = [(a[rng.integers(0, 200, 200)].mean() + b[rng.integers(0, 150, 150)].mean()) / 2 for _ in range(4000)]
    ilo, ihi = np.quantile(sims, [0.025, 0.975])
    lo, hi = stratified_mean_ci([(60, 200), (90, 150)], CFG)
    assert abs(lo - ilo) < 0.015 and abs(hi - ihi) < 0.015
    lo, hi = stratified_mean_ci([(0, 64), (0, 100)], CFG)
    assert lo >= 0 and hi > 0.005  # 0% everywhere is still not a certain 0
    assert stratified_mean_ci([(0, 64), (0, 100)], CFG) == (lo, hi)  # seeded: reproducible
    truth = (0.01 + 0.02) / 2
    cov = _coverage(lambda ks: stratified_mean_ci([(int(ks[0]), 64), (int(ks[1]), 100)], ReportConfig(n_resamples=500)),
                    truth, lambda r: (r.binomial(64, 0.01), r.binomial(100, 0.02)), trials=600)
    assert cov >= 0.93, cov


def _newcombe(both: int, a_only: int, b_only: int, neither: int) -> tuple[float, float]:
    """Newcombe (1998) method 10, written again from the paper's formulas with scipy's Wilson intervals."""
    n = both + a_only + b_only + neither
    r1, r2 = both + a_only, both + b_only
    ci1 = binomtest(r1, n).proportion_ci(method="wilson")
    ci2 = binomtest(r2, n).proportion_ci(method="wilson")
    p1, p2 = r1 / n, r2 / n
    d1, e1, d2, e2 = p1 - ci1.low, ci1.high - p1, p2 - ci2.low, ci2.high - p2
    prod = r1 * (n - r1) * r2 * (n - r2)
    a = both * neither - a_only * b_only
    psi = 0.0 if prod == 0 else ((a - n / 2) / prod ** 0.5 if a > n / 2 else (a / prod ** 0.5 if a < 0 else 0.0))
    return (p1 - p2) - (d1 ** 2 + e2 ** 2 - 2 * psi * d1 * e2) ** 0.5, (p1 - p2) + (d2 ** 2 + e1 ** 2 - 2 * psi * d2 * e1) ** 0.5


@pytest.mark.parametrize("cells", [(40, 30, 10, 20), (59, 6, 16, 80), (1, 1, 7, 12), (50, 0, 0, 0), (0, 0, 0, 50),
                                   (10, 3, 0, 37), (0, 20, 20, 0)])
def test_paired_difference_is_newcombes_interval(cells):
    lo, hi = paired_diff_ci(*cells, CFG)
    assert (lo, hi) == pytest.approx(_newcombe(*cells), abs=1e-9)
    d = (cells[1] - cells[2]) / sum(cells)
    assert lo <= d <= hi and hi - lo > 0.01


def test_paired_difference_covers_the_truth_when_discordant_items_are_rare():
    """A wins 3% of items, B never: the bootstrap gives [0, 0] whenever no discordant item is drawn
    (22% of samples of 50 items), missing the true +3 points."""
    probs = np.array([0.5, 0.03, 0.0, 0.47])
    cov = _coverage(lambda c: paired_diff_ci(*(int(x) for x in c), CFG), 0.03,
                    lambda rng: rng.multinomial(50, probs))
    assert cov >= 0.93, cov


def test_paired_difference_matches_item_resampling_away_from_the_bounds():
    rng = np.random.default_rng(5)
    pa = np.array([1] * 40 + [1] * 30 + [0] * 10 + [0] * 20)
    pb = np.array([1] * 40 + [0] * 30 + [1] * 10 + [0] * 20)
    idx = rng.integers(0, 100, size=(4000, 100))
    ilo, ihi = np.quantile(pa[idx].mean(1) - pb[idx].mean(1), [0.025, 0.975])
    lo, hi = paired_diff_ci(40, 30, 10, 20, CFG)
    assert abs(lo - ilo) < 0.03 and abs(hi - ihi) < 0.03


def test_holm_and_seed_summary():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([]) == []
    s = seed_summary([0.4, 0.5, 0.9])
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(np.std([0.4, 0.5, 0.9], ddof=1))
    assert (s["min"], s["max"]) == (0.4, 0.9)
    assert seed_summary([0.3])["std"] is None


def test_deceptive_windows():
    assert deceptive_windows([], []) == []
    assert deceptive_windows([0, 5, 10], [0, 0, 0]) == []
    assert deceptive_windows([0, 5, 10], [1, 1, 1]) == [(0, 10)]
    assert deceptive_windows([0, 5, 10, 15, 20], [0, 1, 0, 1, 1]) == [(5, 10), (15, 20)]


def test_rl_summary_uses_zero_std_fraction_when_signal_is_not_logged():
    rows = [{"step": 1, "reward": 0.1, "frac_reward_zero_std": 0.75}, {"step": 2, "reward": 0.3, "frac_reward_zero_std": 0.25, "heldout_accuracy": 0.4}]
    s = rl_summary(rows)
    assert s["signal_mean"] == pytest.approx(0.5) and s["heldout_last"] == 0.4 and s["reward_last"] == 0.3
    assert s["deceptive_share"] is None and rl_summary([])["steps"] == 0


# --- cells and tables -------------------------------------------------------------------------


def info(method: str, seed: int | None = 0, model: str = "m", scale: int | None = 10, data: str | None = "d") -> RunInfo:
    if method == "base":
        data = scale = seed = None
    return RunInfo(f"{model}-{method}-{scale}-{seed}", model, method, data, scale, seed, (), f"eval-{method}-{seed}")


def run(method: str, correct: dict[str, list[bool]] | None, **kw) -> RunData:
    if correct is None:
        return RunData(info(method, **kw), complete=False)
    res = {b: BenchResult(sum(v) / len(v), "accuracy", {str(i): c for i, c in enumerate(v)}) for b, v in correct.items()}
    return RunData(info(method, **kw), complete=True, results=res)


def test_cell_single_seed_pending_and_partial_seeds():
    done = run("sft", {"mathvista": [True, False, True, True]})
    v = cell_value([done], "mathvista", ["mathvista"], CFG)
    assert v.status == "ok" and v.mean == 0.75 and (v.lo, v.hi) == accuracy_ci(3, 4, CFG)
    assert cell_value([run("sft", None)], "mathvista", ["mathvista"], CFG).status == "pending"
    assert cell_value([done], "gpqa", ["mathvista"], CFG).status == "n/a"  # finished, benchmark absent
    v = cell_value([done, run("sft", None, seed=1)], "mathvista", ["mathvista"], CFG)
    assert v.mean == 0.75 and v.n_seeds == 1 and v.n_expected == 2 and "1/2 seeds" in v.note


def test_cell_non_accuracy_metric_has_no_item_interval():
    rd = run("sft", {"wemath": [True, False]})
    rd.results["wemath"].metric, rd.results["wemath"].score = "strict_score", 0.3
    v = cell_value([rd], "wemath", ["wemath"], CFG)
    assert v.mean == 0.3 and v.lo is None and "strict_score" in v.note
    assert cell_value([rd], MM_AVG, ["wemath"], CFG).lo is None
    rd.results["wemath"].metric, rd.results["wemath"].score = "aAcc", 0.5  # item accuracy under another name
    assert cell_value([rd], "wemath", ["wemath"], CFG).lo is not None


def test_mm_average_needs_every_multimodal_benchmark():
    rd = run("sft", {"mathvista": [True, True], "wemath": [False, True]})
    v = cell_value([rd], MM_AVG, ["mathvista", "wemath"], CFG)
    assert v.mean == pytest.approx(0.75) and (v.lo, v.hi) == stratified_mean_ci([(2, 2), (1, 2)], CFG)
    assert cell_value([rd], MM_AVG, ["mathvista", "wemath", "mathverse"], CFG).status == "n/a"


def test_table_order_best_and_delta():
    runs = [
        run("grpo", {"gpqa": [True, True, False]}),
        run("sft", {"gpqa": [True, False, False]}, scale=100),
        run("base", {"gpqa": [False, False, True]}),
        run("sft", {"gpqa": [True, True, True]}),
    ]
    t = build_table(runs, ["gpqa"], [], CFG, delta=True)
    rows = t.blocks["m"]
    assert [(r.method, r.scale) for r in rows] == [("base", None), ("sft", 10), ("grpo", 10), ("sft", 100)]
    assert [r.values["gpqa"].best for r in rows] == [False, True, False, False]
    assert rows[0].values["gpqa"].delta is None
    assert rows[2].values["gpqa"].delta == pytest.approx(2 / 3 - 1 / 3)


def test_pairs_common_items_pending_and_holm():
    a = run("sft", {"mathvista": [True] * 10 + [False] * 10})
    b = run("grpo", {"mathvista": [True] * 20})
    pr = compare_pair(a, b, "mathvista", ["mathvista"], CFG)
    assert (pr.a_only, pr.b_only, pr.n) == (0, 10, 20) and pr.verdict == "grpo beats sft"
    assert pr.p == pytest.approx(binomtest(0, 10, 0.5).pvalue)
    assert compare_pair(a, run("grpo", None), "mathvista", ["mathvista"], CFG).status == "pending"
    other = run("grpo", {"mathvista": [True]})
    other.results["mathvista"].items = {"zzz": True}
    assert compare_pair(a, other, "mathvista", ["mathvista"], CFG).status == "n/a"
    pairs = build_pairs([a, b, run("dapo", {"mathvista": [False] * 20}), run("grpo", None, seed=1), run("sft", {"mathvista": [True]}, seed=1)], ["mathvista"], ["mathvista"], CFG)
    assert [(p.a, p.b, p.seed, p.status) for p in pairs] == [("sft", "grpo", 0, "ok"), ("sft", "dapo", 0, "ok"), ("sft", "grpo", 1, "pending")]
    assert pairs[1].verdict == "sft beats dapo"
    assert [p.p_holm for p in pairs[:2]] == pytest.approx(holm([pairs[0].p, pairs[1].p]))


def test_split_columns():
    assert split_columns(["gpqa", "mmlu"]) == ([], [], ["gpqa", "mmlu"])
    assert split_columns(["synthetic", "gpqa"]) == (["synthetic"], ["synthetic"], ["gpqa"])  # nothing to average


def _holm_by_definition(p: list[float]) -> list[float]:
    """Holm's step-down, from its definition: adj(i) = max over j <= rank(i) of min(1, (m - j) p_(j))."""
    m = len(p)
    order = sorted(range(m), key=lambda i: (p[i], i))
    rank = {i: r for r, i in enumerate(order)}
    return [max(min(1.0, (m - j) * p[order[j]]) for j in range(rank[i] + 1)) for i in range(m)]


def test_report_pairs_recomputed_independently():
    """Every SFT-vs-RL pair the report builds: McNemar p from scipy's exact binomial test on the
    discordant items, the interval from a second implementation of Newcombe's, Holm from its definition."""
    rng = np.random.default_rng(21)
    methods = {"sft": 0.55, "grpo": 0.45, "dapo": 0.98, "sft+grpo": 0.6}
    runs = []
    for seed in (0, 1):
        for m, acc in methods.items():
            runs.append(run(m, {"mathvista": list(rng.random(80) < acc), "wemath": list(rng.random(40) < acc)}, seed=seed))
    pairs = build_pairs(runs, ["mathvista", "wemath"], ["mathvista", "wemath"], CFG)
    ran = [p for p in pairs if p.p is not None]
    assert len(ran) >= 12
    items = {(r.info.method, r.info.seed): r for r in runs}
    for p in ran:
        a, b = items[(p.a, p.seed)], items[(p.b, p.seed)]
        benches = ["mathvista", "wemath"] if p.benchmark == "mm_pooled" else [p.benchmark]
        ia = [c for bn in benches for c in a.results[bn].items.values()]
        ib = [c for bn in benches for c in b.results[bn].items.values()]
        cells = (sum(x and y for x, y in zip(ia, ib)), sum(x and not y for x, y in zip(ia, ib)),
                 sum(y and not x for x, y in zip(ia, ib)), sum(not x and not y for x, y in zip(ia, ib)))
        assert (p.a_only, p.b_only, p.n) == (cells[1], cells[2], len(ia))
        disc = cells[1] + cells[2]
        assert p.p == pytest.approx(binomtest(cells[1], disc, 0.5).pvalue if disc else 1.0, rel=1e-9)
        assert (p.lo, p.hi) == pytest.approx(_newcombe(*cells), abs=1e-9)
    assert [p.p_holm for p in ran] == pytest.approx(_holm_by_definition([p.p for p in ran]), abs=1e-12)
