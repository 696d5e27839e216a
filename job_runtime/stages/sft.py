"""The ``sft`` stage: supervised fine-tuning on verified reasoning traces with TRL's SFTTrainer.

setup -> train -> publish:

1. Setup. Parameters are `contract.SFTParams`; `recipes.resolve_sft` resolves them with the recipe
   (``sft.recipe``: llamafactory, the study's, or trl) into SFTConfig fields and sftrl's own
   behaviour, each with its source. llamafactory (examples/train_full/qwen2_5vl_full_sft.yaml): global
   batch 128, lr 1e-5, 3 epochs, cosine schedule, 10% warmup, cutoff 2048 tokens, the vision tower
   and projector frozen (`train.setup.freeze_modules`), images fitted to 1024 .. 262144 pixels
   (`job_runtime.io.images`, with the Qwen2-VL plugin's guards). Batch arithmetic: global batch =
   per_device_batch_size x gradient_accumulation x WORLD_SIZE; accumulation is derived, and a
   global batch that does not divide is an error naming the numbers. ``sft.trl`` passes any
   other ``trl.SFTConfig`` field through (an unknown one is an error naming it);
   ``cfg.deepspeed`` is handed to TRL. The data are the first ``cfg.scale`` rows of
   ``cfg.data['train']`` in the fixed shuffle (`job_runtime.io.data`), as prompt-completion pairs:
   the user turn (image + question + EasyR1 format prompt) is the prompt, the trace the
   completion, and the loss is on the completion only.
2. Train, with callbacks: metrics.jsonl (+ Prometheus) via `StageMetrics`, checkpoint sync to
   ``<output>/checkpoints/`` (`job_runtime.train.checkpoints`); the newest complete checkpoint in
   storage is resumed, with its metrics history and sample count.
3. Publish: ``model/`` (weights + processor, loadable by from_pretrained), ``metrics.jsonl``,
   ``results.json``, then ``_SUCCESS`` (whose manifest records ``samples_seen``, the examples
   actually trained on, and the data report).

The working directory is local and temporary; for a file:// output the model is moved into
place atomically, for s3:// it is uploaded, in both cases before ``_SUCCESS``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from job_runtime.io import scratch, storage
from job_runtime.contract import METRICS_JSONL, RESULTS_JSON, SFTParams, StageConfig
from job_runtime.recipes import SFT_KEEP_CHECKPOINTS, Resolved, resolve_sft
from job_runtime.errors import StageError
from job_runtime.train.setup import (
    TrainerConfigError, accumulation, check_trl_overrides, freeze_modules, launcher_world_size,
)

log = logging.getLogger(__name__)

KEEP_CHECKPOINTS = SFT_KEEP_CHECKPOINTS
PROGRESS_JSON = "sft_progress.json"  # sidecar: samples seen so far, restored on resume


SFTConfigError = TrainerConfigError  # an sft parameter is unusable; the message names it and what to do


def _stage_error(msg: str) -> Exception:
    return StageError(msg)


# --- setup (pure) ----------------------------------------------------------------------------------


def gradient_accumulation(params: SFTParams, world_size: int) -> int:
    """Accumulation steps so that one optimiser step sees global_batch_size sequences.

    >>> gradient_accumulation(SFTParams(), 8)          # 128 = 4 per device x 4 x 8 GPUs
    4
    """
    return accumulation(params.global_batch_size, params.per_device_batch_size, world_size, "sft.global_batch_size",
                        "because global batch = per-device batch x accumulation x world size")


def _checkpointing_field() -> str:
    """transformers >= 5.2x renamed gradient_checkpointing to activation_checkpointing."""
    from trl import SFTConfig

    names = {f.name for f in dataclasses.fields(SFTConfig)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def resolve(cfg: StageConfig, params: SFTParams, world_size: int) -> Resolved:
    """The stage's resolved settings (`recipes.resolve_sft`), a config error naming the field."""
    try:
        return resolve_sft(params, world_size, seed=cfg.seed)
    except ValueError as e:
        raise SFTConfigError(str(e)) from None


