"""The experiment file: typed models, validation, and errors a person can act on.

`load(path)` returns an `Experiment` or raises `SpecError` carrying *every* problem at once, each
with its path (``spec.rl.num_generations: must be >= 2``) and, for a misspelt key or value, the
nearest valid one. Nothing here does I/O beyond reading the file.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from controller.deepspeed import Resources
from controller.kubernetes.names import Image, LabelValue, ObjectName
from job_runtime.contract import DecontamParams, DistillParams, EvalParams, RLParams, SFTParams

API_VERSION = "sftrl/v1"
Method = Literal["sft", "grpo", "dapo", "sft+grpo", "sft+dapo"]
METHODS: tuple[str, ...] = get_args(Method)
# A name becomes part of run names, labels and Kubernetes object names.
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")  # DNS-1123 label: experiment, namespace
LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")  # model and data names (label values)
NAME_MAX = 40


def _check_name(v: str, what: str, pattern: re.Pattern[str] = NAME_RE) -> str:
    if len(v) > NAME_MAX or not pattern.match(v):
        dot = " or '.'" if pattern is LABEL_RE else ""
        raise ValueError(
            f"{what} '{v}' is not a valid name, because names become Kubernetes labels and object names. "
            f"Use lowercase letters, digits and '-'{dot}, starting and ending with a letter or digit, "
            f"at most {NAME_MAX} characters"
        )
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelSpec(_Strict):
    name: str = Field(description="Short name used in run names and tables, e.g. qwen2.5-vl-3b.")
    path: str = Field(description="Hugging Face id, local path, s3:// URI, or builtin://tiny-qwen2-vl.")

    _name = field_validator("name")(lambda v: _check_name(v, "model name", LABEL_RE))


class DataSpec(_Strict):
    name: str = Field(description="Short name of the data source, e.g. qwenvl-distill.")
    sft: str | None = Field(None, description="SFT traces: parquet/jsonl path, s3:// URI, HF id or builtin://.")
    distill: DistillParams | None = Field(
        None, description="Build the SFT traces instead of giving them: a teacher's verified rollouts on prompts "
                          "(one distill stage, shared by every model and scale). Use sft or distill, not both.",
    )
    rl: str | None = Field(None, description="RL questions with answers (same questions as sft).")
    heldout: str | None = Field(None, description="Fixed held-out set scored during RL (deceptive-reward check).")

    _name = field_validator("name")(lambda v: _check_name(v, "data name", LABEL_RE))


class ResourcesSpec(_Strict):
    default: Resources = Field(default_factory=Resources, description="Resources of every stage kind.")
    sft: Resources | None = Field(None, description="Overrides for SFT stages.")
    rl: Resources | None = Field(None, description="Overrides for RL stages.")
    eval: Resources | None = Field(None, description="Overrides for eval stages.")
    distill: Resources | None = Field(None, description="Overrides for distill stages (teacher generation).")
    probe: Resources | None = Field(None, description="Overrides for probe stages (rollouts before RL).")

    def for_kind(self, kind: str) -> Resources:
        return getattr(self, kind) or self.default


class KubernetesSpec(_Strict):
    namespace: str = Field("default", description="Namespace of the PyTorchJobs.")
    image: Image = Field("ghcr.io/sftrl/runtime:0.1.0", description="Runtime image (job_runtime, TRL, vLLM).")
    queue: LabelValue | None = Field(None, description="Kueue LocalQueue name; sets kueue.x-k8s.io/queue-name.")
    service_account: ObjectName | None = Field(None, description="ServiceAccount of the training pods.")
    image_pull_secrets: list[ObjectName] = Field(default_factory=list, description="Secrets for private registries.")
    node_selector: dict[str, LabelValue] = Field(default_factory=dict, description="Node selector of training pods.")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Tolerations of training pods.")
    storage_secret: ObjectName | None = Field(None, description="Secret with AWS_* keys for s3:// storage.")
    priority_class: ObjectName | None = Field(None, description="PriorityClass of training pods.")

    _ns = field_validator("namespace")(lambda v: _check_name(v, "namespace"))


class ExecutionSpec(_Strict):
    max_parallel: int = Field(1, ge=1, description="Stages running at once (local executor).")
    max_attempts: int = Field(3, ge=1, description="Tries per stage before giving up (retryable failures).")
    backoff_seconds: float = Field(5.0, ge=0, description="First retry delay; doubles per attempt.")


class ExperimentSpec(_Strict):
    storage: str = Field(
        "./runs",
        description="Storage root: s3://bucket/prefix, file:///abs/path or a path (relative to the experiment file's folder).",
    )
    models: list[ModelSpec] = Field(min_length=1, description="Base models.")
    data: list[DataSpec] = Field(min_length=1, description="Data sources.")
    scales: list[int] = Field(min_length=1, description="Training-set sizes; nested subsets of one shuffle.")
    methods: list[Method] = Field(min_length=1, description="sft, grpo, dapo, sft+grpo, sft+dapo.")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="Training seeds.")
    sft: SFTParams = Field(default_factory=SFTParams, description="SFT settings (trl.SFTConfig pass-through: sft.trl).")
    rl: RLParams = Field(default_factory=RLParams, description="RL settings (trl.GRPOConfig pass-through: rl.trl).")
    eval: EvalParams = Field(default_factory=EvalParams, description="Benchmarks and decoding.")
    decontamination: DecontamParams = Field(
        default_factory=DecontamParams,
        description="Drop training prompts that match an item of eval.benchmarks (question n-grams, image hashes).",
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="GPUs, nodes, DeepSpeed.")
    kubernetes: KubernetesSpec = Field(default_factory=KubernetesSpec, description="Cluster settings.")
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec, description="Parallelism and retries.")

    @field_validator("scales")
    @classmethod
    def _scales(cls, v: list[int]) -> list[int]:
        for s in v:
            if s < 1:
                raise ValueError(f"scale {s} must be >= 1 (it is a number of training examples)")
        if len(set(v)) != len(v):
            raise ValueError("scales must not repeat")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if any(s < 0 for s in v) or len(set(v)) != len(v):
            raise ValueError("seeds must be distinct integers >= 0")
        return v

    @model_validator(mode="after")
    def _cross(self) -> ExperimentSpec:
        problems = []
        for what, items in (("models", self.models), ("data", self.data)):
            names = [i.name for i in items]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                problems.append(f"{what} names must be unique (repeated: {', '.join(dup)})")
        needs_sft = any(m.startswith("sft") for m in self.methods)
        needs_rl = any(m != "sft" for m in self.methods)
        for d in self.data:
            if d.sft and d.distill:
                problems.append(f"data '{d.name}' has both 'sft' and 'distill', because a source's SFT traces are "
                                "either given or built. Keep one of them")
            if needs_sft and not d.sft and not d.distill:
                problems.append(f"data '{d.name}' has no 'sft' dataset, but methods include sft. "
                                "Add data[].sft, or data[].distill to build one")
            if needs_rl and not d.rl:
                problems.append(f"data '{d.name}' has no 'rl' dataset, but methods include RL. Add data[].rl")
        cpu_ok = all(m.path.startswith("builtin://") for m in self.models)
        teachers = [d.distill.teacher for d in self.data if d.distill]
        gpu_free = {k: cpu_ok for k in ("sft", "rl", "eval", "probe")}
        if teachers:
            gpu_free["distill"] = all(t.startswith("builtin://") for t in teachers)
        needy: dict[str, list[str]] = {}  # resources entry -> stage kinds that need a GPU from it
        for kind, free in gpu_free.items():
            named = kind if getattr(self.resources, kind) is not None else "default"
            if self.resources.for_kind(kind).gpus_per_node < 1 and not free:
                needy.setdefault(named, []).append(kind)
        for named, kinds in needy.items():
            who = (next(t for t in teachers if not t.startswith("builtin://")) if kinds == ["distill"]
                   else self.models[0].path)
            problems.append(f"resources.{named}.gpus_per_node is 0, but the {', '.join(kinds)} stages of {who} need a "
                            "GPU. Set gpus_per_node >= 1 (builtin:// models may use 0)")
        problems += self._batch_layout_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _batch_layout_problems(self) -> list[str]:
        from controller.deepspeed import accumulation_steps, per_step_sequences

        out = []
        for kind, params in (("sft", self.sft), ("rl", self.rl)):
            if kind == "sft" and not any(m.startswith("sft") for m in self.methods):
                continue
            if kind == "rl" and self.methods == ["sft"]:
                continue
            r = self.resources.for_kind(kind)
            per_step = per_step_sequences(kind, params.model_dump())
            world = max(r.gpus_per_node, 1) * r.nodes
            try:
                accumulation_steps(per_step, params.per_device_batch_size, world)
            except ValueError as e:
                what = "mini_batch_size x num_generations" if kind == "rl" else "global_batch_size"
                out.append(f"{kind}.{what} does not fit resources.{kind}: {e}")
        return out


class Metadata(_Strict):
    name: str = Field(description="Experiment name (lowercase, digits, '-').")

    _name = field_validator("name")(lambda v: _check_name(v, "metadata.name"))


class Experiment(_Strict):
    apiVersion: Literal["sftrl/v1"] = Field(API_VERSION, description="Schema version.")
    kind: Literal["Experiment"] = "Experiment"
    metadata: Metadata
    spec: ExperimentSpec


# --- loading and error reporting --------------------------------------------------------------


class SpecError(Exception):
    """Every problem in an experiment file, one line each."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(problems))

    def render(self) -> str:
        n = len(self.problems)
        head = f"{self.source}: {n} problem{'s' if n != 1 else ''}"
        return "\n".join([head] + [f"  - {p}" for p in self.problems])


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found at loc (for 'did you mean')."""
    cls: Any = Experiment
    for part in loc:
        if isinstance(part, int) or cls is None:
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        cls = _model_of(field.annotation)
    return list(getattr(cls, "model_fields", {}).keys()) if cls is not None else []


def _model_of(ann: Any) -> Any:
    """The pydantic model inside an annotation (``X``, ``X | None``, ``list[X]``), or None."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return next((m for a in get_args(ann) if (m := _model_of(a)) is not None), None)


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _message(err: dict[str, Any]) -> str:
    t, ctx, loc = err["type"], err.get("ctx") or {}, err["loc"]
    if t == "extra_forbidden":
        key = loc[-1]
        near = difflib.get_close_matches(str(key), _fields_at(loc[:-1]), n=1, cutoff=0.6)
        hint = f"; did you mean '{near[0]}'?" if near else f"; known keys: {', '.join(_fields_at(loc[:-1]))}"
        return f"unknown key '{key}'{hint}"
    if t == "literal_error":
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        near = difflib.get_close_matches(str(err.get("input")), allowed, n=1, cutoff=0.5)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        return f"'{err.get('input')}' is not one of {', '.join(allowed)}{hint}"
    if t == "missing":
        return "is required"
    if t in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[t]
        bound = next(iter(ctx.values()))
        return f"must be {op} {bound} (got {err.get('input')!r})"
    if t == "too_short":
        return f"must have at least {ctx.get('min_length', 1)} item(s)"
    if t == "value_error":
        return str(ctx.get("error", err["msg"]))
    return f"{err['msg'][0].lower()}{err['msg'][1:]} (got {err.get('input')!r})"


