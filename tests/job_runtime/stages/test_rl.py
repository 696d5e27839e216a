"""The rl stage: real TRL GRPO/DAPO training of the tiny Qwen2-VL on CPU (seeded, a few steps).

Pinned numbers: the first steps of a short seeded run are pinned (reward, completion length), so
an unintended change to the stage, the rewards, the data or TRL's use shows up here. When a
change is intended (e.g. the tiny model's recipe), rerun with ``SFTRL_PRINT_PINS=1 pytest -s``
and update the PINS table.
"""

from __future__ import annotations

import os

import pytest

from job_runtime.io import storage
from job_runtime.contract import Labels, RLParams, StageConfig
from job_runtime.errors import StageError
from job_runtime.stages import rl

# A completion-dependent reward (the untrained base model never earns accuracy or format reward,
# so without it every group would be flat and nothing would be pinned).
CUSTOM = "tests.job_runtime.stages.test_rl.vowel_reward"


def vowel_reward(completions, **_):
    """Share of vowels in the completion text: varies across rollouts, deterministic."""
    out = []
    for c in completions:
        text = c[-1]["content"] if isinstance(c, list) else str(c)
        out.append(sum(ch in "aeiou" for ch in text) / max(len(text), 1))
    return out


def tiny_params(**overrides) -> dict:
    params = {
        "epochs": 1,
        "learning_rate": 1e-3,
        "global_batch_size": 4,
        "per_device_batch_size": 16,
        "num_generations": 4,
        "max_prompt_length": 256,
        "max_completion_length": 8,
        "heldout_every_steps": 2,
        "heldout_size": 4,
        "save_steps": 2,
        "reward": {"accuracy": 0.9, "format": 0.1, "custom": {CUSTOM: 1.0}},
    }
    params.update(overrides)
    return RLParams.model_validate(params).model_dump(mode="json")


def tiny_stage(output: str, algorithm: str = "grpo", scale: int = 12, stage_id: str = "rl-test", **overrides) -> StageConfig:
    """An rl stage config for the tiny model: `scale` prompts, 4 per step (scale 12 -> 3 steps)."""
    return StageConfig(
        kind="rl",
        id=stage_id,
        output=output,
        model="builtin://tiny-qwen2-vl",
        data={"train": "builtin://synthetic/rl", "heldout": "builtin://synthetic/test?n=4"},
        scale=scale,
        seed=0,
        algorithm=algorithm,
        params=tiny_params(**overrides),
        labels=Labels(experiment="t", run="r", stage=stage_id, model="tiny", method=algorithm),
    )


def rows_of(output: str) -> list[dict]:
    return list(storage.read_jsonl(storage.join(output, "metrics.jsonl")))


# Step -> (reward, completions/mean_length) of the seeded tiny runs on CPU.
PINS = {
    "grpo": {1: (0.198938, 7.875), 2: (0.172503, 7.625)},
    "dapo": {1: (-0.734395, 7.875), 2: (-0.760383, 7.625)},
}


def _check_pins(algorithm: str, rows: list[dict]) -> None:
    train = {r["step"]: r for r in rows if "reward" in r}
    got = {s: (train[s]["reward"], train[s]["completions/mean_length"]) for s in PINS[algorithm]}
    if os.environ.get("SFTRL_PRINT_PINS"):
        print(f"PINS[{algorithm!r}] = {got}")
    for step, (reward, length) in PINS[algorithm].items():
        assert got[step][0] == pytest.approx(reward, abs=1e-4), (algorithm, step, got)
        assert got[step][1] == pytest.approx(length, abs=1e-3), (algorithm, step, got)


