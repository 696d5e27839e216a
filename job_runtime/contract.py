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

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = "sftrl/v1"

StageKind = Literal["sft", "rl", "eval"]
STAGE_KINDS: tuple[str, ...] = ("sft", "rl", "eval")
Algorithm = Literal["grpo", "dapo"]

# --- exit codes -----------------------------------------------------------------------------
# The training operator's ExitCode restart policy retries 128-255 and gives up on 1-127.
EXIT_OK = 0
EXIT_FAILED = 1  # a code or data failure: retrying would fail the same way
EXIT_CONFIG = 2  # the stage config is invalid
EXIT_RETRYABLE = 200  # infrastructure (storage unreachable, preempted): worth a retry


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# --- parameters: the experiment's sft / rl / eval sections ----------------------------------


class SFTParams(_Strict):
    """Supervised fine-tuning on verified reasoning traces (paper: LLaMA-Factory settings)."""

    epochs: float = Field(3.0, gt=0, description="Passes over the training subset.")
    learning_rate: float = Field(1.0e-5, gt=0, description="Peak learning rate.")
    global_batch_size: int = Field(
        128, ge=1, description="Sequences per optimiser step = per-device batch x accumulation x world size."
    )
    per_device_batch_size: int = Field(4, ge=1, description="Sequences per device per forward pass.")
    lr_scheduler_type: str = Field("cosine", description="Any transformers scheduler name.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps spent warming up.")
    max_length: int = Field(4096, ge=16, description="Longest tokenised example; longer ones are truncated.")
    gradient_checkpointing: bool = Field(True, description="Trade compute for activation memory.")
    save_steps: int = Field(500, ge=1, description="Save (and sync to storage) a checkpoint every N steps.")
    trl: dict[str, Any] = Field(
        default_factory=dict, description="Any other trl.SFTConfig field, passed through unchanged."
    )


class RewardWeights(_Strict):
    """Reward = accuracy x w_acc + format x w_fmt (+ custom rewards), EasyR1's 0.9 / 0.1 by default."""

    accuracy: float = Field(0.9, ge=0, description="Weight of the verified-answer reward.")
    format: float = Field(0.1, ge=0, description="Weight of the <think>...</think>...\\boxed{} format reward.")
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="Extra rewards by dotted import path (module.function) -> weight.",
    )


class DeceptiveParams(_Strict):
    """The online deceptive-reward detector (reward rising while held-out accuracy falls)."""

    window: int = Field(5, ge=3, description="Held-out evaluations in the sliding window.")
    min_reward_slope: float = Field(0.0, description="Reward slope per evaluation above which reward 'rises'.")
    max_accuracy_slope: float = Field(0.0, description="Accuracy slope per evaluation below which accuracy 'falls'.")
    stop: bool = Field(False, description="Stop the stage when flagged, keeping the best checkpoint by accuracy.")


class RLParams(_Strict):
    """GRPO / DAPO (paper: EasyR1 settings)."""

    epochs: float = Field(2.0, gt=0, description="Passes over the training prompts.")
    learning_rate: float = Field(1.0e-6, gt=0, description="Peak learning rate.")
    global_batch_size: int = Field(
        512, ge=1, description="Prompts per optimiser step (each prompt yields num_generations rollouts)."
    )
    per_device_batch_size: int = Field(
        8, ge=1, description="Completions per device per forward pass (TRL's per_device_train_batch_size)."
    )
    num_generations: int = Field(10, ge=2, description="Rollouts per prompt (a GRPO group); must be >= 2.")
    max_prompt_length: int = Field(4096, ge=8, description="Longest prompt in tokens.")
    max_completion_length: int = Field(2048, ge=1, description="Longest rollout in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of rollouts.")
    beta: float = Field(
        0.0, ge=0,
        description="KL coefficient against a reference model (0: none, as DAPO and TRL's default; EasyR1 uses 1e-2).",
    )
    epsilon: float = Field(0.2, gt=0, description="Lower clip range of the policy ratio.")
    epsilon_high: float | None = Field(
        None, gt=0, description="Upper clip range (DAPO clip-higher); default: epsilon for grpo, 0.28 for dapo."
    )
    dynamic_sampling: bool | None = Field(
        None, description="Drop zero-variance groups and refill the batch (default: on for dapo only)."
    )
    dynamic_sampling_max_rounds: int = Field(
        10, ge=1, description="Generation rounds per step to refill dropped groups (verl's DAPO: 10)."
    )
    overlong_buffer: int | None = Field(
        None, ge=0, description="DAPO soft overlong penalty buffer in tokens (default: 0 for grpo, 1/8 of max for dapo)."
    )
    reward: RewardWeights = Field(default_factory=RewardWeights, description="Reward composition.")
    heldout_every_steps: int = Field(10, ge=1, description="Evaluate held-out accuracy every N optimiser steps.")
    heldout_size: int = Field(256, ge=1, description="Items of the fixed held-out set.")
    save_steps: int = Field(50, ge=1, description="Save (and sync to storage) a checkpoint every N steps.")
    use_vllm: bool | None = Field(None, description="Generate with vLLM (colocate); default: when importable.")
    deceptive: DeceptiveParams = Field(default_factory=DeceptiveParams, description="Deceptive-reward detector.")
    trl: dict[str, Any] = Field(
        default_factory=dict, description="Any other trl.GRPOConfig field, passed through unchanged."
    )


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

    @field_validator("benchmarks")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in BENCHMARK_NAMES:
                near = difflib.get_close_matches(name, BENCHMARK_NAMES, n=1)
                hint = f"; did you mean '{near[0]}'?" if near else ""
                raise ValueError(f"unknown benchmark '{name}'{hint} Known: {', '.join(BENCHMARK_NAMES)}")
        return v


PARAMS_BY_KIND: dict[str, type[BaseModel]] = {"sft": SFTParams, "rl": RLParams, "eval": EvalParams}


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

    def typed_params(self) -> BaseModel:
        """The parameters validated against this kind's model (SFTParams, RLParams or EvalParams)."""
        return PARAMS_BY_KIND[self.kind].model_validate(self.params)


# --- artifact layout ------------------------------------------------------------------------

STAGES_DIR = "stages"
EXPERIMENTS_DIR = "experiments"
STAGE_JSON = "stage.json"
SUCCESS = "_SUCCESS"  # written last: the only proof that a stage is complete
METRICS_JSONL = "metrics.jsonl"  # one JSON object per logged step
RESULTS_JSON = "results.json"  # eval: per-benchmark headline metric and breakdowns
SAMPLES_JSONL = "samples.jsonl"  # eval: one row per scored item
MODEL_DIR = "model"  # final weights + processor, loadable by from_pretrained
CHECKPOINTS_DIR = "checkpoints"  # checkpoint-<step>/ each with its own _SUCCESS
LOG_TXT = "log.txt"  # local executor: the stage's stdout and stderr
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
}
PUSH_JOB = "sftrl"  # Pushgateway grouping key {job: sftrl, stage: <stage id>} (runtime pushes, operator deletes)
EVAL_ACCURACY_METRIC = ("sftrl_eval_accuracy_ratio", "Headline score of a benchmark (label: benchmark).")
