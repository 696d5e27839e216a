"""The operator: a level-triggered loop over Experiment resources (sftrl.io/v1alpha1).

Each cycle lists the Experiments (one call) and every stage PyTorchJob (one call), then for each
Experiment: spec -> ``controller.spec.validate_dict`` -> ``build_plan`` -> observe -> ``reconcile``
-> apply, and writes phase, per-stage states, counts, conditions and ``observedGeneration`` to
the status subresource (one merge patch, only when something changed). So a cycle makes a fixed
number of API calls however many stages there are (plus at most ``max_actions`` creates or
deletes per experiment and ``MAX_EVENTS_PER_CYCLE`` Events).

Nothing is kept between cycles that cannot be rebuilt from the cluster and storage: a killed and
restarted operator finds its jobs by name, finished stages by their ``_SUCCESS`` manifests, and the
outcome of every attempt in ``status.attempts`` (controller/kubernetes/attempts.py), which outlives
the jobs (their TTL deletes them 3 days after they end). Status writes carry the resourceVersion
the cycle read (optimistic concurrency): a status written meanwhile by someone else is never
overwritten; the next cycle reads it and writes again. Records of a stage are shared by every
Experiment on the same storage root in the namespace, so an experiment submitted later inherits
a shared stage's failed attempts instead of retrying them.

Jobs carry ownerReferences to the live Experiments that need their stage when they are created:
deleting an Experiment garbage-collects its jobs; a job shared with another experiment lives on
while that one exists. Cancelling (annotation ``sftrl.io/cancel: "true"``, set by ``sftrl cancel``)
deletes the running jobs of the experiment's stages, except stages another live experiment needs.

Run it with ``sftrl operator`` (in the cluster: the Helm chart's Deployment) or, for one
experiment from a laptop, ``sftrl submit FILE --watch``. Serves /healthz and /metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from controller import fingerprint, gates
from controller.kubernetes import inputs, render
from controller.kubernetes.attempts import Attempt, explain
from controller.kubernetes.executor import ApiRejected, ApiUnavailable, ClusterView, K8sExecutor, KubeApi
from controller.plan import Plan, build_plan
from controller.reconcile import Delete, Launch, Observed, Phase, Policy, State, counts, phase, reconcile
from controller.spec import Experiment, SpecError, validate_dict
from job_runtime.io import storage

log = logging.getLogger("sftrl.operator")

CANCEL_ANNOTATION = "sftrl.io/cancel"
TERMINAL = ("Succeeded", "Failed", "Cancelled")
INPUTS_RETRY_S = 60.0  # inputs the operator could not fingerprint are tried again after this
MAX_EVENTS_PER_CYCLE = 20
COMPONENT = "sftrl-operator"


@dataclass(frozen=True)
class ClusterDefaults:
    """Settings the cluster admin gives every experiment that does not set them (Helm values,
    passed as SFTRL_* environment variables), and S3 settings passed on to training pods."""

    storage: str | None = None
    image: str | None = None
    queue: str | None = None
    service_account: str | None = None
    storage_secret: str | None = None
    pushgateway: str | None = None
    pod_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ClusterDefaults:
        get = lambda k: env.get(k) or None  # noqa: E731
        return cls(storage=get("SFTRL_STORAGE"), image=get("SFTRL_IMAGE"), queue=get("SFTRL_QUEUE"),
                   service_account=get("SFTRL_SERVICE_ACCOUNT"), storage_secret=get("SFTRL_STORAGE_SECRET"),
                   pushgateway=get("SFTRL_PUSHGATEWAY"),
                   pod_env={k: env[k] for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION") if env.get(k)})

    def apply(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """The spec with cluster defaults filled in where the experiment left a key out."""
        out = json.loads(json.dumps(spec))
        if self.storage and "storage" not in out:
            out["storage"] = self.storage
        k8s = out.setdefault("kubernetes", {})
        for key in ("image", "queue", "service_account", "storage_secret"):
            if getattr(self, key) and key not in k8s:
                k8s[key] = getattr(self, key)
        return out


def experiment_of(obj: Mapping[str, Any], defaults: ClusterDefaults = ClusterDefaults()) -> Experiment:
    """The validated Experiment of a custom resource (raises SpecError naming every bad field)."""
    meta = obj.get("metadata") or {}
    spec = defaults.apply(obj.get("spec") or {})
    spec.setdefault("kubernetes", {})["namespace"] = meta.get("namespace") or "default"  # jobs live beside it
    raw = {"apiVersion": "sftrl/v1", "kind": "Experiment", "metadata": {"name": meta.get("name")}, "spec": spec}
    return validate_dict(raw, f"Experiment {meta.get('namespace')}/{meta.get('name')}")


def _now_iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _condition(prev: list[dict[str, Any]], kind: str, ok: bool, reason: str, message: str, gen: int,
               now: str) -> dict[str, Any]:
    status = "True" if ok else "False"
    old = next((c for c in prev if c.get("type") == kind), None)
    since = old["lastTransitionTime"] if old and old.get("status") == status else now
    return {"type": kind, "status": status, "reason": reason, "message": message[:32000],
            "lastTransitionTime": since, "observedGeneration": gen}


def build_status(plan: Plan, observed: Mapping[str, Observed], policy: Policy, cancelled: bool, generation: int,
                 prev: Mapping[str, Any], problems: Mapping[str, str], now: float,
                 attempts: Mapping[str, Attempt] | None = None,
                 inputs_record: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Experiment status (schema: manifests/crds/sftrl.io_experiments.yaml) for one observation.

    ``inputs_record``: the input fingerprints this operator computed itself (``status.inputs``,
    controller/kubernetes/inputs.py), kept for the life of the spec's generation.
    """
    dag = plan.dag()
    ph = phase(dag, observed, policy, cancelled=cancelled)
    c = counts(dag, observed, policy)
    n = {"total": len(dag), "pending": c["pending"] + c["blocked"], "running": c["running"],
         "succeeded": c["succeeded"], "failed": c["failed"], "skipped": c["skipped"]}
    stamp = _now_iso(now)
    prev_conds = list(prev.get("conditions") or [])
    conds = [
        _condition(prev_conds, "Valid", True, "SpecValid", f"{len(dag)} stages planned", generation, stamp),
        _condition(prev_conds, "Complete", ph is Phase.SUCCEEDED, ph.value,
                   f"{n['succeeded']}/{n['total']} stages succeeded, {n['running']} running, {n['failed']} failed",
                   generation, stamp),
        _condition(prev_conds, "Degraded", bool(problems),
                   ("ArtifactsIncomplete" if all(k.startswith("incomplete:") for k in problems) else "LaunchRejected")
                   if problems else "AsExpected",
                   "; ".join(f"{v}" for _, v in sorted(problems.items())) or "no errors", generation, stamp),
    ]
    out = {"phase": ph.value, "observedGeneration": generation, "counts": n,
           "stages": {sid: observed.get(sid, Observed(State.PENDING)).state.value for sid in dag},
           **({"skipped": skipped} if (skipped := {s: w for s, w in gates.skipped(observed).items() if s in dag}) else {}),
           "attempts": {sid: a.to_status() for sid, a in sorted((attempts or {}).items()) if sid in dag},
           "conditions": conds}
    if inputs_record:
        out["inputs"] = dict(inputs_record)
    return out


