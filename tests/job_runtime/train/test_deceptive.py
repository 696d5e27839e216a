"""The deceptive-reward detector on synthetic histories: it flags the deceptive one only."""

from __future__ import annotations

import math
import random

import pytest

from job_runtime.contract import DeceptiveParams
from job_runtime.train.deceptive import DeceptiveRewardDetector, scan, trend

ITEMS = 256  # held-out questions: accuracy noise is binomial, sd ~0.03
SEEDS = range(25)
ONSET = 10  # evaluation index where accuracy starts to fall in the deceptive history


def _binomial(rng: random.Random, n: int, p: float) -> float:
    return sum(rng.random() < p for _ in range(n)) / n


def history(kind: str, seed: int, n: int = 30, items: int = ITEMS) -> list[tuple[int, float, float]]:
    """(step, mean reward, held-out accuracy) every 10 steps; reward always rises (with noise)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        reward = min(1.0, 0.2 + 0.02 * i) + rng.gauss(0, 0.02)
        p = {
            "deceptive": 0.3 + 0.01 * i if i < ONSET else 0.4 - 0.02 * (i - ONSET),
            "healthy": 0.3 + 0.01 * i,
            "noisy": 0.3 + 0.01 * i,  # healthy gains measured on a small held-out set (sd ~0.06)
        }[kind]
        out.append((10 * (i + 1), reward, _binomial(rng, items, p)))
    return out


def flagged(hist, items=ITEMS, params=None) -> list[int]:
    return [v.step for v in scan(hist, params or DeceptiveParams(), items) if v.flagged]


def test_deceptive_history_is_flagged_after_the_fall_starts():
    hits = 0
    for seed in SEEDS:
        steps = flagged(history("deceptive", seed))
        if steps:
            hits += 1
            assert min(steps) > 10 * (ONSET + 1), f"seed {seed}: flagged at {min(steps)}, before the fall"
    assert hits >= len(SEEDS) - 2, f"deceptive history flagged for only {hits}/{len(SEEDS)} seeds"


def test_healthy_history_is_never_flagged():
    for seed in SEEDS:
        assert flagged(history("healthy", seed)) == [], f"seed {seed}"


def test_noisy_but_healthy_history_is_never_flagged():
    for seed in SEEDS:
        assert flagged(history("noisy", seed, items=64), items=64) == [], f"seed {seed}"


def test_noise_floor_prevents_flags_a_residual_estimate_alone_would_raise():
    """Without the binomial floor and confirmation, residuals from 5 points are overconfident."""
    naive = sum(bool(flagged_naive) for flagged_naive in (
        [v for v in scan(history("healthy", s), DeceptiveParams(), None, confirm=1) if v.flagged] for s in SEEDS
    ))
    assert naive > 0, "the synthetic noise is too weak to test the noise handling"


def test_flat_reward_with_falling_accuracy_is_not_a_deceptive_reward():
    hist = [(10 * i, 0.5, 0.6 - 0.03 * i) for i in range(10)]
    assert flagged(hist) == []


def test_clean_trends_flag_after_confirmation_and_clear_when_accuracy_recovers():
    d = DeceptiveRewardDetector(DeceptiveParams(window=3), confirm=2)
    falling = [d.update(i, 0.1 * i, 0.9 - 0.1 * i) for i in range(4)]
    assert [v.flagged for v in falling] == [False, False, False, True]
    assert d.first_flag_step == 3
    assert falling[-1].reward.slope == pytest.approx(0.1) and falling[-1].accuracy.slope == pytest.approx(-0.1)
    recovered = [d.update(i, 0.1 * i, 0.6 + 0.1 * (i - 3)) for i in range(4, 7)]
    assert recovered[-1].flagged is False
    assert "DECEPTIVE" in falling[-1].describe() and "healthy" in recovered[-1].describe()


def test_thresholds_come_from_params():
    hist = [(i, 0.01 * i, 0.9 - 0.01 * i) for i in range(8)]
    assert flagged(hist, items=None) != []
    assert flagged(hist, items=None, params=DeceptiveParams(min_reward_slope=0.05)) == []
    assert flagged(hist, items=None, params=DeceptiveParams(max_accuracy_slope=-0.05)) == []


def test_non_finite_points_are_ignored_and_short_windows_give_no_verdict():
    d = DeceptiveRewardDetector(DeceptiveParams(window=5))
    v = d.update(1, math.nan, 0.5)
    assert v.points == 0 and v.reward is None
    v = d.update(2, 0.5, 0.5)
    assert v.points == 1 and not v.flagged and "waiting" in v.describe()


def test_trend_standard_error_and_noise_floor():
    assert trend([1.0, 2.0, 3.0, 4.0]).stderr == 0.0
    t = trend([0.5, 0.5, 0.5, 0.5, 0.5], noise_sd=0.03)
    assert t.floor == pytest.approx(0.03 / math.sqrt(10))
    assert t.upper > 0 > t.lower  # a flat series is within its noise
