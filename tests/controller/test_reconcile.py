"""reconcile() by state matrices: pure, level-triggered, never launches a stage twice."""

from __future__ import annotations

import pytest

from controller.reconcile import Delete, Launch, Observed, Phase, Policy, State, counts, phase, reconcile

# a -> b -> d, a -> c -> d, e independent
DAG = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "e": ()}
P, R, S, F = State.PENDING, State.RUNNING, State.SUCCEEDED, State.FAILED


def obs(**states):
    return {k: (v if isinstance(v, Observed) else Observed(v, 1 if v is not P else 0)) for k, v in states.items()}


@pytest.mark.parametrize(
    "states, expected",
    [
        ({}, ["a", "e"]),  # nothing observed: roots launch
        (dict(a=R, e=R), []),  # running stages are never launched again
        (dict(a=S, e=S), ["b", "c"]),
        (dict(a=S, b=S, c=R, e=S), []),  # d waits for every parent
        (dict(a=S, b=S, c=S, e=S), ["d"]),
        (dict(a=S, b=S, c=S, d=S, e=S), []),
        (dict(a=S, b=R, e=P), ["c", "e"]),
    ],
)
def test_launches_only_ready_stages(states, expected):
    actions = reconcile(DAG, obs(**states), now=0.0)
    assert actions == [Launch(s, 1) for s in expected]


def test_idempotent_on_the_same_observation():
    o = obs(a=S)
    assert reconcile(DAG, o, 0.0) == reconcile(DAG, o, 0.0)


@pytest.mark.parametrize(
    "attempts, finished_at, now, expected",
    [
        (1, 100.0, 101.0, []),  # backoff 5 s not yet over
        (1, 100.0, 105.0, [Launch("a", 2)]),
        (2, 100.0, 109.0, []),  # second backoff 10 s
        (2, 100.0, 110.0, [Launch("a", 3)]),
        (3, 100.0, 10_000.0, []),  # max_attempts 3 reached: given up
    ],
)
def test_retry_with_backoff_up_to_a_limit(attempts, finished_at, now, expected):
    o = {"a": Observed(F, attempts, finished_at), "e": Observed(S, 1)}
    assert reconcile(DAG, o, now, Policy(max_attempts=3, backoff_seconds=5)) == expected


def test_code_failures_are_not_retried_and_block_descendants():
    o = {"a": Observed(F, 1, 0.0, retryable=False), "e": Observed(S, 1)}
    assert reconcile(DAG, o, 1e9) == []
    assert phase(DAG, o) is Phase.FAILED
    c = counts(DAG, o)
    assert c["failed"] == 1 and c["blocked"] == 3 and c["succeeded"] == 1


def test_max_parallel_counts_running_stages():
    policy = Policy(max_parallel=2)
    assert reconcile(DAG, obs(), 0.0, policy) == [Launch("a", 1), Launch("e", 1)]
    assert reconcile(DAG, obs(a=R), 0.0, policy) == [Launch("e", 1)]
    assert reconcile(DAG, obs(a=S, e=R), 0.0, policy) == [Launch("b", 1)]


def test_cancel_deletes_running_and_launches_nothing():
    o = obs(a=S, b=R, c=R, e=P)
    assert reconcile(DAG, o, 0.0, cancel=True) == [Delete("b"), Delete("c")]
    assert phase(DAG, o, cancelled=True) is Phase.CANCELLED


@pytest.mark.parametrize(
    "states, expected",
    [
        ({}, Phase.PENDING),
        (dict(a=R), Phase.RUNNING),
        (dict(a=S, b=S, c=S, d=S, e=S), Phase.SUCCEEDED),
        (dict(a=S, e=S), Phase.RUNNING),  # b, c ready but not launched yet
        (dict(a=S, b=S, c=S, e=Observed(F, 3, 0.0)), Phase.RUNNING),  # d can still run
    ],
)
def test_phase(states, expected):
    assert phase(DAG, obs(**states)) is expected


