"""The deceptive-reward detector on simulated runs: healthy runs (flat, slowly rising, plateaued,
noisy) are almost never flagged, a real fall is, and the held-out sampling noise decides.

Rates and delays over thousands of runs: bench/deceptive_detector.py. Here a fixed sample of runs
(seeded) checks the bounds the bench measures: at most 1% false alarms per run where the earlier
rule raised 2-5%."""

from __future__ import annotations

import math

import numpy as np
import pytest

from job_runtime.contract import DeceptiveParams
from job_runtime.train.deceptive import DeceptiveRewardDetector, binomial_trend, scan, trend

EVALS = 30
PEAK = 12


def runs(kind: str, items: int, count: int, seed: int, slope: float = 0.0):
    """`count` runs of EVALS (step, reward, accuracy) points; reward always rises (with noise)."""
    rng = np.random.default_rng(seed)
    i = np.arange(EVALS, dtype=float)
    p = {
        "flat": np.full(EVALS, 0.4),
        "healthy": 0.3 + 0.005 * i,
        "plateaued": np.minimum(0.3 + 0.01 * i, 0.4),
        "deceptive": np.where(i <= PEAK, 0.3 + 0.01 * i, 0.3 + 0.01 * PEAK - slope * (i - PEAK)),
    }[kind]
    acc = rng.binomial(items, np.broadcast_to(np.clip(p, 0.0, 1.0), (count, EVALS))) / items
    reward = 0.2 + 0.02 * i + rng.normal(0, 0.02, size=(count, EVALS))
    return [list(zip(range(EVALS), reward[r].tolist(), acc[r].tolist())) for r in range(count)]


def first_flag(hist, items, params=None) -> int | None:
    return next((v.step for v in scan(hist, params or DeceptiveParams(), items) if v.flagged), None)


@pytest.mark.parametrize("kind,items", [("flat", 64), ("flat", 256), ("healthy", 128), ("plateaued", 256)])
def test_healthy_runs_are_almost_never_flagged(kind, items):
    """At most 1% of 1000 runs (the bench measures about 0.3%: 3 expected, 11 or more has odds 1 in 20,000)."""
    hists = runs(kind, items, 1000, seed=items + len(kind))
    alarms = sum(first_flag(h, items) is not None for h in hists)
    assert alarms <= 10, f"{alarms} of 1000 {kind} runs on {items} items flagged"


def test_a_real_fall_is_flagged_after_it_starts_and_steep_ones_quickly():
    for slope, within in ((0.03, 8), (0.05, 3)):
        delays = []
        for h in runs("deceptive", 256, 200, seed=int(slope * 1000), slope=slope):
            step = first_flag(h, 256)
            assert step is not None and step > PEAK, f"fall of {slope}/eval: flagged at {step}"
            delays.append(step - (PEAK + math.ceil(0.02 / slope - 1e-9)))
        assert np.percentile(delays, 90) <= within, (slope, np.percentile(delays, 90))


def test_the_held_out_size_sets_the_noise_a_fall_must_beat():
    """The same measured fall is a fall on 1000 items and noise on 64."""
    hist = [(i, 0.2 + 0.02 * i, 0.45 - 0.015 * max(0, i - 4)) for i in range(10)]
    assert first_flag(hist, 1000) is not None
    assert first_flag(hist, 64) is None


def test_flat_reward_with_falling_accuracy_is_not_a_deceptive_reward():
    hist = [(10 * i, 0.5, 0.6 - 0.03 * i) for i in range(10)]
    assert first_flag(hist, 1000) is None


def test_flags_at_once_on_a_clean_fall_and_clears_when_accuracy_recovers():
    d = DeceptiveRewardDetector(DeceptiveParams(window=4), accuracy_items=1000)
    falling = [d.update(i, 0.1 * i, 0.9 - 0.1 * i) for i in range(4)]
    assert [v.flagged for v in falling] == [False, False, True, True]
    assert d.first_flag_step == 2
    assert falling[-1].reward.slope == pytest.approx(0.1) and falling[-1].accuracy.slope == pytest.approx(-0.1)
    recovered = [d.update(i, 0.1 * i, 0.6 + 0.1 * (i - 3)) for i in range(4, 8)]
    assert recovered[-1].flagged is False
    assert "DECEPTIVE" in falling[-1].describe() and "healthy" in recovered[-1].describe()
    assert "standard errors of sampling noise" in falling[-1].describe()


def test_thresholds_come_from_params():
    hist = [(i, 0.01 * i, 0.9 - 0.01 * i) for i in range(10)]
    assert first_flag(hist, 100_000) is not None
    assert first_flag(hist, 100_000, DeceptiveParams(min_reward_slope=0.05)) is None
    assert first_flag(hist, 100_000, DeceptiveParams(max_accuracy_slope=-0.05)) is None
    assert first_flag(hist, 64) is None  # 1 point per evaluation on 64 items is within the noise (z = 2)
    assert first_flag(hist, 64, DeceptiveParams(noise_z=1.0)) is not None
    # a short window only ever sees short runs
    assert first_flag(hist, 100_000, DeceptiveParams(window=3)) is not None


def test_without_the_held_out_size_the_residuals_decide():
    hist = [(i, 0.01 * i, 0.9 - 0.01 * i) for i in range(8)]
    assert first_flag(hist, None) is not None  # a perfectly clean line: no residual noise at all


def test_non_finite_points_are_ignored_and_short_histories_give_no_verdict():
    d = DeceptiveRewardDetector(DeceptiveParams(window=5), accuracy_items=256)
    v = d.update(1, math.nan, 0.5)
    assert v.points == 0 and v.reward is None
    v = d.update(2, 0.5, 0.5)
    assert v.points == 1 and not v.flagged and "waiting" in v.describe()


def test_trends_and_the_binomial_noise():
    assert trend([1.0, 2.0, 3.0, 4.0]).stderr == 0.0
    t = binomial_trend([0.5] * 5, 100, 4.1)
    assert t.stderr == pytest.approx(0.05 / math.sqrt(10)) and t.margin == pytest.approx(4.1 * t.stderr)
    assert t.upper > 0 > t.lower  # a flat series is within its noise
    assert binomial_trend([0.0] * 5, 64, 4.1).stderr > 0  # 0% is not a noiseless 0
