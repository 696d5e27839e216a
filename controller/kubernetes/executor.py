"""Kubernetes executor: each stage runs as a Kubeflow PyTorchJob.

Observing costs one label-selected list of PyTorchJobs per cycle, whatever the number of stages
(``ClusterView.refresh``). Completion is decided by storage alone: a stage is done when its
``_SUCCESS`` manifest is there and its files have the recorded sizes, judged once per manifest
(controller/kubernetes/completion.py: no storage call in a steady cycle), and asked again just
before a stage is launched. Jobs are named from the stage id, the storage root and the attempt
(controller/kubernetes/render.py), not from the experiment, so a stage shared by two experiments on
one storage root is one job, and a restarted operator finds the jobs it made. Creating is
idempotent: stage.json is written to storage first, then the job is created; ``409 AlreadyExists``
means this very attempt exists already, and that job is adopted as the attempt (never a second).
A stage's state comes from its jobs and its durable attempt record (controller/kubernetes/attempts.py),
so a job deleted by its TTL or by hand never makes a finished attempt look pending.

API errors are told apart: 5xx, 429 and connection errors are transient (retried here with
exponential backoff, then ``ApiUnavailable``: the operator tries again next cycle); other 4xx are
permanent (``ApiRejected``: reported on the Experiment's status and as an Event, never retried in
a tight loop). Only this module and controller/kubernetes/operator.py import kubernetes or kubeflow.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import urllib3
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from controller.kubernetes import render
from controller.kubernetes.attempts import Attempt, exit_code_of, job_phase, later, observe_stage, terminating, ts
from controller.kubernetes.completion import Completion
from controller.plan import Plan
from controller.reconcile import Action, Delete, Launch, Observed
from controller.spec import Experiment
from job_runtime.io import storage
from job_runtime.contract import SUCCESS

log = logging.getLogger("sftrl.k8s")

JOBS = ("kubeflow.org", "v1", "pytorchjobs")
EXPERIMENTS = ("sftrl.io", "v1alpha1", "experiments")
USER_AGENT = "sftrl-operator/0.1.0"
TIMEOUT = (5.0, 60.0)  # connect, read (seconds)
REJECT_COOLDOWN_S = 300.0  # a refused create of a stage is tried again after this
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
EventSink = Callable[[str, str, str], None]  # (type Normal|Warning, reason, message)


class ApiUnavailable(RuntimeError):
    """The API could not be reached or kept failing transiently; worth trying again later."""


class ApiRejected(RuntimeError):
    """The API refused a request for good (4xx other than 409 and 429)."""

    def __init__(self, status: int, reason: str, message: str, what: str):
        self.status, self.reason, self.api_message, self.what = status, reason, message, what
        super().__init__(f"{what} was refused by the Kubernetes API ({status} {reason}): {message}")


# --- connecting ---------------------------------------------------------------------------------


def connect(kubeconfig: str | None = None, context: str | None = None,
            user_agent: str = USER_AGENT) -> tuple[kclient.ApiClient, str]:
    """An API client and its default namespace: in-cluster config in a pod, else the kubeconfig.

    Raises ApiUnavailable with "cannot reach a Kubernetes API, because ... . Set KUBECONFIG ...".
    """
    cfg = kclient.Configuration()
    namespace = "default"
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or None  # read now, not at import time
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and SA_NAMESPACE.exists():
            kconfig.load_incluster_config(client_configuration=cfg)
            namespace = SA_NAMESPACE.read_text().strip() or namespace
        else:
            kconfig.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
            _, active = kconfig.list_kube_config_contexts(config_file=kubeconfig)
            if context:
                active = next((c for c in kconfig.list_kube_config_contexts(config_file=kubeconfig)[0]
                               if c["name"] == context), active)
            namespace = (active or {}).get("context", {}).get("namespace") or namespace
    except (ConfigException, OSError, TypeError, ValueError) as e:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise ApiUnavailable(
            f"cannot reach a Kubernetes API, because no usable kubeconfig was found at {where} and this is not "
            f"a pod in a cluster ({str(e).strip() or type(e).__name__}). Set KUBECONFIG to your cluster's "
            f"kubeconfig (or pass --kubeconfig), or run inside the cluster") from None
    cfg.retries = 0  # our own retry loop decides (KubeApi._call)
    api = kclient.ApiClient(cfg)
    api.user_agent = user_agent
    return api, namespace


def crd_missing(e: ApiRejected) -> bool:
    """A 404 for the resource type itself (its CRD is not installed), not for one object."""
    return e.status == 404 and e.api_message.startswith("the server could not find the requested resource")


def _message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or "{}").get("message") or e.reason)
    except (ValueError, AttributeError):
        return str(e.body or e.reason)


class KubeApi:
    """The few API calls sftrl makes, with retries of transient errors and a call counter."""

    def __init__(self, api_client: kclient.ApiClient, retries: int = 4, backoff_s: float = 0.25,
                 sleep: Callable[[float], None] = time.sleep, on_error: Callable[[str], None] | None = None):
        self.api_client = api_client
        self.custom = kclient.CustomObjectsApi(api_client)
        self.core = kclient.CoreV1Api(api_client)
        self.retries, self.backoff_s, self.sleep = retries, backoff_s, sleep
        self.on_error = on_error or (lambda kind: None)
        self.calls: Counter[str] = Counter()

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, ok: tuple[int, ...] = (), **kw: Any) -> Any:
        delay, last = self.backoff_s, ""
        timeout = kw.pop("_request_timeout", TIMEOUT)
        for attempt in range(self.retries + 1):
            self.calls[what] += 1
            try:
                return fn(*args, _request_timeout=timeout, **kw)
            except ApiException as e:
                if e.status in ok:
                    raise ApiRejected(e.status, str(e.reason), _message(e), what) from None
                if not (e.status == 429 or e.status >= 500 or e.status == 0):
                    self.on_error("permanent")
                    raise ApiRejected(e.status, str(e.reason), _message(e), what) from None
                last = f"{e.status} {e.reason}: {_message(e)}"
                retry_after = (e.headers or {}).get("Retry-After") if e.status == 429 else None
                if retry_after and str(retry_after).isdigit():
                    delay = max(delay, min(float(retry_after), 30.0))
            except (urllib3.exceptions.HTTPError, OSError) as e:
                last = f"{type(e).__name__}: {e}"
            self.on_error("transient")
            if attempt < self.retries:
                self.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise ApiUnavailable(f"cannot reach a Kubernetes API, because {what} failed {self.retries + 1} times "
                             f"(last: {last}). Check that the cluster is up and KUBECONFIG points at it")

    # PyTorchJobs
    def list_jobs(self, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        g, v, p = JOBS
        if namespace:
            out = self._call("list pytorchjobs", self.custom.list_namespaced_custom_object, g, v, namespace, p,
                             label_selector=selector)
        else:
            out = self._call("list pytorchjobs", self.custom.list_cluster_custom_object, g, v, p,
                             label_selector=selector)
        return list(out.get("items") or [])

    def create_job(self, namespace: str, body: Any) -> bool:
        """True when created, False when a job of that name already exists (409)."""
        g, v, p = JOBS
        try:
            self._call("create pytorchjob", self.custom.create_namespaced_custom_object, g, v, namespace, p, body,
                       ok=(409,))
            return True
        except ApiRejected as e:
            if e.status == 409:
                return False
            raise

    def delete_job(self, namespace: str, name: str) -> bool:
        g, v, p = JOBS
        try:
            self._call("delete pytorchjob", self.custom.delete_namespaced_custom_object, g, v, namespace, p, name,
                       propagation_policy="Background", ok=(404,))
            return True
        except ApiRejected as e:
            if e.status == 404:
                return False
            raise

    # Experiments
    def list_experiments(self, namespace: str | None) -> list[dict[str, Any]]:
        g, v, p = EXPERIMENTS
        if namespace:
            out = self._call("list experiments", self.custom.list_namespaced_custom_object, g, v, namespace, p)
        else:
            out = self._call("list experiments", self.custom.list_cluster_custom_object, g, v, p)
        return list(out.get("items") or [])

    def get_experiment(self, namespace: str, name: str) -> dict[str, Any] | None:
        g, v, p = EXPERIMENTS
        try:
            return self._call("get experiment", self.custom.get_namespaced_custom_object, g, v, namespace, p, name,
                              ok=(404,))
        except ApiRejected as e:
            if e.status == 404 and not crd_missing(e):
                return None
            raise

    def create_experiment(self, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """The created object, or None when one of that name exists (409)."""
        g, v, p = EXPERIMENTS
        try:
            return self._call("create experiment", self.custom.create_namespaced_custom_object, g, v, namespace, p,
                              body, ok=(409,))
        except ApiRejected as e:
            if e.status == 409:
                return None
            raise

    def replace_experiment(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        g, v, p = EXPERIMENTS
        return self._call("update experiment", self.custom.replace_namespaced_custom_object, g, v, namespace, p,
                          name, body, ok=(409,))

    def patch_experiment(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        g, v, p = EXPERIMENTS
        return self._call("patch experiment", self.custom.patch_namespaced_custom_object, g, v, namespace, p,
                          name, patch, ok=(404,))

    def patch_experiment_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        g, v, p = EXPERIMENTS
        return self._call("patch experiment status", self.custom.patch_namespaced_custom_object_status, g, v,
                          namespace, p, name, patch, ok=(404, 409))

    # Events, pods, logs
    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        self._call("create event", self.core.create_namespaced_event, namespace, body)

    def list_pods(self, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        if namespace:
            resp = self._call("list pods", self.core.list_namespaced_pod, namespace, label_selector=selector,
                              _preload_content=False)
        else:
            resp = self._call("list pods", self.core.list_pod_for_all_namespaces, label_selector=selector,
                              _preload_content=False)
        return list(json.loads(resp.data).get("items") or [])

    def stream_log(self, namespace: str, pod: str, follow: bool = True) -> Iterator[bytes]:
        resp = self._call("read pod log", self.core.read_namespaced_pod_log, pod, namespace,
                          container=render.CONTAINER, follow=follow, _preload_content=False,
                          _request_timeout=(TIMEOUT[0], None) if follow else TIMEOUT)
        yield from resp.stream(4096)


def to_model(job: Mapping[str, Any]) -> Any:
    """A rendered job as ``kubeflow.training.models.KubeflowOrgV1PyTorchJob`` (fields the model lacks are dropped)."""
    from kubeflow.training.api_client import ApiClient as KfApiClient

    class _Resp:
        data = json.dumps(job)

    return KfApiClient().deserialize(_Resp(), "KubeflowOrgV1PyTorchJob")


def sanitize(job: Mapping[str, Any]) -> dict[str, Any]:
    """The job as the kubeflow-training models serialise it (what is actually sent)."""
    return kclient.ApiClient().sanitize_for_serialization(to_model(job))


# --- observing ------------------------------------------------------------------------------------

StageKey = tuple[str, str, str]  # (namespace, storage key, stage id)


class ClusterView:
    """Every stage job of a namespace (or the cluster) from ONE list call, and completed stages
    from storage, shared by all experiments of an operator cycle.

    Jobs are indexed by (namespace, storage key, stage id): two experiments on different storage
    roots never mistake each other's job for their own. Exit codes of failed masters come from one
    list of pods per refresh, matched to their job by the job's uid (a pod of a deleted job never
    answers for a recreated job of the same name), and are forgotten at the next refresh.
    """

    def __init__(self, api: KubeApi, namespace: str | None, clock: Callable[[], float] = time.time):
        self.api, self.namespace, self.clock = api, namespace, clock
        self.by_stage: dict[StageKey, dict[int, dict[str, Any]]] = {}
        self._exit: dict[str, int] = {}  # job uid (or "ns/name" for pods without owner) -> exit code
        self._pods_listed = False
        self.completion = Completion()  # verdicts on _SUCCESS manifests, kept across refreshes
        self._fresh = 0  # refresh count: local roots are scanned once per refresh
        self.rejected: dict[tuple[str, str], tuple[float, str]] = {}  # (ns, stage) -> (retry after, why)
        self.history: dict[StageKey, Attempt] = {}  # durable attempt records of every Experiment

    def refresh(self) -> None:
        jobs = self.api.list_jobs(self.namespace, render.SELECTOR)
        self.by_stage = {}
        for job in jobs:
            self.add(job)
        self._pods_listed = False
        self._exit = {}
        self._fresh += 1

    @staticmethod
    def _key(job: Mapping[str, Any]) -> tuple[StageKey, int] | None:
        parsed, store = render.stage_of(job), render.store_of(job)
        if parsed is None or store is None:
            return None
        return ((job.get("metadata") or {}).get("namespace") or "default", store, parsed[0]), parsed[1]

    def add(self, job: Mapping[str, Any]) -> None:
        k = self._key(job)
        if k is not None:
            self.by_stage.setdefault(k[0], {})[k[1]] = dict(job)

    def remove(self, job: Mapping[str, Any]) -> None:
        k = self._key(job)
        if k is not None:
            self.by_stage.get(k[0], {}).pop(k[1], None)

    def jobs(self, namespace: str, store: str, stage_id: str) -> dict[int, dict[str, Any]]:
        return self.by_stage.get((namespace, store, stage_id), {})

    def remember(self, namespace: str, store: str, records: Mapping[str, Mapping[str, Any]]) -> None:
        """Add an Experiment's status.attempts to the history (the later record of a stage wins)."""
        for sid, raw in (records or {}).items():
            rec = Attempt.from_status(raw)
            if rec is not None:
                key = (namespace, store, sid)
                self.history[key] = later(self.history.get(key), rec)  # type: ignore[assignment]

    def exit_code(self, job: Mapping[str, Any]) -> int | None:
        """Exit code of a failed job's master; pods are listed at most once per refresh."""
        meta = job.get("metadata") or {}
        if not self._pods_listed:
            self._pods_listed = True
            selector = f"{render.L_PART_OF}=sftrl,training.kubeflow.org/replica-type=master"
            for pod in self.api.list_pods(self.namespace, selector):
                code = exit_code_of(pod, render.CONTAINER)
                if code is None:
                    continue
                pmeta = pod.get("metadata") or {}
                owners = [o.get("uid") for o in pmeta.get("ownerReferences") or [] if o.get("kind") == render.KIND]
                if owners:
                    self._exit.update({str(uid): code for uid in owners})
                else:
                    name = (pmeta.get("labels") or {}).get("training.kubeflow.org/job-name")
                    if name:
                        self._exit[f"{pmeta.get('namespace') or 'default'}/{name}"] = code
        if meta.get("uid") and str(meta["uid"]) in self._exit:
            return self._exit[str(meta["uid"])]
        return self._exit.get(f"{meta.get('namespace') or 'default'}/{meta.get('name')}")

    def completed(self, plan: Plan, probe: Sequence[str] = ()) -> set[str]:
        """Ids of the plan's stages that are done in storage (controller/kubernetes/completion.py)."""
        return self.completion.completed(plan.root, plan.stages, probe, fresh=self._fresh)

    def incomplete(self, plan: Plan) -> dict[str, str]:
        """Stage id -> why its ``_SUCCESS`` manifest does not make it done (the file that differs)."""
        return self.completion.incomplete(plan.root, plan.stages)

    def done_now(self, root: str, stage_id: str) -> bool:
        """Ask storage now whether a stage is done (one stat or HEAD; its manifest once per identity)."""
        return self.completion.done_now(root, stage_id)