def test_local_executor_asks_storage_once_per_finished_stage(tmp_path, monkeypatch):
    """observe() runs every half second: a finished stage must not cost a storage call each time."""
    from controller import spec
    from controller.executors import local
    from controller.plan import build_plan
    from job_runtime.io import storage
    from tests.conftest import ROOT

    exp = spec.load(ROOT / "examples" / "quickstart.yaml")
    exp.spec.storage = str(tmp_path)
    plan = build_plan(exp)
    first = next(iter(plan.stages.values()))
    storage.write_json(f"{first.config.output}/_SUCCESS", {"files": {}})
    calls = []
    real = storage.is_complete
    monkeypatch.setattr(local.storage, "is_complete", lambda uri: calls.append(uri) or real(uri))
    ex = local.LocalExecutor()
    for _ in range(3):
        assert ex.observe(plan)[first.id].state is State.SUCCEEDED
    assert calls.count(first.config.output) == 1
    assert calls.count(next(reversed(plan.stages.values())).config.output) == 3  # unfinished: asked each time


# --- gates: rl.min_signal skips a starved stage and everything downstream of it ---------------------

from controller.reconcile import Gate, apply_gates, starved  # noqa: E402

# probe -> rl -> eval; base eval independent
GDAG = {"base": (), "probe": (), "rl": ("probe",), "eval": ("rl",)}
K = State.SKIPPED


@pytest.mark.parametrize(
    "states, signals, skipped",
    [
        (dict(probe=R), {}, set()),  # probe not done: nothing known, nothing skipped
        (dict(probe=S), {"probe": 0.02}, {"rl", "eval"}),  # starved: rl and its eval
        (dict(probe=S), {"probe": 0.10}, set()),  # at the threshold: runs
        (dict(probe=S), {"probe": 0.50}, set()),
        (dict(probe=S, rl=S), {"probe": 0.02}, set()),  # already ran (another experiment): kept
        (dict(probe=S, rl=R), {"probe": 0.02}, set()),  # running: never hidden
        (dict(probe=S, rl=F), {"probe": 0.02}, {"rl", "eval"}),  # a failed attempt: no retry needed
    ],
)
def test_apply_gates_matrix(states, signals, skipped):
    out = apply_gates(GDAG, obs(**states), {"rl": Gate("probe", 0.1)}, signals)
    assert {s for s, o in out.items() if o.state is K} == skipped
    for s in skipped:
        assert out[s].reason == "starved: 0.02 of prompts had mixed outcomes (rl.min_signal 0.1)"
    assert not {a.stage for a in reconcile(GDAG, out, 0.0)} & skipped  # a skipped stage never launches


def test_skipped_stages_are_settled_not_failed():
    out = apply_gates(GDAG, obs(base=S, probe=S), {"rl": Gate("probe", 0.1)}, {"probe": 0.0})
    assert reconcile(GDAG, out, 0.0) == []  # nothing left to launch
    assert phase(GDAG, out) is Phase.SUCCEEDED
    assert counts(GDAG, out) == {"pending": 0, "running": 0, "succeeded": 2, "failed": 0, "skipped": 2, "blocked": 0}
    # without the gate (or with a good prediction) the RL stage is next
    assert reconcile(GDAG, obs(base=S, probe=S), 0.0) == [Launch("rl", 1)]
    fine = apply_gates(GDAG, obs(base=S, probe=S), {"rl": Gate("probe", 0.1)}, {"probe": 0.4})
    assert reconcile(GDAG, fine, 0.0) == [Launch("rl", 1)] and phase(GDAG, fine) is Phase.RUNNING


def test_starved_reason_names_the_signal_and_the_threshold():
    assert starved(0.0, 0.1) == "starved: 0.00 of prompts had mixed outcomes (rl.min_signal 0.1)"
    assert starved(0.1, 0.1) is None
