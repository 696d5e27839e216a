"""`sftrl run` end to end on the embedded default: real stages, interrupted twice, resumed.

One small experiment (the quickstart with smaller numbers) is run through Ctrl-C during one stage,
a SIGKILL of `sftrl run` during another, and a final run to completion; then once more, which
must launch nothing. Checks: every stage completes exactly once after its interruption, results
are complete, no stage is launched twice while it runs, and the table is printed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def mini_experiment(tmp_path: Path) -> Path:
    raw = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    s = raw["spec"]
    raw["metadata"]["name"] = "mini"
    s["storage"] = str(tmp_path / "runs")
    s["scales"] = [64]
    s["sft"].update(epochs=1)
    s["rl"].update(epochs=1, global_batch_size=4, mini_batch_size=4, per_device_batch_size=16, heldout_every_steps=2,
                   heldout_size=16, probe={"prompts": 16}, min_signal=None)  # every stage runs (skips: test_data_pipeline.py)
    s["data"] = s["data"][:1]  # the given source (distillation: tests/e2e/test_data_pipeline.py)
    s["eval"].update(limit=32)
    s["data"][0]["heldout"] = "builtin://synthetic/test?n=16&seed=1"
    s["execution"]["max_parallel"] = 1
    p = tmp_path / "mini.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def start(exp: Path, log: Path) -> subprocess.Popen:
    f = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "controller.cli", "run", str(exp)], cwd=ROOT, stdout=f,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(log: Path, pattern: str, n: int = 1, timeout: float = 600) -> list[str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        hits = re.findall(pattern, log.read_text())
        if len(hits) >= n:
            return hits
        time.sleep(0.2)
    raise AssertionError(f"'{pattern}' x{n} not seen in {timeout}s:\n{log.read_text()[-3000:]}")


def attempts(stage_dir: Path) -> int:
    return len(re.findall(r"^=== .* attempt \d+:", (stage_dir / "log.txt").read_text(), re.M))


def test_interrupt_kill_resume_reuse(tmp_path):
    exp = mini_experiment(tmp_path)
    stages = tmp_path / "runs" / "stages"

    # 1. Ctrl-C while the first stage runs: it is stopped, nothing is marked done.
    log1 = tmp_path / "run1.log"
    p = start(exp, log1)
    first = wait_for(log1, r"start  ((?:sft|rl|eval)-[0-9a-f]{12})")[0]
    time.sleep(1)  # the stage is still importing torch: it cannot have finished
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=60) == 130
    assert "interrupted" in log1.read_text()
    assert not (stages / first / "_SUCCESS").exists()
    assert not (stages / first / ".lease").exists()  # the child was stopped and its lease released

    # 2. SIGKILL of `sftrl run` during a stage: the orphaned stage finishes; the next run waits for
    #    it instead of launching a duplicate.
    log2 = tmp_path / "run2.log"
    p = start(exp, log2)
    wait_for(log2, r"done   ", n=1)  # at least one stage finished in this run
    victim = wait_for(log2, r"start  ((?:sft|rl|eval)-[0-9a-f]{12})", n=2)[-1]
    time.sleep(2)
    p.kill()
    p.wait()

    # 3. Resume to completion.
    log3 = tmp_path / "run3.log"
    p = start(exp, log3)
    assert p.wait(timeout=1200) == 0, log3.read_text()[-4000:]
    out3 = log3.read_text()
    assert f"start  {victim}" not in out3, "a stage still running was launched a second time"
    assert "wall time" in out3

    plan = json.loads((tmp_path / "runs" / "experiments" / "mini" / "plan.json").read_text())
    for sid in plan["stages"]:
        assert (stages / sid / "_SUCCESS").exists(), sid
        assert attempts(stages / sid) == (2 if sid == first else 1), sid
    for run in plan["runs"]:
        results = json.loads((stages / run["eval"] / "results.json").read_text())
        assert 0.0 <= results["benchmarks"]["synthetic"]["score"] <= 1.0
        rows = (stages / run["eval"] / "samples.jsonl").read_text().splitlines()
        assert len(rows) == results["benchmarks"]["synthetic"]["n"] == 32  # nothing duplicated
    for sid, st in plan["stages"].items():  # training metrics: one row per logged step, no repeats
        if st["kind"] != "eval":
            steps = [json.loads(l)["step"] for l in (stages / sid / "metrics.jsonl").read_text().splitlines()]
            assert steps == sorted(steps), sid

    # 4. Everything is reused.
    log4 = tmp_path / "run4.log"
    p = start(exp, log4)
    assert p.wait(timeout=120) == 0
    out4 = log4.read_text()
    n = len(plan["stages"])
    assert f"({n} already done)" in out4 and "start  " not in out4
    assert "base" in out4 and "sft" in out4  # the comparison table
