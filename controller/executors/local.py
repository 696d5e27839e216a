"""Run stages as local subprocesses: `python -m job_runtime <kind> --config <stage.json>`.

Observation is level-triggered: a stage is done when its `_SUCCESS` manifest is in storage, so a
killed `sftrl run` loses nothing and a rerun reuses every finished stage. A lock file with the
owner's pid (`stages/<id>/.lock`) keeps two concurrent runs from launching the same stage.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from controller.plan import Plan
from controller.reconcile import Delete, Launch, Observed, State
from job_runtime.io import storage
from job_runtime.contract import EXIT_RETRYABLE, LOG_TXT, STAGE_JSON

LOCK = ".lock"


@dataclass
class _Proc:
    popen: subprocess.Popen
    attempt: int
    started: float
    log: Path


@dataclass
class LocalExecutor:
    """Stages as child processes of this one. Stage output must be on file:// or s3:// storage."""

    env: dict[str, str] | None = None
    max_parallel: int = 1  # splits this machine's cores between concurrent stages
    on_event: Callable[[str, str, dict], None] = lambda event, sid, info: None
    procs: dict[str, _Proc] = field(default_factory=dict)
    failures: dict[str, Observed] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)  # completion is final: never ask storage again

    # --- observe ---------------------------------------------------------------------------
    def observe(self, plan: Plan) -> dict[str, Observed]:
        self._reap(plan)
        out: dict[str, Observed] = {}
        for sid, stage in plan.stages.items():
            if sid in self.procs:
                out[sid] = Observed(State.RUNNING, self.procs[sid].attempt)
            elif sid in self.done or storage.is_complete(stage.config.output):
                self.done.add(sid)
                out[sid] = Observed(State.SUCCEEDED)
            elif sid in self.failures:
                out[sid] = self.failures[sid]
            elif _locked_by_other(stage.config.output):
                out[sid] = Observed(State.RUNNING)
            else:
                out[sid] = Observed(State.PENDING)
        return out

    def _reap(self, plan: Plan) -> None:
        for sid, p in list(self.procs.items()):
            rc = p.popen.poll()
            if rc is None:
                continue
            del self.procs[sid]
            _unlock(plan.stages[sid].config.output)
            elapsed = time.time() - p.started
            if rc == 0 and storage.is_complete(plan.stages[sid].config.output):
                self.failures.pop(sid, None)
                self.on_event("succeeded", sid, {"seconds": elapsed, "attempt": p.attempt})
                continue
            # ExitCode semantics: 128-255 (signals, EXIT_RETRYABLE) are worth a retry; 1-127 are not.
            retryable = rc < 0 or rc >= 128 or rc == EXIT_RETRYABLE
            if rc == 0:  # exited cleanly without publishing: a bug in the stage
                retryable = False
            self.failures[sid] = Observed(State.FAILED, p.attempt, time.time(), retryable)
            self.on_event("failed", sid, {"seconds": elapsed, "attempt": p.attempt, "returncode": rc,
                                          "retryable": retryable, "log": str(p.log), "tail": _tail(p.log)})

    # --- apply -----------------------------------------------------------------------------
    def apply(self, plan: Plan, actions: Sequence[Launch | Delete]) -> None:
        for a in actions:
            if isinstance(a, Launch):
                self._launch(plan, a)
            elif isinstance(a, Delete) and a.stage in self.procs:
                _kill(self.procs[a.stage].popen)

    def _launch(self, plan: Plan, a: Launch) -> None:
        if a.stage in self.procs:
            return
        cfg = plan.stages[a.stage].config
        cfg_uri = storage.join(cfg.output, STAGE_JSON)
        storage.write_text(cfg_uri, cfg.model_dump_json(indent=2) + "\n")
        log = _log_path(cfg.output)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {a.attempt}: {cfg.kind} {cfg.id} ===\n")
            popen = subprocess.Popen(
                [sys.executable, "-m", "job_runtime", cfg.kind, "--config", cfg_uri],
                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._env(), start_new_session=True,
            )
        _lock(cfg.output, popen.pid)
        self.procs[a.stage] = _Proc(popen, a.attempt, time.time(), log)
        self.on_event("launched", a.stage, {"attempt": a.attempt, "log": str(log)})

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **(self.env or {})}
        # Concurrent CPU stages oversubscribe the cores unless each gets its share of threads.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.max_parallel)))
        return env

    def shutdown(self, plan: Plan) -> None:
        """Stop every child (Ctrl-C): their stages stay incomplete and rerun next time."""
        for sid, p in list(self.procs.items()):
            _kill(p.popen)
            _unlock(plan.stages[sid].config.output)
        self.procs.clear()


def _log_path(output: str) -> Path:
    if storage.is_local(output):
        return storage.local_path(output) / LOG_TXT
    return Path(os.environ.get("SFTRL_LOG_DIR", ".sftrl-logs")) / Path(output).name / LOG_TXT


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _kill(p: subprocess.Popen, grace: float = 5.0) -> None:
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


# --- lock files: stages/<id>/.lock holds the pid of the stage process (local storage only) ------


def _lock(output: str, pid: int) -> None:
    if storage.is_local(output):
        (storage.local_path(output) / LOCK).write_text(str(pid))


def _unlock(output: str) -> None:
    if storage.is_local(output):
        (storage.local_path(output) / LOCK).unlink(missing_ok=True)


def _locked_by_other(output: str) -> bool:
    if not storage.is_local(output):
        return False
    path = storage.local_path(output) / LOCK
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        path.unlink(missing_ok=True)  # its owner died: the stage is not running
        return False
    except PermissionError:
        return True
    return True
