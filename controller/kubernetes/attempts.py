"""A stage's state on Kubernetes from its jobs AND its durable attempt record (pure: no I/O).

A PyTorchJob does not last: the training operator deletes it ``ttlSecondsAfterFinished`` after it
ends, someone may delete it by hand, an Experiment's deletion garbage-collects it. So the outcome
of every attempt is written down, as an :class:`Attempt` record in the Experiment's status
(``status.attempts.<stage id>``), the moment the operator sees it, and a stage whose latest job is
gone is judged from that record, never as "pending":

- a failed attempt stays failed (with its retryability) after its job expires: ``max_attempts`` and
  "never retry code failures" hold for ever, and a Failed experiment stays Failed;
- an attempt that was launched but whose job vanished before its outcome was seen is *lost*: it
  counts as a retryable failure (attempt numbers only grow, so its job name is never reused);
- a stage whose ``_SUCCESS`` is in storage needs no record (storage is its durable outcome).

The exit code of a failed job's master decides retryability (1-127: code or config, never retried).
It is read from the master pod; if the job failed but no pod shows an exit code yet, the stage is
reported as still running for ``EXIT_CODE_GRACE_S`` (the pod's status may lag the job's), then as a
retryable failure of unknown cause.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from controller.reconcile import Observed, State

EXIT_CODE_GRACE_S = 60.0
MESSAGE_MAX = 1000  # characters of an error line kept in the status


def ts(value: str | None) -> float | None:
    """Epoch seconds of an RFC 3339 UTC timestamp, or None."""
    if not value:
        return None
    try:
        return float(calendar.timegm(time.strptime(value.replace("Z", "").split(".")[0], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass(frozen=True)
class Attempt:
    """The durable record of a stage's latest attempt (``status.attempts.<stage>`` of an Experiment).

    >>> a = Attempt(2, "failed", retryable=False, exit_code=1, reason="PyTorchJobFailed", finished_at=1735689600.0,
    ...             message="ValueError: row 3 has no answer")
    >>> a.to_status()
    {'attempt': 2, 'state': 'failed', 'retryable': False, 'exitCode': 1, 'reason': 'PyTorchJobFailed', 'finishedAt': '2025-01-01T00:00:00Z', 'message': 'ValueError: row 3 has no answer'}
    >>> Attempt.from_status(a.to_status()) == a
    True
    """

    attempt: int
    state: str  # running | failed | lost
    retryable: bool = True
    exit_code: int | None = None
    reason: str = ""
    finished_at: float | None = None
    message: str = ""  # the failed attempt's error line (the stage's _FAILED record), or why its output is bad

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"attempt": self.attempt, "state": self.state, "retryable": self.retryable}
        if self.exit_code is not None:
            out["exitCode"] = self.exit_code
        if self.reason:
            out["reason"] = self.reason
        if self.finished_at is not None:
            out["finishedAt"] = iso(self.finished_at)
        if self.message:
            out["message"] = self.message[:MESSAGE_MAX]
        return out

    @classmethod
    def from_status(cls, d: Mapping[str, Any] | None) -> Attempt | None:
        if not isinstance(d, Mapping):
            return None
        try:
            return cls(int(d["attempt"]), str(d["state"]), bool(d.get("retryable", True)),
                       None if d.get("exitCode") is None else int(d["exitCode"]), str(d.get("reason") or ""),
                       ts(d.get("finishedAt")), str(d.get("message") or ""))
        except (KeyError, TypeError, ValueError):
            return None

    def observed(self) -> Observed:
        if self.state == "running":
            return Observed(State.RUNNING, self.attempt)
        return Observed(State.FAILED, self.attempt, self.finished_at, self.retryable)


def later(a: Attempt | None, b: Attempt | None) -> Attempt | None:
    """The record of the later attempt; at equal attempts an outcome beats 'running'."""
    if a is None or b is None:
        return a or b
    if a.attempt != b.attempt:
        return a if a.attempt > b.attempt else b
    return b if a.state == "running" and b.state != "running" else a


def explain(rec: Attempt) -> str:
    """What the record says about why the attempt failed, when it has no error line of its own.

    >>> explain(Attempt(1, "lost", reason="JobGone")), explain(Attempt(2, "failed", reason="BackoffLimitExceeded"))
    ('its PyTorchJob vanished before its outcome was seen', 'the PyTorchJob failed (BackoffLimitExceeded)')
    """
    if rec.message:
        return rec.message
    if rec.state == "lost":
        return "its PyTorchJob vanished before its outcome was seen"
    if rec.reason == "SucceededWithoutOutput":
        return "its job succeeded, but the stage's _SUCCESS manifest is not in storage"
    return f"the PyTorchJob failed ({rec.reason})" if rec.reason else "no error line recorded"


def job_phase(job: Mapping[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """('succeeded' | 'failed' | 'running', the deciding condition) from a job's status conditions.

    Created, Running, Restarting and Suspended (queued by Kueue) all count as running: the job exists
    and may still finish.
    """
    conds = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []
             if str(c.get("status")) == "True"}
    for kind in ("Succeeded", "Failed"):
        if kind in conds:
            return kind.lower(), conds[kind]
    return "running", None


def terminating(job: Mapping[str, Any]) -> bool:
    """Deleted but not gone yet: its pods may still be running (and writing)."""
    return bool((job.get("metadata") or {}).get("deletionTimestamp"))


def exit_code_of(pod: Mapping[str, Any], container: str = "pytorch") -> int | None:
    """The exit code of the pod's training container (its last termination), if it ended."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") != container:
            continue
        for key in ("state", "lastState"):
            term = (cs.get(key) or {}).get("terminated")
            if term and term.get("exitCode") is not None:
                return int(term["exitCode"])
    return None


