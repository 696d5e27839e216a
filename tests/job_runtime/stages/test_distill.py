"""The distill stage through its real entrypoint: a teacher's responses, verified, kept, written as SFT data.

The teacher with known behaviour is the synthetic task's offline solver (job_runtime.builtin.
synthetic.solve): with ``skill=2`` it counts up to two filled squares and answers 2 for more (a
planted wrong answer on every such prompt), and its sample j takes trace style j mod 4, where style
2 boxes the right answer without a <think> block (a planted format failure). So the pass rate of
every prompt is known from the data alone: 3/4 when at most two squares are filled, else 0. The
tiny Qwen2-VL is the teacher of the HF-backend case.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from job_runtime.__main__ import main as runtime_main
from job_runtime.builtin import synthetic
from job_runtime.contract import DistillParams, Labels, StageConfig
from job_runtime.errors import StageError
from job_runtime.io import data, storage
from job_runtime.stages import distill


def stage(out: Path, teacher: str, n: int = 40, **params) -> StageConfig:
    p = DistillParams(teacher=teacher, prompts=f"builtin://synthetic/rl?n={n}", **params)
    return StageConfig(kind="distill", id="distill-test", output=str(out), model=teacher, data={"prompts": p.prompts},
                       params=p.model_dump(mode="json"),
                       labels=Labels(experiment="t", run="distill-t", stage="distill-test", model="teacher", method="distill"))


def counts(n: int) -> list[int]:
    """Filled squares of the first n training rows, from the drawing's pattern (not from the pixels)."""
    return [bin(r["pattern"]).count("1") for r in synthetic.generate("train", n)]


def test_only_verified_traces_reach_the_parquet_and_the_yield_is_exact(tmp_path):
    distill.run(stage(tmp_path / "d", "builtin://synthetic-solver?skill=2", samples_per_prompt=4, keep_per_prompt=2))
    res = json.loads((tmp_path / "d" / "results.json").read_text())
    c = counts(40)
    good = sum(1 for x in c if x <= 2)
    assert res["prompts"] == 40 and res["responses"] == 160
    assert res["prompts_with_verified"] == good
    assert res["mean_pass_rate"] == pytest.approx(good * 0.75 / 40)
    assert res["kept_traces"] == 2 * good  # styles 0 and 1: the two shortest verified, distinct
    rows = pq.read_table(tmp_path / "d" / "data" / "sft.parquet").to_pylist()
    gold = {r["id"]: (r["answer"], bin(r["pattern"]).count("1")) for r in synthetic.generate("train", 40)}
    for r in rows:
        answer, filled = gold[r["source_id"]]
        assert filled <= 2  # no trace of a prompt the teacher got wrong
        assert r["trace"].startswith("<think>") and re.search(r"\\boxed\{(\d+)\}", r["trace"]).group(1) == answer
        assert r["pass_rate"] == 0.75 and r["images"] and r["question"].startswith("How many squares are filled?")
    assert res["mean_trace_chars"] == pytest.approx(sum(len(r["trace"]) for r in rows) / len(rows))
    samples = [json.loads(line) for line in (tmp_path / "d" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 160 and sum(s["kept"] for s in samples) == len(rows)
    assert all(not s["kept"] for s in samples if not s["verified"])
    assert all(s["format_reward"] == 0.0 for s in samples if s["sample"] == 2)  # the planted format failure
    # the sft stage reads the file as it is: prompt with the format prompt, the verified trace as completion
    ds = data.sft_dataset({"train": str(tmp_path / "d" / "data" / "sft.parquet")}, scale=len(rows))
    assert {m[0]["content"] for m in ds["completion"]} == {r["trace"] for r in rows}
    assert storage.is_complete(storage.normalize(str(tmp_path / "d")))


def test_keep_is_shortest_first_without_duplicates(tmp_path):
    distill.run(stage(tmp_path / "d", "builtin://synthetic-solver", n=10, samples_per_prompt=8, keep_per_prompt=5))
    rows = pq.read_table(tmp_path / "d" / "data" / "sft.parquet").to_pylist()
    by_prompt: dict[str, list[str]] = {}
    for r in rows:
        by_prompt.setdefault(r["source_id"], []).append(r["trace"])
    assert len(by_prompt) == 10
    for traces in by_prompt.values():  # 8 samples = styles 0..3 twice; style 2 fails the format
        assert len(traces) == 3 == len(set(traces))
        assert [len(t) for t in traces] == sorted(len(t) for t in traces)
        assert re.fullmatch(r"<think>\d filled\. \d \+ \d = \d+</think> \\boxed\{\d+\}", traces[0])  # style 0


def test_greedy_teacher_gives_one_trace_per_prompt(tmp_path):
    distill.run(stage(tmp_path / "d", "builtin://synthetic-solver", n=12, samples_per_prompt=3, temperature=0.0))
    res = json.loads((tmp_path / "d" / "results.json").read_text())
    assert res["mean_pass_rate"] == 1.0 and res["kept_traces"] == 12


def test_a_teacher_with_no_verified_trace_fails_with_the_yield(tmp_path, caplog):
    """The untrained tiny Qwen2-VL through the HF backend: nothing verifies, the stage says so."""
    cfg = stage(tmp_path / "d", "builtin://tiny-qwen2-vl", n=4, samples_per_prompt=2, max_new_tokens=6)
    with pytest.raises(StageError, match=r"no verified trace.*8 responses on 4 prompts.*stronger teacher"):
        distill.run(cfg)
    assert not (tmp_path / "d" / "_SUCCESS").exists()
    res = json.loads((tmp_path / "d" / "results.json").read_text())
    assert res["backend"] == "hf" and res["kept_traces"] == 0 and res["mean_trace_tokens"] is None
    # the same through `python -m job_runtime distill`: exit 1 (not retryable), one clear line
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    assert runtime_main(["distill", "--config", str(tmp_path / "cfg.json")]) == 1


def test_bad_parameters_and_prompts_fail_before_generation(tmp_path):
    cfg = stage(tmp_path / "d", "builtin://synthetic-solver")
    with pytest.raises(StageError, match="distill parameter samples_per_prompt"):
        distill.run(cfg.model_copy(update={"params": {**cfg.params, "samples_per_prompt": 0}}))
    with pytest.raises(StageError, match="unknown"):
        distill.run(cfg.model_copy(update={"data": {"prompts": "builtin://synthetic/nope"}}))
    with pytest.raises(StageError, match="skill must be 0..4"):
        distill.run(cfg.model_copy(update={"model": "builtin://synthetic-solver?skill=9"}))
