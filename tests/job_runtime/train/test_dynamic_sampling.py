"""EasyR1's online filter and per-update loss normaliser on real TRL GRPO training of the tiny
Qwen2-VL (CPU, a few steps), and as pure functions on constructed groups.

In the training tests the reward gives every rollout of a prompt with an even addend ("Add 4.")
the score 1.0 (a group mean of 1: EasyR1's filter drops it) and a distinct score in (0, 1) to the
rollouts of the others, so we know exactly which groups the filter must keep.
"""

from __future__ import annotations

import hashlib
import logging
import re

import pytest
import torch

from job_runtime.train.dynamic_sampling import concat_batches, keep_groups, select_rows, update_normalisers

ADD = re.compile(r"Add (\d+)\.")


# Constructed groups of 10 rollouts: (accuracy per rollout, format per rollout), and what EasyR1's
# filter (filter_key overall = 0.9 x accuracy + 0.1 x format, kept when 0.01 < mean < 0.99) and the
# DAPO paper's (filter_key accuracy: some but not all correct) decide. Written out by hand from
# EasyR1 ray_trainer.py _make_batch_data, not computed by the code under test.
GROUPS = [
    # name,                          accuracy,        format,           easyr1, dapo paper, zero-variance rule
    ("all wrong, no format", [0] * 10, [0] * 10, False, False, False),
    ("all wrong, all formatted", [0] * 10, [1] * 10, True, False, False),  # mean 0.1: kept, advantage 0
    ("all wrong, one formatted", [0] * 10, [1] + [0] * 9, False, False, True),  # mean 0.01: not > 0.01
    ("all wrong, two formatted", [0] * 10, [1, 1] + [0] * 8, True, False, True),  # mean 0.02
    ("all right, all formatted", [1] * 10, [1] * 10, False, False, False),
    ("all right, one unformatted", [1] * 10, [0] + [1] * 9, False, False, True),  # mean 0.99: not < 0.99
    ("all right, two unformatted", [1] * 10, [0, 0] + [1] * 8, True, False, True),  # mean 0.98
    ("all right, none formatted", [1] * 10, [0] * 10, True, False, False),  # mean 0.9: kept, advantage 0
    ("one right, formatted", [1] + [0] * 9, [1] * 10, True, True, True),
    ("nine right, formatted", [1] * 9 + [0], [1] * 10, True, True, True),
    ("half right, unformatted", [1] * 5 + [0] * 5, [0] * 10, True, True, True),
]


@pytest.mark.parametrize("name,acc,fmt,easyr1,paper,zero_var", GROUPS, ids=[g[0] for g in GROUPS])
def test_filter_keeps_and_drops_what_easyr1_and_the_dapo_paper_would(name, acc, fmt, easyr1, paper, zero_var):
    acc_t, fmt_t = torch.tensor(acc, dtype=torch.float32), torch.tensor(fmt, dtype=torch.float32)
    overall = 0.9 * acc_t + 0.1 * fmt_t
    assert keep_groups(overall, 10, 0.01, 0.99) == [easyr1]
    assert keep_groups(acc_t, 10, 0.01, 0.99) == [paper]
    # sftrl's former rule (drop zero-variance groups) differs from EasyR1's on exactly these rows:
    assert (bool(overall.std() > 1e-6) == zero_var) and (zero_var != easyr1) == (name in DIFFERS_FROM_ZERO_VARIANCE)


DIFFERS_FROM_ZERO_VARIANCE = {
    "all wrong, all formatted", "all wrong, one formatted", "all right, one unformatted", "all right, none formatted",
}


def test_filter_on_a_whole_batch_and_unscorable_rows():
    scores = torch.tensor([0.0, 0.0, 1.0, 0.0, float("nan"), 1.0, 0.5, 0.5])
    assert keep_groups(scores, 2, 0.01, 0.99) == [False, True, False, True]  # a NaN row drops its group


