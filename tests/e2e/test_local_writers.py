"""`sftrl run` never lets two processes write one stage, and never hangs on a stale owner.

Real `sftrl run` processes and real stages on a tiny experiment, on file:// and on s3:// (a moto
server on 127.0.0.1):

- two `sftrl run` of one experiment at once, one of them SIGKILLed while its stage runs (the stage
  is orphaned and keeps running), then a third run: every stage is written by exactly one stage
  process (each stage process logs the lease it holds), the others wait and say for what;
- a stale lease (and a legacy `.lock`) whose pid now names another live process does not hang a
  run; a live holder is named in a "wait" line and the run proceeds once it is gone;
- Ctrl-C with the machine loaded exits within 10 s and leaves no stage process behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from job_runtime.io import lease, storage
from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STAGE_RE = r"((?:sft|rl|eval)-[0-9a-f]{12})"


def experiment(tmp_path: Path, storage_uri: str, methods: list[str], max_parallel: int = 2) -> Path:
    raw = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    s = raw["spec"]
    raw["metadata"]["name"] = "writers"
    s.update(storage=storage_uri, scales=[16], methods=methods)
    s["data"][0]["heldout"] = "builtin://synthetic/test?n=8&seed=1"
    s["sft"].update(epochs=1)
    s["rl"].update(epochs=1, global_batch_size=4, mini_batch_size=4, per_device_batch_size=16, max_completion_length=8,
                   heldout_every_steps=2, heldout_size=8)
    s["eval"].update(limit=8, max_new_tokens=8)
    s["execution"]["max_parallel"] = max_parallel
    p = tmp_path / "writers.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def start(exp: Path, log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "controller.cli", "run", str(exp)], cwd=ROOT,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)


def wait_for(log: Path, pattern: str, n: int = 1, timeout: float = 600, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        hits = re.findall(pattern, log.read_text())
        if len(hits) >= n:
            return hits
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"'{pattern}' x{n} not seen:\n{log.read_text()[-3000:]}")


def stage_logs(plan: dict, root: str, log_dir: Path) -> dict[str, str]:
    """Every stage's log.txt (all launches of a stage append to it)."""
    out = {}
    for sid in plan["stages"]:
        path = (storage.local_path(root) / "stages" / sid / "log.txt") if storage.is_local(root) \
            else log_dir / sid / "log.txt"
        out[sid] = path.read_text() if path.exists() else ""
    return out


