"""Held-out accuracy during RL: the other half of the deceptive-reward diagnostic.

`HeldoutCallback` evaluates the policy on a fixed held-out set (batched HF ``generate``: greedy, or
sampled at ``temperature``/``top_p`` as EasyR1 validates, 0.6 / 0.95; answers graded by ``grade``,
the stage's training accuracy rule, else `job_runtime.eval.answers`) at step 0, every ``every`` optimiser steps (right after
that step's training row is logged; the stage logs every step) and at the end, and logs ``heldout_accuracy`` through `StageMetrics.log`, so it lands in metrics.jsonl and
Prometheus beside the training reward. When the metrics' deceptive-reward detector sets
``should_stop`` (the experiment asked to stop on deception), training stops and the best policy by
held-out accuracy, saved whenever the accuracy improved, becomes the final model.

Distributed: every rank scores its share of the set (the same number of batches on each rank,
so DeepSpeed ZeRO-3 parameter gathering stays in step), counts are summed, rank 0 logs, and the
stop decision is broadcast to all ranks.

>>> rows = [{"image": img, "prompt": [{"role": "user", "content": "..."}], "answer": "7"}]  # doctest: +SKIP
>>> cb = HeldoutCallback(rows, processor, metrics, every=10, max_new_tokens=256)           # doctest: +SKIP
>>> trainer.add_callback(cb); cb.trainer = trainer                                        # doctest: +SKIP
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from transformers import TrainerCallback

from job_runtime.eval.answers import extract_answer, is_correct

log = logging.getLogger(__name__)


def _text(completion: Any) -> str:
    return completion if isinstance(completion, str) else str(completion)


def prompt_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's conversational prompt with its image(s) placed in the first user turn (as TRL does).

    >>> prompt_messages({"prompt": [{"role": "user", "content": "Q?"}], "image": None})
    [{'role': 'user', 'content': [{'type': 'text', 'text': 'Q?'}]}]
    """
    from trl.data_utils import prepare_multimodal_messages

    images = row.get("images")
    if images is None:
        images = [row["image"]] if row.get("image") is not None else []
    return prepare_multimodal_messages(row["prompt"], images=images)


def _images(row: dict[str, Any]) -> list[Any]:
    if row.get("images") is not None:
        return list(row["images"])
    return [row["image"]] if row.get("image") is not None else []


@torch.no_grad()
def generate_greedy(model, processor, rows: Sequence[dict[str, Any]], max_new_tokens: int, temperature: float = 0.0,
                    top_p: float = 1.0, **generate_kwargs: Any) -> list[str]:
    """Completions (decoded text) for rows of {image(s), prompt}; one batch. Greedy at temperature 0,
    else sampled."""
    texts = [
        processor.apply_chat_template(prompt_messages(r), add_generation_prompt=True, tokenize=False) for r in rows
    ]
    images = [_images(r) for r in rows]
    tokenizer = getattr(processor, "tokenizer", processor)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
        if any(images):
            kwargs["images"] = images
        inputs = processor(**kwargs)
    finally:
        tokenizer.padding_side = side
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    out = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        **({"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if temperature > 0
           else {"do_sample": False}),
        **generate_kwargs,
    )
    completion_ids = out[:, inputs["input_ids"].shape[1] :]
    return tokenizer.batch_decode(completion_ids, skip_special_tokens=True)


def _lenient(completion: str, gold: str, choices: Any = None) -> bool:
    return bool(is_correct(extract_answer(completion), gold, list(choices) if choices else None))


def score(completions: Sequence[str], answers: Sequence[str], grade: Callable[..., bool] | None = None,
          choices: Sequence[Any] | None = None) -> int:
    """Number of completions whose answer `grade` (default: the lenient eval extraction) accepts.

    >>> score(["<think>.</think> \\\\boxed{7}", "\\\\boxed{3}", "no answer"], ["7", "4", "1"])
    1
    """
    grade = grade or _lenient
    choices = choices or [None] * len(answers)
    return sum(bool(grade(_text(c), str(a), ch)) for c, a, ch in zip(completions, answers, choices))