def _strip_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic puts union member / function names into loc; keep only data keys and indices.
    return tuple(p for p in loc if isinstance(p, int) or not re.match(r"^(function-|[A-Z]|str$|int$)", str(p)))


def validate_dict(raw: Any, source: str = "<experiment>") -> Experiment:
    if not isinstance(raw, dict):
        raise SpecError(source, ["the file must be a YAML mapping with apiVersion, kind, metadata and spec"])
    try:
        return Experiment.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = _strip_loc(err["loc"])
            line = f"{_path(loc)}: {_message(err)}" if loc else _message(err)
            if line not in problems:
                problems.append(line)
        raise SpecError(source, problems) from None


class _DuplicateKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, noting every key that a mapping repeats (plain YAML lets the last win)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            try:
                key = self.construct_object(key_node, deep=True)
                hash(key)
            except (yaml.constructor.ConstructorError, TypeError):
                continue  # the base class reports unhashable keys
            line = key_node.start_mark.line + 1
            if key in seen and key != "<<":
                self.duplicates.append(
                    f"line {line}: key '{key}' repeats the one at line {seen[key]} of the same mapping, "
                    "and only one can count. Remove or merge one of them"
                )
            seen.setdefault(key, line)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(text: str) -> tuple[Any, list[str]]:
    loader = _DuplicateKeyLoader(text)
    try:
        return loader.get_single_data(), loader.duplicates
    finally:
        loader.dispose()


