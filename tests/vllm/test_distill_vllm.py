"""The distill and probe stages on the CPU build of vLLM (``generation.backend: vllm``), through the
real stage code: independent samples of one prompt (each copy carries its own seed: with vLLM's one
engine seed they would be one sample k times), verified traces from a teacher that learnt the task
(the tiny Qwen2-VL after a short SFT), and a probe whose prediction matches the HF backend's within
sampling error."""

from __future__ import annotations

import json
import math
import re

import pyarrow.parquet as pq
import pytest

from job_runtime.contract import DistillParams, Labels, ProbeRun, SFTParams, StageConfig
from job_runtime.io import storage
from job_runtime.stages import distill, probe, sft

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

VLLM = {"backend": "vllm", "cpu_kv_cache_gib": 1, "max_model_len": 512}
DIGIT = "tests.job_runtime.stages.test_probe.digit_reward"


def _labels(sid: str, method: str) -> Labels:
    return Labels(experiment="t", run="r", stage=sid, model="tiny", method=method)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    """The tiny Qwen2-VL after the quickstart's SFT on 256 synthetic traces (most answers right)."""
    out = storage.normalize(tmp_path_factory.mktemp("teacher"))
    params = SFTParams.model_validate({"epochs": 6, "learning_rate": 3e-3, "global_batch_size": 16, "per_device_batch_size": 16,
                                       "max_length": 256, "gradient_checkpointing": False, "warmup_ratio": 0.05,
                                       "save_steps": 1000})
    sft.run(StageConfig(kind="sft", id="sft-teacher", output=out, model="builtin://tiny-qwen2-vl",
                        data={"train": "builtin://synthetic/sft"}, scale=256, params=params.model_dump(mode="json"),
                        labels=_labels("sft-teacher", "sft")))
    return storage.join(out, "model")


def test_distill_on_vllm_keeps_verified_traces_of_independent_samples(tmp_path, teacher):
    p = DistillParams(teacher=teacher, prompts="builtin://synthetic/rl?n=24", samples_per_prompt=4, keep_per_prompt=2,
                      temperature=1.0, max_new_tokens=32, generation=VLLM)
    cfg = StageConfig(kind="distill", id="distill-vllm", output=storage.normalize(tmp_path / "d"), model=teacher,
                      data={"prompts": p.prompts}, params=p.model_dump(mode="json"), labels=_labels("distill-vllm", "distill"))
    distill.run(cfg)
    res = json.loads((tmp_path / "d" / "results.json").read_text())
    assert res["backend"] == "vllm" and res["responses"] == 96 and res["kept_traces"] > 0
    samples = [json.loads(x) for x in (tmp_path / "d" / "samples.jsonl").read_text().splitlines()]
    by_prompt: dict[str, set[str]] = {}
    for s in samples:
        by_prompt.setdefault(s["id"], set()).add(s["response"])
    assert sum(len(v) > 1 for v in by_prompt.values()) >= len(by_prompt) // 2  # sampled, not one sample 4 times
    for row in pq.read_table(tmp_path / "d" / "data" / "sft.parquet").to_pylist():
        assert row["trace"].startswith("<think>") and re.search(r"\\boxed\{(\d+)\}", row["trace"]).group(1) == row["answer"]
    assert res["mean_trace_tokens"] is not None  # the teacher's tokenizer counted them


def test_probe_on_vllm_predicts_what_the_hf_backend_predicts(tmp_path):
    n, k = 64, 4
    shares = {}
    for backend in ("hf", "vllm"):
        params = ProbeRun(prompts=n, samples=k, temperature=1.0, max_new_tokens=8, min_pixels=4096,
                          reward={"custom": {DIGIT: 1.0}}, generation={**VLLM, "backend": backend})
        out = tmp_path / backend
        probe.run(StageConfig(kind="probe", id=f"probe-{backend}", output=storage.normalize(out),
                              model="builtin://tiny-qwen2-vl", data={"train": "builtin://synthetic/rl"}, scale=n,
                              params=params.model_dump(mode="json"), labels=_labels(f"probe-{backend}", "probe")))
        res = json.loads((out / "results.json").read_text())
        assert res["backend"] == backend
        shares[backend] = res["mixed_share"]
    p = (shares["hf"] + shares["vllm"]) / 2
    assert 0.1 < p < 0.9, shares
    assert abs(shares["hf"] - shares["vllm"]) <= 3.5 * math.sqrt(2 * p * (1 - p) / n), shares
