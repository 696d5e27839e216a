"""TRL's GRPOTrainer made to update the policy as EasyR1 does, with EasyR1's DAPO online filter.

Two things TRL 1.16 lacks, in one trainer (`DynamicSamplingGRPOTrainer`):

**One loss normaliser per optimiser update.** With ``steps_per_generation`` > ``gradient_accumulation_steps``
TRL generates one rollout batch and makes several optimiser updates from it (EasyR1: 512 prompts,
mini-batches of 128, so 4 updates, the later ones off-policy against the old log-probs TRL
computes at generation). EasyR1 averages each update's loss over the tokens of *that* mini-batch
on all devices (verl/workers/actor/dp_actor.py: ``loss * response_tokens * world_size /
total_response_tokens``). TRL's ``loss_type="dapo"`` divides by the rollout batch's token count
split evenly across updates, so a mini-batch with long responses weighs more than EasyR1 lets it.
`update_normalisers` sets each micro-batch's ``num_items_in_batch`` so that TRL's formula
(``num_items_in_batch / processes x accumulation / steps_per_generation``) equals the tokens of its
own update on all devices, divided by the processes: exactly EasyR1's token mean.

**Online filtering** (EasyR1 ``algorithm.online_filtering``, ray_trainer.py ``_make_batch_data``):
after TRL scores a rollout batch, a group (the rollouts of one prompt) is kept when the mean of its
``filter_key`` score lies strictly between ``filter_low`` and ``filter_high`` (`keep_groups`):
``overall`` = the weighted total reward TRL computed (EasyR1's default), ``accuracy`` = the accuracy
reward alone (the DAPO paper's rule: some but not all rollouts correct). While some device lacks
groups, ``mini_rollout_batch_size`` more prompts (over all devices) are drawn from the training set
(seeded by seed, step, try and rank, so a resumed run draws the same), scored and filtered; the
first kept groups in generation order fill the batch, as EasyR1 truncates to ``rollout_batch_size``.
Each generation of ``mini_rollout_batch_size`` prompts is one try; after ``max_try_make_batch`` tries
with the batch still short the stage fails with `FilterExhausted`, as EasyR1 raises.

The seam: `GRPOTrainer._prepare_inputs` calls ``_generate_and_score_completions`` once per rollout
batch and splits the result into micro-batches; we override that call (filtering) and post-process
the split (normalisers). The batch shape never changes, so the optimiser, DeepSpeed and vLLM see
what TRL would have given them. Every device generates the same number of prompts per try (vLLM
and the reward gather need equal shapes), and filters its own share of TRL's gathered rewards.

Logged per rollout batch (summed over devices): ``dynamic_sampling/dropped_groups`` (groups the
filter removed), ``dynamic_sampling/resampled_groups`` (groups generated in extra tries),
``dynamic_sampling/rounds`` (generation calls). TRL's ``frac_reward_zero_std``, ``reward`` etc.
average over every round's rollouts, so signal availability still describes what the policy
produced, before filtering.
"""

from __future__ import annotations

import hashlib
import logging
import random
from typing import Any, Callable

import torch
from trl import GRPOTrainer
from trl.trainer.utils import pad, split_pixel_values_by_grid, unsplit_pixel_values_by_grid

from job_runtime.io.modeling import CheckpointWeightsMixin

log = logging.getLogger(__name__)

DEFAULT_MAX_TRY = 20  # EasyR1 examples/config.yaml: trainer.max_try_make_batch


class FilterExhausted(RuntimeError):
    """Online filtering could not fill a rollout batch within max_try_make_batch generations."""

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


BOUND_TOLERANCE = 1e-6  # TRL's rewards are float32: a mean within this of a bound counts as on it


