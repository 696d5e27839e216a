"""The training recipes: what each unset sft/rl field resolves to, and why.

Pure functions shared by the sft/rl stages (which build TRL's configs from them) and by
`sftrl plan --explain` (which prints them): one resolution, in one place. Like
``job_runtime.contract`` it imports neither torch nor transformers, so the controller may import it.

Sources: EasyR1 (hiyouga/EasyR1) examples/config.yaml, verl/workers/actor/config.py,
verl/trainer/core_algos.py, examples/reward_function/math.py, examples/qwen2_5_vl_7b_geo3k_dapo.sh;
LLaMA-Factory (hiyouga/LLaMA-Factory) examples/train_full/qwen2_5vl_full_sft.yaml, hparams/model_args.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel

from job_runtime.contract import (
    EASYR1_CONFIG,
    RecipeError,
    RLParams,
    SFTParams,
    divide_batch,
    rl_mini_batch_size,
)

EASYR1_ACTOR = "EasyR1 verl/workers/actor/config.py"
EASYR1_DAPO = "EasyR1 examples/qwen2_5_vl_7b_geo3k_dapo.sh"
LLAMAFACTORY_SFT = "LLaMA-Factory examples/train_full/qwen2_5vl_full_sft.yaml"
EASYR1_VAL_FREQ = 5  # EasyR1 trainer.val_freq, in rollout batches
RL_KEEP_CHECKPOINTS = 3  # complete checkpoints kept in storage
SFT_KEEP_CHECKPOINTS = 2


# TRL 1.16's defaults of every field the resolution may set (tests/job_runtime/test_recipes.py keeps
# them equal to trl's dataclasses), so the controller can tell what differs without importing TRL.
TRL_GRPO_DEFAULTS: dict[str, Any] = {
    "num_train_epochs": 3.0, "learning_rate": 1e-6, "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1, "steps_per_generation": None, "num_generations": 8,
    "max_completion_length": 512, "temperature": 1.0, "top_p": 1.0, "beta": 0.0, "epsilon": 0.2,
    "epsilon_high": None, "delta": None, "loss_type": "dapo", "lr_scheduler_type": "linear", "weight_decay": 0.0,
    "use_bias_correction_kl": True, "vllm_importance_sampling_correction": True, "seed": 42, "logging_steps": 10,
    "save_steps": 500, "save_total_limit": None, "disable_tqdm": None,
}
TRL_SFT_DEFAULTS: dict[str, Any] = {
    "num_train_epochs": 3.0, "learning_rate": 2e-5, "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1, "lr_scheduler_type": "linear", "warmup_steps": 0, "max_length": 1024,
    "gradient_checkpointing": True, "completion_only_loss": None, "seed": 42, "logging_steps": 10,
    "save_steps": 500, "save_total_limit": None, "disable_tqdm": None,
}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One resolved value and where it came from: 'recipe <name>', 'experiment', 'default' (the
    field's own default, the paper's value), 'derived' (computed from others) or 'sftrl'."""

    value: Any
    source: str
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A stage's resolved training settings: TRL config fields, and what sftrl does around TRL."""

    trl: dict[str, Setting]
    runtime: dict[str, Setting]

    def trl_kwargs(self) -> dict[str, Any]:
        return {k: s.value for k, s in self.trl.items()}

    def __getitem__(self, key: str) -> Any:
        return (self.runtime[key] if key in self.runtime else self.trl[key]).value


def _default(params: BaseModel, name: str, note: str = "") -> Setting:
    value = getattr(params, name)
    given = value != type(params).model_fields[name].get_default(call_default_factory=True)
    return Setting(value, "experiment" if given else "default", "" if given else note)


def _recipe(params: BaseModel, name: str, value: Any, note: str, owner: Any = None) -> Setting:
    own = getattr(owner if owner is not None else params, name)
    if own is not None:
        return Setting(own, "experiment")
    return Setting(value, f"recipe {params.recipe}", note)  # type: ignore[attr-defined]


