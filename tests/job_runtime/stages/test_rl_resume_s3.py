"""Fault tests of the rl stage against a real moto S3 server on 127.0.0.1.

- An rl stage (``python -m job_runtime rl --config s3://.../stage.json``) is SIGKILLed right after
  its second checkpoint lands in S3, then restarted: it resumes from the newest complete
  checkpoint (a hand-made partial one newer than it is ignored), the step counter and metrics
  history continue from it, and the result matches an uninterrupted run of the same stage.
- S3 unreachable at start: exit code 200 (retryable) and a one-line error, no traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from job_runtime.train import checkpoints
from job_runtime.io import storage
from job_runtime.contract import EXIT_RETRYABLE
from tests.job_runtime.conftest import free_port
from tests.job_runtime.stages.test_rl import rows_of, tiny_stage

ROOT = Path(__file__).resolve().parents[3]
STEPS = 8  # 32 prompts, 4 per step; checkpoints at 2, 4, 6, 8; held-out at 0, 4, 8


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}
    env.pop("CI_KILL_ME", None)
    return env


def _cmd(config_uri: str) -> list[str]:
    return [sys.executable, "-m", "job_runtime", "rl", "--config", config_uri]


def _write_stage(bucket: str, stage_id: str) -> tuple[str, str]:
    output = f"{bucket}/stages/{stage_id}"
    # One update per rollout batch keeps this test's step arithmetic; checkpoints of multi-update
    # rollout batches fall on whole batches (recipes._save_steps).
    cfg = tiny_stage(output, "grpo", scale=32, stage_id=stage_id, heldout_every_steps=4, save_steps=2,
                     mini_batch_size=4)
    config_uri = storage.join(output, "stage.json")
    storage.write_json(config_uri, cfg.model_dump(mode="json"))
    return output, config_uri


def _train_rows(output: str) -> dict[int, dict]:
    rows = [r for r in rows_of(output) if "loss" in r]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"duplicate step rows: {steps}"
    return {r["step"]: r for r in rows}


@pytest.mark.slow
def test_killed_rl_stage_resumes_from_its_last_complete_checkpoint(s3_bucket, tmp_path):
    # The uninterrupted reference run.
    ref_out, ref_cfg = _write_stage(s3_bucket, "rl-reference")
    ref = subprocess.run(_cmd(ref_cfg), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]

    out, cfg_uri = _write_stage(s3_bucket, "rl-killed")
    proc = subprocess.Popen(_cmd(cfg_uri), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 900
    try:
        while len(checkpoints.complete_steps(out)) < 2:
            if proc.poll() is not None:
                pytest.fail(f"stage exited ({proc.returncode}) before its second checkpoint: "
                            f"{proc.stderr.read().decode()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no second checkpoint within 900 s")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = time.time()
    assert not storage.is_complete(out), "the stage finished before it could be killed"
    step, uri = checkpoints.latest_complete(out)
    assert 4 <= step < STEPS

    # A newer checkpoint whose upload was cut short (files, no manifest) must never be resumed.
    partial = storage.join(checkpoints.checkpoints_uri(out), f"checkpoint-{step + 1}")
    storage.write_json(storage.join(partial, "trainer_state.json"), {"global_step": 999})

    restart = subprocess.run(_cmd(cfg_uri), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert restart.returncode == 0, restart.stderr[-3000:]
    assert f"resuming from {uri}" in restart.stderr or f"checkpoint-{step}" in restart.stderr

    # The step counter continues from the checkpoint: rows up to it come from the killed run (their
    # history restored with the checkpoint), rows after it from the restarted one, none twice.
    rows = _train_rows(out)
    assert sorted(rows) == list(range(1, STEPS + 1))
    assert all(rows[s]["time"] < killed_at for s in range(1, step + 1))
    assert all(rows[s]["time"] > killed_at for s in range(step + 1, STEPS + 1))
    results = storage.read_json(storage.join(out, "results.json"))
    assert results["global_step"] == STEPS

    # Same length and shape of history as the uninterrupted run (and, seeded with restored RNG
    # states, the same numbers).
    ref_rows = _train_rows(ref_out)
    assert sorted(ref_rows) == sorted(rows)
    # tokens_per_second is derived from the previous row of the same process: the first row after a
    # restart has none (it would count the downtime).
    diff = {s: (set(ref_rows[s]) ^ set(rows[s])) - {"tokens_per_second"} for s in rows}
    assert not any(diff.values()), diff
    for s in rows:
        assert rows[s]["reward"] == pytest.approx(ref_rows[s]["reward"], abs=1e-5), s
    held = [r["step"] for r in rows_of(out) if "heldout_accuracy" in r]
    assert held == [r["step"] for r in rows_of(ref_out) if "heldout_accuracy" in r] == [0, 4, 8]
    assert storage.read_json(storage.join(ref_out, "results.json"))["global_step"] == STEPS

    # Only the newest 3 complete checkpoints remain; the partial one was cleaned up.
    assert checkpoints.complete_steps(out) == [4, 6, 8]
    assert not storage.exists(storage.join(partial, "trainer_state.json"))
    state = json.loads(storage.read_text(storage.join(checkpoints.checkpoints_uri(out), "checkpoint-8",
                                                      "trainer_state.json")))
    assert state["global_step"] == STEPS


def test_unreachable_s3_at_start_is_a_clear_retryable_error(tmp_path):
    """Output on an S3 endpoint where nothing listens: exit 200, one clear line, no traceback."""
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = tiny_stage("s3://sftrl-nowhere/stages/rl-x", "grpo")
    config = tmp_path / "stage.json"
    config.write_text(cfg.model_dump_json())
    env = _env(
        SFTRL_S3_ENDPOINT=dead, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true", SFTRL_S3_MAX_ATTEMPTS="1", SFTRL_S3_RETRIES="1",
        SFTRL_S3_CONNECT_TIMEOUT="2",
    )
    proc = subprocess.run(_cmd(str(config)), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_RETRYABLE, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"S3 endpoint {dead} is unreachable" in proc.stderr