def observe_stage(jobs: Mapping[int, Mapping[str, Any]], done: bool,
                  exit_code: Callable[[Mapping[str, Any]], int | None] = lambda job: None,
                  record: Attempt | None = None, now: float | None = None,
                  grace: float = EXIT_CODE_GRACE_S) -> tuple[Observed, Attempt | None]:
    """One stage's Observed, and the record to keep, from its jobs by attempt, whether its _SUCCESS
    manifest exists, and its last durable record.

    >>> observe_stage({}, done=False)[0].state.value
    'pending'
    >>> failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PyTorchJobFailed"}]}}
    >>> o, rec = observe_stage({1: failed}, done=False, exit_code=lambda j: 1)
    >>> o.state.value, o.attempts, o.retryable, rec.exit_code
    ('failed', 1, False, 1)
    >>> observe_stage({}, done=False, record=rec)[0] == o   # its job expired: the record decides
    True
    """
    now = time.time() if now is None else now
    attempts = max([*jobs, record.attempt if record else 0], default=0)
    if done:
        return Observed(State.SUCCEEDED, attempts), None
    if attempts == 0:
        return Observed(State.PENDING, 0), None
    job = jobs.get(attempts)
    if job is None:  # the latest attempt's job is gone (expired, deleted) or its launch was recorded only
        assert record is not None and record.attempt == attempts
        if record.state == "running":  # launched, outcome never seen: lost, worth another attempt
            record = Attempt(attempts, "lost", True, None, "JobGone", now)
        return record.observed(), record
    if terminating(job):  # deleted, pods may still write: nothing new may start yet
        return Observed(State.RUNNING, attempts), Attempt(attempts, "running")
    kind, cond = job_phase(job)
    if kind == "running":
        return Observed(State.RUNNING, attempts), Attempt(attempts, "running")
    finished = ts((cond or {}).get("lastTransitionTime")) or ts((job.get("status") or {}).get("completionTime"))
    if record is not None and record.attempt == attempts and record.state in ("failed", "lost"):
        return record.observed(), record  # already judged: no pod lookup
    reason = str((cond or {}).get("reason", ""))
    if kind == "succeeded":  # exited 0 but no _SUCCESS: the output went missing; run it again
        rec = Attempt(attempts, "failed", True, 0, "SucceededWithoutOutput", finished)
        return rec.observed(), rec
    code = None
    if reason == "BackoffLimitExceeded":  # retryable exit codes (128-255) used up the job's restarts
        retryable = True
    elif reason == "DeadlineExceeded":  # it would time out again
        retryable = False
    else:
        code = exit_code(job)
        if code is None and now - (finished or now) < grace:
            return Observed(State.RUNNING, attempts), Attempt(attempts, "running")  # the pod may lag
        retryable = not (code is not None and 1 <= code <= 127)
    rec = Attempt(attempts, "failed", retryable, code, reason, finished)
    return rec.observed(), rec