@pytest.mark.slow
def test_grpo_stage_trains_publishes_and_matches_pins(tmp_path):
    out = storage.normalize(tmp_path / "stages" / "rl-grpo")
    rl.run(tiny_stage(out, "grpo"))

    manifest = storage.read_manifest(out)
    assert manifest is not None and manifest["global_step"] == 3
    assert {"metrics.jsonl", "results.json", "model/config.json"} <= set(manifest["files"])
    assert any(f.startswith("model/") and f.endswith(".safetensors") for f in manifest["files"])
    rows = rows_of(out)
    train = [r for r in rows if "reward" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    for r in train:
        assert 0.0 <= r["signal_availability"] <= 1.0
        assert 0 < r["rewards/vowel_reward/mean"] < 1  # the custom reward is logged per component
    assert [r["step"] for r in rows if "heldout_accuracy" in r] == [0, 2, 3]  # start, every 2 steps, end
    results = storage.read_json(storage.join(out, "results.json"))
    assert results["global_step"] == 3 and results["final_model"] == "last"
    assert storage.exists(storage.join(out, "checkpoints", "checkpoint-2", "_SUCCESS"))
    _check_pins("grpo", rows)

    # Idempotent: a second start of a finished stage does nothing.
    before = storage.read_bytes(storage.join(out, "_SUCCESS"))
    rl.run(tiny_stage(out, "grpo"))
    assert storage.read_bytes(storage.join(out, "_SUCCESS")) == before


@pytest.mark.slow
def test_dapo_stage_uses_clip_higher_dynamic_sampling_and_overlong_shaping(tmp_path):
    out = storage.normalize(tmp_path / "stages" / "rl-dapo")
    rl.run(tiny_stage(out, "dapo", scale=8))  # 2 steps
    rows = rows_of(out)
    train = [r for r in rows if "reward" in r]
    assert [r["step"] for r in train] == [1, 2]
    for r in train:
        assert "dynamic_sampling/dropped_groups" in r and r["dynamic_sampling/filled_groups"] >= 0
        # max_completion_length 8 -> buffer 1: a completion cut at 8 tokens gets -1.
        assert r["rewards/soft_overlong_punishment_reward/mean"] <= 0
    _check_pins("dapo", rows)


@pytest.mark.slow
def test_deceptive_stop_keeps_the_best_heldout_policy(tmp_path):
    """A detector set to flag at once: training stops at the third held-out evaluation and the
    final model is the best by held-out accuracy (the untrained start: the tiny base never scores,
    so the first evaluation is the best and stays so)."""
    from safetensors.torch import load_file

    from job_runtime.builtin.tiny_model import tiny_model_path

    out = storage.normalize(tmp_path / "stages" / "rl-deceptive")
    cfg = tiny_stage(
        out, "grpo", scale=20, heldout_every_steps=1, save_steps=100,
        deceptive={"window": 3, "min_reward_slope": -1e9, "max_accuracy_slope": 1e9, "stop": True},
    )
    rl.run(cfg)
    results = storage.read_json(storage.join(out, "results.json"))
    assert results["stopped_on_deception"] is True
    assert results["final_model"] == "best_heldout"
    assert results["global_step"] < 5  # stopped early (5 steps were planned)
    assert results["best_heldout"]["step"] == 0
    rows = rows_of(out)
    assert any(r.get("deceptive_reward") == 1.0 for r in rows)
    published = load_file(str(storage.local_path(storage.join(out, "model", "model.safetensors"))))
    base = load_file(str(tiny_model_path() / "model.safetensors"))
    assert all((published[k] == base[k]).all() for k in base)  # the step-0 policy, not the trained one


def test_user_errors_are_one_line_stage_errors_before_any_work(tmp_path):
    out = storage.normalize(tmp_path / "o")
    # StageError: job_runtime.__main__ prints it as one line, without a traceback.
    with pytest.raises(StageError, match=r"rl\.trl\.num_generation .*did you mean num_generations\?"):
        rl.run(tiny_stage(out, trl={"num_generation": 4}))
    with pytest.raises(StageError, match=r"rejected by TRL.*generation_batch_size"):
        rl.run(tiny_stage(out, trl={"generation_batch_size": 3}))
    with pytest.raises(StageError, match=r"does not divide"):
        rl.run(tiny_stage(out, per_device_batch_size=5))
    assert not (tmp_path / "o").exists()


def test_batch_arithmetic_must_divide():
    assert rl.gradient_accumulation(RLParams(), world_size=8) == 80
    assert rl.gradient_accumulation(RLParams(global_batch_size=8, num_generations=4, per_device_batch_size=32), 1) == 1
    with pytest.raises(rl.RLConfigError, match=r"512 x 10 = 5120 does not divide .* 6 x 1 = 6, because TRL counts"):
        rl.gradient_accumulation(RLParams(per_device_batch_size=6), world_size=1)


def test_algorithm_defaults_and_overrides():
    grpo = rl.resolve_algorithm("grpo", RLParams())
    assert (grpo.loss_type, grpo.epsilon_high, grpo.dynamic_sampling, grpo.overlong_buffer) == ("bnpo", 0.2, False, 0)
    dapo = rl.resolve_algorithm("dapo", RLParams())
    assert (dapo.loss_type, dapo.epsilon_high, dapo.dynamic_sampling, dapo.overlong_buffer) == ("dapo", 0.28, True, 256)
    custom = rl.resolve_algorithm("dapo", RLParams(epsilon_high=0.3, dynamic_sampling=False, overlong_buffer=0))
    assert (custom.epsilon_high, custom.dynamic_sampling, custom.overlong_buffer) == (0.3, False, 0)
    with pytest.raises(rl.RLConfigError, match="overlong_buffer"):
        rl.resolve_algorithm("dapo", RLParams(max_completion_length=8, overlong_buffer=8))


def test_grpo_config_passes_trl_fields_and_deepspeed_through(tmp_path):
    from trl import GRPOConfig

    cfg = tiny_stage("file:///x", "grpo", trl={"loss_type": "grpo", "top_k": 5})
    cfg = cfg.model_copy(update={"deepspeed": {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 16}})
    params = RLParams.model_validate(cfg.params)
    kw = rl.grpo_config_kwargs(cfg, params, rl.resolve_algorithm("grpo", params), str(tmp_path), 1, False, False)
    assert kw["loss_type"] == "grpo" and kw["top_k"] == 5  # rl.trl wins over the algorithm default
    assert kw["deepspeed"]["zero_optimization"]["stage"] == 2
    args = GRPOConfig(**{**kw, "deepspeed": None})
    assert args.generation_batch_size == 16 and args.num_generations == 4 and args.epsilon_high == 0.2


def test_vllm_colocate_is_configured_when_asked_and_refused_without_vllm(tmp_path):
    """vLLM itself cannot run here (no GPU, no vLLM): check the config TRL would receive, and the
    clear refusal when rl.use_vllm is forced on a machine without it."""
    from trl import GRPOConfig

    cfg = tiny_stage("file:///x", "grpo")
    params = RLParams.model_validate(cfg.params)
    kw = rl.grpo_config_kwargs(cfg, params, rl.resolve_algorithm("grpo", params), str(tmp_path), 1, True, False)
    assert kw["use_vllm"] is True and kw["vllm_mode"] == "colocate"
    assert GRPOConfig(**kw).vllm_mode == "colocate"
    assert rl.want_vllm(params.model_copy(update={"use_vllm": False})) is False
    with pytest.raises(Exception, match="rl.use_vllm is true, but vLLM is not importable"):
        rl.want_vllm(params.model_copy(update={"use_vllm": True}))