def test_update_normalisers_make_trl_dapo_loss_the_token_mean_of_each_update():
    """TRL divides each micro-batch loss by num_items_in_batch / processes x accumulation /
    steps_per_generation; after update_normalisers that is the update's tokens on all devices /
    processes, so summed over an update's micro-batches and averaged over processes (DDP) the loss
    is the token mean of that update, EasyR1's loss_avg_mode token."""
    def chunk(lengths):
        return {"completion_mask": torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])}

    # Two devices, 4 micro-batches each, 2 micro-batches per update: 2 updates per rollout batch.
    dev = [[chunk([6, 1]), chunk([2, 2]), chunk([5, 5]), chunk([1, 1])],
           [chunk([3, 3]), chunk([6, 6]), chunk([1, 0]), chunk([2, 4])]]
    local = [[int(c["completion_mask"].sum()) for c in d] for d in dev]
    want = [sum(local[r][k] for r in range(2) for k in (0, 1)), sum(local[r][k] for r in range(2) for k in (2, 3))]

    def all_ranks_sum(values_by_rank):
        return [sum(v) for v in zip(*values_by_rank)]

    per_rank_updates = [[sum(d[0:2]), sum(d[2:4])] for d in local]
    for d in dev:
        totals = update_normalisers(d, 2, 4, lambda xs: all_ranks_sum(per_rank_updates))
        assert totals == want
    processes, accumulation, spg = 2, 2, 4
    for d in dev:
        for i, c in enumerate(d):
            normaliser = float(c["num_items_in_batch"]) / processes * accumulation / spg  # TRL's dapo formula
            assert normaliser * processes == want[i // 2]


def test_merge_repads_prompt_left_completion_right_and_keeps_images_aligned():
    a = {
        "prompt_ids": torch.tensor([[1, 2, 3], [4, 5, 6]]),
        "prompt_mask": torch.ones(2, 3, dtype=torch.long),
        "completion_ids": torch.tensor([[7, 0], [8, 9]]),
        "completion_mask": torch.tensor([[1, 0], [1, 1]]),
        "mm_token_type_ids": torch.tensor([[0, 1, 0, 0, 0], [0, 1, 0, 0, 0]]),
        "advantages": torch.tensor([0.5, -0.5]),
        "pixel_values": [torch.full((4, 2), 1.0), torch.full((4, 2), 2.0)],
        "image_grid_thw": [torch.tensor([[1, 2, 2]]), torch.tensor([[1, 2, 2]])],
        "num_images": [1, 1],
        "num_items_in_batch": torch.tensor(3),
    }
    b = {
        "prompt_ids": torch.tensor([[9, 9]]),
        "prompt_mask": torch.ones(1, 2, dtype=torch.long),
        "completion_ids": torch.tensor([[5, 5, 5]]),
        "completion_mask": torch.tensor([[1, 1, 1]]),
        "mm_token_type_ids": torch.tensor([[1, 0, 0, 0, 0]]),
        "advantages": torch.tensor([1.0]),
        "pixel_values": [torch.full((4, 2), 3.0)],
        "image_grid_thw": [torch.tensor([[1, 2, 2]])],
        "num_images": [1],
        "num_items_in_batch": torch.tensor(3),
    }
    out = concat_batches([select_rows(a, [1]), b], pad_token_id=0)
    assert out["prompt_ids"].tolist() == [[4, 5, 6], [0, 9, 9]]
    assert out["prompt_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert out["completion_ids"].tolist() == [[8, 9, 0], [5, 5, 5]]
    assert out["completion_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    # (B, P + C): the prompt part is left-padded, the completion part right-padded.
    assert out["mm_token_type_ids"].tolist() == [[0, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]]
    assert out["advantages"].tolist() == [-0.5, 1.0]
    assert [p[0, 0].item() for p in out["pixel_values"]] == [2.0, 3.0]
    assert out["num_images"] == [1, 1]


def _rows(n: int):
    from job_runtime.builtin import synthetic
    from job_runtime.prompts import format_question

    return [
        {
            "image": r["image"],
            "prompt": [{"role": "user", "content": format_question(r["question"])}],
            "answer": r["answer"],
            "constant": r["addend"] % 2 == 0,
        }
        for r in synthetic.generate("rl", n, seed=0)
    ]


def _signal_reward(completions, constant, **kwargs):
    """1.0 for 'constant' prompts; otherwise a distinct pseudo-random value in (0, 1) per completion text."""
    out = []
    for c, const in zip(completions, constant):
        text = c[0]["content"] if isinstance(c, list) else c
        out.append(1.0 if const else int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 2**32)
    return out


def accuracy_reward(completions, constant, **kwargs):
    """Named like the study's accuracy reward: 1 on every rollout of a 'constant' prompt, else 0/1 by text."""
    out = []
    for c, const in zip(completions, constant):
        text = c[0]["content"] if isinstance(c, list) else c
        out.append(1.0 if const else float(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 2))
    return out


def _flat_reward(completions, **kwargs):
    return [1.0] * len(completions)


def _train(tmp_path, reward, online: bool = True, steps: int | None = None, filter_key: str = "overall",
           max_try: int = 20, global_batch: int = 4, mini_batch: int = 2, per_device: int = 4, record=None):
    """Train with the easyr1 recipe's GRPOConfig (resolve_rl) on 16 synthetic prompts."""
    from datasets import Dataset
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration
    from trl import GRPOConfig

    from job_runtime.builtin.tiny_model import tiny_model_path
    from job_runtime.contract import RLParams
    from job_runtime.recipes import resolve_rl
    from job_runtime.train.dynamic_sampling import DynamicSamplingGRPOTrainer

    path = tiny_model_path()
    processor = AutoProcessor.from_pretrained(path)
    model = Qwen2VLForConditionalGeneration.from_pretrained(path)
    params = RLParams(global_batch_size=global_batch, mini_batch_size=mini_batch, per_device_batch_size=per_device,
                      num_generations=4, max_completion_length=8, learning_rate=1e-4, epochs=1)
    recipe = resolve_rl(params, "dapo" if online else "grpo", 1)
    kwargs = {**recipe.trl_kwargs(), "output_dir": str(tmp_path / "trainer"), "save_strategy": "no", "report_to": [],
              "use_cpu": True, "seed": 0}
    if steps:
        kwargs["max_steps"] = steps
    args = GRPOConfig(**kwargs)
    seen: list[dict] = []

    class Recording(DynamicSamplingGRPOTrainer):
        generations = 0

        def _generate_and_score_completions(self, inputs):
            if self.model.training and not getattr(self, "_inside", False):
                self.generations += 1
                self._inside = True
                try:
                    return super()._generate_and_score_completions(inputs)
                finally:
                    self._inside = False
            return super()._generate_and_score_completions(inputs)

        def _compute_loss(self, model, inputs):
            texts = processor.tokenizer.batch_decode(inputs["prompt_ids"], skip_special_tokens=True)
            seen.append({"addends": [int(ADD.search(t).group(1)) for t in texts], "advantages": inputs["advantages"],
                         "nib": float(inputs["num_items_in_batch"]), "tokens": int(inputs["completion_mask"].sum()),
                         "step": self.state.global_step})
            if record is not None:
                record(self, model, inputs)
            return super()._compute_loss(model, inputs)

    trainer = Recording(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=Dataset.from_list(_rows(16)),
        processing_class=processor,
        online_filtering=online,
        filter_key=filter_key,
        chunk=global_batch,
        max_try=max_try,
    )
    trainer.train()
    history = [h for h in trainer.state.log_history if "dynamic_sampling/dropped_groups" in h]
    return seen, history, trainer


@pytest.mark.slow
def test_filtered_groups_never_reach_the_optimiser_and_the_batch_stays_full(tmp_path):
    seen, history, trainer = _train(tmp_path, _signal_reward, steps=4)  # 2 rollout batches x 2 updates x 2 micro
    assert len(seen) == 8 and trainer.generations == 2
    for batch in seen:
        assert len(batch["addends"]) == 4  # full micro-batch: 4 rollouts
        assert all(a % 2 == 1 for a in batch["addends"]), batch["addends"]  # no group with mean 1
    assert len(history) >= 1
    for h in history:
        assert h["dynamic_sampling/dropped_groups"] >= 1  # the first draw held even-addend prompts
        assert h["dynamic_sampling/resampled_groups"] >= 4  # so another chunk of 4 prompts was drawn
        assert h["frac_reward_zero_std"] > 0  # logged before filtering: signal availability is honest


@pytest.mark.slow
def test_filter_key_accuracy_keeps_what_the_dapo_paper_keeps(tmp_path):
    seen, _, _ = _train(tmp_path, accuracy_reward, steps=2, filter_key="accuracy")
    for batch in seen:
        assert all(a % 2 == 1 for a in batch["addends"]), batch["addends"]  # all-correct groups are dropped


@pytest.mark.slow
def test_a_batch_that_cannot_be_filled_fails_after_max_try_make_batch(tmp_path):
    from job_runtime.train.dynamic_sampling import FilterExhausted

    with pytest.raises(FilterExhausted, match=r"after 3 generations of 4 prompts \(max_try_make_batch\)"):
        _train(tmp_path, _flat_reward, steps=1, max_try=3)


@pytest.mark.slow
def test_one_rollout_batch_makes_four_updates_off_the_generating_policy(tmp_path):
    """easyr1 recipe, rollout batch 8 prompts, mini-batch 2: one generation, exactly 4 optimiser
    steps; the old log-probs of every update are the generating policy's (equal to the current
    policy's in the first update, different from it in the later, off-policy ones); each update's
    loss is normalised by its own tokens."""
    import copy

    snapshots: dict[int, object] = {}
    checks: list[tuple[int, float, float]] = []

    def record(trainer, model, inputs):
        step = trainer.state.global_step
        if step == 0 and 0 not in snapshots:
            snapshots[0] = copy.deepcopy(model)  # the generating policy (no update yet)
        kwargs = {k: inputs.get(k) for k in ("pixel_values", "image_grid_thw", "num_images", "mm_token_type_ids")}
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        att = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        k = inputs["completion_ids"].size(1)
        mask = inputs["completion_mask"].bool()
        with torch.no_grad():
            gen, _, _ = trainer._get_per_token_logps_and_entropies(snapshots[0], ids, att, k, **kwargs)
            cur, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, att, k, **kwargs)
        old = inputs["old_per_token_logps"]
        checks.append((step, float((old - gen)[mask].abs().max()), float((old - cur)[mask].abs().max())))

    from job_runtime.builtin import synthetic  # noqa: F401 - the dataset is the first 8 of _rows(16)

    seen, _, trainer = _train(tmp_path, _signal_reward, online=False, global_batch=8, mini_batch=2, per_device=8,
                              steps=4, record=record)
    assert trainer.state.global_step == 4 and trainer.generations == 1
    assert [c[0] for c in checks] == [0, 1, 2, 3]
    for step, vs_generating, vs_current in checks:
        assert vs_generating < 1e-4, (step, vs_generating)  # old log-probs = the generating policy's
        if step == 0:
            assert vs_current < 1e-4  # first update: on-policy, ratio 1
        else:
            assert vs_current > 1e-4, step  # later updates: the policy moved, the ratio (and clipping) acts
    for b in seen:  # per-update normaliser, one device, 1 micro-batch per update: nib x 1 / 4 = its tokens
        assert b["nib"] * 1 / 4 == b["tokens"]


@pytest.mark.slow
def test_two_devices_filter_their_own_groups_and_share_one_normaliser_per_update(tmp_path):
    """torchrun, 2 processes (gloo): each device filters its own slice of TRL's gathered rewards (no
    group with constant rewards reaches either device's optimiser), and every micro-batch of an
    update carries the update's tokens summed over both devices (x steps_per_generation / accumulation)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).with_name("ddp_filter_worker.py")), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    acc, spg = ranks[0]["accumulation"], ranks[0]["steps_per_generation"]
    # 8 prompts x 4 rollouts = 4 micro-batches of 4 per device; updates of 4 prompts = 2 micro-batches each.
    assert (acc, spg) == (2, 4)
    for r in ranks:
        assert len(r["seen"]) == 4
        for b in r["seen"]:
            assert all(a % 2 == 1 for a in b["addends"]), b["addends"]  # each device dropped its constant groups
    for u in range(2):  # update u: one normaliser on both devices, from both devices' tokens of that update
        micro = (2 * u, 2 * u + 1)
        tokens = sum(r["seen"][i]["tokens"] for r in ranks for i in micro)
        for r in ranks:
            for i in micro:
                assert r["seen"][i]["nib"] == tokens * spg / acc, (u, i)
