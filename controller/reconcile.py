"""Pure reconciliation: desired DAG + observed stage states -> the actions that move it forward.

`reconcile(dag, observed, now, policy)` has no I/O and no clock of its own, so the local run, the
CLI against a cluster and the in-cluster operator all share it, and tests drive it with state
matrices. It is level-triggered: calling it twice on the same observation gives the same actions,
and an executor that applies an action twice (a restarted controller) changes nothing, because a
launch of a stage that is already running or done is never produced.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Mapping, Sequence


class State(str, Enum):
    PENDING = "pending"  # never started (or its output was removed)
    RUNNING = "running"  # a process or job exists for it
    SUCCEEDED = "succeeded"  # its _SUCCESS manifest is in storage
    FAILED = "failed"  # the last attempt failed
    SKIPPED = "skipped"  # will not run: its gate ruled it out (apply_gates), or a stage it needs was skipped


@dataclass(frozen=True)
class Observed:
    state: State
    attempts: int = 0  # attempts made so far (including a running one)
    finished_at: float | None = None  # when the last attempt ended (for backoff)
    retryable: bool = True  # False for code/config failures: retrying would fail the same way
    reason: str | None = None  # why a stage is skipped


@dataclass(frozen=True)
class Gate:
    """Run a stage only if `probe` predicts at least `min_signal` (the RL stage's rl.min_signal)."""

    probe: str
    min_signal: float


def starved(signal: float, min_signal: float) -> str | None:
    """The reason a stage gated at min_signal is skipped, or None when its probe predicts enough.

    >>> starved(0.02, 0.1)
    'starved: 0.02 of prompts had mixed outcomes (rl.min_signal 0.1)'
    >>> starved(0.5, 0.1) is None
    True
    """
    if signal >= min_signal:
        return None
    return f"starved: {signal:.2f} of prompts had mixed outcomes (rl.min_signal {min_signal:g})"


def apply_gates(dag: Mapping[str, Sequence[str]], observed: Mapping[str, Observed], gates: Mapping[str, Gate],
                signals: Mapping[str, float]) -> dict[str, Observed]:
    """`observed` with SKIPPED for every stage that will not run, and why.

    A gated stage is skipped when its probe's predicted signal (`signals`: probe id -> share of
    prompts with mixed outcomes, for finished probes) is below its gate; a stage downstream of a
    skipped one is skipped with the same reason. A stage that already ran or is running keeps its
    state (a result is never hidden). Pure, like reconcile: the same inputs give the same states.
    """
    out = dict(observed)
    reasons: dict[str, str] = {}
    for sid, parents in dag.items():  # topological order
        o = out.get(sid, Observed(State.PENDING))
        if o.state in (State.SUCCEEDED, State.RUNNING):
            continue
        gate = gates.get(sid)
        why = starved(signals[gate.probe], gate.min_signal) if gate is not None and gate.probe in signals else None
        if why is None:
            why = next((reasons[p] for p in parents if p in reasons), None)
        if why is not None:
            reasons[sid] = why
            out[sid] = Observed(State.SKIPPED, o.attempts, o.finished_at, o.retryable, why)
    return out


@dataclass(frozen=True)
class Policy:
    max_attempts: int = 3
    backoff_seconds: float = 5.0
    backoff_factor: float = 2.0
    max_backoff_seconds: float = 600.0
    max_parallel: int | None = None  # None: no limit

    def backoff(self, attempts: int) -> float:
        """Delay before attempt attempts+1 (attempts >= 1)."""
        return min(self.backoff_seconds * self.backoff_factor ** max(attempts - 1, 0), self.max_backoff_seconds)


@dataclass(frozen=True)
class Launch:
    stage: str
    attempt: int  # 1 for the first try


@dataclass(frozen=True)
class Delete:
    stage: str  # stop a running stage (cancel)


Action = Launch | Delete


class Phase(str, Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


def _gave_up(o: Observed, policy: Policy) -> bool:
    return o.state is State.FAILED and (not o.retryable or o.attempts >= policy.max_attempts)


def blocked(dag: Mapping[str, Sequence[str]], observed: Mapping[str, Observed], policy: Policy) -> set[str]:
    """Stages that can never run: given up, or downstream of a stage that was given up."""
    dead: set[str] = set()
    for sid, parents in dag.items():  # dag is in topological order
        o = observed.get(sid, Observed(State.PENDING))
        if _gave_up(o, policy) or any(p in dead for p in parents):
            dead.add(sid)
    return dead


def reconcile(
    dag: Mapping[str, Sequence[str]],
    observed: Mapping[str, Observed],
    now: float,
    policy: Policy = Policy(),
    cancel: bool = False,
) -> list[Action]:
    """The actions to take now. `dag` maps stage id -> parent ids, in topological order."""
    get = lambda sid: observed.get(sid, Observed(State.PENDING))  # noqa: E731
    if cancel:
        return [Delete(sid) for sid in dag if get(sid).state is State.RUNNING]
    running = sum(1 for sid in dag if get(sid).state is State.RUNNING)
    slots = None if policy.max_parallel is None else policy.max_parallel - running
    dead = blocked(dag, observed, policy)
    actions: list[Action] = []
    for sid, parents in dag.items():
        if slots is not None and slots <= 0:
            break
        o = get(sid)
        if sid in dead or o.state in (State.RUNNING, State.SUCCEEDED, State.SKIPPED):
            continue
        if not all(get(p).state is State.SUCCEEDED for p in parents):
            continue
        if o.state is State.FAILED:
            if o.finished_at is not None and now < o.finished_at + policy.backoff(o.attempts):
                continue
        actions.append(Launch(sid, o.attempts + 1))
        if slots is not None:
            slots -= 1
    return actions


def phase(dag: Mapping[str, Sequence[str]], observed: Mapping[str, Observed], policy: Policy = Policy(),
          cancelled: bool = False) -> Phase:
    """The experiment's phase from its stages' states."""
    states = [observed.get(sid, Observed(State.PENDING)).state for sid in dag]
    if cancelled:
        return Phase.CANCELLED
    final = (State.SUCCEEDED, State.SKIPPED)  # a skipped stage is settled, not failed
    if all(s in final for s in states):
        return Phase.SUCCEEDED
    dead = blocked(dag, observed, policy)
    if any(s is State.RUNNING for s in states):
        return Phase.RUNNING
    live = [sid for sid in dag if sid not in dead and observed.get(sid, Observed(State.PENDING)).state not in final]
    if not live:
        return Phase.FAILED
    return Phase.RUNNING if any(s is not State.PENDING for s in states) else Phase.PENDING


def counts(dag: Mapping[str, Sequence[str]], observed: Mapping[str, Observed], policy: Policy = Policy()) -> dict[str, int]:
    """Stages per state, with 'blocked' for those that can never run."""
    dead = blocked(dag, observed, policy)
    out = {s.value: 0 for s in State} | {"blocked": 0}
    for sid in dag:
        st = observed.get(sid, Observed(State.PENDING)).state
        key = "blocked" if sid in dead and st is not State.FAILED else st.value
        out[key] += 1
    return out
