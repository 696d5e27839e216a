"""The contract between the controller and job_runtime.

Three things live here and nowhere else: the stage-config schema (what the controller writes to
``stages/<id>/stage.json`` and a stage reads back), the artifact layout under the storage root,
and the metric names. This module imports neither torch nor transformers: together with
``job_runtime.io.storage`` it is the only part of job_runtime the controller may import.

The ``*Params`` models double as the ``sft``/``rl``/``eval`` sections of the experiment file, so a
knob has one definition, one default and one help text.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = "sftrl/v1"

# The runtime's recipe version per stage kind, part of every stage id: bump a kind's number whenever
# what its stage computes changes for the same inputs and parameters (training loop, reward, data
# selection, prompts, scoring rules), so finished stages made by the old recipe are redone.
RECIPE_VERSION: dict[str, int] = {"sft": 1, "rl": 1, "eval": 1, "distill": 1, "probe": 1}

StageKind = Literal["sft", "rl", "eval", "distill", "probe"]
STAGE_KINDS: tuple[str, ...] = ("sft", "rl", "eval", "distill", "probe")
Algorithm = Literal["grpo", "dapo"]
RLRecipe = Literal["easyr1", "trl"]
SFTRecipe = Literal["llamafactory", "trl"]
AccuracyRule = Literal["mathruler", "lenient"]
FilterKey = Literal["overall", "accuracy"]

# --- exit codes -----------------------------------------------------------------------------
# The training operator's ExitCode restart policy retries 128-255 and gives up on 1-127.
EXIT_OK = 0
EXIT_FAILED = 1  # a code or data failure: retrying would fail the same way
EXIT_CONFIG = 2  # the stage config is invalid
EXIT_RETRYABLE = 200  # infrastructure (storage unreachable, preempted): worth a retry
EXIT_LEASE = 201  # another live writer holds the stage's lease (job_runtime/io/lease.py): wait, then retry


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# --- parameters: the experiment's sft / rl / eval sections ----------------------------------


GenerationBackend = Literal["auto", "hf", "vllm"]


class GenerationParams(_Strict):
    """Which engine generates (eval responses, RL rollouts) and how much memory it may take."""

    backend: GenerationBackend = Field(
        "auto",
        description="vllm: vLLM (in RL colocated with training); hf: transformers generate; auto: vLLM when it "
        "is installed and its platform finds a device it runs on (a GPU, or the CPU of a CPU build), else hf.",
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1,
        description="vLLM's share of GPU memory (default: 0.85 for eval, TRL's 0.3 for RL colocate).",
    )
    max_model_len: int | None = Field(
        None, ge=16, description="vLLM's longest sequence (default: the model's, at most 16384)."
    )
    cpu_kv_cache_gib: int = Field(
        2, ge=1, description="KV cache of a CPU build of vLLM in whole GiB (VLLM_CPU_KVCACHE_SPACE); unused on a GPU."
    )


class SFTParams(_Strict):
    """Supervised fine-tuning on verified reasoning traces (paper: LLaMA-Factory settings).

    Fields left unset (None) take the value of ``recipe``; `resolve_sft` says which and why.
    """

    recipe: SFTRecipe = Field(
        "llamafactory",
        description="'llamafactory': the study's SFT (LLaMA-Factory examples/train_full/qwen2_5vl_full_sft.yaml: "
        "vision tower and projector frozen, cutoff 2048, images <= 262144 px); 'trl': TRL's SFTConfig defaults.",
    )
    epochs: float = Field(3.0, gt=0, description="Passes over the training subset.")
    learning_rate: float = Field(1.0e-5, gt=0, description="Peak learning rate.")
    global_batch_size: int = Field(
        128, ge=1, description="Sequences per optimiser step = per-device batch x accumulation x world size."
    )
    per_device_batch_size: int = Field(4, ge=1, description="Sequences per device per forward pass.")
    lr_scheduler_type: str | None = Field(None, description="Any transformers scheduler name (recipe: cosine / linear).")
    warmup_ratio: float | None = Field(None, ge=0, lt=1, description="Share of steps spent warming up (recipe: 0.1 / 0).")
    max_length: int | None = Field(
        None, ge=16, description="Longest tokenised example, longer ones truncated (recipe: cutoff_len 2048 / 1024)."
    )
    freeze_vision_tower: bool | None = Field(None, description="Keep the vision encoder's weights (recipe: true / false).")
    freeze_multi_modal_projector: bool | None = Field(
        None, description="Keep the vision-to-language merger's weights (recipe: true / false)."
    )
    image_max_pixels: int | None = Field(
        None, ge=1, description="Downscale larger images to this many pixels (recipe: 262144 / processor default)."
    )
    image_min_pixels: int | None = Field(
        None, ge=1, description="Upscale smaller images to this many pixels (recipe: 1024 / processor default)."
    )
    gradient_checkpointing: bool = Field(True, description="Trade compute for activation memory.")
    save_steps: int = Field(500, ge=1, description="Save (and sync to storage) a checkpoint every N steps.")
    trl: dict[str, Any] = Field(
        default_factory=dict, description="Any other trl.SFTConfig field, passed through unchanged."
    )


class RewardWeights(_Strict):
    """Reward = accuracy x w_acc + format x w_fmt (+ custom rewards), EasyR1's 0.9 / 0.1 by default."""

    accuracy: float = Field(0.9, ge=0, description="Weight of the verified-answer reward.")
    format: float = Field(0.1, ge=0, description="Weight of the <think>...</think>...\\boxed{} format reward.")
    accuracy_rule: AccuracyRule | None = Field(
        None,
        description="'mathruler': the last \\boxed{} of the response graded by mathruler's grade_answer, no box = 0 "
        "(EasyR1 examples/reward_function/math.py); 'lenient': sftrl's eval extraction (after </think>, 'answer is', "
        "<answer> tags, letters). Default: the recipe's (easyr1: mathruler, trl: lenient).",
    )
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="Extra rewards by dotted import path (module.function) -> weight.",
    )


