"""Setup shared by the SFT and RL stages: world size, batch arithmetic, TRL pass-through checks."""

from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any


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
    per_pass = per_device * world_size
    if total % per_pass:
        lower, upper = total // per_pass * per_pass, (total // per_pass + 1) * per_pass
        examples = f"{lower} or {upper}" if lower else f"{upper}"
        raise TrainerConfigError(
            f"{what} {total} does not divide into per_device_batch_size x world_size = {per_device} x {world_size} = "
            f"{per_pass}, {why}. Use a multiple of {per_pass} (e.g. {examples}), or change per_device_batch_size."
        )
    return total // per_pass


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
