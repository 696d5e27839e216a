"""DAPO dynamic sampling for TRL's GRPOTrainer (TRL 1.16 has no such option).

A GRPO group whose rollouts all get the same reward has zero advantage: it adds no policy
gradient, only dilutes the batch. Dynamic sampling (DAPO, arXiv 2503.14476) drops such groups and
samples more prompts until every optimiser step sees a full batch of groups with reward variance.

The seam. `GRPOTrainer._prepare_inputs` calls `_generate_and_score_completions(inputs)` once per
generation batch (one optimiser step unless ``num_iterations``/``steps_per_generation`` say
otherwise) and splits what it returns into micro-batches. `DynamicSamplingGRPOTrainer` overrides
only that call:

1. score the batch with TRL's own code (`super()._generate_and_score_completions`), and read the
   gathered per-function rewards it computed (captured in `_calculate_rewards`);
2. keep the groups whose weighted total reward varies; drop the others;
3. while some device still lacks groups, draw a fresh batch of prompts from the training set
   (seeded by seed, step, round and rank, so a resumed run draws the same) and repeat, up to
   ``max_rounds`` generation rounds per step;
4. return exactly the original number of rows per device, rows re-padded and merged.

When ``max_rounds`` is reached before the batch is full, the batch is filled with the
zero-variance groups of the latest rounds (their advantage is 0: they add no policy gradient,
only the KL term when beta > 0), a warning is logged, and ``dynamic_sampling/filled_groups``
counts them. The batch shape never changes, so the optimiser, DeepSpeed and vLLM see what TRL
would have given them.

Logged per generation batch (summed over devices; means over the logging window):
``dynamic_sampling/dropped_groups`` (zero-variance groups dropped), ``dynamic_sampling/resampled_groups``
(groups generated in extra rounds), ``dynamic_sampling/filled_groups`` and ``dynamic_sampling/rounds``.
TRL's own ``frac_reward_zero_std``, ``reward`` etc. average over every round's rollouts, so signal
availability still describes what the policy produced, before filtering.

Every device generates the same number of prompts in every round (vLLM and the reward gather
need equal shapes), and each device's generation batch must hold whole groups.
"""

from __future__ import annotations

import hashlib
import logging
import random
from typing import Any

import torch
from trl import GRPOTrainer
from trl.trainer.utils import nanstd, pad, split_pixel_values_by_grid, unsplit_pixel_values_by_grid

from job_runtime.io.modeling import CheckpointWeightsMixin

log = logging.getLogger(__name__)

DEFAULT_MAX_ROUNDS = 10  # verl's DAPO recipe: max_num_gen_batches = 10

_LEFT = ("prompt_ids", "prompt_mask")  # left-padded prompt side
_RIGHT = (  # right-padded completion side
    "completion_ids",
    "completion_mask",
    "old_per_token_logps",
    "ref_per_token_logps",
    "sampling_per_token_logps",
    "importance_sampling_ratio",
    "tool_mask",
)
_PROMPT_COMPLETION = ("token_type_ids", "mm_token_type_ids")  # (B, P + C): prompt part, then completion part
_SCALARS = ("num_items_in_batch",)


