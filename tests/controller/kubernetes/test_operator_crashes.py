"""The operator killed at random points, against the FAKE API server (tests/fakes/fake_kube_apiserver.py):
in-process crashes at random API calls over many seeds, and real SIGKILLs of `sftrl operator`.
Every run must end exactly like an uninterrupted one: never two live jobs of one stage, never a job
name created twice (TTL deletes every finished job), every 409 on a create resolved by adopting the
one job of that name, never a finished stage lost, a final phase final."""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from controller.kubernetes.executor import ApiUnavailable
from controller.kubernetes.operator import ClusterDefaults, Operator
from job_runtime.io import storage
from tests.conftest import ROOT
from tests.controller.kubernetes.test_operator import TERMINAL, _cycle_for, _name, _plan, _rbac_ok, _status
from tests.fakes.fake_kube_apiserver import JOBS, FakeKubeApiServer
from tests.fakes.kube import submit, tiny_spec


# --- killed at random points: in-process crashes at every API call, and real SIGKILLs --------------------


class _Crash(BaseException):
    """The operator process dies here: every in-memory state is lost."""


def _crashing_api(server, tmp, crash_at, rng, where, unheard):
    from controller.kubernetes import executor as k8s

    client, _ = k8s.connect(str(server.write_kubeconfig(tmp / "kubeconfig")))

    class CrashingApi(k8s.KubeApi):
        n = 0

        def _call(self, what, fn, *args, **kw):
            self.n += 1
            if self.n != crash_at:
                return super()._call(what, fn, *args, **kw)
            if rng.random() < 0.5:  # before the request left
                where.append(what)
                raise _Crash(what)
            try:
                super()._call(what, fn, *args, **kw)  # done on the server; the answer (or error) is lost
            except Exception:  # noqa: BLE001
                pass
            where.append(what)
            if what == "create pytorchjob":  # whatever it answered (201, 409), nobody heard it
                unheard.append(args[-1].metadata.name)
            raise _Crash(what)

    return CrashingApi(client, backoff_s=0.01)


def _replay(tmp: Path, seed: int | None, crashes: int = 6):
    """One run of a 13-stage experiment, its operator crashing `crashes` times at random API calls."""
    tmp.mkdir(parents=True, exist_ok=True)
    fake = FakeKubeApiServer(job_seconds=0.1, start_delay=0.1, transient_rate=0.05, ambiguous_create_rate=0.1,
                             seed=seed or 0, ttl_seconds=0.6).start()
    spec = tiny_spec(f"file://{tmp}/store", seeds=[0, 1],
                     execution={"max_parallel": 4, "max_attempts": 10, "backoff_seconds": 0})
    plan = _plan(spec)
    sft = next(s.id for s in plan.stages.values() if s.kind == "sft")
    rl = next(s.id for s in plan.stages.values() if s.kind == "rl" and not s.parents)
    fake.exit_codes = {_name(plan, sft): 200}  # infrastructure: its first attempt only
    fake.stage_exit_codes = {rl: 1}  # code: every attempt
    submit(fake, "demo", spec)
    rng = random.Random(seed)
    seen_phases: set[str] = set()
    where: list[str] = []
    unheard: list[str] = []  # creates whose answer died with the operator
    adopted: list[str] = []
    end = time.monotonic() + 120
    try:
        with _LogCapture("sftrl.k8s") as logs:
            left = crashes if seed is not None else 0
            while time.monotonic() < end and _status(fake).get("phase") not in TERMINAL:
                crash_at = rng.randint(1, 12) if left > 0 else None
                op = Operator(_crashing_api(fake, tmp, crash_at, rng, where, unheard), "default",
                              defaults=ClusterDefaults())
                try:
                    while time.monotonic() < end and _status(fake).get("phase") not in TERMINAL:
                        op.cycle()
                        time.sleep(0.01)
                except _Crash:
                    left -= 1
                    seen_phases |= {fake._phase(j) for j in fake.objects(JOBS)} | ({"Gone"} if fake.gone else set())
                except ApiUnavailable:
                    pass
            op = Operator(_crashing_api(fake, tmp, None, rng, where, unheard), "default", defaults=ClusterDefaults())
            _cycle_for(op, 1.0, pause=0.01)  # every finished job expires: nothing may come back
            adopted = [m.split()[3] for m in logs.messages if m.startswith("adopted existing PyTorchJob")] + unheard
    finally:
        fake.stop()
    return fake, plan, seen_phases, where, adopted


class _LogCapture:
    def __init__(self, name):
        self.logger, self.messages = logging.getLogger(name), []
        outer = self

        class H(logging.Handler):
            def emit(self, record):
                outer.messages.append(record.getMessage())

        self.handler = H(level=logging.INFO)

    def __enter__(self):
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


def _outcome(st):
    """The status a run ends with, less what a crash may legitimately change: attempt numbers (a
    launch recorded but never created counts as a lost attempt) and timestamps."""
    return {"phase": st.get("phase"), "stages": st.get("stages"), "counts": st.get("counts"),
            "attempts": {s: {k: v for k, v in a.items() if k in ("state", "retryable", "exitCode", "reason")}
                         for s, a in (st.get("attempts") or {}).items()},
            "conditions": [{k: c[k] for k in ("type", "status", "reason")} for c in st.get("conditions") or []]}