def sft_config_kwargs(cfg: StageConfig, params: SFTParams, output_dir: str, world_size: int, cuda: bool) -> dict[str, Any]:
    """The SFTConfig arguments of a stage: the resolved recipe (sft.trl included), then the machine's.

    >>> from job_runtime.contract import Labels
    >>> cfg = StageConfig(kind="sft", id="x", output="file:///tmp/x", model="m", seed=3,
    ...                   labels=Labels(experiment="e", run="r", stage="x", model="m", method="sft"))
    >>> kw = sft_config_kwargs(cfg, SFTParams(trl={"weight_decay": 0.1}), "/tmp/o", 8, cuda=True)
    >>> kw["gradient_accumulation_steps"], kw["seed"], kw["warmup_steps"], kw["weight_decay"], kw["max_length"]
    (4, 3, 0.1, 0.1, 2048)
    """
    from trl import SFTConfig

    check_trl_overrides(params.trl, SFTConfig, "sft")
    kwargs = resolve(cfg, params, world_size).trl_kwargs()
    kwargs[_checkpointing_field()] = kwargs.pop("gradient_checkpointing")
    kwargs |= {
        "output_dir": output_dir,
        "save_strategy": "steps",
        "report_to": [],
        "use_cpu": not cuda,
        "bf16": cuda,
        "dataloader_num_workers": 0,
    }
    if cfg.deepspeed:
        kwargs["deepspeed"] = cfg.deepspeed
    kwargs.update(params.trl)
    return kwargs


# --- run ---------------------------------------------------------------------------------------


def _all_reduce_sum(value: int) -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        import torch

        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        t = torch.tensor([value], dtype=torch.long, device=device)
        dist.all_reduce(t)
        return int(t.item())
    return value


def _trainer_class():
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from job_runtime.io.modeling import CheckpointWeightsMixin

    class CountingSFTTrainer(CheckpointWeightsMixin, SFTTrainer):
        """SFTTrainer that counts the examples each rank trains on (``samples_local``) and resumes
        checkpoint weights correctly (see modeling.load_checkpoint_weights)."""

        samples_local = 0
        samples_before = 0  # all ranks, restored from a checkpoint

        def training_step(self, model, inputs, *args, **kwargs):
            self.samples_local += int(inputs["input_ids"].shape[0])
            return super().training_step(model, inputs, *args, **kwargs)

        def samples_seen(self) -> int:
            return self.samples_before + _all_reduce_sum(self.samples_local)

    class ProgressSidecar(TrainerCallback):
        """Writes samples seen to the progress sidecar before each checkpoint upload."""

        def __init__(self, trainer: CountingSFTTrainer, path: Path):
            self.trainer, self.path = trainer, path

        def on_save(self, args, state, control, **kwargs):
            seen = self.trainer.samples_seen()  # collective: every rank calls on_save
            if state.is_world_process_zero:
                self.path.write_text(json.dumps({"samples_seen": seen, "step": state.global_step}))
            return control

    return CountingSFTTrainer, ProgressSidecar


