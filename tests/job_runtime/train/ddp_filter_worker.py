"""Run by test_dynamic_sampling.py under `torchrun --nproc_per_node 2` (gloo, CPU): one rollout
batch of the tiny model with EasyR1's online filter on 2 devices. Each rank writes what its
micro-batches held to OUT/rank<r>.json: the prompts' addends, tokens and num_items_in_batch."""

from __future__ import annotations

import json
import os
import sys

import torch


def main(out: str) -> None:
    from datasets import Dataset
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration
    from trl import GRPOConfig

    from job_runtime.builtin.tiny_model import tiny_model_path
    from job_runtime.contract import RLParams
    from job_runtime.recipes import resolve_rl
    from job_runtime.train.dynamic_sampling import DynamicSamplingGRPOTrainer
    from tests.job_runtime.train.test_dynamic_sampling import ADD, _rows, _signal_reward

    path = tiny_model_path()
    processor = AutoProcessor.from_pretrained(path)
    model = Qwen2VLForConditionalGeneration.from_pretrained(path)
    params = RLParams(global_batch_size=8, mini_batch_size=4, per_device_batch_size=4, num_generations=4,
                      max_completion_length=8, learning_rate=1e-4, epochs=1)
    recipe = resolve_rl(params, "dapo", int(os.environ["WORLD_SIZE"]))
    args = GRPOConfig(**{**recipe.trl_kwargs(), "output_dir": f"{out}/trainer", "save_strategy": "no",
                         "report_to": [], "use_cpu": True, "seed": 0, "max_steps": 2})
    seen = []

    class Recording(DynamicSamplingGRPOTrainer):
        def _compute_loss(self, model, inputs):
            texts = processor.tokenizer.batch_decode(inputs["prompt_ids"], skip_special_tokens=True)
            mask = inputs["completion_mask"]
            seen.append({"addends": [int(ADD.search(t).group(1)) for t in texts], "tokens": int(mask.sum()),
                         "nib": float(inputs["num_items_in_batch"]), "step": self.state.global_step})
            return super()._compute_loss(model, inputs)

    trainer = Recording(model=model, reward_funcs=[_signal_reward], args=args, train_dataset=Dataset.from_list(_rows(16)),
                        processing_class=processor, online_filtering=True, chunk=4, max_try=20)
    trainer.train()
    rank = trainer.accelerator.process_index
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"seen": seen, "accumulation": args.gradient_accumulation_steps,
                   "steps_per_generation": args.steps_per_generation}, f)
    torch.distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
