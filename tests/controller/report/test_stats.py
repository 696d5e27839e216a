"""The report's statistics, checked against scipy and against explicit item resampling."""

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
    bootstrap_ci,
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


@pytest.mark.parametrize("k,n", [(30, 100), (120, 200), (5, 50), (490, 500)])
def test_bootstrap_matches_item_resampling_and_normal_approximation(k, n):
    lo, hi = bootstrap_ci(k, n, CFG)
    assert lo <= k / n <= hi
    ilo, ihi = _index_bootstrap(np.array([1] * k + [0] * (n - k)))
    assert abs(lo - ilo) < 0.02 and abs(hi - ihi) < 0.02
    p = k / n
    if min(k, n - k) >= 20:  # where the normal approximation holds
        se = (p * (1 - p) / n) ** 0.5
        assert abs(lo - (p - 1.96 * se)) < 0.02 and abs(hi - (p + 1.96 * se)) < 0.02
    assert bootstrap_ci(k, n, CFG) == (lo, hi)  # seeded: reproducible


def test_bootstrap_edge_cases():
    assert bootstrap_ci(0, 10) == (0.0, 0.0) and bootstrap_ci(10, 10) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_ci(0, 0)


def test_stratified_mean_matches_item_resampling():
    rng = np.random.default_rng(3)
    a, b = np.array([1] * 60 + [0] * 140), np.array([1] * 90 + [0] * 60)
    sims = [(a[rng.integers(0, 200, 200)].mean() + b[rng.integers(0, 150, 150)].mean()) / 2 for _ in range(4000)]
    ilo, ihi = np.quantile(sims, [0.025, 0.975])
    lo, hi = stratified_mean_ci([(60, 200), (90, 150)], CFG)
    assert abs(lo - ilo) < 0.015 and abs(hi - ihi) < 0.015


def test_paired_difference_matches_item_resampling():
    rng = np.random.default_rng(5)
    pa = np.array([1] * 40 + [1] * 30 + [0] * 10 + [0] * 20)
    pb = np.array([1] * 40 + [0] * 30 + [1] * 10 + [0] * 20)
    idx = rng.integers(0, 100, size=(4000, 100))
    ilo, ihi = np.quantile(pa[idx].mean(1) - pb[idx].mean(1), [0.025, 0.975])
    lo, hi = paired_diff_ci(40, 30, 10, 20, CFG)
    assert abs(lo - ilo) < 0.015 and abs(hi - ihi) < 0.015


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
    assert v.status == "ok" and v.mean == 0.75 and (v.lo, v.hi) == bootstrap_ci(3, 4, CFG)
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
