"""Experiment -> runs and a content-addressed stage DAG. Pure: no I/O.

A stage's id is a hash of its kind, its resolved parameters, its inputs and its parents' ids, so
identical stages are one stage: the SFT stage of `sft` and of `sft+grpo` is one job, the base
model is evaluated once, and extending a matrix adds only the stages that are new. Labels,
resources and the storage root are not part of the id: the same stage on other hardware or under
another experiment is the same result.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from controller.spec import Experiment
from job_runtime.contract import MODEL_DIR, Labels, StageConfig, stage_uri
from job_runtime.io.storage import join, normalize

ID_HEX = 12


@dataclass(frozen=True)
class Stage:
    id: str
    kind: str
    parents: tuple[str, ...]
    config: StageConfig

    @property
    def labels(self) -> Labels:
        return self.config.labels


@dataclass(frozen=True)
class Run:
    name: str
    model: str
    method: str  # "base" for the untrained model
    data: str | None
    scale: int | None
    seed: int | None
    train: tuple[str, ...]  # training stage ids in order
    eval: str  # eval stage id

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.name, "model": self.model, "method": self.method, "data": self.data,
            "scale": self.scale, "seed": self.seed, "train": list(self.train), "eval": self.eval,
        }


@dataclass
class Plan:
    experiment: str
    root: str
    stages: dict[str, Stage] = field(default_factory=dict)  # topological order
    runs: list[Run] = field(default_factory=list)
    benchmarks: list[str] = field(default_factory=list)

    def dag(self) -> dict[str, tuple[str, ...]]:
        return {sid: s.parents for sid, s in self.stages.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "storage": self.root,
            "benchmarks": self.benchmarks,
            "stages": {
                sid: {"kind": s.kind, "parents": list(s.parents), "labels": s.labels.model_dump()}
                for sid, s in self.stages.items()
            },
            "runs": [r.as_dict() for r in self.runs],
        }


def stage_id(kind: str, payload: dict[str, Any]) -> str:
    """`<kind>-<12 hex>` from a canonical JSON of everything that determines the stage's result."""
    blob = json.dumps({"kind": kind, **payload}, sort_keys=True, separators=(",", ":"), default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:ID_HEX]}"


def run_name(model: str, method: str, data: str | None = None, scale: int | None = None, seed: int | None = None) -> str:
    parts = [model, method.replace("+", "-")]
    if data is not None:
        parts += [data, str(scale), f"s{seed}"]
    return "-".join(parts)


class _Builder:
    def __init__(self, exp: Experiment):
        self.exp = exp
        self.spec = exp.spec
        self.plan = Plan(exp.metadata.name, normalize(self.spec.storage), benchmarks=list(self.spec.eval.benchmarks))

    def add(self, kind: str, payload: dict[str, Any], parents: tuple[str, ...], model_uri: str,
            labels: dict[str, str], **fields: Any) -> str:
        sid = stage_id(kind, {**payload, "parents": list(parents)})
        if sid in self.plan.stages:
            return sid
        cfg = StageConfig(
            kind=kind, id=sid, output=stage_uri(self.plan.root, sid), model=model_uri, parents=list(parents),
            labels=Labels(experiment=self.plan.experiment, stage=sid, **labels),
            deepspeed=self._deepspeed(kind, payload.get("params", {}), labels["model"]), **fields,
        )
        self.plan.stages[sid] = Stage(sid, kind, parents, cfg)
        return sid

    def _deepspeed(self, kind: str, params: dict[str, Any], model_name: str) -> dict[str, Any] | None:
        if kind == "eval":
            return None
        from controller.deepspeed import accumulation_steps, estimate_params_billion, per_step_sequences, render_deepspeed

        res = self.spec.resources.for_kind(kind)
        if res.gpus_per_node < 1 or res.deepspeed == "none":
            return None
        world = res.gpus_per_node * res.nodes
        micro = params["per_device_batch_size"]
        accum = accumulation_steps(per_step_sequences(kind, params), micro, world)  # spec checked it divides
        path = next(m.path for m in self.spec.models if m.name == model_name)
        return render_deepspeed(res, estimate_params_billion(path) or estimate_params_billion(model_name),
                                kind, micro, accum, world)

    def model_of(self, sid: str) -> str:
        return join(self.plan.stages[sid].config.output, MODEL_DIR)

    def eval_stage(self, model_ref: str, model_uri: str, parents: tuple[str, ...], labels: dict[str, str]) -> str:
        params = self.spec.eval.model_dump(mode="json")
        return self.add("eval", {"model": model_ref, "params": params}, parents, model_uri, labels, params=params)

    def build(self) -> Plan:
        spec = self.spec
        for m in spec.models:
            labels = {"run": run_name(m.name, "base"), "model": m.name, "method": "base"}
            ev = self.eval_stage(m.path, m.path, (), labels)
            self.plan.runs.append(Run(labels["run"], m.name, "base", None, None, None, (), ev))
        for m in spec.models:
            for d in spec.data:
                for scale in spec.scales:
                    for method in spec.methods:
                        for seed in spec.seeds:
                            self.plan.runs.append(self.run(m, d, scale, method, seed))
        return self.plan

    def run(self, m: Any, d: Any, scale: int, method: str, seed: int) -> Run:
        name = run_name(m.name, method, d.name, scale, seed)
        base = {"model": m.name, "data": d.name, "scale": str(scale), "seed": str(seed), "run": name}
        train: list[str] = []
        model_ref, model_uri, parents = m.path, m.path, ()
        if method.startswith("sft"):
            params = spec_params(self.spec.sft)
            data = {"train": d.sft}
            sid = self.add("sft", {"model": model_ref, "data": data, "scale": scale, "seed": seed, "params": params},
                           parents, model_uri, {**base, "method": "sft"}, data=data, scale=scale, seed=seed,
                           params=params)
            train.append(sid)
            model_ref, model_uri, parents = f"stage:{sid}", self.model_of(sid), (sid,)
        if method != "sft":
            algorithm = method.split("+")[-1]
            params = spec_params(self.spec.rl)
            data = {"train": d.rl, **({"heldout": d.heldout} if d.heldout else {})}
            sid = self.add("rl", {"model": model_ref, "data": data, "scale": scale, "seed": seed, "params": params,
                                  "algorithm": algorithm},
                           parents, model_uri, {**base, "method": method}, data=data, scale=scale, seed=seed,
                           params=params, algorithm=algorithm)
            train.append(sid)
            model_ref, model_uri, parents = f"stage:{sid}", self.model_of(sid), (sid,)
        ev = self.eval_stage(model_ref, model_uri, parents, {**base, "method": method})
        return Run(name, m.name, method, d.name, scale, seed, tuple(train), ev)


def spec_params(section: Any) -> dict[str, Any]:
    return section.model_dump(mode="json")


def build_plan(exp: Experiment) -> Plan:
    """Expand models x data x scales x methods x seeds into runs and a stage DAG (topological order)."""
    return _Builder(exp).build()