class DeceptiveParams(_Strict):
    """The online deceptive-reward detector (reward rising while held-out accuracy falls)."""

    window: int = Field(10, ge=3, description=(
        "Most recent held-out evaluations the detector looks back over: every run of 3 or more of them "
        "ending at the newest is tested for a fall."))
    min_reward_slope: float = Field(0.0, description=(
        "Reward slope per evaluation above which reward 'rises' (the slope's lower 95% bound must exceed it)."))
    max_accuracy_slope: float = Field(0.0, description=(
        "Accuracy slope per evaluation below which accuracy 'falls' (the slope's upper bound, noise_z standard "
        "errors above it, must be below this)."))
    noise_z: float = Field(4.1, gt=0, description=(
        "Standard errors of held-out sampling noise (binomial at rl.heldout_size items) by which a fall must "
        "stand out. 4.1 keeps false alarms under 0.5% per run of 30 evaluations (bench/deceptive_detector.py)."))
    stop: bool = Field(False, description="Stop the stage when flagged, keeping the best checkpoint by accuracy.")


class ProbeParams(_Strict):
    """rl.probe: before an RL stage, sample rollouts of the policy it starts from on a fixed sample of
    its prompts, and predict its signal availability (the share of prompts with mixed outcomes)."""

    enabled: bool = Field(True, description="Run a probe stage in front of every RL stage.")
    prompts: int = Field(256, ge=1, description="RL prompts probed: the first N of the RL subset's fixed order.")
    samples: int | None = Field(
        None, ge=2, description="Rollouts per prompt (default: rl.num_generations, the GRPO group size)."
    )
    batch_size: int = Field(64, ge=1, description="Prompts per generation batch (HF backend).")


