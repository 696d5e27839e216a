"""Resources of a stage, and the concrete DeepSpeed config the controller renders for it.

Pure: no torch, no deepspeed import. ``render_deepspeed`` turns a ``Resources`` spec, the model's
size and the batch layout into a DeepSpeed config with every value filled in (no ``"auto"``), so
the config in ``stage.json`` is exactly what runs, and ``deepspeed.runtime.config.DeepSpeedConfig``
accepts it (tests/controller/test_deepspeed.py checks every combination).

Which ZeRO stage (``deepspeed: auto``):

==============================  ============================  ======================================
model size                      chosen                        why
==============================  ============================  ======================================
gpus_per_node: 0                none                          DeepSpeed ZeRO needs GPUs
eval stages                     none                          inference: no optimizer state to shard
below 7B parameters             ZeRO-2                        weights fit per GPU; shard optimizer
                                                              state and gradients only (fastest)
7B and above, or unknown size   ZeRO-3                        shard weights too (an unknown model
                                                              gets the setting that always fits)
==============================  ============================  ======================================

``offload: true`` adds CPU offload of the optimizer state (ZeRO-2 and ZeRO-3) and of the
parameters (ZeRO-3 only): slower, for when GPU memory is the limit. It is never turned on by
``auto``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from controller.kubernetes.names import LabelValue

DeepSpeedChoice = Literal["auto", "none", "zero2", "zero3"]
ZERO3_FROM_BILLION = 7.0  # 'auto' picks ZeRO-3 at and above this many billion parameters
GRADIENT_CLIPPING = 1.0  # = transformers TrainingArguments.max_grad_norm default (HF checks they match)
ZERO2_BUCKET = 200_000_000  # elements per reduce / all-gather bucket (HF's published ZeRO-2 example)

# Kubernetes resource quantities: "8", "500m", "64Gi", "1.5", "2e3".
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?([eE][0-9]+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


class Resources(BaseModel):
    """Hardware of one stage kind (the experiment's ``resources.default`` / ``.sft`` / ``.rl`` / ``.eval``).

    >>> Resources(gpus_per_node=8, nodes=2, deepspeed="zero3", offload=True).world_size
    16
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)

    gpus_per_node: int = Field(
        0, ge=0, description="GPUs per pod (one pod per node). 0 runs on CPU (only the builtin tiny model)."
    )
    nodes: int = Field(1, ge=1, description="Pods (nodes) of a training job; world size = gpus_per_node x nodes.")
    deepspeed: DeepSpeedChoice = Field(
        "auto",
        description="ZeRO stage: 'auto' (ZeRO-2 below 7B parameters, ZeRO-3 at/above), 'none', 'zero2', 'zero3'.",
    )
    offload: bool = Field(
        False, description="Offload optimizer state (and ZeRO-3 parameters) to CPU memory: slower, fits bigger models."
    )
    cpu: str | None = Field(None, description="CPU request per pod, a Kubernetes quantity (e.g. '32', '500m').")
    memory: str | None = Field(None, description="Memory request per pod, a Kubernetes quantity (e.g. '256Gi').")
    shm_size: str | None = Field(None, description="Size of /dev/shm per pod (default 8Gi per GPU).")
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        description="Node labels the pods must match, e.g. {gpu: h100} (adds to kubernetes.node_selector).",
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Kubernetes tolerations of the pods, e.g. "
        "[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}].",
    )

    @field_validator("cpu", "memory", "shm_size", mode="before")
    @classmethod
    def _quantity(cls, v: Any) -> Any:
        if v is None:
            return v
        s = str(v).strip()
        if not _QUANTITY.match(s):
            raise ValueError(
                f"{v!r} is not a Kubernetes quantity, because it must be a number with an optional unit. "
                "Write e.g. '32', '500m' or '256Gi'"
            )
        return s

    @field_validator("tolerations")
    @classmethod
    def _tolerations(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, t in enumerate(v):
            unknown = sorted(set(t) - _TOLERATION_KEYS)
            if unknown:
                raise ValueError(
                    f"toleration {i} has unknown keys {unknown}, because a toleration takes only "
                    f"{sorted(_TOLERATION_KEYS)}. Remove or rename them"
                )
            if t.get("operator", "Equal") not in ("Equal", "Exists"):
                raise ValueError(f"toleration {i} has operator {t['operator']!r}. Use Equal or Exists")
            if t.get("effect") not in (None, "", "NoSchedule", "PreferNoSchedule", "NoExecute"):
                raise ValueError(
                    f"toleration {i} has effect {t['effect']!r}. Use NoSchedule, PreferNoSchedule or NoExecute"
                )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Resources":
        if self.gpus_per_node == 0 and self.deepspeed in ("zero2", "zero3"):
            raise ValueError(
                f"deepspeed is {self.deepspeed}, but gpus_per_node is 0, because DeepSpeed ZeRO needs GPUs. "
                "Set gpus_per_node >= 1 or deepspeed: none"
            )
        if self.offload and self.deepspeed == "none":
            raise ValueError(
                "offload is true, but deepspeed is none, because only DeepSpeed ZeRO offloads to CPU. "
                "Set deepspeed: auto, zero2 or zero3, or offload: false"
            )
        return self

    @property
    def world_size(self) -> int:
        """Processes of a job: one per GPU, or one per node on CPU."""
        return max(self.gpus_per_node, 1) * self.nodes


def choose_zero_stage(resources: Resources, model_params_billion: float | None, kind: str = "sft") -> int | None:
    """The ZeRO stage (2 or 3) for a stage kind on these resources, or None for no DeepSpeed.

    >>> choose_zero_stage(Resources(gpus_per_node=8), 3.0), choose_zero_stage(Resources(gpus_per_node=8), 7.0)
    (2, 3)
    >>> choose_zero_stage(Resources(gpus_per_node=8, deepspeed="zero3"), 2.0), choose_zero_stage(Resources(), 7.0)
    (3, None)
    """
    if kind == "eval" or resources.deepspeed == "none" or resources.gpus_per_node == 0:
        return None
    if resources.deepspeed == "zero2":
        return 2
    if resources.deepspeed == "zero3":
        return 3
    if model_params_billion is None or model_params_billion >= ZERO3_FROM_BILLION:
        return 3
    return 2


def nominal_hidden_size(model_params_billion: float | None) -> int:
    """A typical hidden size for a decoder of this many parameters (Qwen2/2.5 family), for bucket sizes.

    >>> nominal_hidden_size(3), nominal_hidden_size(7), nominal_hidden_size(None)
    (2048, 3584, 4096)
    """
    if model_params_billion is None:
        return 4096
    for upto, hidden in ((1.0, 1024), (2.5, 1536), (4.5, 2048), (10.0, 3584), (40.0, 5120)):
        if model_params_billion <= upto:
            return hidden
    return 8192


def _zero_optimization(stage: int, offload: bool, model_params_billion: float | None) -> dict[str, Any]:
    if stage == 2:
        zero: dict[str, Any] = {
            "stage": 2,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_scatter": True,
            "allgather_partitions": True,
            "allgather_bucket_size": ZERO2_BUCKET,
            "reduce_bucket_size": ZERO2_BUCKET,
        }
    else:
        # The values transformers derives for "auto" from the hidden size h: h^2, 0.9 h^2, 10 h.
        h = nominal_hidden_size(model_params_billion)
        zero = {
            "stage": 3,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": h * h,
            "stage3_prefetch_bucket_size": int(0.9 * h * h),
            "stage3_param_persistence_threshold": 10 * h,
            "sub_group_size": 1_000_000_000,
            "stage3_max_live_parameters": 1_000_000_000,
            "stage3_max_reuse_distance": 1_000_000_000,
            # Save full 16-bit weights in model/ so from_pretrained loads them without zero_to_fp32.
            "stage3_gather_16bit_weights_on_model_save": True,
        }
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return zero


def render_deepspeed(
    resources: Resources,
    model_params_billion: float | None,
    kind: str,
    per_device_batch: int,
    grad_accum: int,
    world_size: int,
    bf16: bool = True,
    *,
    gradient_clipping: float = GRADIENT_CLIPPING,
) -> dict[str, Any] | None:
    """A concrete DeepSpeed config for one stage, or None when the stage runs without DeepSpeed.

    train_batch_size = per_device_batch x grad_accum x world_size. The trainer must be given the same
    numbers (per_device_train_batch_size, gradient_accumulation_steps, max_grad_norm, bf16):
    transformers refuses a DeepSpeed config that disagrees with its TrainingArguments.

    >>> cfg = render_deepspeed(Resources(gpus_per_node=8, nodes=2), 7.0, "sft", 4, 2, 16)
    >>> cfg["train_batch_size"], cfg["zero_optimization"]["stage"], cfg["bf16"]
    (128, 3, {'enabled': True})
    >>> render_deepspeed(Resources(gpus_per_node=8), 3.0, "eval", 4, 1, 8) is None
    True
    """
    for name, value in (("per_device_batch", per_device_batch), ("grad_accum", grad_accum), ("world_size", world_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} is {value!r}, because it must be a whole number >= 1. Pass a positive integer.")
    if model_params_billion is not None and not (model_params_billion > 0 and math.isfinite(model_params_billion)):
        raise ValueError(
            f"model_params_billion is {model_params_billion!r}, because a model size must be positive. "
            "Pass None if unknown."
        )
    stage = choose_zero_stage(resources, model_params_billion, kind)
    if stage is None:
        return None
    return {
        "train_micro_batch_size_per_gpu": per_device_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": per_device_batch * grad_accum * world_size,
        "gradient_clipping": float(gradient_clipping),
        "bf16": {"enabled": bool(bf16)},
        "fp16": {"enabled": False},
        "zero_optimization": _zero_optimization(stage, resources.offload, model_params_billion),
        # transformers/TRL hand DeepSpeed a torch optimizer (AdamW or any `optim`): allow it.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1000,
        "wall_clock_breakdown": False,
    }


def per_step_sequences(kind: str, params: dict[str, Any]) -> int:
    """Sequences per optimiser step: SFT examples, or RL mini-batch prompts x rollouts per prompt.

    >>> per_step_sequences("rl", {"global_batch_size": 512, "num_generations": 10})   # easyr1: 128-prompt updates
    1280
    """
    if kind == "rl":
        from job_runtime.contract import rl_sequences_per_update

        return rl_sequences_per_update(params)
    return params["global_batch_size"]


def accumulation_steps(global_batch_size: int, per_device_batch: int, world_size: int) -> int:
    """Gradient accumulation steps so that per_device_batch x steps x world_size == global_batch_size.

    >>> accumulation_steps(128, 4, 8)
    4
    >>> accumulation_steps(100, 4, 8)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: global batch size 100 is not a multiple of ... 4 x world size 8 = 32, because ... Use 96 or 128.
    """
    if min(global_batch_size, per_device_batch, world_size) < 1:
        raise ValueError(
            f"batch layout {global_batch_size} / {per_device_batch} / {world_size} has a value below 1, because "
            "global batch, per-device batch and world size must be positive. Fix the batch sizes or resources."
        )
    per_round = per_device_batch * world_size
    if global_batch_size % per_round:
        lower = max(per_round, global_batch_size // per_round * per_round)
        upper = lower + per_round if lower < global_batch_size else lower
        options = f"{lower} or {upper}" if lower != upper else f"{lower}"
        raise ValueError(
            f"global batch size {global_batch_size} is not a multiple of per-device batch {per_device_batch} x "
            f"world size {world_size} = {per_round}, because every optimiser step must see whole micro-batches "
            f"on every GPU. Use {options}."
        )
    return global_batch_size // per_round


# --- model size from a name ------------------------------------------------------------------------

# "7b", "7B", "1.5b", "360m", "8x7b"; not preceded by a letter, digit or '.' (so "qwen2" or "a3b" do
# not count), and not followed by a letter or digit (so "7bit" does not count).
_SIZE = re.compile(r"(?<![a-z0-9.])(?:(\d+)x)?(\d+(?:\.\d+)?)([bm])(?![a-z0-9])", re.IGNORECASE)


def estimate_params_billion(name_or_path: str | None) -> float | None:
    """Parameter count in billions read from a model name or path, or None when it does not say.

    The last path component that names a size wins (so checkpoint folders under a named model work).

    >>> estimate_params_billion("qwen2.5-vl-3b"), estimate_params_billion("Qwen/Qwen2-VL-7B-Instruct")
    (3.0, 7.0)
    >>> estimate_params_billion("s3://b/models/Qwen2.5-VL-72B-Instruct/checkpoint-500")
    72.0
    >>> estimate_params_billion("HuggingFaceTB/SmolVLM-256M-Instruct"), estimate_params_billion("mixtral-8x7b")
    (0.256, 56.0)
    >>> estimate_params_billion("builtin://tiny-qwen2-vl") is None, estimate_params_billion("Qwen3-VL-30B-A3B")
    (True, 30.0)
    """
    if not name_or_path:
        return None
    for part in reversed(re.split(r"[/\\:]+", str(name_or_path))):
        m = _SIZE.search(part)
        if m:
            experts, size, unit = m.groups()
            value = float(size) * (int(experts) if experts else 1)
            return round(value / 1000 if unit.lower() == "m" else value, 6)
    return None
