"""The ``rl`` stage: GRPO or DAPO on image prompts with TRL, from a base model or an SFT stage.

setup -> run -> publish:

1. Setup. Parameters are `contract.RLParams`; `recipes.resolve_rl` turns them, the algorithm
   (grpo | dapo) and the recipe (``rl.recipe``: easyr1, the study's, or trl) into GRPOConfig fields
   and sftrl's own behaviour, each value with its source (`sftrl plan --explain` prints the same).
   Under easyr1 a rollout batch of ``global_batch_size`` prompts x ``num_generations`` rollouts is
   generated once (TRL ``steps_per_generation``) and the policy is updated once per mini-batch of
   ``mini_batch_size`` prompts (``gradient_accumulation_steps``), with old log-probs from the
   generating policy, clip 0.2 / 0.3 (dapo: 0.28), dual clip 3 (TRL ``delta``), k3 KL 1e-2 for grpo,
   constant lr, weight decay 1e-2, the mathruler accuracy reward, images fitted to 262144 ..
   4194304 pixels (`job_runtime.io.images`), prompts over 2048 tokens skipped; dapo adds EasyR1's
   online filter. Any GRPOConfig field can still be set under ``rl.trl``. Rollouts come from vLLM
   colocated with training or from HF ``generate``, as ``rl.generation.backend`` chooses
   (`want_vllm`; ``auto``: vLLM when it can run here, on a GPU or as the CPU build).
2. Run. `DynamicSamplingGRPOTrainer` (TRL's trainer with EasyR1's per-update loss normaliser and
   online filter), with callbacks:
   metrics (metrics.jsonl + Prometheus), held-out accuracy, checkpoint sync. The newest complete
   checkpoint in storage is resumed, with its metrics history.
3. Publish: ``model/`` (the final policy, or the best by held-out accuracy when the deceptive-
   reward detector stopped the run), ``metrics.jsonl``, ``results.json``, then ``_SUCCESS``.

The stage reads its StageConfig and nothing else from the environment but credentials and the
launcher's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, PET_*).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

from job_runtime.io import scratch, storage
from job_runtime.contract import METRICS_JSONL, RESULTS_JSON, RecipeError, RLParams, StageConfig
from job_runtime.recipes import RL_KEEP_CHECKPOINTS, Resolved, resolve_rl
from job_runtime.errors import StageError
from job_runtime.train.setup import TrainerConfigError, check_trl_overrides, launcher_world_size

log = logging.getLogger(__name__)

KEEP_CHECKPOINTS = RL_KEEP_CHECKPOINTS
HELDOUT_BATCH = 32


RLConfigError = TrainerConfigError  # an rl parameter is unusable; the message names it and what to do


# --- pure setup ------------------------------------------------------------------------------


def resolve(cfg: StageConfig, params: RLParams, world_size: int) -> Resolved:
    """The stage's resolved settings (`recipes.resolve_rl`), a config error naming the field.

    >>> from job_runtime.contract import Labels
    >>> cfg = StageConfig(kind="rl", id="x", output="file:///x", model="m", algorithm="grpo",
    ...                   labels=Labels(experiment="e", run="r", stage="x", model="m", method="grpo"))
    >>> r = resolve(cfg, RLParams(), 8)
    >>> r["gradient_accumulation_steps"], r["steps_per_generation"], r["mini_batch_size"]
    (20, 80, 128)
    """
    try:
        return resolve_rl(params, cfg.algorithm, world_size, seed=cfg.seed)
    except RecipeError as e:
        raise RLConfigError(str(e)) from None


def want_vllm(params: RLParams) -> bool:
    """vLLM colocate rollouts? As rl.generation.backend says (job_runtime.eval.generation.choose_backend)."""
    from job_runtime.eval.generation import GenerationError, choose_backend, prepare_vllm_env

    try:
        use = choose_backend(params.generation, "rl") == "vllm"
    except GenerationError as e:
        raise RLConfigError(str(e)) from None
    if use:
        prepare_vllm_env(params.generation)
    return use


def grpo_config_kwargs(
    cfg: StageConfig, params: RLParams, recipe: Resolved, output_dir: str, world_size: int, use_vllm: bool, cuda: bool
) -> dict[str, Any]:
    """The GRPOConfig arguments of a stage: the resolved recipe (rl.trl included), then the machine's."""
    from trl import GRPOConfig

    check_trl_overrides(params.trl, GRPOConfig, "rl")
    kwargs: dict[str, Any] = {
        **recipe.trl_kwargs(),
        "output_dir": output_dir,
        "save_strategy": "steps",
        "report_to": [],
        "use_cpu": not cuda,
        "bf16": cuda,
        "use_vllm": use_vllm,
        "dataloader_num_workers": 0,
    }
    if use_vllm:
        kwargs["vllm_mode"] = "colocate"
        if params.generation.gpu_memory_utilization:
            kwargs["vllm_gpu_memory_utilization"] = params.generation.gpu_memory_utilization
        if params.generation.max_model_len:
            kwargs["vllm_max_model_length"] = params.generation.max_model_len
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


