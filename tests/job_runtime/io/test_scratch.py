"""job_runtime.io.scratch: scratch folders are removed on SIGTERM and swept after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from job_runtime.io import scratch
from tests.conftest import ROOT


def test_sweep_removes_only_this_hosts_folders_of_dead_processes(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f"sftrl-sft-0123abcd4567-{scratch.HOST}.{dead.pid}-x1y2z3"
        running = tmp_path / f"sftrl-rl-0123abcd4567-{scratch.HOST}.{live.pid}-a1b2c3"
        mine = scratch.mkdtemp("eval", base=tmp_path)
        other_host = tmp_path / f"sftrl-sft-0123abcd4567-00000000.{dead.pid}-q1w2e3"
        unrelated = tmp_path / "sftrl-bench-abc"
        for p in (stale, running, other_host, unrelated):
            p.mkdir()
        (stale / "trainer").mkdir()
        assert scratch.sweep(tmp_path) == [stale]
        assert not stale.exists() and running.exists() and mine.exists() and other_host.exists() and unrelated.exists()
    finally:
        live.kill()
        live.wait()


CHILD = """
import sys, time
from job_runtime.io import scratch
scratch.install()
work = scratch.mkdtemp("sft-test")
try:
    print(work, flush=True)
    time.sleep(60)
finally:
    import shutil; shutil.rmtree(work, ignore_errors=True)
"""


def test_sigterm_exits_through_finally_and_removes_the_folder(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    p = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    work = Path(p.stdout.readline().strip())
    assert work.is_dir() and work.parent == tmp_path
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 128 + signal.SIGTERM  # still a retryable exit (128-255)
    assert not work.exists()


def test_sigkill_leaves_it_for_the_next_sweep(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    p = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    work = Path(p.stdout.readline().strip())
    p.kill()
    p.wait()
    time.sleep(0.1)
    assert work.exists()
    assert scratch.sweep(tmp_path) == [work] and not work.exists()
