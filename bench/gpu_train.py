"""Training throughput of the real stage code beside plain transformers, on the same device in one run.

    python bench/gpu_train.py                 # a GPU: a random-weight Qwen2.5-VL-3B-shaped model
    python bench/gpu_train.py --model tiny    # CPU smoke test (tests/bench/test_gpu_train.py runs it)

Prints, for one device:

- SFT tokens/s through ``job_runtime.stages.sft.run`` (TRL's SFTTrainer as the stage configures it),
  and tokens/s of a plain loop (the model's forward and backward, AdamW) on the same batches;
- one GRPO step through ``job_runtime.stages.rl.run``: the rollout time (TRL's generate and score of
  the whole batch) and the update time (forward, backward and optimiser step of every micro-batch),
  beside plain HF ``generate`` of the same prompts and a plain update of the same sequences.

The model: ``3b`` is Qwen2.5-VL-3B-Instruct's architecture (36 decoder layers of 2048, 16 heads, 2
key/value heads, vocabulary 151,936; a 32-block vision tower of 1280 with windowed attention) with
random weights and the tiny models' tokenizer (the embedding and output layers keep their full
size, so the cost per token is the real model's); ``tiny`` is ``builtin://tiny-qwen2.5-vl``. The
data are synthetic: one image and a question per row, an SFT trace of ``--seq-len`` tokens. The
whole run stays under 8 minutes on one H200 (batch sizes below); nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Qwen2.5-VL-3B-Instruct's config.json, shapes only (weights are random).
QWEN25_VL_3B = {
    "text": {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
             "num_attention_heads": 16, "num_key_value_heads": 2, "max_position_embeddings": 128000,
             "rms_norm_eps": 1e-6, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                                       "mrope_section": [16, 24, 24]}},
    "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 2048,
               "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "patch_size": 14,
               "spatial_merge_size": 2, "temporal_patch_size": 2, "hidden_act": "silu", "tokens_per_second": 2},
}
SIZES = {  # per model: SFT rows, per-device batch, trace tokens, image side; RL prompts, rollouts, new tokens
    "3b": {"sft_rows": 64, "sft_batch": 4, "seq_len": 1536, "image": 448, "rl_prompts": 8, "rl_gen": 8,
           "rl_tokens": 256, "rl_micro": 8},
    "tiny": {"sft_rows": 16, "sft_batch": 4, "seq_len": 96, "image": 64, "rl_prompts": 4, "rl_gen": 4,
             "rl_tokens": 16, "rl_micro": 16},
}


def build_3b(out: Path, cuda: bool) -> Path:
    """A random-weight Qwen2.5-VL-3B-shaped model with the tiny models' processor, saved to out."""
    import torch
    import transformers

    from job_runtime.builtin import tiny_model

    tiny = tiny_model.tiny_model_path("qwen2.5-vl")
    processor = transformers.AutoProcessor.from_pretrained(tiny)
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in tiny_model.SPECIAL_TOKENS}
    text = {**QWEN25_VL_3B["text"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": None}
    config = transformers.Qwen2_5_VLConfig(
        text_config=text, vision_config=QWEN25_VL_3B["vision"], image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = transformers.Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16 if cuda else torch.float32)
    model.generation_config = transformers.GenerationConfig(
        eos_token_id=[ids["<|im_end|>"]], pad_token_id=ids["<|endoftext|>"], do_sample=False)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def write_data(folder: Path, rows: int, seq_len: int, side: int) -> tuple[Path, Path]:
    """An SFT file (image, question, a trace of about seq_len tokens) and an RL file (image, question, answer)."""
    import random

    from PIL import Image

    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    sft, rl = [], []
    for i in range(rows):
        img = Image.new("RGB", (side, side), tuple(rng.randrange(256) for _ in range(3)))
        path = folder / f"img{i}.png"
        img.save(path)
        digits = " ".join(str(rng.randrange(10)) for _ in range(max(1, seq_len // 2)))  # ~2 tokens per digit
        answer = str(rng.randrange(10))
        sft.append({"image": path.name, "question": f"Row {i}: which digit comes last?",
                    "trace": f"<think> {digits} </think> \\boxed{{{answer}}}"})
        rl.append({"image": path.name, "question": f"Row {i}: which digit comes last?", "answer": answer})
    paths = folder / "sft.jsonl", folder / "rl.jsonl"
    for p, data in zip(paths, (sft, rl)):
        p.write_text("".join(json.dumps(r) + "\n" for r in data))
    return paths


class Timer:
    """Wall time spent inside wrapped methods (a method called from inside another is not counted twice)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._depth = 0

    @contextmanager
    def wrap(self, owner: type, name: str, key: str) -> Iterator[None]:
        original = getattr(owner, name)
        timer = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timer.seconds[key] = timer.seconds.get(key, 0.0) + time.perf_counter() - start

        setattr(owner, name, timed)
        try:
            yield
        finally:
            setattr(owner, name, original)


def stage_config(kind: str, output: str, model: str, data: dict[str, str], scale: int, params: dict, algorithm=None):
    from job_runtime.contract import Labels, StageConfig

    return StageConfig(kind=kind, id=f"bench-{kind}", output=output, model=model, data=data, scale=scale, seed=0,
                       algorithm=algorithm, params=params,
                       labels=Labels(experiment="bench", run="bench", stage=f"bench-{kind}", model="m", method=kind))


def stage_sft(model: str, sft_file: Path, size: dict, work: Path) -> dict[str, float]:
    from job_runtime.io import storage
    from job_runtime.stages import sft

    params = {"epochs": 1, "learning_rate": 1e-5, "global_batch_size": size["sft_batch"],
              "per_device_batch_size": size["sft_batch"], "max_length": size["seq_len"] + 512,
              "gradient_checkpointing": False, "warmup_ratio": 0.0, "save_steps": 10_000}
    out = storage.normalize(work / "sft")
    sft.run(stage_config("sft", out, model, {"train": str(sft_file)}, size["sft_rows"], params))
    rows = [r for r in storage.read_jsonl(storage.join(out, "metrics.jsonl")) if "tokens_per_second" in r]
    steady = rows[1:] or rows  # the first step includes warm-up
    return {"stage_tokens_per_s": sum(r["tokens_per_second"] for r in steady) / len(steady), "steps": len(rows)}


def plain_batches(model_dir: str, sft_file: Path, size: dict):
    from PIL import Image

    from job_runtime.io import modeling
    from job_runtime.prompts import format_question

    processor = modeling.load_processor(model_dir)
    rows = [json.loads(line) for line in sft_file.read_text().splitlines()]
    batches = []
    for start in range(0, len(rows), size["sft_batch"]):
        chunk = rows[start : start + size["sft_batch"]]
        texts = [processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": format_question(r["question"])}]},
             {"role": "assistant", "content": [{"type": "text", "text": r["trace"]}]}], tokenize=False) for r in chunk]
        images = [[Image.open(sft_file.parent / r["image"]).convert("RGB")] for r in chunk]
        batches.append(processor(text=texts, images=images, return_tensors="pt", padding=True))
    return processor, batches


def plain_sft(model_dir: str, batches, cuda: bool) -> float:
    """Tokens/s of forward + backward + AdamW on the given batches (the first one is warm-up)."""
    import torch

    from job_runtime.io import modeling

    device = "cuda" if cuda else "cpu"
    model = modeling.load_model(model_dir, for_training=True, dtype=torch.bfloat16 if cuda else torch.float32).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda)
    tokens, seconds = 0, 0.0
    for i, batch in enumerate(batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i:
            seconds += time.perf_counter() - start
            tokens += int(batch["attention_mask"].sum())
    del model, opt
    return tokens / seconds if seconds else float("nan")


def stage_rl(model: str, rl_file: Path, size: dict, work: Path) -> dict[str, float]:
    import torch
    import transformers
    import trl

    from job_runtime.io import storage
    from job_runtime.stages import rl

    params = {"epochs": 1, "learning_rate": 1e-6, "global_batch_size": size["rl_prompts"],
              "mini_batch_size": size["rl_prompts"],  # one update per rollout batch: one optimiser step
              "min_pixels": size["image"] ** 2, "max_pixels": size["image"] ** 2,  # the images as written
              "per_device_batch_size": size["rl_micro"], "num_generations": size["rl_gen"],
              "max_prompt_length": 4096, "max_completion_length": size["rl_tokens"], "heldout_every_steps": 1000,
              "save_steps": 10_000, "generation": {"backend": "hf"}, "trl": {"temperature": 1.0}}
    timer = Timer()
    out = storage.normalize(work / "rl")
    cfg = stage_config("rl", out, model, {"train": str(rl_file)}, size["rl_prompts"], params, algorithm="grpo")
    with timer.wrap(trl.GRPOTrainer, "_generate_and_score_completions", "rollout"), \
            timer.wrap(transformers.Trainer, "training_step", "training_step"), \
            timer.wrap(torch.optim.AdamW, "step", "optimizer"):
        rl.run(cfg)
    s = timer.seconds
    return {"rollout_s": s.get("rollout", 0.0),
            "update_s": s.get("training_step", 0.0) - s.get("rollout", 0.0) + s.get("optimizer", 0.0)}


def plain_rl(model_dir: str, rl_file: Path, size: dict, cuda: bool) -> dict[str, float]:
    """HF generate of the same prompts x rollouts, then forward + backward + AdamW on the sequences."""
    import torch
    from PIL import Image

    from job_runtime.io import modeling
    from job_runtime.prompts import format_question

    device = "cuda" if cuda else "cpu"
    processor = modeling.load_processor(model_dir)
    tok = processor.tokenizer
    tok.padding_side = "left"
    rows = [json.loads(line) for line in rl_file.read_text().splitlines()][: size["rl_prompts"]]
    texts, images = [], []
    for r in rows:
        text = processor.apply_chat_template([{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": format_question(r["question"])}]}], add_generation_prompt=True,
            tokenize=False)
        for _ in range(size["rl_gen"]):
            texts.append(text)
            images.append([Image.open(rl_file.parent / r["image"]).convert("RGB")])
    batch = processor(text=texts, images=images, return_tensors="pt", padding=True).to(device)
    model = modeling.load_model(model_dir, for_training=False, dtype=torch.bfloat16 if cuda else torch.float32).to(device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        seqs = model.generate(**batch, max_new_tokens=size["rl_tokens"], do_sample=True, pad_token_id=tok.pad_token_id,
                              min_new_tokens=size["rl_tokens"])
    sync()
    rollout = time.perf_counter() - start
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=cuda)
    mask = torch.cat([batch["attention_mask"], torch.ones_like(seqs[:, batch["input_ids"].shape[1]:])], dim=1)
    mm = torch.cat([batch["mm_token_type_ids"], torch.zeros_like(seqs[:, batch["input_ids"].shape[1]:])], dim=1)
    sync()
    start = time.perf_counter()
    micro = size["rl_micro"]
    per_row = batch["image_grid_thw"].prod(dim=1).tolist()
    offsets = [0]
    for n in per_row:
        offsets.append(offsets[-1] + n)
    for a in range(0, len(seqs), micro):
        b = min(a + micro, len(seqs))
        out = model(input_ids=seqs[a:b], attention_mask=mask[a:b], mm_token_type_ids=mm[a:b],
                    pixel_values=batch["pixel_values"][offsets[a]:offsets[b]], image_grid_thw=batch["image_grid_thw"][a:b])
        (out.logits.float().logsumexp(-1).mean() * (b - a) / len(seqs)).backward()
    opt.step()
    sync()
    return {"rollout_s": rollout, "update_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    import torch

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(SIZES), default="3b" if cuda else "tiny")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    size = SIZES[args.model]
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sftrl-bench-", dir=args.work) as tmp:
        work = Path(tmp)
        model = str(build_3b(work / "model", cuda)) if args.model == "3b" else "builtin://tiny-qwen2.5-vl"
        sft_file, rl_file = write_data(work / "data", max(size["sft_rows"], size["rl_prompts"]), size["seq_len"],
                                       size["image"])
        _, batches = plain_batches(model, sft_file, size)
        plain_tps = plain_sft(model, batches, cuda)
        stage = stage_sft(model, sft_file, size, work)
        rl_plain = plain_rl(model, rl_file, size, cuda)
        rl_stage = stage_rl(model, rl_file, size, work)
    total = time.perf_counter() - started
    n_roll = size["rl_prompts"] * size["rl_gen"]
    print(f"device: {device}; model: {args.model} ({'Qwen2.5-VL-3B shape, random weights' if args.model == '3b' else 'builtin://tiny-qwen2.5-vl'})")
    print(f"SFT   batch {size['sft_batch']} x ~{size['seq_len']} trace tokens + image: stage {stage['stage_tokens_per_s']:,.1f} "
          f"tokens/s ({stage['steps']} steps), plain HF {plain_tps:,.1f} tokens/s")
    print(f"GRPO  one step, {size['rl_prompts']} prompts x {size['rl_gen']} rollouts = {n_roll} x {size['rl_tokens']} new tokens:"
          f" stage rollout {rl_stage['rollout_s']:.2f} s, update {rl_stage['update_s']:.2f} s;"
          f" plain HF generate {rl_plain['rollout_s']:.2f} s, update {rl_plain['update_s']:.2f} s")
    print(f"total {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
