"""The probes' predictions, read from storage, and the stages they rule out (rl.min_signal).

The thin I/O shell around the pure `controller.reconcile.apply_gates`: `probe_result` reads a
finished probe's results.json, `signals` collects the predicted signal (``mixed_share``) of every
finished probe that gates a stage, and `observe` turns an executor's observation into one where
starved RL stages and everything downstream of them are SKIPPED, with the reason. The local loop
(`sftrl run`), the in-cluster operator and the report all go through here, so a skip looks the
same everywhere. A probe's results never change once it has _SUCCESS (stages are content
addressed), so callers pass a cache that lives as long as they do.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping, MutableMapping

from controller.plan import Plan
from controller.reconcile import Gate, Observed, State, apply_gates
from job_runtime.contract import RESULTS_JSON
from job_runtime.io import storage

log = logging.getLogger(__name__)


def probe_result(output: str) -> dict[str, Any] | None:
    """A probe stage's results.json (by its output URI), or None when it is missing or unreadable."""
    try:
        res = storage.read_json(storage.join(output, RESULTS_JSON))
    except (storage.StorageError, json.JSONDecodeError, OSError, ValueError) as e:
        log.warning("probe results at %s are unreadable (%s); its RL stage is not gated", output, e)
        return None
    return res if isinstance(res, dict) else None


def predicted_signal(result: Mapping[str, Any] | None) -> float | None:
    """The signal a probe predicts: its share of prompts with mixed outcomes."""
    v = (result or {}).get("mixed_share")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def signals(gates: Mapping[str, Gate], outputs: Mapping[str, str], observed: Mapping[str, Observed],
            cache: MutableMapping[str, float | None]) -> dict[str, float]:
    """probe id -> predicted signal, for the finished probes among `gates` (read once, then cached)."""
    out: dict[str, float] = {}
    for gate in gates.values():
        p = gate.probe
        if p not in cache:
            if observed.get(p, Observed(State.PENDING)).state is not State.SUCCEEDED or p not in outputs:
                continue
            cache[p] = predicted_signal(probe_result(outputs[p]))
        if cache[p] is not None:
            out[p] = cache[p]  # type: ignore[assignment]
    return out


def observe(plan: Plan, observed: Mapping[str, Observed], cache: MutableMapping[str, float | None]) -> dict[str, Observed]:
    """The observation with gated stages SKIPPED where their probe predicts less than rl.min_signal."""
    if not plan.gates:
        return dict(observed)
    outputs = {sid: st.config.output for sid, st in plan.stages.items()}
    return apply_gates(plan.dag(), observed, plan.gates, signals(plan.gates, outputs, observed, cache))


def skipped(observed: Mapping[str, Observed]) -> dict[str, str]:
    """stage id -> reason, for the skipped stages of an observation."""
    return {sid: o.reason or "skipped" for sid, o in observed.items() if o.state is State.SKIPPED}
