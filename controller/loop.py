"""The control loop shared by `sftrl run` (local executor) and `sftrl submit --watch`:
observe -> reconcile -> apply, until the experiment's phase is final."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from controller import gates
from controller.executors.base import Executor
from controller.plan import Plan
from controller.reconcile import Observed, Phase, Policy, phase, reconcile


@dataclass
class Outcome:
    phase: Phase
    observed: dict[str, Observed]
    seconds: float


def drive(
    plan: Plan,
    executor: Executor,
    policy: Policy,
    interval: float = 0.5,
    on_tick: Callable[[dict[str, Observed]], None] = lambda observed: None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Run the plan to a final phase (Succeeded or Failed)."""
    start = clock()
    dag = plan.dag()
    signals: dict[str, float | None] = {}  # finished probes' predictions (they never change)
    while True:
        observed = gates.observe(plan, executor.observe(plan), signals)  # starved RL stages: SKIPPED
        on_tick(observed)
        current = phase(dag, observed, policy)
        if current in (Phase.SUCCEEDED, Phase.FAILED):
            return Outcome(current, observed, clock() - start)
        executor.apply(plan, reconcile(dag, observed, clock(), policy))
        sleep(interval)