def _never_twice_never_lost(fake, plan, adopted=None):
    assert fake.overlaps == []  # never two live jobs of one stage
    assert fake.config_missing_at_create == []  # stage.json always written before the job
    assert all(len(uids) == 1 for uids in fake.created_uids.values()), fake.created_uids  # no name reused
    for name, uid in fake.conflicted:  # every 409 was answered by the one job of that name: adopted
        assert fake.created_uids[name] == [uid]
        if adopted is not None:
            assert name in adopted, (name, adopted)
    done: set[str] = set()
    failed_for_good: set[str] = set()
    terminal = False
    for st in fake.status_history["demo"]:
        now = {s for s, v in (st.get("stages") or {}).items() if v == "succeeded"}
        assert done <= now  # a finished stage is never lost
        done = now
        gave_up = {s for s, a in (st.get("attempts") or {}).items() if a["state"] == "failed" and not a["retryable"]}
        assert failed_for_good <= gave_up | now
        failed_for_good = gave_up
        terminal = terminal or st.get("phase") in TERMINAL
        assert not terminal or st.get("phase") in TERMINAL  # a final phase stays final
    _rbac_ok(fake)


def test_operator_crashing_at_random_api_calls_ends_like_an_uninterrupted_run(tmp_path):
    """Many seeds, each with six crashes at random API calls (before the request or after it was
    served), until crashes have hit every job phase and every kind of call; TTL deletes every
    finished job. Each run must end exactly like the uninterrupted one."""
    calm, plan, _, _, _ = _replay(tmp_path / "calm", None)
    _never_twice_never_lost(calm, plan)
    want = _outcome(_status(calm))
    assert want["phase"] == "Failed" and want["counts"]["failed"] == 1
    phases, calls, adoptions = set(), set(), 0
    needed_phases = {"Created", "Running", "Restarting", "Succeeded", "Failed", "Gone"}
    needed_calls = {"list experiments", "list pytorchjobs", "create pytorchjob", "patch experiment status",
                    "create event"}
    seeds = 0

    def covered():
        return needed_phases <= phases and needed_calls <= calls and adoptions > 0

    while seeds < 6 or (not covered() and seeds < 40):
        fake, plan, seen, where, adopted = _replay(tmp_path / f"seed{seeds}", seeds)
        assert _outcome(_status(fake)) == want, f"seed {seeds}: crashes at {where}"
        _never_twice_never_lost(fake, plan, adopted)
        phases |= seen
        calls |= set(where)
        adoptions += len(fake.conflicted)
        seeds += 1
    assert covered(), (seeds, phases, calls, adoptions)
    print(f"{seeds} seeds, {adoptions} adopted jobs, crashes in phases {sorted(phases)} at calls {sorted(calls)}")


def _operator_proc(kubeconfig: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFTRL_")}
    env["SFTRL_LOG_LEVEL"] = "info"
    cmd = [sys.executable, "-m", "controller.cli", "operator", "--namespace", "default", "--interval", "0.1",
           "--metrics-port", "0", "--kubeconfig", str(kubeconfig)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def _whole_run(tmp: Path, kill_seed: int | None, deadline_s: float = 90.0):
    fake = FakeKubeApiServer(job_seconds=0.25, start_delay=0.05, transient_rate=0.05, ambiguous_create_rate=0.1,
                             seed=7, ttl_seconds=3.0).start()
    spec = tiny_spec(f"file://{tmp}/store", seeds=[0, 1])
    plan = _plan(spec)
    sft = [s.id for s in plan.stages.values() if s.kind == "sft"]
    rl = next(s.id for s in plan.stages.values() if s.kind == "rl" and not s.parents)
    fake.exit_codes = {_name(plan, sft[0]): 200}
    fake.stage_exit_codes = {rl: 1}
    submit(fake, "demo", spec)
    kc = fake.write_kubeconfig(tmp / "kubeconfig")
    rng = random.Random(kill_seed)
    # kill points: after a random number of job creates (so every kill lands mid-run), plus jitter
    targets = sorted(rng.sample(range(1, len(plan.stages)), 4)) if kill_seed is not None else []
    kills, end = 0, time.monotonic() + deadline_s
    proc = _operator_proc(kc, tmp / "operator.log")
    try:
        for target in targets:
            while time.monotonic() < end and sum(fake.creates.values()) < target:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = _operator_proc(kc, tmp / "operator.log")
        while time.monotonic() < end and _status(fake).get("phase") not in TERMINAL:
            time.sleep(0.05)
        time.sleep(4.0)  # every finished job expires (TTL 3 s) while the operator runs on
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        fake.stop()
    log = (tmp / "operator.log").read_text()
    assert _status(fake).get("phase") in TERMINAL, log[-3000:]
    if kill_seed is not None:  # jobs were created by several operator processes, not one lucky one
        lives = log.split("watching Experiments")[1:]
        assert sum("created sftrl-" in life for life in lives) >= 2, log[-3000:]
    adopted = re.findall(r"adopted existing PyTorchJob (\S+)", log)
    return fake, plan, kills, adopted


def test_operator_killed_at_random_points_ends_like_an_uninterrupted_run(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    calm, plan, _, calm_adopted = _whole_run(tmp_path / "a", kill_seed=None)
    killed, _, kills, adopted = _whole_run(tmp_path / "b", kill_seed=2024)
    assert kills == 4
    _never_twice_never_lost(calm, plan, calm_adopted)
    _never_twice_never_lost(killed, plan, adopted)
    assert {n for n, why, _ in killed.gone if why == "ttl"}  # and jobs did expire
    assert _outcome(_status(killed)) == _outcome(_status(calm))
    assert _status(killed)["phase"] == "Failed" and _status(killed)["counts"]["failed"] == 1
    for sid, stage in plan.stages.items():
        assert storage.is_complete(str(stage.config.output).replace(str(tmp_path / "a"), str(tmp_path / "b"))) == \
               (_status(killed)["stages"][sid] == "succeeded")