# --- the executor -------------------------------------------------------------------------------


class K8sExecutor:
    """Observe and apply one experiment's stages as PyTorchJobs in ``namespace``.

    ``view`` is shared by the operator across experiments (one refresh per cycle); without one,
    every ``observe`` refreshes its own. At most ``max_actions`` actions are applied per call, so
    a cycle's API calls stay bounded however many stages become ready at once. After ``observe``
    and ``apply``, ``attempts`` holds the durable record of each stage that has one (for the
    Experiment's status). ``owners``: the Experiment objects that need each stage (ownerReferences
    of the jobs it creates).
    """

    def __init__(self, api: KubeApi, exp: Experiment, namespace: str, view: ClusterView | None = None, *,
                 max_actions: int = 50, pushgateway: str | None = None, extra_env: Mapping[str, str] | None = None,
                 events: EventSink | None = None, clock: Callable[[], float] = time.time,
                 owners: Callable[[str], Sequence[Mapping[str, Any]]] = lambda stage_id: ()):
        self.api, self.exp, self.namespace = api, exp, namespace
        self.view = view if view is not None else ClusterView(api, namespace, clock)
        self._refresh = view is None
        self.max_actions, self.pushgateway, self.extra_env = max_actions, pushgateway, dict(extra_env or {})
        self.events: EventSink = events or (lambda kind, reason, message: None)
        self.clock, self.owners = clock, owners
        self.rejected: dict[str, str] = {}  # stage -> why the API refused its job (this apply)
        self.storage_errors: dict[str, str] = {}
        self.launched: list[tuple[str, int]] = []
        self.adopted: list[str] = []  # job names whose create answered 409: the existing job is the attempt
        self.deleted: list[str] = []
        self.attempts: dict[str, Attempt] = {}
        self.incomplete: dict[str, str] = {}  # stage -> why its _SUCCESS manifest does not make it done
        self.found_done: list[str] = []  # stages found done in storage just before their launch
        self.store = ""

    def observe(self, plan: Plan) -> dict[str, Observed]:
        if self._refresh:
            self.view.refresh()
        ns, now = self.namespace, self.clock()
        self.store = store = render.storage_key(plan.root)
        jobs = {sid: self.view.jobs(ns, store, sid) for sid in plan.stages}
        succeeded = [sid for sid, js in jobs.items() if js and job_phase(js[max(js)])[0] == "succeeded"]
        done = self.view.completed(plan, probe=succeeded)
        self.incomplete = self.view.incomplete(plan)
        out: dict[str, Observed] = {}
        self.attempts = {}
        for sid in plan.stages:
            before = self.view.history.get((ns, store, sid))
            o, rec = observe_stage(jobs[sid], sid in done, self.view.exit_code, before, now)
            out[sid] = o
            if rec is not None:
                if rec.state == "failed" and not rec.message and (before is None or before.attempt != rec.attempt
                                                                  or before.state == "running"):
                    rec = self._why_failed(plan, sid, rec, jobs[sid].get(rec.attempt))  # judged now: read it once
                self.attempts[sid] = rec
        return out

    def _why_failed(self, plan: Plan, sid: str, rec: Attempt, job: Mapping[str, Any] | None) -> Attempt:
        """The record with the failed attempt's error line: why its output is bad, or the line the
        stage wrote to its ``_FAILED`` record (ignored when older than the job: a previous attempt's)."""
        if rec.reason == "SucceededWithoutOutput" and sid in self.incomplete:
            return replace(rec, message=f"its output does not match its {SUCCESS} manifest: {self.incomplete[sid]}")
        try:
            failure = storage.read_failure(plan.stages[sid].config.output)
        except (storage.StorageError, OSError):
            failure = None
        created = ts(((job or {}).get("metadata") or {}).get("creationTimestamp"))
        if not failure or not failure.get("error") or (created is not None and float(failure.get("time") or 0) < created - 1):
            return rec
        return replace(rec, message=str(failure["error"]).splitlines()[0])

    def _cooling(self, plan: Plan) -> dict[str, str]:
        now = self.clock()
        return {sid: why for (ns, sid), (until, why) in self.view.rejected.items()
                if ns == self.namespace and until > now and sid in plan.stages}

    def to_apply(self, plan: Plan, actions: Sequence[Action]) -> list[Action]:
        """The actions ``apply`` would carry out now (refused launches cool down; at most max_actions)."""
        cooling = self._cooling(plan)
        return [a for a in actions if not (isinstance(a, Launch) and a.stage in cooling)][: self.max_actions]

    def apply(self, plan: Plan, actions: Sequence[Action]) -> None:
        self.store = render.storage_key(plan.root)
        cooling = self._cooling(plan)
        for a in self.to_apply(plan, actions):
            if isinstance(a, Launch):
                self._launch(plan, a)
            elif isinstance(a, Delete):
                self._delete(a.stage)
        for sid, why in cooling.items():  # still refused: keep reporting it
            self.rejected.setdefault(sid, why)

    def _launch(self, plan: Plan, a: Launch) -> None:
        stage = plan.stages[a.stage]
        try:  # finished elsewhere since this cycle observed it (another experiment, a local run)?
            if self.view.done_now(plan.root, a.stage):
                self.found_done.append(a.stage)
                log.info("stage %s is done in storage already: not launched", a.stage)
                return
        except storage.StorageError as e:
            self.storage_errors[a.stage] = str(e)
            log.warning("cannot tell whether stage %s is done: %s", a.stage, e)
            return
        job = render.render_job(stage, self.exp, a.attempt, self.namespace, self.extra_env, self.owners(a.stage))
        name = job["metadata"]["name"]
        try:  # the config first: a job must never start without its stage.json
            cfg = render.stage_config(stage, pushgateway=self.pushgateway)
            storage.write_json(render.config_uri(stage), cfg.model_dump(mode="json"))
        except storage.StorageError as e:
            self.storage_errors[a.stage] = str(e)
            log.warning("cannot write %s: %s", render.config_uri(stage), e)
            return
        try:
            created = self.api.create_job(self.namespace, to_model(job))
        except ApiRejected as e:
            msg = (f"PyTorchJob {name} of stage {a.stage} was refused by the Kubernetes API "
                   f"({e.status} {e.reason}): {e.api_message}")
            self.rejected[a.stage] = msg
            self.view.rejected[(self.namespace, a.stage)] = (self.clock() + REJECT_COOLDOWN_S, msg)
            self.events("Warning", "LaunchRejected", msg)
            log.error("%s", msg)
            return
        # 409: a job of this very name (same stage, storage root and attempt) exists: an earlier
        # operator's create, or ours answered ambiguously. It IS this attempt: adopt it, never a second.
        self.view.add(job)
        self.view.rejected.pop((self.namespace, a.stage), None)
        self.launched.append((a.stage, a.attempt))
        self.attempts[a.stage] = Attempt(a.attempt, "running")
        if created:
            self.events("Normal", "StageLaunched", f"stage {a.stage} ({stage.labels.run}) attempt {a.attempt}: "
                                                   f"PyTorchJob {name}")
            log.info("created %s (stage %s, attempt %d)", name, a.stage, a.attempt)
        else:
            self.adopted.append(name)
            log.info("adopted existing PyTorchJob %s (stage %s, attempt %d)", name, a.stage, a.attempt)

    def _delete(self, stage_id: str) -> None:
        for attempt, job in sorted(self.view.jobs(self.namespace, self.store, stage_id).items()):
            if job_phase(job)[0] != "running" or terminating(job):
                continue
            name = job["metadata"]["name"]
            self.api.delete_job(self.namespace, name)
            self.view.remove(job)
            self.deleted.append(stage_id)
            self.events("Normal", "StageCancelled", f"deleted PyTorchJob {name} of stage {stage_id}")