def keep_groups(scores: torch.Tensor, num_generations: int, low: float, high: float) -> list[bool]:
    """EasyR1's online filter: keep a group when low < mean score < high (a NaN score: dropped).
    EasyR1 averages exact doubles (0.99 is not < 0.99); TRL's scores are float32, so a mean within
    `BOUND_TOLERANCE` of a bound is treated as on it.

    >>> keep_groups(torch.tensor([0., 0., 1., 0., 1., 1., .1, .1]), 2, 0.01, 0.99)
    [False, True, False, True]
    """
    means = scores.double().view(-1, num_generations).mean(dim=1)
    return [bool(low + BOUND_TOLERANCE < m < high - BOUND_TOLERANCE) for m in means.tolist()]


def update_normalisers(chunks: list[dict[str, Any]], accumulation: int, steps_per_generation: int,
                       global_sum: Callable[[list[int]], list[int]]) -> list[int]:
    """Set each micro-batch's ``num_items_in_batch`` so TRL's dapo loss is EasyR1's token mean over
    its own optimiser update (see the module doc); returns the tokens of each update on all devices.

    >>> m = lambda *lens: {"completion_mask": torch.tensor([[1] * n + [0] * (4 - n) for n in lens])}
    >>> chunks = [m(4, 4), m(1, 1), m(2, 2), m(3, 1)]          # 4 micro-batches, 2 per update
    >>> update_normalisers(chunks, 2, 4, lambda xs: xs)         # one device
    [10, 8]
    >>> [float(c["num_items_in_batch"]) for c in chunks]       # x steps_per_generation / accumulation
    [20.0, 20.0, 16.0, 16.0]
    """
    local = []
    for c in chunks:
        mask = c["completion_mask"] if c.get("tool_mask") is None else c["completion_mask"] * c["tool_mask"]
        local.append(int(mask.sum()))
    updates = [sum(local[k : k + accumulation]) for k in range(0, len(chunks), accumulation)]
    totals = global_sum(updates)
    for i, c in enumerate(chunks):
        device = c["completion_mask"].device
        c["num_items_in_batch"] = torch.tensor(totals[i // accumulation] * steps_per_generation / accumulation,
                                               dtype=torch.float32, device=device)
    return totals


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
    """GRPOTrainer with EasyR1's per-update loss normaliser and, optionally, its online filter
    (plus modeling's `CheckpointWeightsMixin`, so a resumed run continues from the checkpoint's weights).

    >>> trainer = DynamicSamplingGRPOTrainer(model, reward_funcs, args=cfg, train_dataset=ds, online_filtering=True,
    ...     filter_key="overall", filter_low=0.01, filter_high=0.99, chunk=128, max_try=20)   # doctest: +SKIP
    """

    def __init__(self, *args: Any, online_filtering: bool = False, filter_key: str = "overall",
                 filter_low: float = 0.01, filter_high: float = 0.99, chunk: int | None = None,
                 max_try: int = DEFAULT_MAX_TRY, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.online_filtering = online_filtering
        self.filter_key, self.filter_low, self.filter_high = filter_key, filter_low, filter_high
        self.max_try = max(1, int(max_try))
        self._captured_rewards: torch.Tensor | None = None
        world = self.accelerator.num_processes
        rollout_prompts = self.args.generation_batch_size // self.num_generations
        self.chunk = int(chunk or rollout_prompts)
        if not online_filtering:
            return
        if not hasattr(self.train_dataset, "__getitem__"):
            raise ValueError(
                "Online filtering needs a map-style training dataset, because it draws extra prompts by index, "
                "but the dataset is streamed (IterableDataset). Load it map-style or turn online_filtering off."
            )
        local_batch = self.args.per_device_train_batch_size * self.args.steps_per_generation
        if local_batch % self.num_generations or self.chunk % world:
            raise ValueError(
                f"Online filtering needs whole groups on every device, because groups are kept or dropped per "
                f"device, but the per-device rollout batch ({local_batch} completions) is not a multiple of "
                f"num_generations ({self.num_generations}) or mini_rollout_batch_size ({self.chunk}) is not a "
                f"multiple of the {world} devices. Choose per_device_batch_size and mini_rollout_batch_size so they are."
            )
        if filter_key == "accuracy" and "accuracy_reward" not in self.reward_func_names:
            raise ValueError(
                "filter_key 'accuracy' needs the accuracy reward, because the filter averages it per group, but "
                f"the rewards are {self.reward_func_names}. Use filter_key: overall."
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

    def _prepare_inputs(self, generation_batch):  # type: ignore[override]
        if not self.model.training:
            return super()._prepare_inputs(generation_batch)
        fresh = self._step % (self.args.steps_per_generation * self.num_iterations) == 0 or self._buffered_inputs is None
        inputs = super()._prepare_inputs(generation_batch)  # one of self._buffered_inputs
        if fresh:
            update_normalisers(self._buffered_inputs, self.args.gradient_accumulation_steps,
                               self.args.steps_per_generation, self._global_sum)
        return inputs

    def _filter_scores(self) -> torch.Tensor:
        """Per-row scores of the latest scoring, gathered over devices: the weighted total or the accuracy."""
        captured = self._captured_rewards
        if self.filter_key == "accuracy":
            return captured[:, self.reward_func_names.index("accuracy_reward")]
        total = (captured * self.reward_weights.to(captured.device)).nansum(dim=1)
        total[torch.isnan(captured).all(dim=1)] = torch.nan
        return total

    def _generate_and_score_completions(self, inputs):  # type: ignore[override]
        if not self.online_filtering or not self.model.training:
            return super()._generate_and_score_completions(inputs)
        g, world, rank = self.num_generations, self.accelerator.num_processes, self.accelerator.process_index
        need = len(inputs) // g
        rounds: list[dict[str, Any]] = []  # scored, pixel-split batches
        kept: list[tuple[int, int]] = []  # (round, local group)
        dropped = resampled = 0
        tries = 0.0
        batch_inputs = inputs
        while True:
            scored = split_pixel_values_by_grid(super()._generate_and_score_completions(batch_inputs))
            scores = self._filter_scores()
            local = scores[rank * len(batch_inputs) : (rank + 1) * len(batch_inputs)]
            keep = keep_groups(local, g, self.filter_low, self.filter_high)
            rounds.append(scored)
            kept += [(len(rounds) - 1, grp) for grp, k in enumerate(keep) if k]
            dropped += keep.count(False)
            tries += len(batch_inputs) // g * world / self.chunk
            missing = self._global_max(max(0, need - len(kept)))
            if missing == 0:
                break
            if tries >= self.max_try - 1e-9:
                raise FilterExhausted(
                    f"online filtering kept {len(kept)} of the {need} groups this device needs after "
                    f"{int(round(tries))} generations of {self.chunk} prompts (max_try_make_batch), because too few "
                    f"prompts give rollouts whose mean {self.filter_key} score lies in ({self.filter_low}, "
                    f"{self.filter_high}): the policy gets (almost) all of them right or all wrong. EasyR1 stops here "
                    "too. Raise rl.max_try_make_batch, change rl.filter_key, or train with grpo."
                )
            per_device = self.chunk // world
            idx = draw_indices(len(self.train_dataset), per_device, self.args.seed, self.state.global_step, rank,
                               len(rounds))
            batch_inputs = [self.train_dataset[i] for i in idx for _ in range(g)]
            resampled += per_device
        chosen = sorted(kept[:need])
        parts = []
        for r, scored in enumerate(rounds):
            rows = [grp * g + k for (rr, grp) in chosen if rr == r for k in range(g)]
            if rows:
                parts.append(select_rows(scored, rows))
        merged = unsplit_pixel_values_by_grid(concat_batches(parts, self._tokenizer.pad_token_id))
        d, rs = self._global_sum([dropped, resampled])
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/dropped_groups"].append(float(d))
        metrics["dynamic_sampling/resampled_groups"].append(float(rs))
        metrics["dynamic_sampling/rounds"].append(float(len(rounds)))
        return merged