def run(cfg: StageConfig) -> None:
    """Train on cfg.data['train'] and publish model/, metrics.jsonl, results.json, _SUCCESS."""
    import torch
    from trl import SFTConfig

    from job_runtime.io import data, modeling
    from job_runtime.train.checkpoints import CheckpointSync, publish_stage, resume_dir
    from job_runtime.metrics import StageMetrics

    try:
        params = SFTParams.model_validate(cfg.params)
    except ValueError as e:
        raise _stage_error(f"sft parameters of stage {cfg.id} are invalid: {e}") from None
    world = launcher_world_size()
    output = storage.normalize(cfg.output)
    cuda = torch.cuda.is_available()
    work = scratch.mkdtemp(f"sft-{cfg.id[:12]}")
    metrics_path, progress_path = work / METRICS_JSONL, work / PROGRESS_JSON
    try:
        args = SFTConfig(**sft_config_kwargs(cfg, params, str(work / "trainer"), world, cuda))
    except SFTConfigError as e:
        shutil.rmtree(work, ignore_errors=True)
        raise _stage_error(str(e)) from None
    except (TypeError, ValueError) as e:
        shutil.rmtree(work, ignore_errors=True)
        raise _stage_error(f"sft settings of stage {cfg.id} are rejected by trl.SFTConfig, because {e}. "
                           "Fix the sft section (or sft.trl) of the experiment.") from None

    sidecars = {METRICS_JSONL: metrics_path, PROGRESS_JSON: progress_path}
    with args.main_process_first(local=True, desc="fetch checkpoint"):
        checkpoint = resume_dir(output, work / "resume", sidecars=sidecars)
    from job_runtime.eval.contamination import ContaminationSetupError, index_for

    recipe = resolve(cfg, params, world)
    try:
        with args.main_process_first(local=True, desc="load data"):
            contamination = index_for(cfg.decontaminate)  # benchmark items never trained on
            train, report = data.load_sft(cfg.data, scale=cfg.scale,
                                          exclude=contamination.reason if contamination else None)
        train = data.fit_images(train, recipe["image_min_pixels"], recipe["image_max_pixels"], qwen2vl_guards=True)
        processor = modeling.load_processor(cfg.model)
        model = modeling.load_model(cfg.model, for_training=True, dtype=torch.bfloat16 if cuda else torch.float32)
        frozen = freeze_modules(model, recipe["freeze_vision_tower"], recipe["freeze_multi_modal_projector"])
    except (data.DataError, modeling.ModelLoadError, SFTConfigError, ContaminationSetupError) as e:
        shutil.rmtree(work, ignore_errors=True)
        raise _stage_error(str(e)) from None
    log.info(
        "sft %s: recipe %s, %d examples x %s epochs, %d per step = %d per device x %d accumulation x %d devices, "
        "lr %g (%s), cutoff %d, images %s..%s px, %d frozen parameter tensors%s",
        cfg.id, params.recipe, len(train), params.epochs, params.global_batch_size, params.per_device_batch_size,
        args.gradient_accumulation_steps, world, params.learning_rate, args.lr_scheduler_type, args.max_length,
        recipe["image_min_pixels"], recipe["image_max_pixels"], len(frozen),
        f", resuming from {checkpoint}" if checkpoint else "",
    )

    metrics = StageMetrics(cfg, metrics_path)
    failed = True
    try:
        trainer_cls, progress_cls = _trainer_class()
        trainer = trainer_cls(model=model, args=args, train_dataset=train, processing_class=processor)
        if checkpoint and progress_path.is_file():
            trainer.samples_before = int(json.loads(progress_path.read_text()).get("samples_seen", 0))
        trainer.add_callback(metrics.trainer_callback())
        trainer.add_callback(progress_cls(trainer, progress_path))
        trainer.add_callback(CheckpointSync(output, KEEP_CHECKPOINTS, sidecars))
        started = time.time()
        trainer.train(resume_from_checkpoint=checkpoint)
        seconds = time.time() - started
        samples_seen = trainer.samples_seen()

        final = work / "model"
        trainer.save_model(str(final))
        if trainer.is_world_process_zero():
            processor.save_pretrained(str(final))
            results = {
                "kind": "sft",
                "recipe": params.recipe,
                "frozen_parameters": len(frozen),
                "global_step": trainer.state.global_step,
                "samples_seen": samples_seen,
                "train_examples": len(train),
                "epochs": params.epochs,
                "train_seconds": round(seconds, 3),
                "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
                "data": report.as_dict(),
                "decontamination": contamination.summary() if contamination else None,
            }
            storage.write_json(storage.normalize(str(work / RESULTS_JSON)), results)
            metrics.close()
            publish_stage(
                output,
                final,
                {METRICS_JSONL: metrics_path, RESULTS_JSON: work / RESULTS_JSON},
                kind="sft",
                global_step=trainer.state.global_step,
                samples_seen=samples_seen,
                data=report.as_dict(),
            )
            log.info("sft %s: %d samples seen in %d steps (%.1f s); published %s",
                     cfg.id, samples_seen, trainer.state.global_step, seconds, output)
        failed = False
    finally:
        metrics.close(failed=failed)
        shutil.rmtree(work, ignore_errors=True)
