"""Online deceptive-reward detection: the training reward rises while held-out accuracy falls.

The paper argues from this failure: the policy learns to please the reward (format, answer
hacking) while getting worse at the task. During RL the stage evaluates a fixed held-out set every
``heldout_every_steps`` steps; each evaluation gives one point ``(step, mean training reward since
the last evaluation, held-out accuracy)``. Over a sliding window of the last ``window`` points the
detector fits both trends by least squares (slope per evaluation, so the thresholds do not depend
on how often the held-out set is scored) and flags when

    lower bound of the reward slope   > params.min_reward_slope     (reward rises)
    upper bound of the accuracy slope < params.max_accuracy_slope   (accuracy falls)

The bounds are ``slope -/+ t x standard error`` (one-sided 95% Student t for the window's degrees
of freedom). For accuracy the standard error is at least the binomial one of a held-out set of
``accuracy_items`` questions (a window of 5 residuals can look deceptively quiet), and a flag needs
``confirm`` consecutive windows (default 2). So a noisy but healthy history (accuracy wobbling on
a small held-out set) is not mistaken for a trend: only a fall that stands out of its own noise,
twice in a row, counts. On synthetic histories of 30 evaluations on 256 held-out items (see
tests/job_runtime/train/test_deceptive.py) it flags a fall of 2 points per evaluation nearly always and
rising accuracy in about 1 history in 400.

Pure: no I/O, no clock, no third-party imports. ``job_runtime.metrics.StageMetrics`` feeds it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from job_runtime.contract import DeceptiveParams

# One-sided 95% Student t quantiles by degrees of freedom (n - 2 for a slope over n points).
_T95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833, 10: 1.812,
        12: 1.782, 15: 1.753, 20: 1.725, 30: 1.697}
Z95 = 1.645  # one-sided 95% normal quantile: for the known (binomial) noise of held-out accuracy
CONFIRM = 2  # consecutive flagged windows before the detector flags


def t_quantile(dof: int) -> float:
    """One-sided 95% Student t quantile for ``dof`` degrees of freedom (conservative between entries).

    >>> t_quantile(3)
    2.353
    >>> t_quantile(1000)
    1.645
    """
    if dof < 1:
        return math.inf
    if dof in _T95:
        return _T95[dof]
    if dof > 30:
        return Z95
    return _T95[max(k for k in _T95 if k < dof)]


@dataclass(frozen=True)
class Trend:
    """A least-squares line through equally spaced points: slope per point and its standard error."""

    slope: float
    stderr: float  # from the residuals
    n: int
    floor: float = 0.0  # standard error implied by known noise (binomial accuracy), if any

    @property
    def margin(self) -> float:
        """Half-width of the one-sided 95% band: max(t x residual error, z x known-noise error)."""
        resid = t_quantile(self.n - 2) * self.stderr if self.stderr > 0 else 0.0
        return max(resid, Z95 * self.floor)

    @property
    def lower(self) -> float:
        return self.slope - self.margin

    @property
    def upper(self) -> float:
        return self.slope + self.margin


def trend(values: list[float], noise_sd: float = 0.0) -> Trend:
    """Least-squares slope per point (x = 0, 1, 2, ...) with its standard error.

    ``noise_sd`` is a known standard deviation of each point (0: unknown); it sets ``floor``.

    >>> t = trend([1.0, 2.0, 3.0])
    >>> (t.slope, t.stderr)
    (1.0, 0.0)
    >>> round(trend([0.0, 1.0, 0.0, 1.0]).slope, 3)
    0.2
    """
    n = len(values)
    if n < 2:
        return Trend(0.0, math.inf, n)
    floor = noise_sd / math.sqrt(sum((i - (n - 1) / 2.0) ** 2 for i in range(n)))
    xm = (n - 1) / 2.0
    ym = sum(values) / n
    sxx = sum((i - xm) ** 2 for i in range(n))
    slope = sum((i - xm) * (y - ym) for i, y in enumerate(values)) / sxx
    if n < 3:
        return Trend(slope, math.inf, n, floor)
    residual = sum((y - (ym + slope * (i - xm))) ** 2 for i, y in enumerate(values))
    stderr = math.sqrt(residual / (n - 2) / sxx)
    return Trend(slope, stderr, n, floor)


@dataclass(frozen=True)
class Verdict:
    """The detector's reading after one held-out evaluation."""

    flagged: bool
    step: int
    points: int  # evaluations in the window (no verdict before `window` of them)
    reward: Trend | None = None
    accuracy: Trend | None = None
    streak: int = 0  # consecutive windows showing the pattern (flags at `confirm`)

    def describe(self) -> str:
        """One line with the numbers, for logs."""
        if self.reward is None or self.accuracy is None:
            return f"step {self.step}: {self.points} held-out evaluations, waiting for a full window"
        r, a = self.reward, self.accuracy
        state = "DECEPTIVE REWARD" if self.flagged else ("suspicious" if self.streak else "healthy")
        return (
            f"step {self.step}: {state}: over the last {self.points} held-out evaluations the reward slope is "
            f"{r.slope:+.4f}/eval (lower bound {r.lower:+.4f}) and the held-out accuracy slope is "
            f"{a.slope:+.4f}/eval (upper bound {a.upper:+.4f})"
        )


