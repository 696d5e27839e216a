"""Online deceptive-reward detection: the training reward rises while held-out accuracy falls.

The paper argues from this failure: the policy learns to please the reward (format, answer
hacking) while getting worse at the task. During RL the stage evaluates a fixed held-out set every
``heldout_every_steps`` steps; each evaluation gives one point ``(step, mean training reward since
the last evaluation, held-out accuracy)``.

The decision accounts for the held-out set's sampling noise. An accuracy measured on n items
varies from evaluation to evaluation with the binomial standard deviation sqrt(p (1 - p) / n): 3
points at p = 0.4 and n = 256, 6 points at n = 64. At every evaluation the detector fits the
accuracy's least-squares slope (per evaluation) over each run of the last L points, L = 3 ..
``window``, with that known noise, and says accuracy *falls* when for some L

    slope + noise_z x stderr(slope)  <  params.max_accuracy_slope,   stderr = sd / sqrt(Sxx(L))

(short runs catch a steep fall at once, long ones a gentle one). It says reward *rises* when the
lower one-sided 95% bound (Student t, from the residuals) of the reward's slope over the window is
above ``params.min_reward_slope``. Both at once flag the stage.

Why ``noise_z = 4.1``: on a flat accuracy the detector looks about 30 x 8 times per run, and each
look is a chance for noise to fake a fall. bench/deceptive_detector.py measures the rate over
thousands of simulated runs of 30 evaluations: flat, slowly rising, plateaued and noisy
accuracies on 64, 128 and 256 items (false alarms below 0.5% per run), and the delay on a real
fall. That delay has a floor no rule can beat: after k evaluations of a fall of s points per
evaluation, the evidence is s k (k + 1) / 2 points against noise sd sqrt(k); at s = 2 points,
k = 3 and 256 items that is 2.3 standard deviations even for a detector that knows the level
before the fall, short of what 0.5% false alarms per run need. The bench prints that oracle's
delay beside this detector's.

Without the held-out size (``accuracy_items`` None) the noise is estimated from the residuals
instead (Student t, one-sided 95%).

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
Z95 = 1.645  # one-sided 95% normal quantile
MIN_POINTS = 3  # the shortest run of evaluations a slope is tested on


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


def sxx(n: int) -> float:
    """Sum of squared deviations of 0, 1, ..., n-1 from their mean: n (n^2 - 1) / 12."""
    return n * (n * n - 1) / 12.0


@dataclass(frozen=True)
class Trend:
    """A least-squares line through equally spaced points: slope per point and the half-width of
    its one-sided band (``margin``)."""

    slope: float
    stderr: float
    n: int
    z: float  # multiplier of stderr in the band

    @property
    def margin(self) -> float:
        return self.z * self.stderr if self.stderr > 0 else 0.0

    @property
    def lower(self) -> float:
        return self.slope - self.margin

    @property
    def upper(self) -> float:
        return self.slope + self.margin


def slope_of(values: list[float]) -> float:
    n = len(values)
    xm, ym = (n - 1) / 2.0, sum(values) / n
    return sum((i - xm) * (y - ym) for i, y in enumerate(values)) / sxx(n)


def trend(values: list[float]) -> Trend:
    """Slope per point with its residual standard error and a one-sided 95% Student t band.

    >>> t = trend([1.0, 2.0, 3.0])
    >>> (t.slope, t.stderr)
    (1.0, 0.0)
    >>> round(trend([0.0, 1.0, 0.0, 1.0]).slope, 3)
    0.2
    """
    n = len(values)
    if n < 3:
        return Trend(slope_of(values) if n == 2 else 0.0, math.inf, n, math.inf)
    slope = slope_of(values)
    xm, ym = (n - 1) / 2.0, sum(values) / n
    residual = sum((y - (ym + slope * (i - xm))) ** 2 for i, y in enumerate(values))
    return Trend(slope, math.sqrt(residual / (n - 2) / sxx(n)), n, t_quantile(n - 2))


def binomial_trend(values: list[float], items: int, z: float) -> Trend:
    """Slope of accuracies measured on ``items`` items, with the binomial noise of each point.

    >>> t = binomial_trend([0.5, 0.5, 0.5, 0.5, 0.5], 100, 4.0)
    >>> round(t.stderr, 4), t.upper > 0 > t.lower   # sd 0.05 per point, Sxx 10
    (0.0158, True)
    """
    n = len(values)
    p = min(max(sum(values) / n, 0.5 / items), 1 - 0.5 / items)
    sd = math.sqrt(p * (1 - p) / items)
    return Trend(slope_of(values), sd / math.sqrt(sxx(n)), n, z)


@dataclass(frozen=True)
class Verdict:
    """The detector's reading after one held-out evaluation."""

    flagged: bool
    step: int
    points: int  # evaluations in the window (no verdict before MIN_POINTS of them)
    reward: Trend | None = None
    accuracy: Trend | None = None  # over the run of evaluations that showed the strongest fall
    streak: int = 0  # consecutive evaluations showing the pattern (flags at `confirm`)

    def describe(self) -> str:
        """One line with the numbers, for logs."""
        if self.reward is None or self.accuracy is None:
            return f"step {self.step}: {self.points} held-out evaluations, waiting for {MIN_POINTS}"
        r, a = self.reward, self.accuracy
        state = "DECEPTIVE REWARD" if self.flagged else ("suspicious" if self.streak else "healthy")
        return (
            f"step {self.step}: {state}: over the last {r.n} held-out evaluations the reward slope is "
            f"{r.slope:+.4f}/eval (lower bound {r.lower:+.4f}); over the last {a.n} the held-out accuracy "
            f"slope is {a.slope:+.4f}/eval (upper bound {a.upper:+.4f}, {a.z:g} standard errors of sampling noise)"
        )


