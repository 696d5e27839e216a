"""Dynamic sampling on real TRL GRPO training of the tiny Qwen2-VL (CPU, a few steps).

The reward gives zero variance to every prompt with an even addend ("Add 4.") and a distinct
reward to every rollout of the other prompts, so we know exactly which groups carry signal.
"""

from __future__ import annotations

import hashlib
import logging
import re

import pytest
import torch

from job_runtime.train.dynamic_sampling import concat_batches, select_rows, zero_variance_groups

ADD = re.compile(r"Add (\d+)\.")


def test_zero_variance_groups_ignores_unscorable_rows():
    r = torch.tensor([1.0, 1.0, float("nan"), 2.0, float("nan"), float("nan")])
    assert zero_variance_groups(r, 2).tolist() == [True, True, True]
    assert zero_variance_groups(torch.tensor([0.0, 1.0, 0.5, 0.5]), 2).tolist() == [False, True]


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
    """0.5 for 'constant' prompts; otherwise a distinct pseudo-random value per completion text."""
    out = []
    for c, const in zip(completions, constant):
        text = c[0]["content"] if isinstance(c, list) else c
        out.append(0.5 if const else int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 2**32)
    return out


def _flat_reward(completions, **kwargs):
    return [1.0] * len(completions)


def _train(tmp_path, reward, max_rounds: int, steps: int = 2):
    from datasets import Dataset
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration
    from trl import GRPOConfig

    from job_runtime.builtin.tiny_model import tiny_model_path
    from job_runtime.train.dynamic_sampling import DynamicSamplingGRPOTrainer

    path = tiny_model_path()
    processor = AutoProcessor.from_pretrained(path)
    model = Qwen2VLForConditionalGeneration.from_pretrained(path)
    args = GRPOConfig(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        num_generations=4,
        max_completion_length=8,
        max_steps=steps,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        loss_type="dapo",
        disable_tqdm=True,
    )
    seen: list[dict] = []

    class Recording(DynamicSamplingGRPOTrainer):
        def _compute_loss(self, model, inputs):
            texts = processor.tokenizer.batch_decode(inputs["prompt_ids"], skip_special_tokens=True)
            seen.append({"addends": [int(ADD.search(t).group(1)) for t in texts], "advantages": inputs["advantages"]})
            return super()._compute_loss(model, inputs)

    trainer = Recording(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=Dataset.from_list(_rows(16)),
        processing_class=processor,
        dynamic_sampling=True,
        max_rounds=max_rounds,
    )
    trainer.train()
    history = [h for h in trainer.state.log_history if "dynamic_sampling/dropped_groups" in h]
    return seen, history


@pytest.mark.slow
def test_zero_variance_groups_never_reach_the_optimiser_and_the_batch_stays_full(tmp_path):
    seen, history = _train(tmp_path, _signal_reward, max_rounds=8)
    assert len(seen) == 4  # 2 steps x 2 micro-batches
    for batch in seen:
        assert len(batch["addends"]) == 8  # full micro-batch: 8 completions
        assert all(a % 2 == 1 for a in batch["addends"]), batch["addends"]  # no zero-variance group
    # Every kept group has reward variance, so no row has zero advantage... up to ties, none here.
    assert all(bool((b["advantages"] != 0).all()) for b in seen)
    assert len(history) == 2
    for h in history:
        assert h["dynamic_sampling/dropped_groups"] >= 1  # the first draw held even-addend prompts
        assert h["dynamic_sampling/resampled_groups"] >= 4  # so another round of 4 prompts was drawn
        assert h["dynamic_sampling/filled_groups"] == 0
        assert h["frac_reward_zero_std"] > 0  # logged before filtering: signal availability is honest


@pytest.mark.slow
def test_max_rounds_fills_the_batch_and_warns(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="job_runtime.train.dynamic_sampling")
    seen, history = _train(tmp_path, _flat_reward, max_rounds=2, steps=1)
    assert [len(b["addends"]) for b in seen] == [8, 8]  # still a full batch
    assert all(bool((b["advantages"] == 0).all()) for b in seen)  # filled groups carry no advantage
    (h,) = history
    assert h["dynamic_sampling/filled_groups"] == 4
    assert h["dynamic_sampling/dropped_groups"] == 4  # 8 zero-variance groups generated, 4 used as filler
    assert h["dynamic_sampling/resampled_groups"] == 4
    assert h["dynamic_sampling/rounds"] == 2
    assert any("still had no reward variance" in r.getMessage() for r in caplog.records)
