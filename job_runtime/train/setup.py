"""Setup shared by the SFT and RL stages: world size, batch arithmetic, TRL pass-through checks, frozen modules."""

from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any

from job_runtime.contract import RecipeError, divide_batch


class TrainerConfigError(ValueError):
    """A training parameter is unusable; the message names it and what to do."""


def launcher_world_size() -> int:
    """WORLD_SIZE from the launcher (torchrun / the training operator), else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def accumulation(total: int, per_device: int, world_size: int, what: str, why: str) -> int:
    """Accumulation steps so that per_device x steps x world_size == total.

    >>> accumulation(128, 4, 8, "sft.global_batch_size", "")
    4
    >>> accumulation(100, 4, 8, "sft.global_batch_size", "because global batch = per-device batch x accumulation x world size")
    Traceback (most recent call last):
    ...
    job_runtime.train.setup.TrainerConfigError: sft.global_batch_size 100 does not divide into per_device_batch_size x world_size = 4 x 8 = 32, because global batch = per-device batch x accumulation x world size. Use a multiple of 32 (e.g. 96 or 128), or change per_device_batch_size.
    """
    try:
        return divide_batch(total, per_device, world_size, what, why)
    except RecipeError as e:
        raise TrainerConfigError(str(e)) from None


def check_trl_overrides(trl: dict[str, Any], config_cls: type, section: str) -> None:
    """Every key under `<section>.trl` must be a field of the TRL config dataclass.

    >>> from trl import SFTConfig
    >>> check_trl_overrides({"weight_decay": 0.1}, SFTConfig, "sft")
    >>> check_trl_overrides({"weight_decai": 0.1}, SFTConfig, "sft")
    Traceback (most recent call last):
    ...
    job_runtime.train.setup.TrainerConfigError: sft.trl.weight_decai is not a trl.SFTConfig field, because TRL's SFTConfig has no option of that name. Fix the spelling (did you mean weight_decay?) or remove it.
    """
    fields = {f.name for f in dataclasses.fields(config_cls)}
    name = config_cls.__name__
    for key in trl:
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise TrainerConfigError(
                f"{section}.trl.{key} is not a trl.{name} field, because TRL's {name} has no option of that name. "
                f"Fix the spelling{hint} or remove it."
            )


# LLaMA-Factory src/llamafactory/model/model_utils/visual.py, model types qwen2_vl and qwen2_5_vl:
# freeze_vision_tower freezes parameters whose names contain a vision key, freeze_multi_modal_projector
# those containing the projector key (the patch merger).
VISION_TOWER_KEYS = ("visual.patch_embed", "visual.blocks")
PROJECTOR_KEYS = ("visual.merger",)


def freeze_modules(model: Any, vision_tower: bool, projector: bool) -> list[str]:
    """Set requires_grad=False on the vision tower and/or projector, as LLaMA-Factory does; the
    names of the frozen parameters (none found with a freeze asked for: an error naming the model).
    """
    keys = (VISION_TOWER_KEYS if vision_tower else ()) + (PROJECTOR_KEYS if projector else ())
    frozen = []
    for name, param in model.named_parameters():
        if any(k in name for k in keys):
            param.requires_grad_(False)
            frozen.append(name)
    if keys and not frozen:
        raise TrainerConfigError(
            f"sft.freeze_vision_tower / freeze_multi_modal_projector found no parameter named like {list(keys)} in "
            f"{type(model).__name__}, because only Qwen2-VL-style models (visual.blocks, visual.merger) are known. "
            "Set both to false for this model."
        )
    return frozen