class DeceptiveRewardDetector:
    """Reward trend against held-out accuracy trend, judged against the held-out sampling noise.

    ``accuracy_items``: size of the held-out set (None: unknown, the residuals estimate the noise).
    ``confirm``: consecutive evaluations that must show the pattern before it flags.

    >>> d = DeceptiveRewardDetector(DeceptiveParams(window=4), accuracy_items=1000)
    >>> history = [(10, .2, .6), (20, .3, .5), (30, .4, .4), (40, .5, .3), (50, .6, .2)]
    >>> [d.update(s, r, a).flagged for s, r, a in history]
    [False, False, True, True, True]
    """

    def __init__(self, params: DeceptiveParams | None = None, accuracy_items: int | None = None, confirm: int = 1):
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
        if len(self._points) < MIN_POINTS:
            self.flagged, self.streak = False, 0
            return Verdict(False, step, len(self._points))
        r = trend([p[1] for p in self._points])
        a = self._steepest_fall([p[2] for p in self._points])
        suspicious = r.lower > self.params.min_reward_slope and a.upper < self.params.max_accuracy_slope
        self.streak = self.streak + 1 if suspicious else 0
        self.flagged = self.streak >= self.confirm
        if self.flagged and self.first_flag_step is None:
            self.first_flag_step = int(step)
        return Verdict(self.flagged, step, len(self._points), r, a, self.streak)

    def _steepest_fall(self, accs: list[float]) -> Trend:
        """Of the runs of the last L accuracies (L = MIN_POINTS .. all), the one whose upper bound is lowest."""
        best: Trend | None = None
        for length in range(MIN_POINTS, len(accs) + 1):
            seg = accs[-length:]
            t = binomial_trend(seg, self.accuracy_items, self.params.noise_z) if self.accuracy_items else trend(seg)
            if best is None or t.upper < best.upper:
                best = t
        assert best is not None
        return best


def scan(
    history: list[tuple[int, float, float]],
    params: DeceptiveParams | None = None,
    accuracy_items: int | None = None,
    confirm: int = 1,
) -> list[Verdict]:
    """Run the detector over a whole history of (step, reward, accuracy) points (reports, tests, bench).

    >>> [v.flagged for v in scan([(1, .1, .5), (2, .2, .6), (3, .3, .7)], DeceptiveParams(window=3), 256)]
    [False, False, False]
    """
    d = DeceptiveRewardDetector(params, accuracy_items, confirm)
    return [d.update(s, r, a) for s, r, a in history]