class DeceptiveRewardDetector:
    """Sliding-window comparison of the reward trend with the held-out accuracy trend.

    ``accuracy_items``: size of the held-out set, for the binomial noise floor (None: unknown).
    ``confirm``: consecutive windows that must show the pattern before it flags.

    >>> d = DeceptiveRewardDetector(DeceptiveParams(window=4))
    >>> history = [(10, .2, .6), (20, .3, .5), (30, .4, .4), (40, .5, .3), (50, .6, .2)]
    >>> [d.update(s, r, a).flagged for s, r, a in history]
    [False, False, False, False, True]
    """

    def __init__(self, params: DeceptiveParams | None = None, accuracy_items: int | None = None,
                 confirm: int = CONFIRM):
        self.params = params or DeceptiveParams()
        self.accuracy_items = accuracy_items
        self.confirm = max(1, int(confirm))
        self._points: deque[tuple[int, float, float]] = deque(maxlen=self.params.window)
        self.flagged = False
        self.streak = 0
        self.first_flag_step: int | None = None

    def update(self, step: int, reward: float, accuracy: float) -> Verdict:
        """Add one held-out evaluation (with the mean training reward since the previous one)."""
        if not (math.isfinite(reward) and math.isfinite(accuracy)):
            return Verdict(self.flagged, step, len(self._points))
        self._points.append((int(step), float(reward), float(accuracy)))
        if len(self._points) < self.params.window:
            self.flagged, self.streak = False, 0
            return Verdict(False, step, len(self._points))
        accs = [p[2] for p in self._points]
        r = trend([p[1] for p in self._points])
        a = trend(accs, self._accuracy_noise(accs))
        suspicious = r.lower > self.params.min_reward_slope and a.upper < self.params.max_accuracy_slope
        self.streak = self.streak + 1 if suspicious else 0
        self.flagged = self.streak >= self.confirm
        if self.flagged and self.first_flag_step is None:
            self.first_flag_step = int(step)
        return Verdict(self.flagged, step, len(self._points), r, a, self.streak)

    def _accuracy_noise(self, accs: list[float]) -> float:
        """Binomial standard deviation of one held-out accuracy (0 when the set size is unknown)."""
        if not self.accuracy_items:
            return 0.0
        p = sum(accs) / len(accs)
        return math.sqrt(max(p * (1.0 - p), 0.01) / self.accuracy_items)


def scan(
    history: list[tuple[int, float, float]],
    params: DeceptiveParams | None = None,
    accuracy_items: int | None = None,
    confirm: int = CONFIRM,
) -> list[Verdict]:
    """Run the detector over a whole history of (step, reward, accuracy) points (reports, tests).

    >>> [v.flagged for v in scan([(1, .1, .5), (2, .2, .6), (3, .3, .7)], DeceptiveParams(window=3))]
    [False, False, False]
    """
    d = DeceptiveRewardDetector(params, accuracy_items, confirm)
    return [d.update(s, r, a) for s, r, a in history]