@pytest.fixture(params=["file", "s3"])
def backend(request, tmp_path):
    """(storage root, environment for `sftrl run`)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SFTRL_LOG_DIR": str(tmp_path / "logs"),
           "SFTRL_LEASE_TTL": "20", "AWS_EC2_METADATA_DISABLED": "true"}
    if request.param == "file":
        yield storage.normalize(tmp_path / "runs"), env
        return
    bucket = request.getfixturevalue("s3_bucket")  # the moto server, with storage pointed at it
    env.update({k: os.environ[k] for k in ("SFTRL_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                           "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")})
    yield f"{bucket}/runs", env


def test_concurrent_and_killed_runs_never_have_two_writers(backend, tmp_path):
    root, env = backend
    exp = experiment(tmp_path, root, methods=["sft"], max_parallel=2)
    logs = [tmp_path / f"run{i}.log" for i in range(3)]
    a = start(exp, logs[0], env)
    b = start(exp, logs[1], env)
    procs = [a, b]
    try:
        # whichever run launched a stage first is SIGKILLed: its stage lives on as an orphan
        deadline = time.time() + 600
        first = None
        while first is None and time.time() < deadline:
            for i, p in enumerate((a, b)):
                hit = re.search(rf"start  {STAGE_RE}", logs[i].read_text())
                if hit:
                    first = (i, hit.group(1))
                    break
            time.sleep(0.1)
        assert first is not None, logs[0].read_text()[-2000:] + logs[1].read_text()[-2000:]
        killed, orphan_stage = first
        survivor = 1 - killed
        time.sleep(1.0)
        procs[killed].kill()
        procs[killed].wait()
        c = start(exp, logs[2], env)  # the rerun, while the orphan still holds its stage
        procs.append(c)
        # the rerun waits for the orphan and says what for
        wait_for(logs[2], rf"wait   {orphan_stage} .*held elsewhere: pid \d+ on host", proc=c)
        assert procs[survivor].wait(timeout=900) == 0, logs[survivor].read_text()[-3000:]
        assert c.wait(timeout=900) == 0, logs[2].read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outs = [log.read_text() for log in logs]
    plan = json.loads(storage.read_text(storage.join(root, "experiments", "writers", "plan.json")))
    per_stage = stage_logs(plan, root, tmp_path / "logs")
    for sid in plan["stages"]:
        output = storage.join(root, "stages", sid)
        assert storage.is_complete(output), sid
        assert lease.read(output) is None, f"{sid}: lease left behind"
        # exactly one stage process ever wrote this stage: one lease holder. A run killed between taking
        # the lease and its child adopting it may have launched a child; that child found the lease
        # taken over and exited before touching the stage.
        holders = re.findall(r"holding the lease of \S+ as pid (\d+)", per_stage[sid])
        assert len(holders) == 1, (sid, per_stage[sid][-3000:])
        started = len(re.findall(rf"job_runtime: stage {sid} \(", per_stage[sid]))
        refused = len(re.findall(rf"not running stage {sid}, because another writer owns it", per_stage[sid]))
        assert started - refused == 1, (sid, per_stage[sid][-3000:])
        assert sum(len(re.findall(rf"start  {sid}", o)) for o in outs) == started, (sid, outs)
    assert re.search(rf"wait   {orphan_stage}", outs[2])
    rows = [json.loads(x) for x in storage.read_text(
        storage.join(root, "stages", next(s for s in plan["stages"] if s.startswith("sft")), "metrics.jsonl")
    ).splitlines()]
    trained = [r["step"] for r in rows if "loss" in r]
    assert trained and trained == sorted(set(trained))  # no training step logged twice


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def test_a_reused_pid_does_not_hang_and_a_live_holder_is_named(tmp_path):
    root = storage.normalize(tmp_path / "runs")
    exp = experiment(tmp_path, root, methods=["sft"], max_parallel=2)
    from controller import spec
    from controller.plan import build_plan

    plan = build_plan(spec.load(exp))
    sft = next(s for s in plan.stages.values() if s.kind == "sft")
    base_eval = next(s for s in plan.stages.values() if s.kind == "eval" and not s.parents)
    # sft: a crashed run's lock, whose pid now names another live process (this test)
    stale = storage.local_path(sft.config.output)
    stale.mkdir(parents=True)
    (stale / ".lock").write_text(str(os.getpid()))  # the lock file of earlier versions
    now = time.time()
    storage.write_bytes(lease.lease_uri(sft.config.output), json.dumps({
        "token": "crashed", "host": socket.gethostname(), "machine": lease.machine_id(), "pid": os.getpid(),
        "pid_start": (lease.process_start(os.getpid()) or 0) + 777, "note": "crashed run", "acquired_at": now,
        "renewed_at": now, "expires_at": now + 3600, "ttl": 60.0}).encode())
    # base eval: a live holder (another process on this host)
    holder = _sleeper()
    held = lease.acquire(base_eval.config.output, ttl=60, pid=holder.pid, note="someone else")
    log = tmp_path / "run.log"
    p = start(exp, log, {**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for(log, rf"start  {sft.id}", timeout=120, proc=p)  # the reused pid did not stop it
        wait_for(log, rf"wait   {base_eval.id} .*held elsewhere: pid {holder.pid} on host .*someone else",
                 timeout=120, proc=p)
        time.sleep(3)
        assert f"start  {base_eval.id}" not in log.read_text()
        holder.kill()
        holder.wait()
        assert p.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        holder.kill()
        if p.poll() is None:
            p.kill()
            p.wait()
    out = log.read_text()
    assert f"start  {base_eval.id}" in out and lease.read(base_eval.config.output) is None
    assert held.version  # (the dead holder's lease was taken over, never waited out)


def _burners(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.parametrize("when", ["starting", "training", "unresponsive"])
def test_ctrl_c_exits_within_10s_on_a_loaded_machine(tmp_path, when):
    """SIGINT while three stages start (importing torch), train, or do not react to SIGTERM at all
    (stopped, as a stage stuck in I/O is), with every core kept busy by other processes."""
    root = storage.normalize(tmp_path / "runs")
    exp = experiment(tmp_path, root, methods=["sft", "grpo"], max_parallel=3)  # three stages at once
    stages = storage.local_path(root) / "stages"
    log = tmp_path / "run.log"
    burn = _burners(2 * (os.cpu_count() or 1))
    try:
        p = start(exp, log, {**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_for(log, r"start  ", n=3, timeout=300, proc=p)
        if when != "starting":  # every stage process is past its imports, in the stage
            deadline = time.time() + 300
            while time.time() < deadline and sum(
                    bool(re.search(r"job_runtime: stage \S+ \(\w+\) -> ", (d / "log.txt").read_text()))
                    for d in stages.iterdir() if (d / "log.txt").exists()) < 3:
                time.sleep(0.2)
            time.sleep(1)
        children = _children(p.pid)
        assert len(children) == 3, children
        if when == "unresponsive":
            for pid in children:
                os.kill(pid, signal.SIGSTOP)  # SIGTERM stays pending; only SIGKILL ends it
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=120)
        took = time.monotonic() - t0
    finally:
        for b in burn:
            b.kill()
            b.wait()
    out = log.read_text()
    assert rc == 130 and "interrupted" in out, out[-2000:]
    assert took < 10.0, f"Ctrl-C took {took:.1f}s"
    time.sleep(0.5)
    for pid in children:
        assert not _group_alive(pid), f"stage process group {pid} survived Ctrl-C"
    for d in stages.iterdir():
        assert not (d / lease.LEASE).exists() and not (d / "_SUCCESS").exists(), d.name
