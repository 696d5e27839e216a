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


def image_pixels_reward(completions, image=None, **_):
    """Pixels of the prompt's image / 1e6: the logged mean shows the size the policy saw."""
    return [im.width * im.height / 1e6 for im in image]


PIXELS = "tests.job_runtime.stages.test_rl.image_pixels_reward"


def tiny_params(**overrides) -> dict:
    """The easyr1 recipe on the tiny model: rollout batches of 4 prompts, 4 updates of 1 prompt each."""
    params = {
        "epochs": 1,
        "learning_rate": 1e-3,
        "global_batch_size": 4,
        "per_device_batch_size": 4,
        "num_generations": 4,
        "max_prompt_length": 256,
        "max_completion_length": 8,
        "min_pixels": 16384,  # the synthetic 64x64 images become 128x128
        "heldout_every_steps": 4,
        "heldout_size": 4,
        "save_steps": 4,
        "reward": {"accuracy": 0.9, "format": 0.1, "custom": {CUSTOM: 1.0, PIXELS: 0.0}},
    }
    params.update(overrides)
    return RLParams.model_validate(params).model_dump(mode="json")


def tiny_stage(output: str, algorithm: str = "grpo", scale: int = 12, stage_id: str = "rl-test",
               model: str = "builtin://tiny-qwen2-vl", **overrides) -> StageConfig:
    """An rl stage config for the tiny model: `scale` prompts, 4 per rollout batch, 4 updates each
    (scale 12 -> 3 rollout batches, 12 optimiser steps)."""
    return StageConfig(
        kind="rl",
        id=stage_id,
        output=output,
        model=model,
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
    "grpo": {1: (0.186857, 7.75), 5: (0.151790, 8.0)},
    "dapo": {1: (0.184152, 7.75), 5: (0.157727, 8.0)},  # step 1 also averages the filter's refill rollouts
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
    assert manifest is not None and manifest["global_step"] == 12  # 3 rollout batches x 4 updates
    assert {"metrics.jsonl", "results.json", "model/config.json"} <= set(manifest["files"])
    assert any(f.startswith("model/") and f.endswith(".safetensors") for f in manifest["files"])
    rows = rows_of(out)
    train = [r for r in rows if "reward" in r]
    assert [r["step"] for r in train] == [1, 5, 9]  # rollouts are scored once per rollout batch
    for r in train:
        assert 0.0 <= r["signal_availability"] <= 1.0
        assert 0 < r["rewards/vowel_reward/mean"] < 1  # the custom reward is logged per component
        assert r["rewards/image_pixels_reward/mean"] == pytest.approx(0.016384)  # 128 x 128: min_pixels applied
    assert [r["step"] for r in rows if "heldout_accuracy" in r] == [0, 4, 8, 12]  # start, every 4 steps (and end)
    # EasyR1's KL term (k3, coefficient 1e-2): present, zero on the first (on-policy) update, then positive.
    kl = [r["kl"] for r in rows if "kl" in r]
    assert len(kl) == 12 and kl[0] == 0.0 and max(kl) > 0
    # Constant learning rate (EasyR1 lr_scheduler_type constant, no warmup); TRL's default would decay it.
    assert {r["learning_rate"] for r in rows if "learning_rate" in r} == {1e-3}
    results = storage.read_json(storage.join(out, "results.json"))
    assert results["global_step"] == 12 and results["final_model"] == "last" and results["recipe"] == "easyr1"
    assert storage.exists(storage.join(out, "checkpoints", "checkpoint-8", "_SUCCESS"))
    _check_pins("grpo", rows)

    # Idempotent: a second start of a finished stage does nothing.
    before = storage.read_bytes(storage.join(out, "_SUCCESS"))
    rl.run(tiny_stage(out, "grpo"))
    assert storage.read_bytes(storage.join(out, "_SUCCESS")) == before


@pytest.mark.slow
def test_qwen2_5_vl_trains_with_grpo(tmp_path):
    """The other family: its windowed vision tower and processor through TRL's GRPO (one rollout batch)."""
    out = storage.normalize(tmp_path / "stages" / "rl-qwen25")
    rl.run(tiny_stage(out, "grpo", scale=4, model="builtin://tiny-qwen2.5-vl"))
    manifest = storage.read_manifest(out)
    assert manifest["global_step"] >= 1
    train = [r for r in rows_of(out) if "reward" in r]
    assert train and all(0 < r["rewards/vowel_reward/mean"] < 1 for r in train)
    config = storage.read_json(storage.join(out, "model", "config.json"))
    assert config["model_type"] == "qwen2_5_vl"


@pytest.mark.slow
def test_dapo_stage_filters_online_without_kl_or_overlong_shaping(tmp_path):
    out = storage.normalize(tmp_path / "stages" / "rl-dapo")
    rl.run(tiny_stage(out, "dapo", scale=8))  # 2 rollout batches, 8 updates
    rows = rows_of(out)
    train = [r for r in rows if "reward" in r]
    assert [r["step"] for r in train] == [1, 5]
    for r in train:
        assert r["dynamic_sampling/dropped_groups"] >= 0 and r["dynamic_sampling/rounds"] >= 1
        assert "rewards/soft_overlong_punishment_reward/mean" not in r  # none in EasyR1's DAPO example
    assert not any("kl" in r for r in rows)  # EasyR1's DAPO example disables KL
    _check_pins("dapo", rows)


@pytest.mark.slow
def test_dapo_under_the_trl_recipe_adds_the_papers_overlong_shaping(tmp_path):
    out = storage.normalize(tmp_path / "stages" / "rl-dapo-trl")
    # (online_filtering off: the DAPO paper's filter on accuracy finds no signal in the untrained model)
    rl.run(tiny_stage(out, "dapo", scale=4, recipe="trl", per_device_batch_size=16, heldout_every_steps=10,
                      online_filtering=False))
    train = [r for r in rows_of(out) if "reward" in r]
    assert [r["step"] for r in train] == [1]  # trl: one update per rollout batch
    # max_completion_length 8 -> buffer 1: a completion cut at 8 tokens gets -1.
    assert train[0]["rewards/soft_overlong_punishment_reward/mean"] <= 0


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
    assert results["global_step"] < 20  # stopped early (5 rollout batches x 4 updates were planned)
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
    with pytest.raises(rl.RLConfigError, match=r"rl.mini_rollout_batch_size 3 is not a multiple of the world size 2"):
        rl.resolve(tiny_stage(out, "dapo"), RLParams.model_validate(tiny_params(mini_rollout_batch_size=3, per_device_batch_size=2)), 2)
    assert not (tmp_path / "o").exists()


def test_batch_arithmetic_must_divide():
    assert rl.resolve(tiny_stage("file:///x"), RLParams(), world_size=8)["gradient_accumulation_steps"] == 20
    one = RLParams(global_batch_size=8, mini_batch_size=8, num_generations=4, per_device_batch_size=32)
    assert rl.resolve(tiny_stage("file:///x"), one, 1)["gradient_accumulation_steps"] == 1
    with pytest.raises(rl.RLConfigError, match=r"128 x 10 = 1280 does not divide .* 6 x 1 = 6, because TRL counts"):
        rl.resolve(tiny_stage("file:///x"), RLParams(per_device_batch_size=6), world_size=1)
    with pytest.raises(ValueError, match=r"rl.mini_batch_size 3 does not divide rl.global_batch_size 8"):
        RLParams(global_batch_size=8, mini_batch_size=3)
    with pytest.raises(ValueError, match=r"rl.global_batch_size 6 is not a multiple of 4, because the easyr1 recipe"):
        RLParams(global_batch_size=6)


def test_recipe_defaults_and_overrides():
    from job_runtime.recipes import resolve_rl

    def view(params, algorithm):
        r = resolve_rl(params, algorithm, 8)
        return (r["beta"], r["epsilon_high"], r["delta"], r["online_filtering"], r["overlong_buffer"],
                r["lr_scheduler_type"], r["weight_decay"], r["mini_batch_size"])

    assert view(RLParams(), "grpo") == (0.01, 0.3, 3.0, False, 0, "constant", 0.01, 128)
    assert view(RLParams(), "dapo") == (0.0, 0.28, 3.0, True, 0, "constant", 0.01, 128)
    assert view(RLParams(recipe="trl"), "grpo") == (0.0, None, None, False, 0, "linear", 0.0, 512)
    assert view(RLParams(recipe="trl"), "dapo") == (0.0, 0.28, None, True, 256, "linear", 0.0, 512)
    custom = RLParams(epsilon_high=0.25, online_filtering=False, overlong_buffer=10, beta=0.05, dual_clip=10)
    assert view(custom, "dapo") == (0.05, 0.25, 10, False, 10, "constant", 0.01, 128)
    with pytest.raises(ValueError, match="overlong_buffer"):
        resolve_rl(RLParams(max_completion_length=8, overlong_buffer=8), "dapo", 1)


def test_grpo_config_passes_trl_fields_and_deepspeed_through(tmp_path):
    from trl import GRPOConfig

    cfg = tiny_stage("file:///x", "grpo", trl={"loss_type": "grpo", "top_k": 5})
    cfg = cfg.model_copy(update={"deepspeed": {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 16}})
    params = RLParams.model_validate(cfg.params)
    kw = rl.grpo_config_kwargs(cfg, params, rl.resolve(cfg, params, 1), str(tmp_path), 1, False, False)
    assert kw["loss_type"] == "grpo" and kw["top_k"] == 5  # rl.trl wins over the recipe
    assert kw["deepspeed"]["zero_optimization"]["stage"] == 2
    args = GRPOConfig(**{**kw, "deepspeed": None})
    # The rollout batch (4 prompts x 4) is generated once and split into 4 updates of 1 prompt.
    assert args.generation_batch_size == 16 and args.steps_per_generation == 4 and args.gradient_accumulation_steps == 1
    assert (args.epsilon, args.epsilon_high, args.delta, args.beta) == (0.2, 0.3, 3.0, 0.01)
    assert (args.lr_scheduler_type, args.weight_decay, args.use_bias_correction_kl) == ("constant", 0.01, False)


def test_vllm_colocate_is_configured_when_asked_and_refused_without_vllm(tmp_path):
    """make test runs without vLLM (tests/vllm trains with it): check the config TRL would receive,
    auto falling back to HF, and the clear refusal when rl.generation.backend forces vLLM."""
    from trl import GRPOConfig

    cfg = tiny_stage("file:///x", "grpo", generation={"backend": "vllm", "gpu_memory_utilization": 0.4})
    params = RLParams.model_validate(cfg.params)
    kw = rl.grpo_config_kwargs(cfg, params, rl.resolve(cfg, params, 1), str(tmp_path), 1, True, False)
    assert kw["use_vllm"] is True and kw["vllm_mode"] == "colocate" and kw["vllm_gpu_memory_utilization"] == 0.4
    assert GRPOConfig(**kw).vllm_mode == "colocate"
    assert rl.want_vllm(params.model_copy(update={"generation": params.generation.model_copy(update={"backend": "hf"})})) is False
    assert rl.want_vllm(RLParams()) is False  # auto, no vLLM here
    with pytest.raises(rl.RLConfigError, match=r"rl\.generation\.backend is vllm, but vLLM is not installed"):
        rl.want_vllm(params)


def test_former_use_vllm_reads_as_generation_backend():
    assert RLParams(use_vllm=False).generation.backend == "hf"
    assert RLParams(use_vllm=True).generation.backend == "vllm"
    assert RLParams(use_vllm=None).generation.backend == "auto"
    assert "use_vllm" not in RLParams(use_vllm=True).model_dump()
    with pytest.raises(ValueError, match="use_vllm: True contradicts generation.backend: hf"):
        RLParams(use_vllm=True, generation={"backend": "hf"})