class RLParams(_Strict):
    """GRPO / DAPO (paper: EasyR1 settings).

    Fields left unset (None) take the value of ``recipe``; `resolve_rl` says which and why.
    """

    recipe: RLRecipe = Field(
        "easyr1",
        description="'easyr1': the study's RL (EasyR1 examples/config.yaml and its DAPO example); 'trl': TRL's "
        "GRPOConfig defaults (one update per rollout batch, no KL) with the DAPO paper's choices for dapo.",
    )
    epochs: float = Field(2.0, gt=0, description="Passes over the training prompts.")
    learning_rate: float = Field(1.0e-6, gt=0, description="Peak learning rate.")
    global_batch_size: int = Field(
        512, ge=1, description="Prompts per rollout batch (EasyR1 data.rollout_batch_size); each gets num_generations rollouts."
    )
    mini_batch_size: int | None = Field(
        None, ge=1,
        description="Prompts per optimiser update (EasyR1 worker.actor.global_batch_size); must divide "
        "global_batch_size. Default: easyr1 a quarter of it (512 / 128: 4 updates per rollout batch), trl all of it.",
    )
    per_device_batch_size: int = Field(
        8, ge=1, description="Completions per device per forward pass (TRL's per_device_train_batch_size)."
    )
    num_generations: int = Field(10, ge=2, description="Rollouts per prompt (a GRPO group); must be >= 2.")
    max_prompt_length: int | None = Field(
        None, ge=8, description="Longest prompt in tokens, image tokens included; longer are skipped (recipe: 2048 / 4096)."
    )
    max_completion_length: int = Field(2048, ge=1, description="Longest rollout in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of rollouts.")
    beta: float | None = Field(
        None, ge=0, description="KL coefficient (k3 = EasyR1's low_var_kl) against the start policy (recipe easyr1: "
        "1e-2 for grpo, 0 for dapo; trl: 0).",
    )
    epsilon: float = Field(0.2, gt=0, description="Lower clip range of the policy ratio.")
    epsilon_high: float | None = Field(
        None, gt=0, description="Upper clip range (recipe easyr1: 0.3 grpo, 0.28 dapo; trl: epsilon, 0.28 dapo)."
    )
    dual_clip: float | None = Field(
        None, gt=1, description="Dual-clip constant C: the loss of a negative-advantage token is capped at C x |A| "
        "(TRL's delta; recipe easyr1: 3.0, trl: none).",
    )
    lr_scheduler_type: str | None = Field(None, description="Any transformers scheduler (recipe: constant / linear).")
    weight_decay: float | None = Field(None, ge=0, description="AdamW weight decay (recipe: 1e-2 / 0).")
    online_filtering: bool | None = Field(
        None, description="Keep only groups whose mean filter_key score lies in (filter_low, filter_high), generating "
        "more until the rollout batch is full (default: on for dapo only).",
    )
    filter_key: FilterKey | None = Field(
        None, description="'overall': the weighted total reward (EasyR1's default); 'accuracy': the accuracy reward "
        "(the DAPO paper's). Default: easyr1 overall, trl accuracy.",
    )
    filter_low: float = Field(0.01, ge=0, le=1, description="Groups with a mean score at or below this are dropped.")
    filter_high: float = Field(0.99, ge=0, le=1, description="Groups with a mean score at or above this are dropped.")
    mini_rollout_batch_size: int | None = Field(
        None, ge=1, description="Prompts per extra generation while filtering (EasyR1 data.mini_rollout_batch_size; "
        "default: 128 as in EasyR1's DAPO example, at most global_batch_size).",
    )
    max_try_make_batch: int = Field(
        20, ge=1, description="Generations of mini_rollout_batch_size prompts per rollout batch before the stage fails "
        "for lack of signal (EasyR1 trainer.max_try_make_batch).",
    )
    overlong_buffer: int | None = Field(
        None, ge=0, description="DAPO soft overlong penalty buffer in tokens (recipe easyr1: 0; trl: max/8 for dapo)."
    )
    min_pixels: int | None = Field(
        None, ge=1, description="Upscale smaller images to this many pixels before the processor (recipe: 262144 / none)."
    )
    max_pixels: int | None = Field(
        None, ge=1, description="Downscale larger images to this many pixels before the processor (recipe: 4194304 / none)."
    )
    reward: RewardWeights = Field(default_factory=RewardWeights, description="Reward composition.")
    heldout_every_steps: int | None = Field(
        None, ge=1, description="Evaluate held-out accuracy every N optimiser steps (recipe easyr1: every 5 rollout "
        "batches, EasyR1 trainer.val_freq; trl: 10).",
    )
    heldout_temperature: float | None = Field(
        None, ge=0, description="Held-out sampling temperature, 0 = greedy (recipe: 0.6 / 0)."
    )
    heldout_top_p: float | None = Field(None, gt=0, le=1, description="Held-out nucleus sampling (recipe: 0.95 / 1.0).")
    heldout_size: int = Field(256, ge=1, description="Items of the fixed held-out set.")
    save_steps: int = Field(50, ge=1, description="Save (and sync to storage) a checkpoint every N steps.")
    generation: GenerationParams = Field(
        default_factory=GenerationParams, description="Rollout engine: vLLM colocated with training, or HF generate."
    )
    deceptive: DeceptiveParams = Field(default_factory=DeceptiveParams, description="Deceptive-reward detector.")
    trl: dict[str, Any] = Field(
        default_factory=dict, description="Any other trl.GRPOConfig field, passed through unchanged."
    )
    probe: ProbeParams = Field(default_factory=ProbeParams, description="The RL-readiness probe in front of each RL stage.")
    min_signal: float | None = Field(
        None, ge=0, le=1,
        description="Skip an RL stage whose probe predicts a smaller share of prompts with mixed outcomes "
                    "(e.g. 0.1; default: off, every RL stage runs).",
    )

    @model_validator(mode="after")
    def _layout(self) -> RLParams:
        if self.filter_low >= self.filter_high:
            raise ValueError(
                f"filter_low ({self.filter_low}) must be below filter_high ({self.filter_high}), because groups are "
                "kept when their mean score lies strictly between them. Lower filter_low or raise filter_high."
            )
        rl_mini_batch_size(self)  # raises when the mini-batch does not divide the rollout batch
        return self

    @model_validator(mode="before")
    @classmethod
    def _use_vllm(cls, data: Any) -> Any:
        """The former ``use_vllm: true|false`` reads as ``generation.backend: vllm|hf``."""
        if isinstance(data, dict) and "use_vllm" in data:
            data = dict(data)
            flag = data.pop("use_vllm")
            if flag is not None:
                backend = "vllm" if flag else "hf"
                gen = dict(data.get("generation") or {})
                if gen.get("backend", "auto") not in ("auto", backend):
                    raise ValueError(
                        f"use_vllm: {flag} contradicts generation.backend: {gen['backend']}, because use_vllm is the "
                        "former name of that setting. Keep only generation.backend."
                    )
                gen["backend"] = backend
                data["generation"] = gen
        return data