def resolve_storage(exp: Experiment, folder: Path) -> Experiment:
    """A relative storage path becomes absolute against ``folder`` (the experiment file's), so
    running from another directory finds the same stages."""
    s = exp.spec.storage
    if "://" not in s and not Path(s).expanduser().is_absolute():
        exp.spec.storage = str((folder / s).resolve())
    elif "://" not in s:
        exp.spec.storage = str(Path(s).expanduser())
    return exp


def load(path: str | Path) -> Experiment:
    """Read and validate an experiment file; raises SpecError with every problem.

    A relative ``spec.storage`` is resolved against the file's folder.
    """
    p = Path(path)
    if not p.is_file():
        raise SpecError(str(path), [f"file not found. Check the path (cwd: {Path.cwd()})"])
    try:
        raw, duplicates = _read_yaml(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError(str(path), [f"YAML syntax error at {where}{problem}. Fix the YAML syntax"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(str(path), [f"cannot be read, because {e}. Check the file"]) from None
    try:
        exp = validate_dict(raw, str(path))
    except SpecError as e:
        raise SpecError(str(path), duplicates + e.problems) from None
    if duplicates:
        raise SpecError(str(path), duplicates)
    return resolve_storage(exp, p.resolve().parent)


def dump(exp: Experiment) -> str:
    """The experiment as YAML with every default filled in (what was actually run)."""
    return yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False)
