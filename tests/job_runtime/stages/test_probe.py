"""The probe stage through its real entrypoint: rollouts of a policy, scored by the study's reward.

- Known pass rates: the synthetic task's solver (skill 2: right up to two filled squares, wrong
  above; sample j in trace style j mod 4, style 2 without the <think> block) gives figures that
  follow from the data alone.
- Prediction: on the tiny Qwen2-VL, the probe's share of prompts with mixed outcomes equals the RL
  stage's first-step signal availability (1 - TRL's frac_reward_zero_std) on the same prompts and
  seed, within sampling error. The reward adds a completion-dependent term (a digit in the
  completion) so that the untrained model's groups are mixed about half the time.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from job_runtime.builtin import synthetic
from job_runtime.contract import Decontamination, Labels, ProbeRun, RLParams, StageConfig
from job_runtime.errors import StageError
from job_runtime.stages import probe, rl

DIGIT = "tests.job_runtime.stages.test_probe.digit_reward"
REWARD = {"accuracy": 0.9, "format": 0.1, "custom": {DIGIT: 1.0}}


def digit_reward(completions, **_):
    """1 when the completion text has a digit (the untrained tiny model writes one in ~15% of rollouts)."""
    out = []
    for c in completions:
        text = c[-1]["content"] if isinstance(c, list) else str(c)
        out.append(1.0 if any(ch.isdigit() for ch in text) else 0.0)
    return out


def labels(sid: str, method: str = "probe") -> Labels:
    return Labels(experiment="t", run="r", stage=sid, model="tiny", method=method)


def probe_stage(out: Path, model: str, n: int, samples: int, train: str = "builtin://synthetic/rl",
                temperature: float = 1.0, **kw) -> StageConfig:
    p = ProbeRun(prompts=n, samples=samples, temperature=temperature, max_new_tokens=8, **kw)
    return StageConfig(kind="probe", id="probe-test", output=str(out), model=model, data={"train": train}, scale=n,
                       seed=0, params=p.model_dump(mode="json"), labels=labels("probe-test"))


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def first_step(out: Path) -> dict:
    return next(r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r.get("step") == 1 and "reward" in r)


def share_at_most_two(n: int) -> float:
    return sum(1 for r in synthetic.generate("train", n) if bin(r["pattern"]).count("1") <= 2) / n


def test_figures_on_a_policy_with_known_pass_rates(tmp_path):
    # two samples (styles 0 and 1): every group is uniform -- all right (1.0) or all wrong (0.1)
    probe.run(probe_stage(tmp_path / "a", "builtin://synthetic-solver?skill=2", 40, 2))
    a, good = results(tmp_path / "a"), share_at_most_two(40)
    assert a["mixed_share"] == 0.0 and a["reward_group_std_mean"] == 0.0
    assert a["pass_at_1"] == a["pass_at_k"] == a["all_correct_share"] == pytest.approx(good)
    assert a["all_wrong_share"] == pytest.approx(1 - good)
    assert a["reward_mean"] == pytest.approx(good * 1.0 + (1 - good) * 0.1)
    # four samples: style 2 loses the format reward, so every group is mixed; accuracy is unchanged
    probe.run(probe_stage(tmp_path / "b", "builtin://synthetic-solver?skill=2", 40, 4))
    b = results(tmp_path / "b")
    assert b["mixed_share"] == 1.0 and b["pass_at_1"] == pytest.approx(good) and b["samples"] == 4
    assert b["reward_components"]["format_reward"] == pytest.approx(0.75)
    rows = [json.loads(x) for x in (tmp_path / "b" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 160 and {r["sample"] for r in rows} == {0, 1, 2, 3}


def test_probe_predicts_the_rl_stages_first_step_signal(tmp_path):
    n, k = 64, 4
    probe.run(probe_stage(tmp_path / "probe", "builtin://tiny-qwen2-vl", n, k, reward=REWARD, min_pixels=4096))
    predicted = results(tmp_path / "probe")["mixed_share"]

    params = RLParams.model_validate({
        "epochs": 1, "learning_rate": 1e-4, "global_batch_size": n, "per_device_batch_size": n, "num_generations": k,
        "temperature": 1.0, "max_prompt_length": 256, "max_completion_length": 8, "save_steps": 100, "reward": REWARD,
        "min_pixels": 4096,  # the 64x64 drawings as drawn, in both stages (the easyr1 recipe would upscale them)
    }).model_dump(mode="json")
    cfg = StageConfig(kind="rl", id="rl-test", output=str(tmp_path / "rl"), model="builtin://tiny-qwen2-vl",
                      data={"train": "builtin://synthetic/rl"}, scale=n, seed=0, algorithm="grpo", params=params,
                      labels=labels("rl-test", "grpo"))
    rl.run(cfg)
    measured = results(tmp_path / "rl")["first_step_signal_availability"]
    print(f"probe: mixed {predicted:.3f}, reward {results(tmp_path / 'probe')['reward_mean']:.4f}; rl step 1: "
          f"signal {measured:.3f}, reward {first_step(tmp_path / 'rl')['reward']:.4f}")
    # two independent estimates of one probability over n groups: a two-sided 3.5-sigma band
    p = (predicted + measured) / 2
    assert 0.2 < p < 0.8, "the reward must give mixed groups for this test to mean anything"
    assert abs(predicted - measured) <= 3.5 * math.sqrt(2 * p * (1 - p) / n), (predicted, measured)
    # and the rollouts come from the same distribution: the mean reward over n x k rollouts agrees too
    # (it is the digit share here: accuracy and format are 0 for the untrained model)
    q_probe, q_rl = results(tmp_path / "probe")["reward_mean"], first_step(tmp_path / "rl")["reward"]
    q = (q_probe + q_rl) / 2
    assert abs(q_probe - q_rl) <= 3.5 * math.sqrt(2 * q * (1 - q) / (n * k)), (q_probe, q_rl)


def test_decontaminated_prompts_are_not_probed_and_are_counted(tmp_path):
    test_rows = synthetic.generate("test", 8)
    train_rows = synthetic.generate("train", 16)
    (tmp_path / "img").mkdir()
    rows = []
    for i, r in enumerate(test_rows + train_rows):
        buf = io.BytesIO()
        im: Image.Image = r["image"]
        (im.resize((96, 96)) if i < 8 else im).save(buf, format="JPEG" if i < 8 else "PNG", quality=90)
        (tmp_path / "img" / f"{i}.img").write_bytes(buf.getvalue())
        rows.append({"id": f"{'planted' if i < 8 else 'clean'}-{i}", "image": f"img/{i}.img", "question": r["question"],
                     "answer": r["answer"]})
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = probe_stage(tmp_path / "p", "builtin://synthetic-solver", 16, 2, train=str(tmp_path / "prompts.jsonl"))
    cfg = cfg.model_copy(update={"decontaminate": Decontamination(benchmarks=["synthetic"], data={"synthetic": "builtin://synthetic/test?n=8"})})
    probe.run(cfg)
    res = results(tmp_path / "p")
    assert res["prompts"] == 16 and res["decontamination"]["dropped"] == {"synthetic": 8}
    probed = {json.loads(x)["id"] for x in (tmp_path / "p" / "samples.jsonl").read_text().splitlines()}
    assert probed == {f"clean-{i}" for i in range(8, 24)}


def test_bad_config_fails_before_generation(tmp_path):
    cfg = probe_stage(tmp_path / "p", "builtin://tiny-qwen2-vl", 4, 2)
    with pytest.raises(StageError, match="probe parameter samples"):
        probe.run(cfg.model_copy(update={"params": {**cfg.params, "samples": 1}}))
    with pytest.raises(StageError, match="no data.train"):
        probe.run(cfg.model_copy(update={"data": {}}))
    with pytest.raises(StageError, match="exceeds"):
        probe.run(cfg.model_copy(update={"scale": 50, "data": {"train": "builtin://synthetic/rl?n=10"}}))
    # a reward or a backend that cannot be set up is a stage error naming what to fix (no traceback)
    solver = cfg.model_copy(update={"model": "builtin://synthetic-solver"})
    bad_reward = {**cfg.params, "reward": {**cfg.params["reward"], "custom": {"no_module_here.fn": 1.0}}}
    with pytest.raises(StageError, match="'no_module_here.fn' could not be imported"):
        probe.run(solver.model_copy(update={"params": bad_reward}))
    bad_backend = {**cfg.params, "generation": {"backend": "vllm"}}
    with pytest.raises(StageError, match=r"rl\.generation\.backend is vllm, but vLLM is not installed"):
        probe.run(cfg.model_copy(update={"params": bad_backend}))


def test_only_rank_zero_works_when_a_launcher_starts_several(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    probe.run(probe_stage(tmp_path / "p", "builtin://synthetic-solver", 4, 2))
    assert not (tmp_path / "p").exists()
    monkeypatch.setenv("RANK", "0")
    probe.run(probe_stage(tmp_path / "p", "builtin://synthetic-solver", 4, 2))
    assert (tmp_path / "p" / "_SUCCESS").exists()


def test_rollouts_sample_as_the_rl_stage_does(tmp_path, monkeypatch):
    """The RL stage's sampling reaches generate: its temperature, its top_p and no top-k cut (TRL's GRPO
    and vLLM sample without one; transformers' default would keep the 50 likeliest tokens), and its
    images in its pixel bounds. A near-zero temperature makes every group's rollouts identical, so
    nothing is mixed."""
    from job_runtime.eval import generation

    seen: list[dict] = []
    sizes: set[tuple[int, int]] = set()
    real = generation.HFBackend._batch

    def spy(self, reqs):
        sizes.update(im.size for r in reqs for im in r.images)
        gen = self.model.generate

        def record(**kw):
            seen.append({k: kw.get(k) for k in ("do_sample", "temperature", "top_p", "top_k", "max_new_tokens")})
            return gen(**kw)

        self.model.generate = record
        try:
            return real(self, reqs)
        finally:
            self.model.generate = gen

    monkeypatch.setattr(generation.HFBackend, "_batch", spy)
    probe.run(probe_stage(tmp_path / "cold", "builtin://tiny-qwen2-vl", 16, 4, temperature=1e-4, reward=REWARD))
    assert results(tmp_path / "cold")["mixed_share"] == 0.0
    assert sizes == {(64, 64)}  # no pixel bounds: the drawings as they are
    probe.run(probe_stage(tmp_path / "warm", "builtin://tiny-qwen2-vl", 16, 4, reward=REWARD, top_p=0.9, min_pixels=16384))
    assert seen[-1] == {"do_sample": True, "temperature": 1.0, "top_p": 0.9, "top_k": 0, "max_new_tokens": 8}
    assert sizes == {(64, 64), (128, 128)}  # the RL stage's min_pixels, by the same rule (job_runtime.io.images)
    assert results(tmp_path / "warm")["mixed_share"] > 0.0
