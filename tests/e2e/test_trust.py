"""`sftrl run` end to end on real (tiny) stages: what it calls done can be trusted.

One small SFT study on a local training file, run through: a clean run; the training file edited
in place (its stage and what depends on it run again, and `plan` names the input); a truncated
model and an emptied samples file (not done, named, redone); `--rerun` of one stage (exactly that
one runs); a stage that fails (it reads "failed" in `plan`, in run's summary and in the report,
with its log and error line); a SIGKILLed run (its scratch folder is swept by the next run).
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

from job_runtime.io import storage
from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def training_file(folder: Path, answer_shift: int = 0) -> Path:
    """16 synthetic SFT rows as a local jsonl with image files next to it."""
    from job_runtime.builtin import synthetic

    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, r in enumerate(synthetic.generate("sft", 16, 0)):
        r["image"].save(folder / "img" / f"{i}.png")
        trace = r["trace"] if not answer_shift else re.sub(r"\\boxed\{(\d+)\}", lambda m: "\\boxed{%d}" % (int(m.group(1)) + answer_shift), r["trace"])
        lines.append(json.dumps({"id": r["id"], "image": f"img/{i}.png", "question": r["question"], "trace": trace}))
    p = folder / "sft.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def experiment(tmp_path: Path, trl: dict | None = None) -> Path:
    raw = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    s = raw["spec"]
    raw["metadata"]["name"] = "trust"
    s.update(storage="./runs", methods=["sft"], scales=[16], data=s["data"][:1])  # the given-traces source only
    s["data"][0].update(sft="./data/sft.jsonl")
    s["sft"].update(epochs=1, global_batch_size=16, per_device_batch_size=16, trl=trl or {})
    s["eval"].update(limit=8, max_new_tokens=8)
    s["execution"].update(max_parallel=1, max_attempts=1)
    p = tmp_path / "trust.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


def sftrl(tmp_path: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True, cwd=tmp_path,
                          env=_env(tmp_path), timeout=timeout)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path / "tmp")}


def started(out: str) -> list[str]:
    return re.findall(r"start  ((?:sft|rl|eval)-[0-9a-f]{12})", out)


def stage_dir(tmp_path: Path, sid: str) -> Path:
    return tmp_path / "runs" / "stages" / sid


def plan_line(out: str, sid: str) -> str:
    return next(ln for ln in out.splitlines() if ln.strip().startswith(sid))


def scratch_folders(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "tmp").glob("sftrl-*"))


def test_done_can_be_trusted(tmp_path):
    (tmp_path / "tmp").mkdir()
    data = training_file(tmp_path / "data")
    exp = experiment(tmp_path)

    # 1. A clean run. Every manifest matches its files, though log.txt grew after publishing.
    r = sftrl(tmp_path, "run", str(exp))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    first = started(r.stdout)
    assert len(first) == 3
    for sid in first:
        manifest = storage.read_manifest(storage.normalize(stage_dir(tmp_path, sid)))
        assert "log.txt" not in manifest["files"], sid
        assert storage.is_complete(storage.normalize(stage_dir(tmp_path, sid))), sid
    assert scratch_folders(tmp_path) == []
    base_eval, old_sft, old_eval = first

    # 2. The training file edited in place: its stage and its eval run again; plan names the input.
    training_file(tmp_path / "data", answer_shift=1)
    r = sftrl(tmp_path, "plan", str(exp))
    new_sft = next(ln.split()[0] for ln in r.stdout.splitlines() if ln.strip().startswith("sft-"))
    assert new_sft != old_sft
    assert f"^ new stage: replaces {old_sft}: input data.train (./data/sft.jsonl) changed since the last run" in r.stdout
    assert "(1 done, 2 to run)" in r.stdout
    r = sftrl(tmp_path, "run", str(exp))
    assert r.returncode == 0, r.stdout[-3000:]
    second = started(r.stdout)
    assert second[0] == new_sft and len(second) == 2 and base_eval not in second
    new_eval = second[1]

    # 3. A truncated model and an emptied samples file: not done, named, redone.
    model = stage_dir(tmp_path, new_sft) / "model" / "model.safetensors"
    with open(model, "r+b") as f:
        f.truncate(1000)
    (stage_dir(tmp_path, new_eval) / "samples.jsonl").write_text("")
    r = sftrl(tmp_path, "plan", str(exp))
    assert "^ not done, because model/model.safetensors is 1000 bytes, but its _SUCCESS manifest says" in r.stdout
    assert "^ not done, because samples.jsonl is 0 bytes" in r.stdout
    r = sftrl(tmp_path, "run", str(exp))
    assert r.returncode == 0, r.stdout[-3000:]
    assert started(r.stdout) == [new_sft, new_eval]
    assert f"{new_sft}: not done, because model/model.safetensors is 1000 bytes" in r.stdout

    # 4. --rerun redoes exactly the named stage.
    r = sftrl(tmp_path, "run", str(exp), "--rerun", base_eval)
    assert r.returncode == 0, r.stdout[-3000:]
    assert started(r.stdout) == [base_eval] and "1 to redo (--rerun)" in r.stdout

    # 5. A stage that fails reads "failed", with its log and error line, in run, plan and report.
    bad = experiment(tmp_path, trl={"optim": "no_such_optimizer"})
    r = sftrl(tmp_path, "run", str(bad))
    assert r.returncode == 1, r.stdout[-3000:]
    failed = started(r.stdout)[0]
    log = stage_dir(tmp_path, failed) / "log.txt"
    summary = r.stdout[r.stdout.index("stage(s) failed; wall time"):]
    assert f"{failed} (tiny-sft-synthetic-16-s0): failed: " in summary and "no_such_optimizer" in summary
    assert f"(exit 1; log: {log})" in summary
    r = sftrl(tmp_path, "plan", str(bad))
    assert plan_line(r.stdout, failed).split()[1] == "failed" and f"log: {log})" in r.stdout
    r = sftrl(tmp_path, "report", str(bad))
    assert r.returncode == 0, r.stderr
    sft_row = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("sft "))
    assert "failed" in sft_row and "pending" not in sft_row

    # 6. A SIGKILLed run leaves its scratch folder; the next run sweeps it and finishes clean.
    exp = experiment(tmp_path)
    p = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", str(exp), "--rerun", new_sft], cwd=tmp_path,
                         env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not [d for d in scratch_folders(tmp_path) if d.name.startswith("sftrl-sft-")]:
        assert time.time() < deadline and p.poll() is None, "the stage never made its scratch folder"
        time.sleep(0.2)
    stage_pid = json.loads((stage_dir(tmp_path, new_sft) / ".lease").read_text())["pid"]  # the stage adopted its lease
    os.killpg(stage_pid, signal.SIGKILL)  # the stage runs in its own session: kill it too (as an OOM or a crash would)
    p.kill()
    p.wait()
    assert [d.name.split("-")[1] for d in scratch_folders(tmp_path)] == ["sft"]
    r = sftrl(tmp_path, "run", str(exp))
    assert r.returncode == 0, r.stdout[-3000:]
    assert started(r.stdout) == [new_sft]  # only the killed stage: its eval is still done
    assert scratch_folders(tmp_path) == []