# RLParams fields that steer the controller (the probe, the skip rule), not the RL stage's training.
RL_CONTROLLER_FIELDS: tuple[str, ...] = ("probe", "min_signal")

# The registered benchmarks (job_runtime.eval.benchmarks.registry; a test keeps the two equal), here so
# the controller can refuse a misspelt name at `sftrl validate` without importing the runtime.
BENCHMARK_NAMES: tuple[str, ...] = (
    "mathvista", "mathvision", "mathvision_testmini", "mathverse", "wemath", "gpqa", "math500", "mmlu",
    "hallusionbench", "mmbench", "synthetic",
)


class EvalParams(_Strict):
    """Evaluation of a model on a list of benchmarks."""

    benchmarks: list[str] = Field(
        default_factory=lambda: ["mathvista", "mathvision", "mathverse", "wemath"],
        min_length=1,
        description="Benchmark names from job_runtime.eval.benchmarks.registry.",
    )
    prompt: Literal["study", "official"] = Field(
        "study", description="'study': the EasyR1 format prompt; 'official': each benchmark's own prompt."
    )
    protocol: Literal["official", "strict"] = Field(
        "official",
        description="Scoring protocol: 'official' reproduces each benchmark's own pipeline (judge-free); "
        "'strict' is sftrl's robust scorer, closer to the truth than to the official verdicts.",
    )
    max_new_tokens: int = Field(2048, ge=1, description="Longest response in tokens.")
    temperature: float = Field(0.0, ge=0, description="0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling (only when temperature > 0).")
    batch_size: int = Field(64, ge=1, description="Prompts per generation batch (HF backend).")
    limit: int | None = Field(None, ge=1, description="Score only the first N items of each benchmark (smoke tests).")
    data: dict[str, str] = Field(
        default_factory=dict, description="Per-benchmark data override: name -> local path, s3:// URI or HF id."
    )
    judge: str | None = Field(
        None, description="OpenAI-compatible endpoint of an optional LLM answer extractor (off by default)."
    )
    generation: GenerationParams = Field(
        default_factory=GenerationParams, description="Generation engine: vLLM or HF generate."
    )

    @field_validator("benchmarks")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in BENCHMARK_NAMES:
                near = difflib.get_close_matches(name, BENCHMARK_NAMES, n=1)
                hint = f"; did you mean '{near[0]}'?" if near else ""
                raise ValueError(f"unknown benchmark '{name}'{hint} Known: {', '.join(BENCHMARK_NAMES)}")
        return v