def _reward_setup(params: RLParams, recipe: Resolved):
    """(reward functions, weights): the study's weighted rewards plus DAPO's overlong shaping."""
    from job_runtime.train import rewards

    funcs, weights = rewards.build(params.reward, recipe["accuracy_rule"])
    funcs, weights = list(funcs), list(weights)
    if recipe["overlong_buffer"] > 0:
        from trl.rewards import get_soft_overlong_punishment

        funcs.append(get_soft_overlong_punishment(params.max_completion_length, recipe["overlong_buffer"]))
        weights.append(1.0)
    return funcs, weights


def _heldout_grader(rule: str):
    """grade(completion, gold, choices) -> bool with the training accuracy rule, so held-out
    accuracy judges as the reward does (EasyR1 validates with its reward function)."""
    from job_runtime.train import rewards

    fn = rewards.ACCURACY_RULES[rule]

    def grade(completion: str, gold: str, choices: Any = None) -> bool:
        return fn([completion], answer=[gold], choices=[choices] if choices else None)[0] == 1.0

    return grade


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

    from job_runtime.eval.contamination import ContaminationSetupError
    from job_runtime.io.data import DataError
    from job_runtime.io.modeling import ModelLoadError
    from job_runtime.train.rewards import RewardConfigError

    try:
        yield
    except (RLConfigError, RecipeError, DataError, ModelLoadError, RewardConfigError, ContaminationSetupError) as e:
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

    from job_runtime.eval.contamination import index_for
    from job_runtime.io import data, modeling
    from job_runtime.train.checkpoints import CheckpointSync, publish_stage, resume_dir
    from job_runtime.train.dynamic_sampling import DynamicSamplingGRPOTrainer, FilterExhausted
    from job_runtime.train.heldout import HeldoutCallback
    from job_runtime.metrics import StageMetrics

    with _user_errors(cfg):
        params = RLParams.model_validate(cfg.params)
        world = launcher_world_size()
        recipe = resolve(cfg, params, world)
        output = storage.normalize(cfg.output)
        cuda = torch.cuda.is_available()
        use_vllm = want_vllm(params)
        config_kwargs = grpo_config_kwargs(cfg, params, recipe, "", world, use_vllm, cuda)
    if storage.is_complete(output):  # first storage call: an unreachable store fails here, before any work
        log.info("rl %s: already complete (%s has _SUCCESS); nothing to do", cfg.id, output)
        return
    work = scratch.mkdtemp(f"rl-{cfg.id[:12]}")
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
            "rl %s: %s, recipe %s (beta %g, clip %g/%g, dual clip %s, %s accuracy, online filtering %s, overlong "
            "buffer %d), %s generation; %d prompts x %d rollouts per rollout batch, %d updates of %d prompts = %d "
            "per device x %d accumulation x %d devices%s",
            cfg.id, recipe["algorithm"], params.recipe, args.beta, args.epsilon, args.epsilon_high, args.delta,
            recipe["accuracy_rule"], recipe["online_filtering"], recipe["overlong_buffer"],
            "vLLM colocate" if use_vllm else "HF", params.global_batch_size, params.num_generations,
            recipe["updates_per_rollout_batch"], recipe["mini_batch_size"], params.per_device_batch_size,
            args.gradient_accumulation_steps, world, f", resuming from {checkpoint}" if checkpoint else "",
        )
        with _user_errors(cfg):
            processor = modeling.load_processor(cfg.model)
            model = modeling.load_model(cfg.model, dtype=torch.bfloat16 if cuda else torch.float32)
            with args.main_process_first(local=True, desc="load data"):
                pixels = {"min_pixels": recipe["min_pixels"], "max_pixels": recipe["max_pixels"]}
                contamination = index_for(cfg.decontaminate)  # benchmark items never trained on
                train, data_report = data.load_rl(cfg.data, scale=cfg.scale,  # rl_dataset's rows, with skip counts
                                                  exclude=contamination.reason if contamination else None)
                train = data.fit_images(train, **pixels)
                heldout_rows = (data.heldout_rows(cfg.data, params.heldout_size, **pixels)
                                if cfg.data.get("heldout") else [])
            max_prompt = recipe["max_prompt_length"]
            train, too_long = drop_long_prompts(train, processor, max_prompt)
            if too_long:
                log.warning(
                    "rl %s: skipped %d of %d training prompts longer than rl.max_prompt_length=%d tokens (image "
                    "tokens included); raise max_prompt_length to keep them.", cfg.id, too_long,
                    too_long + len(train), max_prompt,
                )
            if len(train) == 0:
                raise RLConfigError(
                    f"rl.max_prompt_length={max_prompt} leaves no training prompt, because every "
                    "prompt is longer. Raise max_prompt_length."
                )
            funcs, weights = _reward_setup(params, recipe)
        args.reward_weights = weights
        image_token = getattr(model.config, "image_token_id", None)
        if use_vllm and image_token is not None:
            # TRL suppresses the image token in HF generate only; from vLLM, a sampled one would not match
            # the image features in the training forward pass ("Image features and image tokens do not match").
            args.generation_kwargs = {"logit_bias": {int(image_token): -100.0}, **(args.generation_kwargs or {})}

        metrics = StageMetrics(cfg, metrics_path)
        heldout = HeldoutCallback(
            heldout_rows,
            processor,
            log_fn=metrics.log if args.process_index == 0 else None,
            should_stop=lambda: metrics.should_stop,
            every=recipe["heldout_every_steps"],
            max_new_tokens=params.max_completion_length,
            temperature=recipe["heldout_temperature"],
            top_p=recipe["heldout_top_p"],
            grade=_heldout_grader(recipe["accuracy_rule"]),
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
                online_filtering=recipe["online_filtering"],
                **({"filter_key": recipe["filter_key"], "filter_low": recipe["filter_low"],
                    "filter_high": recipe["filter_high"], "chunk": recipe["mini_rollout_batch_size"],
                    "max_try": recipe["max_try_make_batch"]} if recipe["online_filtering"] else {}),
            )
        heldout.trainer = trainer
        trainer.remove_callback(PrinterCallback)  # one compact line per step instead of TRL's dicts
        trainer.add_callback(_progress_callback_class()())
        try:
            trainer.train(resume_from_checkpoint=checkpoint)
        except FilterExhausted as e:
            raise StageError(f"rl stage {cfg.id}: {e}") from None

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
                "algorithm": recipe["algorithm"],
                "recipe": params.recipe,
                "global_step": trainer.state.global_step,
                "train_prompts": len(train),
                "skipped_long_prompts": too_long,
                "data": data_report.as_dict(),
                "heldout_accuracy": heldout.history[-1][1] if heldout.history else None,
                "best_heldout": {"step": heldout.best[1], "accuracy": heldout.best[0]} if heldout.best else None,
                "stopped_on_deception": heldout.stopped_on_deception,
                "final_model": "best_heldout" if final == heldout.best_dir else "last",
                "mean_reward": _summary(history, "reward"),
                "mean_signal_availability": None if zero_std is None else 1.0 - zero_std,
                "first_step_signal_availability": next(
                    (1.0 - h["frac_reward_zero_std"] for h in history if "frac_reward_zero_std" in h), None),
                "decontamination": contamination.summary() if contamination else None,
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
