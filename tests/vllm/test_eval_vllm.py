"""The eval stage's vLLM backend against its HF backend on both tiny model families, through the
real stage code (job_runtime.stages.eval): greedy responses equal token for token, with an image
(synthetic) and without one (math500 from a local file), so the scores are equal too."""

from __future__ import annotations

import json

import pytest

from job_runtime.contract import Labels, StageConfig
from job_runtime.io import storage

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

FAMILIES = {"qwen2-vl": "builtin://tiny-qwen2-vl", "qwen2.5-vl": "builtin://tiny-qwen2.5-vl"}


def _cfg(output: str, model: str, backend: str, data: dict[str, str]) -> StageConfig:
    params = {"benchmarks": ["synthetic", "math500"], "limit": 6, "max_new_tokens": 16, "batch_size": 4, "data": data,
              "generation": {"backend": backend, "cpu_kv_cache_gib": 1}}
    return StageConfig(kind="eval", id=f"eval-{backend}", output=output, model=model, params=params,
                       labels=Labels(experiment="e", run="r", stage=f"eval-{backend}", model="tiny", method="base"))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_vllm_and_hf_give_the_same_responses_and_scores(tmp_path, family):
    from job_runtime.stages import eval as stage

    rows = [{"unique_id": f"u{i}", "problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(3)]
    (tmp_path / "math500.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"math500": str(tmp_path / "math500.jsonl")}
    outs = {}
    for backend in ("hf", "vllm"):
        out = storage.normalize(tmp_path / backend)
        stage.run(_cfg(out, FAMILIES[family], backend, data))
        results = storage.read_json(storage.join(out, "results.json"))
        samples = [json.loads(x) for x in storage.read_text(storage.join(out, "samples.jsonl")).splitlines()]
        assert results["backend"] == backend
        outs[backend] = (results, samples)
    (hf_results, hf_samples), (vl_results, vl_samples) = outs["hf"], outs["vllm"]
    assert [s["benchmark"] for s in vl_samples] == ["synthetic"] * 6 + ["math500"] * 3
    assert all(s["response"] for s in hf_samples)  # random weights still say something
    for h, v in zip(hf_samples, vl_samples, strict=True):
        assert (v["benchmark"], v["id"], v["prompt"]) == (h["benchmark"], h["id"], h["prompt"])
        assert v["response"] == h["response"], (family, h["benchmark"], h["id"])
        assert v["correct"] == h["correct"]
    for name in ("synthetic", "math500"):
        assert vl_results["benchmarks"][name]["score"] == hf_results["benchmarks"][name]["score"]