class DistillParams(_Strict):
    """A data source built by distillation: teacher rollouts on prompts, verified, kept as SFT traces."""

    teacher: str = Field(
        description="Teacher model: HF id, local path, s3:// URI, builtin:// model, or builtin://synthetic-solver "
                    "(the synthetic task's offline solver).",
    )
    prompts: str = Field(
        description="Questions with answers and images (the RL columns): parquet/jsonl path, s3:// URI, HF id or builtin://.",
    )
    samples_per_prompt: int = Field(8, ge=1, description="Teacher responses sampled per prompt.")
    keep_per_prompt: int = Field(1, ge=1, description="Verified traces kept per prompt: shortest first, duplicates removed.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of the teacher (0: greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of the teacher.")
    max_new_tokens: int = Field(2048, ge=1, description="Longest teacher response in tokens.")
    max_prompts: int | None = Field(None, ge=1, description="Distill only the first N prompts of the fixed order.")
    batch_size: int = Field(64, ge=1, description="Prompts per generation batch (HF backend).")
    reward: RewardWeights | None = Field(
        None, description="Rewards that verify a trace (accuracy and format must both be 1); default: rl.reward.",
    )
    generation: GenerationParams = Field(
        default_factory=GenerationParams, description="The teacher's generation engine (vllm, hf or auto).",
    )


class ProbeRun(_Strict):
    """The parameters of a probe stage, resolved from rl and rl.probe by the planner."""

    prompts: int = Field(ge=1, description="Prompts probed (the first N of the RL subset).")
    samples: int = Field(ge=2, description="Rollouts per prompt.")
    temperature: float = Field(gt=0, description="Sampling temperature (rl.temperature).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling (rl.top_p).")
    max_new_tokens: int = Field(ge=1, description="Longest rollout (rl.max_completion_length).")
    min_pixels: int | None = Field(None, ge=1, description="Images resized up to this many pixels, as the RL stage's.")
    max_pixels: int | None = Field(None, ge=1, description="Images resized down to this many pixels, as the RL stage's.")
    reward: RewardWeights = Field(
        default_factory=RewardWeights, description="The RL stage's reward (rl.reward, its accuracy rule resolved)."
    )
    batch_size: int = Field(64, ge=1, description="Prompts per generation batch (HF backend).")
    generation: GenerationParams = Field(
        default_factory=GenerationParams, description="The generation engine (rl.generation: the RL stage's choice).",
    )


class DecontamParams(_Strict):
    """Training prompts matching an evaluation item of the experiment's benchmarks are dropped."""

    enabled: bool = Field(True, description="Drop SFT, RL, probe and distill prompts that match a benchmark item.")
    ngram: int = Field(8, ge=3, description="Word n-gram length of the question-text match (open-r1: 8).")
    template_items: int = Field(
        5, ge=2, description="A text n-gram shared by this many items of one benchmark is template text, not used.",
    )
    image_distance: int = Field(6, ge=0, le=16, description="Max differing bits of the 64-bit perceptual image hash.")


class Decontamination(DecontamParams):
    """What a stage needs to decontaminate its prompts: the settings plus the benchmarks to load."""

    benchmarks: list[str] = Field(default_factory=list, description="Benchmarks whose items are excluded.")
    data: dict[str, str] = Field(default_factory=dict, description="Per-benchmark data overrides (eval.data).")


PARAMS_BY_KIND: dict[str, type[BaseModel]] = {
    "sft": SFTParams, "rl": RLParams, "eval": EvalParams, "distill": DistillParams, "probe": ProbeRun,
}


# --- the stage config: stages/<id>/stage.json ----------------------------------------------


class Labels(_Strict):
    """Who a stage belongs to; becomes Prometheus labels and Kubernetes labels."""

    experiment: str
    run: str
    stage: str
    model: str
    method: str
    data: str = ""
    scale: str = ""
    seed: str = ""