def merge_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The RFC 7386 merge patch turning ``old`` into ``new``: changed keys only, nested maps by key,
    removed keys as null.

    >>> merge_diff({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"x": 1, "z": 3}, "b": 1})
    {'a': {'z': 3, 'y': None}}
    >>> merge_diff({"a": {"x": 1}}, {"a": {}})   # {} would merge as "no change": remove by key
    {'a': {'x': None}}
    """
    patch: dict[str, Any] = {}
    for k, v in new.items():
        o = old.get(k)
        if isinstance(o, Mapping) and isinstance(v, Mapping) and k != "counts":
            sub = merge_diff(o, v)
            if sub:
                patch[k] = sub
        elif o != v:
            patch[k] = v
    patch.update({k: None for k in old if k not in new})
    return patch


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any],
                 resource_version: str | None = None) -> dict[str, Any] | None:
    """A JSON merge patch turning status ``old`` into ``new``, or None when they are equal.

    Only changed keys are sent, and of ``stages`` and ``attempts`` only the stages that changed
    (removed ones as null), so a cycle of a 10,000-stage experiment sends bytes, not the whole map.
    With ``resource_version`` the patch is conditional: the API server answers 409 Conflict when the
    object changed since it was read.

    >>> status_patch({"phase": "Running", "stages": {"a": "running", "b": "pending"}},
    ...              {"phase": "Running", "stages": {"a": "succeeded", "c": "pending"}})
    {'status': {'stages': {'a': 'succeeded', 'c': 'pending', 'b': None}}}
    >>> status_patch({"phase": "Running"}, {"phase": "Failed"}, "42")
    {'status': {'phase': 'Failed'}, 'metadata': {'resourceVersion': '42'}}
    """
    patch = merge_diff(old, new)
    if not patch:
        return None
    out: dict[str, Any] = {"status": patch}
    if resource_version:
        out["metadata"] = {"resourceVersion": resource_version}
    return out


class _Metrics:
    """Fallback when controller.kubernetes.metrics (prometheus_client) is unavailable."""

    def observe_cycle(self, experiment: str, counts_by_state: Mapping[str, int], seconds: float) -> None: ...
    def api_error(self, kind: str) -> None: ...
    def forget(self, experiments: Any) -> None: ...
    def heartbeat(self) -> None: ...
    def serve(self, port: int, **kw: Any) -> Any: return None


def make_metrics() -> Any:
    try:
        from controller.kubernetes.metrics import OperatorMetrics
    except ImportError:
        log.warning("prometheus_client is not installed: /metrics and /healthz are off")
        return _Metrics()
    return OperatorMetrics()


@dataclass
class _Tracked:
    fingerprint: str
    exp: Experiment | None
    plan: Plan | None
    error: str | None
    reason: str = "SpecInvalid"  # of the Valid=False condition when error is set
    retry_at: float | None = None  # resolve again from this time on (inputs that could not be read)
    inputs_record: dict[str, Any] | None = None  # status.inputs: fingerprints this operator computed


class Operator:
    """Reconcile every Experiment in ``namespace`` (None: all namespaces), or only ``only``."""

    def __init__(self, api: KubeApi, namespace: str | None, *, interval: float = 10.0, metrics: Any = None,
                 only: str | None = None, defaults: ClusterDefaults | None = None, max_actions: int = 50,
                 clock: Callable[[], float] = time.time, on_status: Callable[[str, dict], None] | None = None):
        self.api, self.namespace, self.interval, self.only = api, namespace, interval, only
        self.metrics = metrics if metrics is not None else _Metrics()
        self.api.on_error = self.metrics.api_error
        self.defaults = defaults or ClusterDefaults.from_env()
        self.max_actions, self.clock, self.on_status = max_actions, clock, on_status
        self.view = ClusterView(api, namespace, clock)
        self.probe_signals: dict[str, float | None] = {}  # finished probes' predictions (immutable once read)
        self.tracked: dict[tuple[str, str], _Tracked] = {}
        self.phases: dict[tuple[str, str], str] = {}
        self._last_counts: dict[tuple[str, str], dict[str, int]] = {}
        self._events_left = MAX_EVENTS_PER_CYCLE
        self._warned: dict[tuple[str, str, str], float] = {}
        self.instance = socket.gethostname()

    # --- one cycle --------------------------------------------------------------------------------

    def cycle(self) -> dict[tuple[str, str], str]:
        """One pass over every Experiment; returns (namespace, name) -> phase."""
        self._events_left = MAX_EVENTS_PER_CYCLE
        objs = self.api.list_experiments(self.namespace)
        if self.only:
            objs = [o for o in objs if o["metadata"]["name"] == self.only]
        self.view.refresh()
        self.view.history = {}
        items = [(o, self._resolve(o)) for o in objs]
        live = {(k[0], k[1]) for k in self.tracked}
        # (namespace, storage key) -> stage -> the live experiments that need it: cancel spares those
        # stages, and new jobs are owned by all of them (garbage-collected once all are deleted)
        needed: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
        for o, t in items:
            m = o["metadata"]
            if t.plan is None:
                continue
            where = (m.get("namespace") or "default", render.storage_key(t.plan.root))
            self.view.remember(*where, (o.get("status") or {}).get("attempts") or {})
            if not self._cancelled(o) and (o.get("status") or {}).get("phase") not in TERMINAL:
                users = needed.setdefault(where, {})
                for sid in t.plan.stages:
                    users.setdefault(sid, []).append(o)
        seen = set()
        for o, t in items:
            key = (o["metadata"].get("namespace") or "default", o["metadata"]["name"])
            seen.add(key)
            start = self.clock()
            where = (key[0], render.storage_key(t.plan.root)) if t.plan is not None else (key[0], "")
            try:
                self._reconcile_one(o, t, needed.get(where, {}))
            except ApiRejected as e:  # one experiment's permanent error must not stop the others
                log.error("%s/%s: %s", key[0], key[1], e)
            c = (self._last_counts.get(key) or {})
            self.metrics.observe_cycle(key[1], {k: v for k, v in c.items() if k != "total"}, self.clock() - start)
        self._heartbeat()
        gone = live - seen
        for key in gone:
            self.tracked.pop(key, None)
            self.phases.pop(key, None)
            self._last_counts.pop(key, None)
        if gone:
            self.metrics.forget([k[1] for k in gone])
        return dict(self.phases)

    def _heartbeat(self) -> None:
        """Tell /healthz a cycle ended, also when there is no Experiment to observe."""
        self.metrics.heartbeat()

    @staticmethod
    def _cancelled(obj: Mapping[str, Any]) -> bool:
        return str(((obj.get("metadata") or {}).get("annotations") or {}).get(CANCEL_ANNOTATION, "")).lower() == "true"

    def _resolve(self, obj: Mapping[str, Any]) -> _Tracked:
        """The Experiment's plan, made again only when its spec, its generation or the fingerprints
        `sftrl submit` annotated change. Its stage ids hash the inputs' content with the recorded
        fingerprints (controller/kubernetes/inputs.py); inputs without one are fingerprinted here,
        once per generation, and recorded in ``status.inputs``."""
        m = obj["metadata"]
        key = (m.get("namespace") or "default", m["name"])
        annotated = inputs.from_annotation(obj)
        gen = inputs.generation(obj)
        fp = hashlib.sha256(json.dumps([m["name"], key[0], obj.get("spec"), annotated, gen],
                                       sort_keys=True).encode()).hexdigest()
        t = self.tracked.get(key)
        if t is None or t.fingerprint != fp or (t.retry_at is not None and self.clock() >= t.retry_at):
            try:
                exp = experiment_of(obj, self.defaults)
                values = inputs.recorded(obj)
                missing = fingerprint.needing(exp, values)
                if missing:  # made with kubectl apply: fingerprint them here (the operator's credentials)
                    got = fingerprint.collect(exp, only=missing)
                    if got.problems:
                        self.tracked[key] = t = _Tracked(
                            fp, None, None, "; ".join(got.problems), "InputsUnusable", self.clock() + INPUTS_RETRY_S)
                        return t
                    values.update(got.values)
                plan = build_plan(exp, values)
                if plan.stages:
                    render.render_job(next(iter(plan.stages.values())), exp, 1, key[0])  # names valid?
                used = [u for u in fingerprint.needing(exp) if u in values]
                t = _Tracked(fp, exp, plan, None, inputs_record=inputs.status_record(values, annotated, used, gen))
            except SpecError as e:
                t = _Tracked(fp, None, None, "; ".join(e.problems))
            except render.RenderError as e:
                t = _Tracked(fp, None, None, str(e))
            self.tracked[key] = t
        return t

    def _reconcile_one(self, obj: Mapping[str, Any], t: _Tracked, needed: Mapping[str, list[dict[str, Any]]]) -> None:
        m = obj["metadata"]
        ns, name, gen = m.get("namespace") or "default", m["name"], int(m.get("generation") or 1)
        prev = dict(obj.get("status") or {})
        now = self.clock()
        if t.error is not None or t.exp is None or t.plan is None:
            if t.reason == "InputsUnusable":
                msg = (f"the experiment's inputs cannot be used, because: {t.error}. Checked again every "
                       f"{INPUTS_RETRY_S:.0f}s; or submit the file with `sftrl submit`, which checks them with your "
                       "credentials")
            else:
                msg = f"the experiment's spec is invalid, because: {t.error}. Fix the experiment file and submit it again"
            status = {"phase": Phase.FAILED.value, "observedGeneration": gen,
                      "conditions": [_condition(list(prev.get("conditions") or []), "Valid", False, t.reason,
                                                msg, gen, _now_iso(now))]}
            if prev.get("attempts"):  # the history outlives a bad edit of the spec
                status["attempts"] = prev["attempts"]
            if self._write_status(ns, name, prev, status, obj, warn=(t.reason, msg))[0]:
                self.phases[(ns, name)] = status["phase"]
            return
        exp, plan = t.exp, t.plan
        ex = exp.spec.execution
        policy = Policy(max_attempts=ex.max_attempts, backoff_seconds=ex.backoff_seconds, max_parallel=ex.max_parallel)
        cancel = self._cancelled(obj)
        executor = K8sExecutor(self.api, exp, ns, self.view, max_actions=self.max_actions,
                               pushgateway=self.defaults.pushgateway, extra_env=self.defaults.pod_env,
                               events=lambda kind, reason, message: self.event(obj, kind, reason, message),
                               clock=self.clock, owners=lambda sid: needed.get(sid) or [obj])
        try:
            observed = gates.observe(plan, executor.observe(plan), self.probe_signals)  # rl.min_signal: skip starved RL
        except storage.StorageError as e:  # storage unreachable: nothing can be decided; try next cycle
            log.warning("%s/%s: cannot tell which stages are done, because %s", ns, name, e)
            self.event(obj, "Warning", "StorageUnreadable", f"cannot tell which stages are done, because {e}")
            return
        for sid, why in executor.incomplete.items():
            self.event(obj, "Warning", "StageIncomplete", f"stage {sid} is not done, because {why}; it runs again")
        actions = reconcile(plan.dag(), observed, now, policy, cancel=cancel)
        if cancel:  # a shared stage keeps running while another live experiment needs it
            actions = [a for a in actions if not (isinstance(a, Delete) and a.stage in needed)]
        rv = m.get("resourceVersion")
        base = prev
        launches = [a for a in executor.to_apply(plan, actions) if isinstance(a, Launch)]
        if launches:  # the launches are written down BEFORE their jobs exist: no job without a record
            intent = build_status(plan, {**observed, **{a.stage: Observed(State.RUNNING, a.attempt) for a in launches}},
                                  policy, cancel, gen, prev, {}, now,
                                  {**executor.attempts, **{a.stage: Attempt(a.attempt, "running") for a in launches}},
                                  t.inputs_record)  # the fingerprints are recorded before any job uses them
            ok, rv = self._write_status(ns, name, base, intent, obj, rv=rv)
            if not ok:
                actions = [a for a in actions if not isinstance(a, Launch)]
            else:
                base = intent
        executor.apply(plan, actions)
        for sid, attempt in executor.launched:
            observed[sid] = Observed(State.RUNNING, attempt)
        for sid in executor.found_done:
            observed[sid] = Observed(State.SUCCEEDED, observed[sid].attempts)
            executor.attempts.pop(sid, None)
        problems = {**executor.rejected, **executor.storage_errors,
                    **{f"incomplete:{sid}": f"stage {sid} is not done, because {why}"
                       for sid, why in executor.incomplete.items() if sid not in executor.found_done}}
        status = build_status(plan, observed, policy, cancel, gen, prev, problems, now, executor.attempts,
                              t.inputs_record)
        self._forget_superseded(set(prev.get("stages") or {}) - set(plan.stages) - set(needed))
        self._last_counts[(ns, name)] = status["counts"]
        if self._write_status(ns, name, base, status, obj, rv=rv)[0]:
            self._transitions(obj, plan, prev.get("stages") or {}, status["stages"], executor.attempts,
                              status.get("skipped"))
            self.phases[(ns, name)] = status["phase"]

    def _forget_superseded(self, stage_ids: set[str]) -> None:
        """A resubmitted spec dropped these stages (and no live experiment needs them): delete their
        Pushgateway groups so dashboards stop showing them (best effort: a failure is logged)."""
        if not stage_ids or not self.defaults.pushgateway:
            return
        from controller.kubernetes.metrics import delete_stale

        try:
            delete_stale(self.defaults.pushgateway, sorted(stage_ids))
        except RuntimeError as e:
            log.warning("%s", e)

    def _write_status(self, ns: str, name: str, prev: Mapping[str, Any], status: dict[str, Any],
                      obj: Mapping[str, Any], warn: tuple[str, str] | None = None,
                      rv: str | None = None) -> tuple[bool, str | None]:
        """Write the status if it changed, conditional on the resourceVersion this cycle read (or
        ``rv``, after a write of its own). (False, _) when someone else wrote the Experiment
        meanwhile (409): the next cycle reads it again. The second value: the resourceVersion now."""
        rv = rv or (obj.get("metadata") or {}).get("resourceVersion")
        patch = status_patch(prev, status, rv)
        if patch is None:
            return True, rv
        try:
            out = self.api.patch_experiment_status(ns, name, patch)
        except ApiRejected as e:
            if e.status != 409:
                raise
            log.info("%s/%s changed since this cycle read it (409); its status is written next cycle", ns, name)
            return False, rv
        if warn:
            self.event(obj, "Warning", *warn)
        if self.on_status:
            self.on_status(name, status)
        return True, ((out or {}).get("metadata") or {}).get("resourceVersion")

    def _transitions(self, obj: Mapping[str, Any], plan: Plan, old: Mapping[str, str], new: Mapping[str, str],
                     attempts: Mapping[str, Attempt] | None = None, reasons: Mapping[str, str] | None = None) -> None:
        attempts = attempts or {}
        for sid, state in new.items():
            if old.get(sid) == state or state not in ("succeeded", "failed", "skipped"):
                continue
            run = plan.stages[sid].labels.run
            if state == "skipped":
                self.event(obj, "Normal", "StageSkipped", f"stage {sid} ({run}) skipped: {(reasons or {}).get(sid)}")
            elif state == "succeeded":
                self.event(obj, "Normal", "StageSucceeded", f"stage {sid} ({run}) succeeded")
            else:
                rec = attempts.get(sid) or Attempt.from_status(((obj.get("status") or {}).get("attempts") or {}).get(sid))
                why = f": {explain(rec)}" if rec is not None else ""
                self.event(obj, "Warning", "StageFailed", f"stage {sid} ({run}) failed{why}; see `sftrl logs "
                                                          f"{obj['metadata']['name']} {sid}`")

    # --- events -------------------------------------------------------------------------------------

    def event(self, obj: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """Record a Kubernetes Event on the Experiment (best effort, capped per cycle, Warnings deduplicated)."""
        m = obj["metadata"]
        ns, name = m.get("namespace") or "default", m["name"]
        if kind == "Warning":
            key, now = (name, reason, message), self.clock()
            if now - self._warned.get(key, -1e18) < 3600:
                return
            self._warned[key] = now
        if self._events_left <= 0:
            return
        self._events_left -= 1
        stamp = _now_iso(self.clock())
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}", "namespace": ns},
            "involvedObject": {"apiVersion": "sftrl.io/v1alpha1", "kind": "Experiment", "name": name,
                               "namespace": ns, "uid": m.get("uid")},
            "reason": reason, "message": message[:1024], "type": kind, "count": 1,
            "firstTimestamp": stamp, "lastTimestamp": stamp,
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT, "reportingInstance": self.instance,
        }
        try:
            self.api.create_event(ns, body)
        except (ApiRejected, ApiUnavailable) as e:
            log.warning("could not record event %s on %s/%s: %s", reason, ns, name, e)

    # --- the loop -----------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, until_done: bool = False) -> str | None:
        """Cycle every ``interval`` seconds until ``stop`` is set (or, with ``until_done``, until
        experiment ``only`` reaches a final phase, which is returned)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            start = self.clock()
            try:
                phases = self.cycle()
            except ApiUnavailable as e:
                log.warning("%s; retrying in %.0fs", e, self.interval)
                phases = {}
            except ApiRejected as e:
                log.error("%s; retrying in %.0fs", e, self.interval)
                phases = {}
            if until_done and self.only:
                done = [p for (ns, n), p in phases.items() if n == self.only and p in TERMINAL]
                if done:
                    return done[0]
            stop.wait(max(0.0, self.interval - (self.clock() - start)))
        return None