def zero_variance_groups(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Bool per group: True when all rollouts of the group got the same reward (TRL's test).

    >>> zero_variance_groups(torch.tensor([1., 1., 0., 1., 0.5, 0.5]), 2).tolist()
    [True, False, True]
    """
    grouped = rewards.view(-1, num_generations)
    std = nanstd(grouped, dim=1)
    std = torch.nan_to_num(std, nan=0.0)
    return torch.isclose(std, torch.zeros_like(std))


def select_rows(batch: dict[str, Any], rows: list[int]) -> dict[str, Any]:
    """The given rows of a (pixel-values-split) scored batch; scalars are kept as they are.

    >>> b = {"advantages": torch.tensor([1., 2., 3.]), "num_images": [1, 1, 1], "num_items_in_batch": torch.tensor(9)}
    >>> out = select_rows(b, [2, 0])
    >>> out["advantages"].tolist(), out["num_images"], int(out["num_items_in_batch"])
    ([3.0, 1.0], [1, 1], 9)
    """
    n = len(batch["prompt_ids"]) if "prompt_ids" in batch else len(batch["advantages"])
    index = torch.tensor(rows, dtype=torch.long)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == n and key not in _SCALARS:
            out[key] = value[index.to(value.device)]
        elif isinstance(value, list) and len(value) == n:
            out[key] = [value[i] for i in rows]
        else:
            out[key] = value
    return out


def concat_batches(batches: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Concatenate scored batches row-wise, re-padding prompt sides left and completion sides right.

    >>> a = {"prompt_ids": torch.tensor([[5, 6]]), "completion_ids": torch.tensor([[7]]), "advantages": torch.tensor([1.])}
    >>> b = {"prompt_ids": torch.tensor([[4]]), "completion_ids": torch.tensor([[8, 9]]), "advantages": torch.tensor([2.])}
    >>> out = concat_batches([a, b], pad_token_id=0)
    >>> out["prompt_ids"].tolist(), out["completion_ids"].tolist()
    ([[5, 6], [0, 4]], [[7, 0], [8, 9]])
    """
    if len(batches) == 1:
        return batches[0]
    out: dict[str, Any] = {}
    first = batches[0]
    for key, value in first.items():
        values = [b[key] for b in batches]
        if value is None:
            out[key] = None
        elif key in _SCALARS or (isinstance(value, torch.Tensor) and value.ndim == 0):
            out[key] = value
        elif isinstance(value, list):
            out[key] = [v for vs in values for v in vs]
        elif key in _LEFT:
            fill = pad_token_id if key == "prompt_ids" else 0
            out[key] = _pad_rows(values, fill, "left")
        elif key in _RIGHT:
            fill = pad_token_id if key == "completion_ids" else (1 if key == "tool_mask" else 0)
            out[key] = _pad_rows(values, fill, "right")
        elif key in _PROMPT_COMPLETION:
            prompt_lens = [b["prompt_ids"].shape[1] for b in batches]
            prompt_part = _pad_rows([v[:, :p] for v, p in zip(values, prompt_lens)], 0, "left")
            completion_part = _pad_rows([v[:, p:] for v, p in zip(values, prompt_lens)], 0, "right")
            out[key] = torch.cat([prompt_part, completion_part], dim=1)
        elif isinstance(value, torch.Tensor):
            shapes = {tuple(v.shape[1:]) for v in values}
            if len(shapes) != 1:
                raise ValueError(
                    f"Dynamic sampling cannot merge the batch field '{key}', because its rows have different "
                    f"shapes {sorted(shapes)} across generation rounds. Turn dynamic_sampling off for this model."
                )
            out[key] = torch.cat(values, dim=0)
        else:
            out[key] = value
    return out


def _pad_rows(tensors: list[torch.Tensor], fill: float, side: str) -> torch.Tensor:
    rows = [row for t in tensors for row in t]
    return pad(rows, padding_value=fill, padding_side=side)


def draw_indices(dataset_size: int, count: int, seed: int, step: int, rank: int, round_: int) -> list[int]:
    """`count` prompt indices for an extra round, a pure function of its arguments (so a resumed
    run draws the same prompts).

    >>> draw_indices(100, 3, 0, 5, 0, 1) == draw_indices(100, 3, 0, 5, 0, 1)
    True
    """
    digest = hashlib.sha256(f"dynamic-sampling:{seed}:{step}:{rank}:{round_}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    if count <= dataset_size:
        return rng.sample(range(dataset_size), count)
    return [rng.randrange(dataset_size) for _ in range(count)]


class DynamicSamplingGRPOTrainer(CheckpointWeightsMixin, GRPOTrainer):
    """GRPOTrainer with optional DAPO dynamic sampling; with ``dynamic_sampling=False`` it is TRL's
    (plus modeling's `CheckpointWeightsMixin`, so a resumed run continues from the checkpoint's weights).

    >>> trainer = DynamicSamplingGRPOTrainer(model, reward_funcs, args=cfg, train_dataset=ds,
    ...                                      dynamic_sampling=True, max_rounds=10)   # doctest: +SKIP
    """

    def __init__(self, *args: Any, dynamic_sampling: bool = False, max_rounds: int = DEFAULT_MAX_ROUNDS, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.dynamic_sampling = dynamic_sampling
        self.max_rounds = max(1, int(max_rounds))
        self._captured_rewards: torch.Tensor | None = None
        if dynamic_sampling and not hasattr(self.train_dataset, "__getitem__"):
            raise ValueError(
                "Dynamic sampling needs a map-style training dataset, because it draws extra prompts by index, "
                "but the dataset is streamed (IterableDataset). Load it map-style or turn dynamic_sampling off."
            )
        local_batch = self.args.per_device_train_batch_size * self.args.steps_per_generation
        if dynamic_sampling and local_batch % self.num_generations:
            raise ValueError(
                f"Dynamic sampling needs whole groups on every device, because groups are kept or dropped per "
                f"device, but the per-device generation batch ({self.args.per_device_train_batch_size} x "
                f"{self.args.steps_per_generation} = {local_batch} completions) is not a multiple of "
                f"num_generations ({self.num_generations}). Choose per_device_batch_size so that it is."
            )

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # type: ignore[override]
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._captured_rewards = rewards_per_func
        return rewards_per_func

    def _global_sum(self, values: list[int]) -> list[int]:
        t = torch.tensor(values, dtype=torch.long, device=self.accelerator.device)
        return self.accelerator.gather(t.unsqueeze(0)).sum(dim=0).tolist()

    def _global_max(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.long, device=self.accelerator.device)
        return int(self.accelerator.gather(t).max().item())

    def _generate_and_score_completions(self, inputs):  # type: ignore[override]
        if not self.dynamic_sampling or not self.model.training:
            return super()._generate_and_score_completions(inputs)
        g = self.num_generations
        need = len(inputs) // g
        rank = self.accelerator.process_index
        rounds: list[dict[str, Any]] = []  # scored, pixel-split batches
        informative: list[tuple[int, int]] = []  # (round, local group)
        flat: list[tuple[int, int]] = []  # zero-variance groups, in generation order
        dropped = resampled = 0
        batch_inputs = inputs
        for round_ in range(self.max_rounds):
            scored = split_pixel_values_by_grid(super()._generate_and_score_completions(batch_inputs))
            rewards = (self._captured_rewards * self.reward_weights.to(self._captured_rewards.device)).nansum(dim=1)
            rewards[torch.isnan(self._captured_rewards).all(dim=1)] = torch.nan
            local = rewards[rank * len(batch_inputs) : (rank + 1) * len(batch_inputs)]
            zero = zero_variance_groups(local, g).tolist()
            rounds.append(scored)
            for grp, is_zero in enumerate(zero):
                (flat if is_zero else informative).append((len(rounds) - 1, grp))
            dropped += sum(zero)
            missing = self._global_max(max(0, need - len(informative)))
            if missing == 0 or round_ == self.max_rounds - 1:
                break
            idx = draw_indices(len(self.train_dataset), need, self.args.seed, self.state.global_step, rank, round_ + 1)
            batch_inputs = [self.train_dataset[i] for i in idx for _ in range(g)]
            resampled += need
        chosen = informative[:need]
        filled = flat[-(need - len(chosen)) :] if len(chosen) < need else []
        chosen = sorted(chosen + filled)
        # Dropped = zero-variance groups generated and not trained on.
        dropped -= len(filled)
        parts = []
        for r, scored in enumerate(rounds):
            rows = [grp * g + k for (rr, grp) in chosen if rr == r for k in range(g)]
            if rows:
                parts.append(select_rows(scored, rows))
        merged = unsplit_pixel_values_by_grid(concat_batches(parts, self._tokenizer.pad_token_id))
        mask = merged["completion_mask"] if merged.get("tool_mask") is None else merged["completion_mask"] * merged["tool_mask"]
        merged["num_items_in_batch"] = self.accelerator.gather(mask.sum()).sum()
        d, rs, f = self._global_sum([dropped, resampled, len(filled)])
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/dropped_groups"].append(float(d))
        metrics["dynamic_sampling/resampled_groups"].append(float(rs))
        metrics["dynamic_sampling/filled_groups"].append(float(f))
        metrics["dynamic_sampling/rounds"].append(float(len(rounds)))
        if f and self.accelerator.is_main_process:
            log.warning(
                "dynamic sampling: after %d generation rounds (max_rounds) at step %d, %d groups still had no "
                "reward variance; the batch is filled with them (zero advantage, no policy gradient). The policy "
                "is starved of signal: check the reward, or raise max_rounds.",
                len(rounds),
                self.state.global_step + 1,
                f,
            )
        return merged