class StageConfig(_Strict):
    """Everything a stage needs. A stage reads nothing else but credentials and launcher variables."""

    schema_version: str = SCHEMA_VERSION
    kind: StageKind
    id: str = Field(description="Content hash of kind, parameters and parents' ids.")
    output: str = Field(description="URI of stages/<id>/ under the storage root.")
    model: str = Field(
        description="Model to start from: HF id, local path, builtin://tiny-qwen2-vl, or a parent's model/ URI."
    )
    data: dict[str, str] = Field(
        default_factory=dict, description="Dataset URIs by role: 'train', 'heldout' (sft/rl)."
    )
    scale: int | None = Field(None, description="Training examples: the first N of a fixed shuffle.")
    seed: int = 0
    algorithm: Algorithm | None = Field(None, description="rl only: grpo or dapo.")
    params: dict[str, Any] = Field(default_factory=dict, description="The kind's *Params, fully resolved.")
    deepspeed: dict[str, Any] | None = Field(None, description="A concrete DeepSpeed config, or None.")
    parents: list[str] = Field(default_factory=list, description="Ids of the stages this one depends on.")
    labels: Labels
    metrics_port: int | None = Field(None, description="Serve Prometheus metrics on this port from rank 0.")
    pushgateway: str | None = Field(None, description="Push final outcomes to this Pushgateway URL.")
    decontaminate: Decontamination | None = Field(
        None, description="sft, rl, probe, distill: drop prompts matching these benchmarks' items (None: off).",
    )

    def typed_params(self) -> BaseModel:
        """The parameters validated against this kind's model (SFTParams, RLParams or EvalParams)."""
        return PARAMS_BY_KIND[self.kind].model_validate(self.params)


# --- artifact layout ------------------------------------------------------------------------

STAGES_DIR = "stages"
EXPERIMENTS_DIR = "experiments"
STAGE_JSON = "stage.json"
SUCCESS = "_SUCCESS"  # written last: the only proof that a stage is complete
FAILED = "_FAILED"  # why the last attempt failed (error line, exit code, log); removed when an attempt starts
METRICS_JSONL = "metrics.jsonl"  # one JSON object per logged step
RESULTS_JSON = "results.json"  # eval: per-benchmark headline metric and breakdowns
SAMPLES_JSONL = "samples.jsonl"  # eval: one row per scored item
MODEL_DIR = "model"  # final weights + processor, loadable by from_pretrained
CHECKPOINTS_DIR = "checkpoints"  # checkpoint-<step>/ each with its own _SUCCESS
LOG_TXT = "log.txt"  # local executor: the stage's stdout and stderr
DISTILL_DATA = "data/sft.parquet"  # distill: the verified traces, read by the sft stages of its data source
SPEC_YAML = "spec.yaml"
PLAN_JSON = "plan.json"
REPORT_DIR = "report"


def stage_uri(root: str, stage_id: str) -> str:
    return f"{root.rstrip('/')}/{STAGES_DIR}/{stage_id}"


