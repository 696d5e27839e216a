"""What storage says about each stage of a plan: done, failed (and why), started or waiting.

A stage is *done* when its ``_SUCCESS`` manifest exists and every file it lists has the recorded
size (``storage.manifest_problems``: a truncated model or an emptied samples file makes the stage
not done, and the reason names the file). It is *failed* when its last attempt left a ``_FAILED``
record (the stage process writes the error line; ``sftrl run`` adds the log path). Shared by
``sftrl plan``, ``sftrl run`` and the report, so they always agree.

When storage cannot be read, the first stage's error is raised at once: no stage after it is asked.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from job_runtime.contract import LOG_TXT, METRICS_JSONL, PLAN_JSON, RESULTS_JSON, STAGE_JSON, experiment_uri
from job_runtime.io import storage

DONE, FAILED, INCOMPLETE, STARTED, WAITING = "done", "failed", "incomplete", "started", "waiting"


@dataclass(frozen=True)
class StageStatus:
    state: str  # done | failed | incomplete (a manifest its files do not match) | started | waiting
    reason: str | None = None  # why it is not done: the mismatching file, or the failure's error line
    log: str | None = None  # where the failed attempt's log is, when known
    exit_code: int | None = None

    @property
    def done(self) -> bool:
        return self.state == DONE

    def describe(self) -> str:
        """One line for people: 'failed: <error> (exit 1; log: <path>)'."""
        if self.state == FAILED:
            code = f"exit {self.exit_code}; " if self.exit_code is not None else ""
            log = f"log: {self.log}" if self.log else "no log recorded"
            return f"failed: {self.reason or 'no error line recorded'} ({code}{log})"
        if self.state == INCOMPLETE:
            return f"not done, because {self.reason}; it will run again"
        return self.state


def stage_status(output: str) -> StageStatus:
    """The state of the stage whose output prefix is ``output`` (raises StorageError when storage
    cannot be read)."""
    manifest = storage.read_manifest(output)
    if manifest is not None:
        problems = storage.manifest_problems(output, manifest)
        if not problems:
            return StageStatus(DONE)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return StageStatus(INCOMPLETE, problems[0] + more)
    failure = storage.read_failure(output)
    if failure is not None:
        code = failure.get("exit_code")
        return StageStatus(FAILED, _str(failure.get("error")), _str(failure.get("log")),
                           code if isinstance(code, int) else None)
    if any(storage.exists(storage.join(output, f)) for f in (STAGE_JSON, METRICS_JSONL, RESULTS_JSON, LOG_TXT)):
        return StageStatus(STARTED)
    return StageStatus(WAITING)


def _str(x: Any) -> str | None:
    return None if x is None else str(x)


def observe(outputs: Mapping[str, str], workers: int = 16) -> dict[str, StageStatus]:
    """stage id -> status for every output prefix. The first stage is asked alone: when storage
    cannot be read its StorageError is raised before any other stage is tried."""
    items = list(outputs.items())
    if not items:
        return {}
    first = {items[0][0]: stage_status(items[0][1])}
    rest = items[1:]
    if not rest:
        return first
    if storage.is_local(items[0][1]):
        return first | {sid: stage_status(out) for sid, out in rest}
    with ThreadPoolExecutor(workers) as pool:
        try:
            return first | dict(zip((sid for sid, _ in rest), pool.map(stage_status, (out for _, out in rest))))
        except storage.StorageError:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def read_previous_plan(root: str, name: str) -> dict[str, Any] | None:
    """experiments/<name>/plan.json as the last ``sftrl run`` saved it, or None."""
    uri = storage.join(experiment_uri(root, name), PLAN_JSON)
    try:
        if not storage.exists(uri):
            return None
        plan = storage.read_json(uri)
    except (storage.StorageError, OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) else None


_ERROR = re.compile(r"(\bERROR\b|Error\b|Exception\b|error:|Traceback|Killed|out of memory|FAILED)")


def last_error_line(text: str) -> str | None:
    """The last line of a log that reads like an error (else the last non-empty line).

    >>> last_error_line("step 1\\nTraceback (most recent call last):\\n  File x\\nValueError: bad row\\nbye")
    'ValueError: bad row'
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("===")]
    for ln in reversed(lines):
        if _ERROR.search(ln) and not ln.startswith("Traceback"):
            return ln[:300]
    return lines[-1][:300] if lines else None


def record_failure(output: str, log: str, tail: str, exit_code: int | None) -> None:
    """Add what the runner knows (log path, exit code, and the log's error line when the stage
    itself recorded none, e.g. after a signal) to the stage's ``_FAILED`` record."""
    rec = storage.read_failure(output) or {}
    error = rec.get("error") if rec.get("error") and not str(rec.get("error")).startswith("stopped by a signal") else None
    storage.write_failure(output, error=error or last_error_line(tail) or f"exit {exit_code}", exit_code=exit_code,
                          log=os.path.abspath(log))


def summarize(statuses: Iterable[StageStatus]) -> dict[str, int]:
    out = {DONE: 0, FAILED: 0, INCOMPLETE: 0, STARTED: 0, WAITING: 0}
    for s in statuses:
        out[s.state] += 1
    return out