class HeldoutCallback(TrainerCallback):
    """Log ``heldout_accuracy`` every `every` optimiser steps (and at step 0 and the end).

    Args:
        rows: the held-out rows ({image or images, prompt, answer}), already cut to heldout_size.
        processor: the policy's processor.
        log_fn: ``log_fn(step, values)`` (StageMetrics.log) on rank 0; None on other ranks.
        should_stop: returns True when the run must stop (StageMetrics.should_stop); rank 0.
        every: evaluation period in optimiser steps.
        max_new_tokens: longest completion (the RL max_completion_length).
        batch_size: prompts per generate call.
        temperature, top_p: held-out decoding (0: greedy).
        grade: ``grade(completion, gold, choices) -> bool``; default the lenient eval extraction.
        best_dir: where the best policy by held-out accuracy is saved when it improves (only
            needed when stopping on deception); None to skip saving.

    Set ``callback.trainer`` after building the trainer: saving the best policy and gathering
    DeepSpeed parameters go through it.
    """

    def __init__(
        self,
        rows: Sequence[dict[str, Any]],
        processor: Any,
        log_fn: Callable[[int, dict[str, Any]], Any] | None,
        should_stop: Callable[[], bool] | None = None,
        every: int = 10,
        max_new_tokens: int = 256,
        batch_size: int = 16,
        best_dir: str | Path | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        grade: Callable[..., bool] | None = None,
    ):
        self.rows = list(rows)
        self.processor = processor
        self.log_fn = log_fn
        self.should_stop = should_stop
        self.every = every
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.best_dir = Path(best_dir) if best_dir else None
        self.temperature, self.top_p, self.grade = temperature, top_p, grade
        self.trainer: Any = None
        self.best: tuple[float, int] | None = None  # (accuracy, step)
        self.history: list[tuple[int, float]] = []
        self.stopped_on_deception = False
        self._last_step: int | None = None

    # -- evaluation ---------------------------------------------------------------------------

    def evaluate(self, model) -> float:
        """Held-out accuracy of `model` (all ranks call it; every rank gets the global value)."""
        world, rank = 1, 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        mine = self.rows[rank::world]
        n_batches = -(-len(self.rows[0::world]) // self.batch_size)  # rank 0 holds the most rows
        correct = 0
        was_training = model.training
        model.eval()
        try:
            for b in range(n_batches):
                batch = mine[b * self.batch_size : (b + 1) * self.batch_size] or self.rows[:1]
                real = len(mine[b * self.batch_size : (b + 1) * self.batch_size])
                with self._unwrapped(model) as m:
                    completions = generate_greedy(m, self.processor, batch, self.max_new_tokens, self.temperature,
                                                  self.top_p, **self._sync_kwargs())
                correct += score(completions[:real], [r["answer"] for r in batch[:real]], self.grade,
                                 [r.get("choices") for r in batch[:real]])
        finally:
            model.train(was_training)
        total = torch.tensor([correct, len(self.rows)], dtype=torch.float64)
        if world > 1:
            t = torch.tensor([correct], dtype=torch.float64, device=self._device(model))
            torch.distributed.all_reduce(t)
            total[0] = t.item()
        return float(total[0] / max(total[1], 1))

    def _device(self, model) -> torch.device:
        return next(model.parameters()).device

    def _sync_kwargs(self) -> dict[str, Any]:
        try:
            from transformers.integrations import is_deepspeed_zero3_enabled

            if is_deepspeed_zero3_enabled():
                return {"synced_gpus": True}
        except ImportError:  # pragma: no cover
            pass
        return {}

    def _unwrapped(self, model):
        if self.trainer is not None:
            from trl.models import unwrap_model_for_generation

            return unwrap_model_for_generation(self.trainer.model_wrapped, self.trainer.accelerator)
        from contextlib import nullcontext

        return nullcontext(model)

    def _run(self, state, control, model) -> None:
        step = state.global_step
        if self._last_step == step or not self.rows:
            return
        self._last_step = step
        acc = self.evaluate(model)
        self.history.append((step, acc))
        if self.log_fn is not None and state.is_world_process_zero:
            self.log_fn(step, {"heldout_accuracy": acc})
        log.info("step %d: heldout_accuracy %.4f (%d items)", step, acc, len(self.rows))
        if self.best is None or acc > self.best[0]:
            self.best = (acc, step)
            if self.best_dir is not None and self.trainer is not None:
                if self.best_dir.exists() and state.is_world_process_zero:
                    shutil.rmtree(self.best_dir)
                self.trainer.save_model(str(self.best_dir))
                if state.is_world_process_zero:
                    self.processor.save_pretrained(str(self.best_dir))
        stop = bool(self.should_stop and self.should_stop())
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor([1.0 if stop else 0.0], device=self._device(model))
            torch.distributed.broadcast(t, src=0)
            stop = bool(t.item())
        if stop and not control.should_training_stop:
            self.stopped_on_deception = True
            control.should_training_stop = True
            log.warning(
                "deceptive reward detected at step %d: training reward rises while held-out accuracy falls. "
                "Stopping; the final model is the best by held-out accuracy (%.4f at step %d).",
                step,
                self.best[0] if self.best else acc,
                self.best[1] if self.best else step,
            )

    # -- Trainer hooks --------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self._run(state, control, model)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        # After the step's training row is logged (so the detector sees that step's reward) and
        # before its checkpoint is saved (so the checkpoint's metrics include this evaluation).
        if logs and "loss" in logs and state.global_step % self.every == 0:
            self._run(state, control, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.stopped_on_deception:
            self._run(state, control, model)