def experiment_uri(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{EXPERIMENTS_DIR}/{name}"


# --- metrics --------------------------------------------------------------------------------
# metrics.jsonl rows: {"step": int, "time": unix seconds, <key>: float, ...} where keys are TRL's
# logged names plus the derived keys below. Prometheus names follow conventions: prefix sftrl_,
# base units, _ratio for 0..1, _total for counters.

METRIC_LABELS: tuple[str, ...] = ("experiment", "run", "stage", "model", "method", "data", "scale", "seed")

# metrics.jsonl key -> (Prometheus gauge name, help)
TRAIN_METRICS: dict[str, tuple[str, str]] = {
    "loss": ("sftrl_train_loss", "Training loss."),
    "learning_rate": ("sftrl_learning_rate", "Current learning rate."),
    "grad_norm": ("sftrl_grad_norm", "Gradient norm before clipping."),
    "reward": ("sftrl_reward", "Mean total reward of the step's rollouts."),
    "reward_std": ("sftrl_reward_std", "Mean within-group standard deviation of the reward."),
    "rewards/accuracy_reward/mean": ("sftrl_reward_accuracy", "Mean accuracy reward."),
    "rewards/format_reward/mean": ("sftrl_reward_format", "Mean format reward."),
    "frac_reward_zero_std": ("sftrl_reward_zero_std_ratio", "Share of groups whose rollouts all got the same reward."),
    "signal_availability": ("sftrl_signal_availability_ratio", "1 - frac_reward_zero_std: groups with a learning signal."),
    "completions/mean_length": ("sftrl_completion_length_tokens", "Mean completion length."),
    "completions/clipped_ratio": ("sftrl_completion_truncated_ratio", "Share of completions cut at max length."),
    "clip_ratio/region_mean": ("sftrl_clip_ratio", "Share of tokens whose policy ratio was clipped."),
    "kl": ("sftrl_kl", "KL divergence to the reference policy."),
    "entropy": ("sftrl_entropy_nats", "Mean token entropy of the policy."),
    "tokens_per_second": ("sftrl_train_tokens_per_second", "Training throughput."),
    "heldout_accuracy": ("sftrl_heldout_accuracy_ratio", "Accuracy on the fixed held-out set during RL."),
    "deceptive_reward": ("sftrl_deceptive_reward", "1 while the deceptive-reward detector flags the stage."),
    "dynamic_sampling/dropped_groups": ("sftrl_dynamic_sampling_dropped_groups", "Zero-variance groups dropped this step."),
    "probe/mixed_share": ("sftrl_probe_mixed_ratio", "Probe: share of prompts whose rollouts got different rewards (predicted signal)."),
    "probe/pass_at_1": ("sftrl_probe_pass_at_1_ratio", "Probe: mean share of correct rollouts per prompt."),
    "probe/pass_at_k": ("sftrl_probe_pass_at_k_ratio", "Probe: share of prompts with at least one correct rollout."),
    "distill/pass_rate": ("sftrl_distill_pass_rate_ratio", "Distill: mean share of verified teacher responses per prompt."),
    "distill/kept_traces": ("sftrl_distill_kept_traces", "Distill: verified traces kept for SFT."),
}
PUSH_JOB = "sftrl"  # Pushgateway grouping key {job: sftrl, stage: <stage id>} (runtime pushes, operator deletes)
EVAL_ACCURACY_METRIC = ("sftrl_eval_accuracy_ratio", "Headline score of a benchmark (label: benchmark).")


# --- the batch layout: how rl.global_batch_size splits into optimiser updates ------------------------
# (the recipes themselves, resolve_rl and resolve_sft, are in job_runtime/recipes.py)

EASYR1_CONFIG = "EasyR1 examples/config.yaml"
EASYR1_UPDATES_PER_ROLLOUT = 4  # EasyR1: rollout_batch_size 512 / worker.actor.global_batch_size 128


class RecipeError(ValueError):
    """A training setting cannot be resolved; the message names the field and what to do."""


def divide_batch(total: int, per_device: int, world_size: int, what: str, why: str) -> int:
    """Accumulation steps so that per_device x steps x world_size == total, or a RecipeError naming the numbers.

    >>> divide_batch(128, 4, 8, "sft.global_batch_size", "")
    4
    """
    per_pass = per_device * world_size
    if total % per_pass:
        lower, upper = total // per_pass * per_pass, (total // per_pass + 1) * per_pass
        examples = f"{lower} or {upper}" if lower else f"{upper}"
        raise RecipeError(
            f"{what} {total} does not divide into per_device_batch_size x world_size = {per_device} x {world_size} = "
            f"{per_pass}, {why}. Use a multiple of {per_pass} (e.g. {examples}), or change per_device_batch_size."
        )
    return total // per_pass


def rl_mini_batch_size(params: RLParams) -> int:
    """Prompts per optimiser update: rl.mini_batch_size, else the recipe's share of the rollout batch.

    >>> rl_mini_batch_size(RLParams()), rl_mini_batch_size(RLParams(recipe="trl"))
    (128, 512)
    """
    g = params.global_batch_size
    if params.mini_batch_size is not None:
        mini = params.mini_batch_size
    elif params.recipe == "easyr1":
        if g % EASYR1_UPDATES_PER_ROLLOUT:
            raise RecipeError(
                f"rl.global_batch_size {g} is not a multiple of {EASYR1_UPDATES_PER_ROLLOUT}, because the easyr1 recipe "
                f"updates the policy {EASYR1_UPDATES_PER_ROLLOUT} times per rollout batch ({EASYR1_CONFIG}: 512 prompts, "
                f"mini-batches of 128). Set rl.mini_batch_size to a divisor of {g}, or use a multiple of 4."
            )
        mini = g // EASYR1_UPDATES_PER_ROLLOUT
    else:
        mini = g
    if mini > g or g % mini:
        raise RecipeError(
            f"rl.mini_batch_size {mini} does not divide rl.global_batch_size {g}, because every rollout batch is split "
            f"into whole mini-batches, one optimiser update each. Use a divisor of {g}."
        )
    return mini


def rl_sequences_per_update(params: dict[str, Any] | RLParams) -> int:
    """Completions per optimiser update: mini-batch prompts x rollouts (what DeepSpeed's batch must equal).

    >>> rl_sequences_per_update({"global_batch_size": 512, "num_generations": 10})
    1280
    """
    p = params if isinstance(params, RLParams) else RLParams.model_validate(params)
    return rl_mini_batch_size(p) * p.num_generations
