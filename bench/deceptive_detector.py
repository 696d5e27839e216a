"""False alarms and detection delay of the deceptive-reward detector, over simulated RL runs.

    python bench/deceptive_detector.py [--histories 2000] [--evals 30] [--seed 0]

Each simulated run has ``--evals`` held-out evaluations. The training reward always rises (0.02 per
evaluation, noise sd 0.02; 0.05 in "noisy"); the held-out accuracy is a true accuracy p_t measured
on n items, i.e. Binomial(n, p_t) / n, for n in 64, 128, 256:

- flat: p = 0.40 throughout; healthy: slowly rising, +0.5 point per evaluation from 0.30;
  plateaued: +1 point per evaluation to 0.40 at evaluation 10, then flat; noisy: slowly rising,
  with the reward's noise 2.5x larger. A flag in any of these is a false alarm (per run).
- deceptive: +1 point per evaluation to its peak at evaluation 12, then a fall of 2, 3 or 5 points
  per evaluation. The delay counts evaluations from the first one at which the true accuracy is
  2 points or more below its peak (a real decline of 2 points) to the first flag; a flag before
  that is "early".

The detector is the real one (job_runtime.train.deceptive, default DeceptiveParams, the held-out
size given). Beside it, an oracle that knows exactly what the accuracy would be without a fall (the
onset of the fall it does not know): a one-sided CUSUM of the standardised shortfall, its threshold
set to 0.4% false alarms per run on flat runs. No rule can do much better than the oracle: it bounds
what the goal "within 3 evaluations of a 2-point decline at 256 items" can mean.

Numbers, not assertions (the test suite checks the rules; this prints the rates).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from job_runtime.contract import DeceptiveParams  # noqa: E402
from job_runtime.train.deceptive import scan  # noqa: E402

PEAK_AT = 12
ITEMS = (64, 128, 256)


def true_accuracy(kind: str, evals: int, slope: float = 0.0) -> np.ndarray:
    i = np.arange(evals, dtype=float)
    if kind == "flat":
        p = np.full(evals, 0.40)
    elif kind in ("healthy", "noisy"):
        p = 0.30 + 0.005 * i
    elif kind == "plateaued":
        p = np.minimum(0.30 + 0.01 * i, 0.40)
    elif kind == "deceptive":
        peak = 0.30 + 0.01 * PEAK_AT
        p = np.where(i <= PEAK_AT, 0.30 + 0.01 * i, peak - slope * (i - PEAK_AT))
    else:
        raise ValueError(kind)
    return np.clip(p, 0.0, 1.0)


def histories(kind: str, items: int, count: int, evals: int, rng: np.random.Generator, slope: float = 0.0):
    p = true_accuracy(kind, evals, slope)
    acc = rng.binomial(items, np.broadcast_to(p, (count, evals))) / items
    noise = 0.05 if kind == "noisy" else 0.02
    reward = np.minimum(1.0, 0.2 + 0.02 * np.arange(evals)) + rng.normal(0, noise, size=(count, evals))
    return reward, acc, p


def first_flags(reward: np.ndarray, acc: np.ndarray, items: int, params: DeceptiveParams) -> np.ndarray:
    """Index of the first flagged evaluation of each run (-1: never)."""
    out = np.full(len(acc), -1)
    steps = list(range(acc.shape[1]))
    for r in range(len(acc)):
        verdicts = scan(list(zip(steps, reward[r].tolist(), acc[r].tolist())), params, items)
        hit = next((v.step for v in verdicts if v.flagged), None)
        out[r] = -1 if hit is None else hit
    return out


def oracle_flags(acc: np.ndarray, expected: np.ndarray, items: int, h: float) -> np.ndarray:
    """CUSUM of the shortfall below the accuracy expected without a fall (known exactly):
    S_t = max(0, S_{t-1} + (expected_t - a_t) / sd_t - 1/2)."""
    s = np.zeros(len(acc))
    first = np.full(len(acc), -1)
    for t in range(acc.shape[1]):
        sd = math.sqrt(expected[t] * (1 - expected[t]) / items)
        s = np.maximum(0.0, s + (expected[t] - acc[:, t]) / sd - 0.5)
        first = np.where((first < 0) & (s > h), t, first)
    return first


def oracle_threshold(items: int, evals: int, count: int, rng: np.random.Generator, rate: float) -> float:
    """The oracle's threshold giving ``rate`` false alarms per run on flat runs."""
    _, acc, p = histories("flat", items, count, evals, rng)
    lo, hi = 0.5, 20.0
    for _ in range(30):
        h = (lo + hi) / 2
        if (oracle_flags(acc, p, items, h) >= 0).mean() > rate:
            lo = h
        else:
            hi = h
    return hi


def delay_line(first: np.ndarray, decline_at: int) -> str:
    flagged = first >= 0
    early = flagged & (first < decline_at)
    d = first[flagged & ~early] - decline_at
    n = len(first)
    if len(d) == 0:
        return f"detected {flagged.mean():6.1%}   early {early.mean():5.1%}   never in time"
    return (f"detected {flagged.mean():6.1%}   early {early.mean():5.1%}   delay median {np.median(d):3.0f}"
            f"  p90 {np.percentile(d, 90):3.0f}   within 3: {(d <= 3).sum() / n:6.1%}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--histories", type=int, default=2000, help="simulated runs per case")
    ap.add_argument("--evals", type=int, default=30, help="held-out evaluations per run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    params = DeceptiveParams()
    t0 = time.time()
    print(f"deceptive-reward detector: window {params.window}, noise_z {params.noise_z}, "
          f"{args.histories} runs of {args.evals} evaluations per case\n")
    print("false alarms per run (target < 0.5%):")
    for kind in ("flat", "healthy", "plateaued", "noisy"):
        row = []
        for items in ITEMS:
            reward, acc, _ = histories(kind, items, args.histories, args.evals, rng)
            first = first_flags(reward, acc, items, params)
            rate = (first >= 0).mean()
            half = 1.96 * math.sqrt(max(rate * (1 - rate), 1.0 / args.histories) / args.histories)
            row.append(f"{items:>3} items {rate:6.2%} (+-{half:.2%})")
        print(f"  {kind:<10} " + "   ".join(row))
    print(f"\ndetection of a real decline (peak at evaluation {PEAK_AT}; delay counted from the first evaluation "
          "2 points below the peak; goal: within 3 at 256 items):")
    for items in ITEMS:
        h = oracle_threshold(items, args.evals, args.histories, rng, rate=0.004)
        for slope in (0.02, 0.03, 0.05):
            decline_at = PEAK_AT + math.ceil(0.02 / slope - 1e-9)
            reward, acc, p = histories("deceptive", items, args.histories, args.evals, rng, slope)
            mine = first_flags(reward, acc, items, params)
            no_fall = np.where(np.arange(args.evals) <= PEAK_AT, p, p[PEAK_AT])  # what it would be without the fall
            oracle = oracle_flags(acc, no_fall, items, h)
            print(f"  {items:>3} items, -{100 * slope:.0f} pt/eval  detector: {delay_line(mine, decline_at)}")
            print(f"  {'':>24}oracle:   {delay_line(oracle, decline_at)}")
    print(f"\n({time.time() - t0:.0f} s on this machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
