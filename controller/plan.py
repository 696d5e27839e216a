"""Experiment -> runs and a content-addressed stage DAG. Pure: no I/O.

A stage's id is a hash of its kind, its resolved parameters, its inputs (their URIs and content
fingerprints), the runtime's recipe version for its kind and its parents' ids, so identical
stages are one stage: the SFT stage of `sft` and of `sft+grpo` is one job, the base model is
evaluated once, and extending a matrix adds only the stages that are new; a training file edited
in place, or a new recipe, gives new ids. Labels, resources and the storage root are not part of
the id: the same stage on other hardware or under another experiment is the same result.

Fingerprints are computed by the shell (``controller.fingerprint``) and passed in as
``uri -> fingerprint``; an input without one (builtin://, or fingerprints not computed) is
identified by its URI alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from controller.reconcile import Gate
from controller.spec import Experiment
from job_runtime.contract import (
    DISTILL_DATA,
    MODEL_DIR,
    RECIPE_VERSION,
    RL_CONTROLLER_FIELDS,
    Decontamination,
    Labels,
    ProbeRun,
    StageConfig,
    stage_uri,
)
from job_runtime.io.storage import join, normalize

ID_HEX = 12


@dataclass(frozen=True)
class Stage:
    id: str
    kind: str
    parents: tuple[str, ...]  # inputs (a model or data the stage reads): part of its id
    config: StageConfig
    after: tuple[str, ...] = ()  # must finish first without being an input (the probe before RL): not in the id
    inputs: dict[str, str] = field(default_factory=dict)  # role (model, data.train, eval.data.<name>) -> URI
    recipe: int = 0  # contract.RECIPE_VERSION[kind] when the id was made

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
    probe: str | None = None  # the probe stage in front of the run's RL stage
    distill: str | None = None  # the distill stage that built the run's SFT data

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.name, "model": self.model, "method": self.method, "data": self.data,
            "scale": self.scale, "seed": self.seed, "train": list(self.train), "eval": self.eval,
            "probe": self.probe, "distill": self.distill,
        }


@dataclass
class Plan:
    experiment: str
    root: str
    stages: dict[str, Stage] = field(default_factory=dict)  # topological order
    runs: list[Run] = field(default_factory=list)
    benchmarks: list[str] = field(default_factory=list)
    gates: dict[str, Gate] = field(default_factory=dict)  # RL stage -> its probe and rl.min_signal
    fingerprints: dict[str, str] = field(default_factory=dict)  # input URI -> content fingerprint
    source: str | None = None  # the experiment file this plan was made from (absolute path)

    def dag(self) -> dict[str, tuple[str, ...]]:
        """stage id -> the stages it waits for (inputs and ordering), in topological order."""
        return {sid: s.parents + s.after for sid, s in self.stages.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "storage": self.root,
            "source": self.source,
            "benchmarks": self.benchmarks,
            "gates": {sid: {"probe": g.probe, "min_signal": g.min_signal} for sid, g in self.gates.items()},
            "stages": {
                sid: {"kind": s.kind, "parents": list(s.parents), **({"after": list(s.after)} if s.after else {}),
                      "labels": s.labels.model_dump(), "recipe_version": s.recipe,
                      "inputs": {role: {"uri": uri, "fingerprint": self.fingerprints.get(uri)}
                                 for role, uri in s.inputs.items()}}
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


def stage_inputs(model_ref: str, data: Mapping[str, str], params: Mapping[str, Any]) -> dict[str, str]:
    """role -> URI of what a stage reads from outside the plan (a parent's model is not an input).

    >>> stage_inputs("Qwen/Qwen2-VL-2B", {"train": "s3://b/sft.parquet"}, {"data": {"mathvista": "./mv.jsonl"}})
    {'model': 'Qwen/Qwen2-VL-2B', 'data.train': 's3://b/sft.parquet', 'eval.data.mathvista': './mv.jsonl'}
    """
    out = {} if model_ref.startswith("stage:") else {"model": model_ref}
    out.update({f"data.{role}": uri for role, uri in data.items()})
    out.update({f"eval.data.{name}": uri for name, uri in sorted((params.get("data") or {}).items())})
    return out


class _Builder:
    def __init__(self, exp: Experiment, fingerprints: Mapping[str, str] | None, source: str | None):
        self.exp = exp
        self.spec = exp.spec
        self.plan = Plan(exp.metadata.name, normalize(self.spec.storage), benchmarks=list(self.spec.eval.benchmarks),
                         fingerprints=dict(fingerprints or {}), source=source)

    def add(self, kind: str, payload: dict[str, Any], parents: tuple[str, ...], model_uri: str,
            labels: dict[str, str], after: tuple[str, ...] = (), **fields: Any) -> str:
        """A stage (or the identical one already planned). ``after``: stages that must finish first
        without being inputs (the probe in front of an RL stage): ordering only, not in the id."""
        inputs = stage_inputs(str(payload["model"]), payload.get("data") or {}, payload.get("params") or {})
        content = {uri: self.plan.fingerprints[uri] for uri in inputs.values() if uri in self.plan.fingerprints}
        recipe = RECIPE_VERSION[kind]
        sid = stage_id(kind, {**payload, "parents": list(parents), "recipe": recipe, "content": content})
        if sid in self.plan.stages:
            return sid
        cfg = StageConfig(
            kind=kind, id=sid, output=stage_uri(self.plan.root, sid), model=model_uri, parents=list(parents),
            labels=Labels(experiment=self.plan.experiment, stage=sid, **labels),
            deepspeed=self._deepspeed(kind, payload.get("params", {}), labels["model"]), **fields,
        )
        self.plan.stages[sid] = Stage(sid, kind, parents, cfg, after=tuple(a for a in after if a not in parents),
                                      inputs=inputs, recipe=recipe)
        return sid

    def _deepspeed(self, kind: str, params: dict[str, Any], model_name: str) -> dict[str, Any] | None:
        if kind in ("eval", "distill", "probe"):  # generation only: no optimiser, no ZeRO
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

    def decontamination(self) -> Decontamination | None:
        """What sft, rl, probe and distill stages exclude: the items of the experiment's benchmarks."""
        d = self.spec.decontamination
        if not d.enabled:
            return None
        return Decontamination(**d.model_dump(), benchmarks=list(self.spec.eval.benchmarks),
                               data=dict(self.spec.eval.data))

    def rl_sampling(self) -> Any:
        """The RL stages' resolved settings (recipes.resolve_rl under the rl recipe): how they sample,
        size images and grade accuracy, which the probes and the distill stages' verification follow.
        Only these settings are read, so the batch layout is neutralised (one update of one sequence per
        device): an experiment whose methods include no RL stage may leave it unusable."""
        from job_runtime.contract import RLParams
        from job_runtime.recipes import resolve_rl

        rl = self.spec.rl
        neutral = RLParams.model_validate({**rl.model_dump(), "mini_batch_size": rl.global_batch_size,
                                           "per_device_batch_size": 1})
        return resolve_rl(neutral, "grpo", world_size=1)

    def distill_stage(self, d: Any) -> str:
        """The stage that builds data source d's SFT traces: one per teacher, prompts and settings,
        shared by every model, scale, seed and method (and by data sources that distil alike)."""
        params = d.distill.model_dump(mode="json")
        reward = d.distill.reward or self.spec.rl.reward
        params["reward"] = {**reward.model_dump(mode="json"),
                            "accuracy_rule": reward.accuracy_rule or self.rl_sampling()["accuracy_rule"]}
        contamination = self.decontamination()
        payload = {"model": d.distill.teacher, "data": {"prompts": d.distill.prompts}, "params": params,
                   "decontaminate": contamination.model_dump(mode="json") if contamination else None}
        labels = {"run": f"distill-{d.name}", "model": "teacher", "method": "distill", "data": d.name}
        return self.add("distill", payload, (), d.distill.teacher, labels, data={"prompts": d.distill.prompts},
                        params=params, decontaminate=contamination)

    def probe_stage(self, model_ref: str, model_uri: str, parents: tuple[str, ...], d: Any, scale: int, seed: int,
                    labels: dict[str, str]) -> str | None:
        """The probe in front of an RL stage: the policy RL starts from, on the first rl.probe.prompts
        prompts of the RL subset (probes of scales at least that large are one stage)."""
        rl = self.spec.rl
        if not rl.probe.enabled:
            return None
        n = min(rl.probe.prompts, scale)
        r = self.rl_sampling()
        params = ProbeRun(prompts=n, samples=rl.probe.samples or rl.num_generations, temperature=r["temperature"],
                          top_p=r["top_p"], max_new_tokens=r["max_completion_length"], min_pixels=r["min_pixels"],
                          max_pixels=r["max_pixels"], reward={**rl.reward.model_dump(), "accuracy_rule": r["accuracy_rule"]},
                          batch_size=rl.probe.batch_size, generation=rl.generation).model_dump(mode="json")
        data = {"train": d.rl}
        contamination = self.decontamination()
        payload = {"model": model_ref, "data": data, "scale": n, "seed": seed, "params": params,
                   "decontaminate": contamination.model_dump(mode="json") if contamination else None}
        return self.add("probe", payload, parents, model_uri, {**labels, "method": "probe"}, data=data, scale=n,
                        seed=seed, params=params, decontaminate=contamination)

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
        contamination = self.decontamination()
        decon = {"decontaminate": contamination.model_dump(mode="json")} if contamination else {}
        probe = distill = None
        if method.startswith("sft"):
            params = spec_params(self.spec.sft)
            data, data_ref, sft_parents = {"train": d.sft}, {"train": d.sft}, parents
            if d.distill is not None:  # the SFT traces are built by the source's distill stage
                distill = self.distill_stage(d)
                data = {"train": join(self.plan.stages[distill].config.output, DISTILL_DATA)}
                data_ref, sft_parents = {"train": f"stage:{distill}/{DISTILL_DATA}"}, (distill,)
            sid = self.add("sft", {"model": model_ref, "data": data_ref, "scale": scale, "seed": seed, "params": params,
                                   **decon},
                           sft_parents, model_uri, {**base, "method": "sft"}, data=data, scale=scale, seed=seed,
                           params=params, decontaminate=contamination)
            train.append(sid)
            model_ref, model_uri, parents = f"stage:{sid}", self.model_of(sid), (sid,)
        if method != "sft":
            algorithm = method.split("+")[-1]
            params = {k: v for k, v in spec_params(self.spec.rl).items() if k not in RL_CONTROLLER_FIELDS}
            data = {"train": d.rl, **({"heldout": d.heldout} if d.heldout else {})}
            probe = self.probe_stage(model_ref, model_uri, parents, d, scale, seed, base)
            sid = self.add("rl", {"model": model_ref, "data": data, "scale": scale, "seed": seed, "params": params,
                                  "algorithm": algorithm, **decon},
                           parents, model_uri, {**base, "method": method}, after=(probe,) if probe else (),
                           data=data, scale=scale, seed=seed, params=params, algorithm=algorithm,
                           decontaminate=contamination)
            if probe is not None and self.spec.rl.min_signal is not None:
                self.plan.gates[sid] = Gate(probe, self.spec.rl.min_signal)
            train.append(sid)
            model_ref, model_uri, parents = f"stage:{sid}", self.model_of(sid), (sid,)
        ev = self.eval_stage(model_ref, model_uri, parents, {**base, "method": method})
        return Run(name, m.name, method, d.name, scale, seed, tuple(train), ev, probe, distill)


def spec_params(section: Any) -> dict[str, Any]:
    return section.model_dump(mode="json")


def build_plan(exp: Experiment, fingerprints: Mapping[str, str] | None = None, source: str | None = None) -> Plan:
    """Expand models x data x scales x methods x seeds into runs and a stage DAG (topological order).

    ``fingerprints`` (input URI -> content fingerprint, from ``controller.fingerprint.collect``)
    make stage ids follow the inputs' content; ``source`` is the experiment file, recorded in
    plan.json so that two files of one name in one storage are told apart.
    """
    return _Builder(exp, fingerprints, source).build()


def _changed_inputs(old: Mapping[str, Any], new: Plan, sid: str) -> list[str]:
    old_inputs = old.get("inputs") or {}
    out = []
    for role, uri in new.stages[sid].inputs.items():
        was = old_inputs.get(role) or {}
        if was.get("uri") not in (None, uri):
            out.append(f"input {role} is now {uri} (was {was['uri']})")
        elif was.get("fingerprint") != new.fingerprints.get(uri) and "fingerprint" in was:
            out.append(f"input {role} ({uri}) changed since the last run")
    return out


def explain_changes(previous: Mapping[str, Any], new: Plan) -> dict[str, str]:
    """Why each stage of ``new`` that the previous plan (its plan.json) lacks has a new id: the
    input, recipe, parent or parameters that differ from the stage that held its place (same run,
    same position). Pure.
    """
    old_stages = previous.get("stages") or {}
    old_runs = {r.get("run"): [*(r.get("train") or []), r.get("eval")] for r in previous.get("runs") or []}
    out: dict[str, str] = {}
    for run in new.runs:
        chain, was = [*run.train, run.eval], old_runs.get(run.name)
        if was is None or len(was) != len(chain):
            continue
        for pos, (sid, old_sid) in enumerate(zip(chain, was)):
            old = old_stages.get(old_sid) or {}
            if sid == old_sid or sid in old_stages or sid in out or old.get("kind") != new.stages[sid].kind:
                continue
            kind, recipe = new.stages[sid].kind, new.stages[sid].recipe
            reasons = _changed_inputs(old, new, sid)
            if old.get("recipe_version") not in (None, recipe):
                reasons.append(f"the {kind} recipe version changed ({old['recipe_version']} -> {recipe})")
            if pos > 0 and chain[pos - 1] != was[pos - 1]:
                reasons.append(f"its parent changed ({was[pos - 1]} -> {chain[pos - 1]})")
            if not reasons:
                reasons.append("its parameters changed" if "inputs" in old
                               else "its parameters or inputs changed (the last plan predates input fingerprints)")
            out[sid] = f"replaces {old_sid}: " + "; ".join(reasons)
    return out
