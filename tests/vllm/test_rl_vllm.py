"""The rl stage with vLLM colocate rollouts on CPU (TRL's GRPOTrainer, ``use_vllm``, colocate mode),
through the real entrypoint: 2 GRPO steps that publish, then a resume from the first checkpoint.
Both model families: their vision towers go through vLLM's Qwen2-VL and Qwen2.5-VL code.

TRL's vLLM *server* mode is not tested: its weight transfer to the server needs NCCL (a GPU)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from job_runtime.contract import Labels, RLParams, StageConfig
from job_runtime.io import storage
from tests.conftest import ROOT
from tests.vllm.conftest import stage_env

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

CUSTOM = "tests.job_runtime.stages.test_rl.vowel_reward"  # varies across rollouts of an untrained model


def _stage(output: str, model: str) -> StageConfig:
    params = RLParams.model_validate({
        # one update per rollout batch: scale 8 = 2 rollout batches = 2 optimiser steps
        "epochs": 1, "learning_rate": 1e-3, "global_batch_size": 4, "mini_batch_size": 4, "per_device_batch_size": 16,
        "num_generations": 4, "max_prompt_length": 256, "min_pixels": 16384, "max_completion_length": 8, "heldout_every_steps": 1,
        "heldout_size": 4, "save_steps": 1, "reward": {"custom": {CUSTOM: 1.0}},
        "generation": {"backend": "vllm", "cpu_kv_cache_gib": 1, "max_model_len": 512},
    }).model_dump(mode="json")
    return StageConfig(
        kind="rl", id="rl-vllm", output=output, model=model, scale=8, seed=0, algorithm="grpo", params=params,
        data={"train": "builtin://synthetic/rl", "heldout": "builtin://synthetic/test?n=4"},
        labels=Labels(experiment="t", run="r", stage="rl-vllm", model="tiny", method="grpo"),
    )


def _run(config, log) -> None:
    with open(log, "a") as f:
        rc = subprocess.run([sys.executable, "-m", "job_runtime", "rl", "--config", str(config)], cwd=ROOT,
                            env=stage_env(), stdout=f, stderr=subprocess.STDOUT, timeout=1200).returncode
    assert rc == 0, log.read_text()[-6000:]


@pytest.mark.parametrize("model", ["builtin://tiny-qwen2-vl", "builtin://tiny-qwen2.5-vl"])
def test_grpo_with_vllm_colocate_trains_publishes_and_resumes(tmp_path, model):
    out = storage.normalize(tmp_path / "stage")
    config, log = tmp_path / "stage.json", tmp_path / "log.txt"
    config.write_text(_stage(out, model).model_dump_json())
    _run(config, log)
    text = log.read_text()
    assert "vLLM colocate generation" in text
    manifest = storage.read_manifest(out)
    assert manifest is not None and manifest["global_step"] == 2
    rows = list(storage.read_jsonl(storage.join(out, "metrics.jsonl")))
    train = [r for r in rows if "reward" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(r["completions/mean_length"] > 0 for r in train)
    assert all(0 < r["rewards/vowel_reward/mean"] < 1 for r in train)  # vLLM's rollouts were scored

    # Resume: the stage lost its last checkpoint and its result; it restarts from checkpoint-1 and
    # trains step 2 again, with the resumed weights pushed into vLLM.
    storage.delete_prefix(storage.join(out, "_SUCCESS"))
    storage.delete_prefix(storage.join(out, "checkpoints", "checkpoint-2"))
    storage.delete_prefix(storage.join(out, "model"))
    log.write_text("")
    _run(config, log)
    text = log.read_text()
    assert "resuming from" in text and "checkpoint-1" in text
    assert storage.read_manifest(out)["global_step"] == 2
    rows = list(storage.read_jsonl(storage.join(out, "metrics.jsonl")))
    assert [r["step"] for r in rows if "reward" in r] == [1, 2]  # no step twice, none lost
