"""The ``rl`` stage: GRPO or DAPO on image prompts with TRL, from a base model or an SFT stage.

setup -> run -> publish:

1. Setup. Parameters are `contract.RLParams` (paper defaults: 512 prompts per step, lr 1e-6, 2
   epochs, 10 rollouts per prompt, reward 0.9 x accuracy + 0.1 x format). ``cfg.algorithm``:

   ========  ==========  =============================  ==================  ==================
   algo      loss_type   epsilon_high (clip-higher)     dynamic sampling    overlong shaping
   ========  ==========  =============================  ==================  ==================
   grpo      bnpo        = epsilon                      off                 off
   dapo      dapo        0.28                           on                  max_len / 8 buffer
   ========  ==========  =============================  ==================  ==================

   Each can be overridden (``epsilon_high``, ``dynamic_sampling``, ``overlong_buffer`` and, under
   ``rl.trl``, any GRPOConfig field such as ``loss_type: grpo``). ``bnpo`` averages the loss over
   the tokens of the batch, as EasyR1 (the paper's framework, ``loss_avg_mode: token``) does;
   TRL's ``grpo`` would average per sequence first (length-biased). Batch arithmetic: TRL counts its
   generation batch in completions, so ``global_batch_size x num_generations`` must equal
   ``per_device_batch_size x gradient_accumulation x world_size``; accumulation is derived.
   Rollouts come from vLLM (colocate) when it is importable on a GPU and ``use_vllm`` is not
   False, otherwise from HF ``generate``.
2. Run. `DynamicSamplingGRPOTrainer` (TRL's trainer plus DAPO dynamic sampling), with callbacks:
   metrics (metrics.jsonl + Prometheus), held-out accuracy, checkpoint sync. The newest complete
   checkpoint in storage is resumed, with its metrics history.
3. Publish: ``model/`` (the final policy, or the best by held-out accuracy when the deceptive-
   reward detector stopped the run), ``metrics.jsonl``, ``results.json``, then ``_SUCCESS``.

The stage reads its StageConfig and nothing else from the environment but credentials and the
launcher's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, PET_*).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from job_runtime.io import storage
from job_runtime.contract import METRICS_JSONL, RESULTS_JSON, RLParams, StageConfig
from job_runtime.errors import StageError
from job_runtime.train.setup import TrainerConfigError, accumulation, check_trl_overrides, launcher_world_size

log = logging.getLogger(__name__)

DAPO_EPSILON_HIGH = 0.28
KEEP_CHECKPOINTS = 3  # complete checkpoints kept in storage
HELDOUT_BATCH = 32


RLConfigError = TrainerConfigError  # an rl parameter is unusable; the message names it and what to do


# --- pure setup ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """What cfg.algorithm + RLParams resolve to."""

    name: str
    loss_type: str
    epsilon_high: float
    dynamic_sampling: bool
    overlong_buffer: int


def resolve_algorithm(algorithm: str | None, params: RLParams) -> Algorithm:
    """GRPO or DAPO settings, with RLParams overrides applied.

    >>> resolve_algorithm("dapo", RLParams(max_completion_length=800))
    Algorithm(name='dapo', loss_type='dapo', epsilon_high=0.28, dynamic_sampling=True, overlong_buffer=100)
    >>> resolve_algorithm(None, RLParams())
    Algorithm(name='grpo', loss_type='bnpo', epsilon_high=0.2, dynamic_sampling=False, overlong_buffer=0)
    """
    name = algorithm or "grpo"
    if name not in ("grpo", "dapo"):
        raise RLConfigError(f"algorithm '{name}' is unknown, because only grpo and dapo exist. Use one of them.")
    dapo = name == "dapo"
    buffer = params.overlong_buffer
    if buffer is None:
        buffer = params.max_completion_length // 8 if dapo else 0
    if buffer >= params.max_completion_length:
        raise RLConfigError(
            f"rl.overlong_buffer ({buffer}) must be below rl.max_completion_length ({params.max_completion_length}), "
            "because the penalty ramps over the last `overlong_buffer` tokens. Lower it."
        )
    return Algorithm(
        name=name,
        loss_type="dapo" if dapo else "bnpo",
        epsilon_high=params.epsilon_high if params.epsilon_high is not None else (DAPO_EPSILON_HIGH if dapo else params.epsilon),
        dynamic_sampling=params.dynamic_sampling if params.dynamic_sampling is not None else dapo,
        overlong_buffer=buffer,
    )


def gradient_accumulation(params: RLParams, world_size: int) -> int:
    """Accumulation steps so that one optimiser step sees global_batch_size prompts x num_generations.

    >>> gradient_accumulation(RLParams(), 8)   # 512 x 10 = 5120 completions = 8 per device x 80 x 8
    80
    >>> gradient_accumulation(RLParams(global_batch_size=4, num_generations=4, per_device_batch_size=8), 1)
    2
    """
    return accumulation(
        params.global_batch_size * params.num_generations, params.per_device_batch_size, world_size,
        f"rl.global_batch_size x rl.num_generations = {params.global_batch_size} x {params.num_generations} =",
        "because TRL counts its generation batch in completions (per_device_batch_size x gradient_accumulation x "
        "world_size)",
    )


def want_vllm(params: RLParams) -> bool:
    """vLLM colocate when asked, or by default when importable on a GPU."""
    if params.use_vllm is False:
        return False
    import torch

    available = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    if params.use_vllm and not available:
        raise RLConfigError(
            "rl.use_vllm is true, but vLLM is not importable on a GPU here, because the image or machine lacks it. "
            "Use the runtime image with vLLM, or set rl.use_vllm: false to generate with HF."
        )
    return available


def grpo_config_kwargs(
    cfg: StageConfig, params: RLParams, algo: Algorithm, output_dir: str, world_size: int, use_vllm: bool, cuda: bool
) -> dict[str, Any]:
    """The GRPOConfig arguments of a stage: study settings, then rl.trl overrides."""
    from trl import GRPOConfig

    check_trl_overrides(params.trl, GRPOConfig, "rl")
    kwargs: dict[str, Any] = {
        "output_dir": output_dir,
        "seed": cfg.seed,
        "num_train_epochs": params.epochs,
        "learning_rate": params.learning_rate,
        "per_device_train_batch_size": params.per_device_batch_size,
        "gradient_accumulation_steps": gradient_accumulation(params, world_size),
        "num_generations": params.num_generations,
        "max_completion_length": params.max_completion_length,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "beta": params.beta,
        "epsilon": params.epsilon,
        "epsilon_high": algo.epsilon_high,
        "loss_type": algo.loss_type,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": params.save_steps,
        "save_total_limit": KEEP_CHECKPOINTS,
        "report_to": [],
        "use_cpu": not cuda,
        "bf16": cuda,
        "use_vllm": use_vllm,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    if use_vllm:
        kwargs["vllm_mode"] = "colocate"
    if cfg.deepspeed:
        kwargs["deepspeed"] = cfg.deepspeed
    kwargs.update(params.trl)
    return kwargs


# --- run -------------------------------------------------------------------------------------


def drop_long_prompts(dataset, processor, max_prompt_length: int):
    """(dataset without rows whose rendered prompt, image tokens included, exceeds max_prompt_length,
    number dropped). Truncating a multimodal prompt would cut image tokens, so such rows are skipped."""
    from job_runtime.train.heldout import prompt_messages

    def fits(row: dict[str, Any]) -> bool:
        text = processor.apply_chat_template(prompt_messages(row), add_generation_prompt=True, tokenize=False)
        images = [row["image"]] if row.get("image") is not None else None
        ids = processor(text=[text], images=[images] if images else None)["input_ids"]
        return len(ids[0]) <= max_prompt_length

    keep = [i for i in range(len(dataset)) if fits(dataset[i])]
    dropped = len(dataset) - len(keep)
    if dropped:
        dataset = dataset.select(keep)
    return dataset, dropped


def _reward_setup(params: RLParams, algo: Algorithm):
    """(reward functions, weights): the study's weighted rewards plus DAPO's overlong shaping."""
    from job_runtime.train import rewards

    funcs, weights = rewards.build(params.reward)
    funcs, weights = list(funcs), list(weights)
    if algo.overlong_buffer > 0:
        from trl.rewards import get_soft_overlong_punishment

        funcs.append(get_soft_overlong_punishment(params.max_completion_length, algo.overlong_buffer))
        weights.append(1.0)
    return funcs, weights


def _progress_callback_class():
    from transformers import TrainerCallback

    class ProgressLog(TrainerCallback):
        """One log line per optimiser step: reward, signal availability, completion length."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "reward" not in logs or not state.is_world_process_zero:
                return
            parts = [f"step {state.global_step}/{state.max_steps}", f"reward {logs['reward']:.3f}"]
            for key, name in (("frac_reward_zero_std", "signal"), ("completions/mean_length", "length"),
                              ("loss", "loss"), ("dynamic_sampling/dropped_groups", "dropped")):
                if key in logs:
                    value = 1 - logs[key] if name == "signal" else logs[key]
                    parts.append(f"{name} {value:.3g}")
            log.info("rl: %s", ", ".join(parts))

    return ProgressLog