def _save_steps(params: RLParams, updates: int) -> Setting:
    """Checkpoints fall on whole rollout batches, so a resumed stage regenerates where an
    uninterrupted one would (TRL keeps a rollout batch's generations in memory, not in checkpoints).

    >>> [_save_steps(RLParams(save_steps=s), u).value for s, u in ((50, 4), (8, 4), (50, 1))]
    [52, 8, 50]
    """
    save_steps = params.save_steps
    rounded = -(-save_steps // updates) * updates
    if rounded == save_steps:
        return _default(params, "save_steps")
    return Setting(rounded, "derived", f"rl.save_steps {save_steps} rounded up to whole rollout batches "
                                       f"of {updates} updates")


def resolve_rl(params: RLParams, algorithm: str | None, world_size: int, seed: int = 0) -> Resolved:
    """The GRPOConfig fields and the sftrl behaviour of an rl stage, each with its source.

    >>> r = resolve_rl(RLParams(), "grpo", world_size=8)
    >>> r["gradient_accumulation_steps"], r["steps_per_generation"], r["beta"], r["epsilon_high"], r["delta"]
    (20, 80, 0.01, 0.3, 3.0)
    >>> r = resolve_rl(RLParams(recipe="trl"), "dapo", world_size=8)
    >>> r["gradient_accumulation_steps"], "steps_per_generation" in r.trl, r["beta"], r["filter_key"], r["overlong_buffer"]
    (80, False, 0.0, 'accuracy', 256)
    """
    name = algorithm or "grpo"
    if name not in ("grpo", "dapo"):
        raise RecipeError(f"algorithm '{name}' is unknown, because only grpo and dapo exist. Use one of them.")
    dapo, easy = name == "dapo", params.recipe == "easyr1"
    g, n = params.global_batch_size, params.num_generations
    mini = rl_mini_batch_size(params)
    why = "because TRL counts its batches in completions (per_device_batch_size x gradient_accumulation x world_size)"
    accum = divide_batch(mini * n, params.per_device_batch_size, world_size,
                         f"rl.mini_batch_size x rl.num_generations = {mini} x {n} =", why)
    updates = g // mini
    buffer = _recipe(params, "overlong_buffer", 0 if easy or not dapo else params.max_completion_length // 8,
                     f"none in {EASYR1_DAPO}" if easy else "DAPO paper: max_completion_length / 8")
    if buffer.value >= params.max_completion_length:
        raise RecipeError(
            f"rl.overlong_buffer ({buffer.value}) must be below rl.max_completion_length ({params.max_completion_length}), "
            "because the penalty ramps over the last `overlong_buffer` tokens. Lower it."
        )
    eps_high = 0.28 if dapo else (0.3 if easy else None)
    trl: dict[str, Setting] = {
        "num_train_epochs": _default(params, "epochs", "paper: 2 epochs"),
        "learning_rate": _default(params, "learning_rate", "paper: 1e-6"),
        "per_device_train_batch_size": _default(params, "per_device_batch_size"),
        "gradient_accumulation_steps": Setting(accum, "derived", f"{mini} prompts x {n} rollouts per update / "
                                                                 f"({params.per_device_batch_size} per device x {world_size} devices)"),
        "num_generations": _default(params, "num_generations", "paper: 10 rollouts"),
        "max_completion_length": _default(params, "max_completion_length", f"{EASYR1_CONFIG}: max_response_length"),
        "temperature": _default(params, "temperature", f"{EASYR1_CONFIG}: rollout.temperature"),
        "top_p": _default(params, "top_p", f"{EASYR1_CONFIG}: rollout.top_p"),
        "beta": _recipe(params, "beta", 0.01 if easy and not dapo else 0.0,
                        f"{EASYR1_DAPO}: disable_kl" if easy and dapo else
                        (f"{EASYR1_CONFIG}: use_kl_loss, low_var_kl, kl_coef 1e-2" if easy else "TRL default")),
        "epsilon": _default(params, "epsilon", f"{EASYR1_ACTOR}: clip_ratio_low"),
        "epsilon_high": _recipe(params, "epsilon_high", eps_high,
                                (f"{EASYR1_DAPO}: clip_ratio_high" if dapo else f"{EASYR1_ACTOR}: clip_ratio_high")
                                if easy else ("DAPO paper" if dapo else "TRL default: epsilon")),
        "delta": _recipe(params, "dual_clip", 3.0 if easy else None, f"{EASYR1_ACTOR}: clip_ratio_dual" if easy else ""),
        "loss_type": Setting("dapo", "derived", "token mean over the update's tokens on all devices "
                                                "(EasyR1 loss_avg_mode: token)"),
        "lr_scheduler_type": _recipe(params, "lr_scheduler_type", "constant" if easy else "linear",
                                     f"{EASYR1_ACTOR}: lr_scheduler_type, lr_warmup_ratio 0" if easy else "TRL default"),
        "weight_decay": _recipe(params, "weight_decay", 0.01 if easy else 0.0,
                                f"{EASYR1_CONFIG}: optim.weight_decay" if easy else "TRL default"),
        "seed": Setting(seed, "derived", "the run's seed"),
        "logging_steps": Setting(1, "sftrl", "a metrics row per optimiser step"),
        "save_steps": _save_steps(params, updates),
        "save_total_limit": Setting(RL_KEEP_CHECKPOINTS, "sftrl", "complete checkpoints kept in storage"),
        "disable_tqdm": Setting(True, "sftrl", "one log line per step instead"),
    }
    if updates > 1:
        trl["steps_per_generation"] = Setting(accum * updates, "derived",
                                              f"{g} prompts per rollout batch = {updates} updates of {mini}")
    if easy:
        trl["use_bias_correction_kl"] = Setting(False, "recipe easyr1", "EasyR1's KL term has no importance weight")
        trl["vllm_importance_sampling_correction"] = Setting(
            False, "recipe easyr1", "EasyR1 recomputes old log-probs with the actor, no vLLM-ratio correction")
    for key, value in params.trl.items():
        trl[key] = Setting(value, "experiment", "rl.trl")
    online = _recipe(params, "online_filtering", dapo, "on for dapo")
    updates_note = f"{EASYR1_VAL_FREQ} rollout batches x {updates} updates ({EASYR1_CONFIG}: trainer.val_freq)"
    runtime = {
        "recipe": Setting(params.recipe, "experiment" if params.recipe != "easyr1" else "default"),
        "algorithm": Setting(name, "experiment"),
        "global_batch_size": _default(params, "global_batch_size", f"{EASYR1_CONFIG}: rollout_batch_size 512"),
        "mini_batch_size": _recipe(params, "mini_batch_size", mini,
                                   f"a quarter of global_batch_size ({EASYR1_CONFIG}: actor.global_batch_size 128 of 512)" if easy else "one update"),
        "updates_per_rollout_batch": Setting(updates, "derived", "global_batch_size / mini_batch_size"),
        "max_prompt_length": _recipe(params, "max_prompt_length", 2048 if easy else 4096,
                                     f"{EASYR1_CONFIG}: max_prompt_length" if easy else "sftrl"),
        "min_pixels": _recipe(params, "min_pixels", 262144 if easy else None,
                              f"{EASYR1_CONFIG}: data.min_pixels" if easy else "processor default"),
        "max_pixels": _recipe(params, "max_pixels", 4194304 if easy else None,
                              f"{EASYR1_CONFIG}: data.max_pixels" if easy else "processor default"),
        "reward": Setting({"accuracy": params.reward.accuracy, "format": params.reward.format, **params.reward.custom},
                          _default(params, "reward").source, "EasyR1 math.py: 0.9 x accuracy + 0.1 x format"),
        "accuracy_rule": _recipe(params, "accuracy_rule", "mathruler" if easy else "lenient",
                                 "EasyR1 examples/reward_function/math.py" if easy else "sftrl eval extraction",
                                 owner=params.reward),
        "online_filtering": online,
        "overlong_buffer": buffer,
        "heldout_every_steps": _recipe(params, "heldout_every_steps", EASYR1_VAL_FREQ * updates if easy else 10,
                                       updates_note if easy else "sftrl"),
        "heldout_temperature": _recipe(params, "heldout_temperature", 0.6 if easy else 0.0,
                                       f"{EASYR1_CONFIG}: val_override_config" if easy else "greedy"),
        "heldout_top_p": _recipe(params, "heldout_top_p", 0.95 if easy else 1.0,
                                 f"{EASYR1_CONFIG}: val_override_config" if easy else ""),
    }
    if online.value:
        chunk = _recipe(params, "mini_rollout_batch_size", min(128, g), f"{EASYR1_DAPO}: data.mini_rollout_batch_size=128")
        if chunk.value % world_size:
            raise RecipeError(
                f"rl.mini_rollout_batch_size {chunk.value} is not a multiple of the world size {world_size}, because "
                f"every device generates the same number of prompts. Use a multiple of {world_size}."
            )
        runtime |= {
            "filter_key": _recipe(params, "filter_key", "overall" if easy else "accuracy",
                                  f"{EASYR1_CONFIG}: algorithm.filter_key" if easy else "DAPO paper"),
            "filter_low": _default(params, "filter_low", f"{EASYR1_CONFIG}: algorithm.filter_low"),
            "filter_high": _default(params, "filter_high", f"{EASYR1_CONFIG}: algorithm.filter_high"),
            "mini_rollout_batch_size": chunk,
            "max_try_make_batch": _default(params, "max_try_make_batch", f"{EASYR1_CONFIG}: trainer.max_try_make_batch"),
        }
    return Resolved(trl, runtime)


def resolve_sft(params: SFTParams, world_size: int, seed: int = 0) -> Resolved:
    """The SFTConfig fields and the sftrl behaviour of an sft stage, each with its source.

    >>> r = resolve_sft(SFTParams(), world_size=8)
    >>> r["gradient_accumulation_steps"], r["max_length"], r["freeze_vision_tower"], r["image_max_pixels"]
    (4, 2048, True, 262144)
    >>> resolve_sft(SFTParams(recipe="trl"), 8)["freeze_vision_tower"]
    False
    """
    lf = params.recipe == "llamafactory"
    accum = divide_batch(params.global_batch_size, params.per_device_batch_size, world_size, "sft.global_batch_size",
                         "because global batch = per-device batch x accumulation x world size")
    src = LLAMAFACTORY_SFT if lf else "TRL default"
    trl: dict[str, Setting] = {
        "num_train_epochs": _default(params, "epochs", "paper: 3 epochs"),
        "learning_rate": _default(params, "learning_rate", "paper: 1e-5"),
        "per_device_train_batch_size": _default(params, "per_device_batch_size"),
        "gradient_accumulation_steps": Setting(accum, "derived", f"{params.global_batch_size} sequences per step / "
                                                                 f"({params.per_device_batch_size} per device x {world_size} devices)"),
        "lr_scheduler_type": _recipe(params, "lr_scheduler_type", "cosine" if lf else "linear", src),
        "warmup_steps": _recipe(params, "warmup_ratio", 0.1 if lf else 0, f"{src}: warmup_ratio" if lf else src),
        "max_length": _recipe(params, "max_length", 2048 if lf else 1024, f"{src}: cutoff_len" if lf else src),
        "gradient_checkpointing": _default(params, "gradient_checkpointing"),
        "completion_only_loss": Setting(True, "sftrl", "loss on the assistant's trace only"),
        "seed": Setting(seed, "derived", "the run's seed"),
        "logging_steps": Setting(1, "sftrl", "a metrics row per optimiser step"),
        "save_steps": _default(params, "save_steps"),
        "save_total_limit": Setting(SFT_KEEP_CHECKPOINTS, "sftrl", "complete checkpoints kept in storage"),
        "disable_tqdm": Setting(True, "sftrl", "one log line per step instead"),
    }
    for key, value in params.trl.items():
        trl[key] = Setting(value, "experiment", "sft.trl")
    runtime = {
        "recipe": Setting(params.recipe, "experiment" if not lf else "default"),
        "global_batch_size": _default(params, "global_batch_size", "paper: 128"),
        "freeze_vision_tower": _recipe(params, "freeze_vision_tower", lf, f"{src}: freeze_vision_tower" if lf else src),
        "freeze_multi_modal_projector": _recipe(params, "freeze_multi_modal_projector", lf,
                                                f"{src}: freeze_multi_modal_projector" if lf else src),
        "image_max_pixels": _recipe(params, "image_max_pixels", 262144 if lf else None,
                                    f"{src}: image_max_pixels" if lf else "processor default"),
        "image_min_pixels": _recipe(params, "image_min_pixels", 32 * 32 if lf else None,
                                    "LLaMA-Factory hparams/model_args.py: image_min_pixels" if lf else "processor default"),
    }
    return Resolved(trl, runtime)
