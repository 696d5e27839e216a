"""Run stages as local subprocesses: `python -m job_runtime <kind> --config <stage.json>`.

Observation is level-triggered: a stage is done when its `_SUCCESS` manifest is in storage, so a
killed `sftrl run` loses nothing and a rerun reuses every finished stage.

Never two writers of one stage, on file:// and s3:// alike: before launching, the executor takes
the stage's lease (``stages/<id>/.lease``, job_runtime/io/lease.py) with a conditional create, and
hands it to the child (``SFTRL_LEASE_TOKEN``), which holds and renews it for as long as it runs,
also after this process is killed. A stage whose lease a live holder has (another `sftrl run`, its
orphaned child, a pod) is not launched: it counts as running elsewhere, ``on_event("waiting", ...)``
says who holds it, and the lease is checked again every ``recheck_s`` seconds until it is released
(the stage is done, or it failed and is free to take) or its holder is found dead.

Ctrl-C (``shutdown``) stops every child at once: SIGTERM to each process group, a short grace for
all together, then SIGKILL, and the leases it handed out are released.
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
from job_runtime.contract import EXIT_LEASE, EXIT_RETRYABLE, LOG_TXT, STAGE_JSON
from job_runtime.io import lease, storage

SHUTDOWN_GRACE_S = 3.0  # SIGTERM -> SIGKILL, for all children together


@dataclass
class _Proc:
    popen: subprocess.Popen
    attempt: int
    started: float
    log: Path
    token: str | None  # the lease handed to the child (None: leases off)


@dataclass
class _Waiting:
    why: str  # who holds the lease, for the user
    holder: str  # the holder's token: a new holder is announced again
    checked: float  # when the lease was last read
    said: float  # when the user was last told


@dataclass
class LocalExecutor:
    """Stages as child processes of this one. Stage output must be on file:// or s3:// storage."""

    env: dict[str, str] | None = None
    max_parallel: int = 1  # splits this machine's cores between concurrent stages
    on_event: Callable[[str, str, dict], None] = lambda event, sid, info: None
    recheck_s: float = 2.0  # how often a lease held elsewhere is read again
    remind_s: float = 60.0  # how often the user is reminded what a waiting stage waits for
    procs: dict[str, _Proc] = field(default_factory=dict)
    failures: dict[str, Observed] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)  # completion is final: never ask storage again
    waiting: dict[str, _Waiting] = field(default_factory=dict)  # stage -> a live holder elsewhere

    # --- observe ---------------------------------------------------------------------------
    def observe(self, plan: Plan) -> dict[str, Observed]:
        self._reap(plan)
        now = time.time()
        out: dict[str, Observed] = {}
        for sid, stage in plan.stages.items():
            if sid in self.procs:
                out[sid] = Observed(State.RUNNING, self.procs[sid].attempt)
            elif sid in self.done:
                out[sid] = Observed(State.SUCCEEDED)
            elif sid in self.waiting and now - self.waiting[sid].checked < self.recheck_s:
                out[sid] = Observed(State.RUNNING)  # held elsewhere; not read again yet
            elif storage.is_complete(stage.config.output):
                self.done.add(sid)
                self.waiting.pop(sid, None)
                out[sid] = Observed(State.SUCCEEDED)
            elif sid in self.waiting and self._still_held(sid, stage.config.output, now):
                out[sid] = Observed(State.RUNNING)
            elif sid in self.failures:
                out[sid] = self.failures[sid]
            else:
                out[sid] = Observed(State.PENDING)
        return out

    def _still_held(self, sid: str, output: str, now: float) -> bool:
        try:
            cur = lease.read(output) if lease.enabled() else None
        except storage.StorageError:
            self.waiting[sid].checked = now
            return True  # cannot tell: keep waiting, ask again later
        if cur is None or cur[0] is None:
            del self.waiting[sid]
            return False
        ok, why = lease.alive(cur[0], now)
        if not ok:
            del self.waiting[sid]  # the launch takes it over
            return False
        self._wait(sid, cur[0].token, why, now)
        return True

    def _wait(self, sid: str, token: str, why: str, now: float) -> None:
        w = self.waiting.get(sid)
        if w is None or w.holder != token or now - w.said >= self.remind_s:
            self.on_event("waiting", sid, {"why": why})
            self.waiting[sid] = _Waiting(why, token, now, now)
        else:
            w.checked = now

    def _reap(self, plan: Plan) -> None:
        for sid, p in list(self.procs.items()):
            rc = p.popen.poll()
            if rc is None:
                continue
            del self.procs[sid]
            output = plan.stages[sid].config.output
            self._release(output, p.token)
            elapsed = time.time() - p.started
            if rc == 0 and storage.is_complete(output):
                self.failures.pop(sid, None)
                self.done.add(sid)
                self.on_event("succeeded", sid, {"seconds": elapsed, "attempt": p.attempt})
                continue
            if rc == EXIT_LEASE:  # the child found another live writer: wait for it, no attempt used
                self.waiting[sid] = _Waiting("?", "?", 0.0, 0.0)  # read (and announce) it at the next observe
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
                self._stop([self.procs[a.stage].popen])

    def _launch(self, plan: Plan, a: Launch) -> None:
        if a.stage in self.procs or a.stage in self.waiting:
            return
        cfg = plan.stages[a.stage].config
        token = None
        if lease.enabled():
            try:  # the lease first: of two runs launching this stage, one gets it, the other waits
                held = lease.acquire(cfg.output, pid=os.getpid(),
                                     note=f"sftrl run pid {os.getpid()} launching {cfg.kind} attempt {a.attempt}")
            except lease.LeaseHeld as e:
                self._wait(a.stage, e.holder.token, e.why, time.time())
                return
            except storage.StorageError as e:
                self.failures[a.stage] = Observed(State.FAILED, a.attempt, time.time(),
                                                  isinstance(e, storage.StorageUnavailable))
                self.on_event("failed", a.stage, {"seconds": 0.0, "attempt": a.attempt, "returncode": "-",
                                                  "retryable": isinstance(e, storage.StorageUnavailable),
                                                  "log": "-", "tail": f"cannot take the stage's lease: {e}"})
                return
            token = held.token
        cfg_uri = storage.join(cfg.output, STAGE_JSON)
        try:
            storage.write_text(cfg_uri, cfg.model_dump_json(indent=2) + "\n")
        except storage.StorageError:
            self._release(cfg.output, token)
            raise
        log = _log_path(cfg.output)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = self._env()
        if token:
            env[lease.ENV_TOKEN] = token
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {a.attempt}: {cfg.kind} {cfg.id} ===\n")
            popen = subprocess.Popen(
                [sys.executable, "-m", "job_runtime", cfg.kind, "--config", cfg_uri],
                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )
        self.procs[a.stage] = _Proc(popen, a.attempt, time.time(), log, token)
        self.waiting.pop(a.stage, None)
        self.on_event("launched", a.stage, {"attempt": a.attempt, "log": str(log)})

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **(self.env or {})}
        env.pop(lease.ENV_TOKEN, None)
        # Concurrent CPU stages oversubscribe the cores unless each gets its share of threads.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.max_parallel)))
        return env

    def shutdown(self, plan: Plan, grace: float = SHUTDOWN_GRACE_S) -> None:
        """Stop every child (Ctrl-C) at once: their stages stay incomplete and rerun next time."""
        procs = dict(self.procs)
        self.procs.clear()
        try:
            self._stop([p.popen for p in procs.values()], grace)
        finally:
            for sid, p in procs.items():
                self._release(plan.stages[sid].config.output, p.token)

    @staticmethod
    def _stop(popens: list[subprocess.Popen], grace: float = SHUTDOWN_GRACE_S) -> None:
        """SIGTERM every process group, wait ``grace`` seconds for all of them together, SIGKILL the rest."""
        live = [p for p in popens if p.poll() is None]
        for p in live:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in live:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in live:
            if p.poll() is None:
                _signal_group(p, signal.SIGKILL)
        for p in live:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:  # unkillable (D state): do not hang Ctrl-C on it
                pass

    @staticmethod
    def _release(output: str, token: str | None) -> None:
        """Remove a lease handed to a child that has ended (if it did not, or could not, itself)."""
        if not token:
            return
        try:
            lease.release_token(output, token)
        except storage.StorageError:
            pass  # it expires on its own (and its holder's pid is gone)


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _log_path(output: str) -> Path:
    if storage.is_local(output):
        return storage.local_path(output) / LOG_TXT
    return Path(os.environ.get("SFTRL_LOG_DIR", ".sftrl-logs")) / Path(output).name / LOG_TXT


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