@contextlib.contextmanager
def _user_errors(cfg: StageConfig):
    """Bad parameters, data or model references become a StageError: one line, no traceback."""
    from pydantic import ValidationError

    from job_runtime.io.data import DataError
    from job_runtime.io.modeling import ModelLoadError
    from job_runtime.train.rewards import RewardConfigError

    try:
        yield
    except (RLConfigError, DataError, ModelLoadError, RewardConfigError) as e:
        raise StageError(str(e)) from None
    except ValidationError as e:
        raise StageError(f"rl parameters of stage {cfg.id} are invalid: {e}") from None
    except (TypeError, ValueError) as e:  # GRPOConfig rejecting a value given under rl.trl
        raise StageError(
            f"rl settings of stage {cfg.id} are rejected by TRL (GRPOConfig or GRPOTrainer), because {e}. "
            "Fix the rl section (or rl.trl) of the experiment."
        ) from None


def _summary(history: list[dict[str, Any]], key: str) -> float | None:
    values = [h[key] for h in history if isinstance(h.get(key), (int, float))]
    return sum(values) / len(values) if values else None


def run(cfg: StageConfig) -> None:
    """Train the policy and publish model/, metrics.jsonl, results.json and _SUCCESS under cfg.output."""
    import torch
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig

    from job_runtime.io import data, modeling
    from job_runtime.train.checkpoints import CheckpointSync, publish_stage, resume_dir
    from job_runtime.train.dynamic_sampling import DynamicSamplingGRPOTrainer
    from job_runtime.train.heldout import HeldoutCallback
    from job_runtime.metrics import StageMetrics

    with _user_errors(cfg):
        params = RLParams.model_validate(cfg.params)
        algo = resolve_algorithm(cfg.algorithm, params)
        world = launcher_world_size()
        output = storage.normalize(cfg.output)
        cuda = torch.cuda.is_available()
        use_vllm = want_vllm(params)
        config_kwargs = grpo_config_kwargs(cfg, params, algo, "", world, use_vllm, cuda)
    if storage.is_complete(output):  # first storage call: an unreachable store fails here, before any work
        log.info("rl %s: already complete (%s has _SUCCESS); nothing to do", cfg.id, output)
        return
    work = Path(tempfile.mkdtemp(prefix=f"sftrl-rl-{cfg.id[:12]}-"))
    metrics_path = work / METRICS_JSONL
    sidecars = {METRICS_JSONL: metrics_path}
    metrics = None
    failed = True
    try:
        with _user_errors(cfg):
            args = GRPOConfig(**{**config_kwargs, "output_dir": str(work / "trainer")})
        # Resume: the newest complete checkpoint in storage, with the metrics history up to it.
        with args.main_process_first(local=True, desc="fetch checkpoint"):
            checkpoint = resume_dir(output, work / "resume", sidecars=sidecars)
        log.info(
            "rl %s: %s (loss %s, epsilon_high %.2f, dynamic sampling %s, overlong buffer %d), %s generation, "
            "%d prompts x %d rollouts per step = %d per device x %d accumulation x %d devices%s",
            cfg.id, algo.name, algo.loss_type, algo.epsilon_high, algo.dynamic_sampling, algo.overlong_buffer,
            "vLLM colocate" if use_vllm else "HF", params.global_batch_size, params.num_generations,
            params.per_device_batch_size, args.gradient_accumulation_steps, world,
            f", resuming from {checkpoint}" if checkpoint else "",
        )
        with _user_errors(cfg):
            processor = modeling.load_processor(cfg.model)
            model = modeling.load_model(cfg.model, dtype=torch.bfloat16 if cuda else torch.float32)
            with args.main_process_first(local=True, desc="load data"):
                train = data.rl_dataset(cfg.data, scale=cfg.scale, seed=cfg.seed)
                heldout_rows = data.heldout_rows(cfg.data, params.heldout_size) if cfg.data.get("heldout") else []
            train, too_long = drop_long_prompts(train, processor, params.max_prompt_length)
            if too_long:
                log.warning(
                    "rl %s: skipped %d of %d training prompts longer than rl.max_prompt_length=%d tokens (image "
                    "tokens included); raise max_prompt_length to keep them.", cfg.id, too_long,
                    too_long + len(train), params.max_prompt_length,
                )
            if len(train) == 0:
                raise RLConfigError(
                    f"rl.max_prompt_length={params.max_prompt_length} leaves no training prompt, because every "
                    "prompt is longer. Raise max_prompt_length."
                )
            funcs, weights = _reward_setup(params, algo)
        args.reward_weights = weights

        metrics = StageMetrics(cfg, metrics_path)
        heldout = HeldoutCallback(
            heldout_rows,
            processor,
            log_fn=metrics.log if args.process_index == 0 else None,
            should_stop=lambda: metrics.should_stop,
            every=params.heldout_every_steps,
            max_new_tokens=params.max_completion_length,
            batch_size=HELDOUT_BATCH,
            best_dir=work / "best-heldout" if params.deceptive.stop else None,
        )
        with _user_errors(cfg):  # TRL checks some rl.trl values only here
            trainer = DynamicSamplingGRPOTrainer(
                model=model,
                reward_funcs=funcs,
                args=args,
                train_dataset=train,
                processing_class=processor,
                callbacks=[metrics.trainer_callback(), heldout, CheckpointSync(output, KEEP_CHECKPOINTS, sidecars)],
                dynamic_sampling=algo.dynamic_sampling,
                max_rounds=params.dynamic_sampling_max_rounds,
            )
        heldout.trainer = trainer
        trainer.remove_callback(PrinterCallback)  # one compact line per step instead of TRL's dicts
        trainer.add_callback(_progress_callback_class()())
        trainer.train(resume_from_checkpoint=checkpoint)

        final = work / "model"
        if heldout.stopped_on_deception and heldout.best_dir and heldout.best_dir.exists():
            final = heldout.best_dir
        else:
            trainer.save_model(str(final))
            if trainer.is_world_process_zero():
                processor.save_pretrained(str(final))
        if trainer.is_world_process_zero():
            history = trainer.state.log_history
            zero_std = _summary(history, "frac_reward_zero_std")
            results = {
                "kind": "rl",
                "algorithm": algo.name,
                "global_step": trainer.state.global_step,
                "train_prompts": len(train),
                "skipped_long_prompts": too_long,
                "heldout_accuracy": heldout.history[-1][1] if heldout.history else None,
                "best_heldout": {"step": heldout.best[1], "accuracy": heldout.best[0]} if heldout.best else None,
                "stopped_on_deception": heldout.stopped_on_deception,
                "final_model": "best_heldout" if final == heldout.best_dir else "last",
                "mean_reward": _summary(history, "reward"),
                "mean_signal_availability": None if zero_std is None else 1.0 - zero_std,
            }
            storage.write_json(storage.normalize(work / RESULTS_JSON), results)
            metrics.close()
            publish_stage(
                output,
                final,
                {METRICS_JSONL: metrics_path, RESULTS_JSON: work / RESULTS_JSON},
                kind="rl",
                global_step=trainer.state.global_step,
            )
        failed = False
    finally:
        if metrics is not None:
            metrics.close(failed=failed)
        shutil.rmtree(work, ignore_errors=True)
