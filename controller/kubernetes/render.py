"""Stage -> Kubeflow PyTorchJob (a plain dict). Pure: no I/O, no kubernetes import.

Each stage of a plan becomes one PyTorchJob (kubeflow.org/v1) whose ``pytorch`` container runs
``torchrun -m job_runtime <kind> --config <stages/<id>/stage.json URI>``. The training operator's
``PET_*`` variables give torchrun its topology (nnodes, node rank, master address and port);
``spec.nprocPerNode`` sets the processes per node, so nothing topological is hard-coded in the
command. The fields mirror ``kubeflow.training.models.KubeflowOrgV1PyTorchJob``:
controller/kubernetes/executor.py round-trips every job through those models before sending it, and
tests check that the round trip is lossless and that every job satisfies the real CRD schema and
the training operator's webhook rules (``webhook_errors``).

Names are deterministic and unique per storage root: ``sftrl-<stage id>-<store>`` for the first
attempt and ``sftrl-<stage id>-<store>-<n>`` for attempt n, where ``<store>`` is 8 hex digits of
the storage root's hash (label ``sftrl.io/storage``). So a restarted operator finds (and never
re-creates) a job it already created, a stage shared by two experiments on one storage root is one
job, and two experiments on different roots that plan the same stage id get a job each (their
outputs differ). Jobs carry ownerReferences to the Experiments that need them, so deleting an
Experiment garbage-collects its jobs (a shared job lives while one of its owners does).

>>> job_name("sft-0123456789ab", "1a2b3c4d"), job_name("sft-0123456789ab", "1a2b3c4d", 2)
('sftrl-sft-0123456789ab-1a2b3c4d', 'sftrl-sft-0123456789ab-1a2b3c4d-2')
>>> stage_of_job("sftrl-sft-0123456789ab-1a2b3c4d-2"), stage_of_job("sftrl-sft-679830671884-12345678")
(('sft-0123456789ab', 2), ('sft-679830671884', 1))
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Mapping, Sequence

from controller.plan import ID_HEX, Plan, Stage
from controller.spec import Experiment
from job_runtime.contract import EXIT_RETRYABLE, STAGE_JSON, STAGES_DIR, StageConfig
from job_runtime.io.storage import join, normalize

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
CONTAINER = "pytorch"  # the training operator's default container name (webhook rule)
METRICS_PORT = 9400  # rank 0 serves Prometheus metrics here (containerPort "metrics")
MASTER_PORT = 23456  # the training operator's default rendezvous port ("pytorchjob-port")
PREFIX = "sftrl"
# Pods and Services are named <job>-worker-<i>; Services must be DNS-1035 labels (<= 63), so
# job names leave room for the suffix.
MAX_JOB_NAME = 45
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
L_NAME, L_PART_OF, L_COMPONENT, L_MANAGED_BY = (
    "app.kubernetes.io/name", "app.kubernetes.io/part-of", "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by")
L_EXPERIMENT, L_STAGE, L_KIND, L_ATTEMPT = "sftrl.io/experiment", "sftrl.io/stage", "sftrl.io/kind", "sftrl.io/attempt"
L_STORAGE = "sftrl.io/storage"  # storage_key() of the stage's storage root
EXPERIMENT_API_VERSION, EXPERIMENT_KIND = "sftrl.io/v1alpha1", "Experiment"
STORE_HEX = 8
A_RUN, A_CONFIG = "sftrl.io/run", "sftrl.io/config"
SELECTOR = f"{L_PART_OF}=sftrl,{L_COMPONENT}=stage"  # every stage job, whichever experiment made it

# runPolicy: the pod restart policy ExitCode retries exit codes 128-255 (job_runtime's
# EXIT_RETRYABLE, OOM kills, preemption SIGTERM/SIGKILL) up to BACKOFF_LIMIT times inside one
# job, and fails the job at once on 1-127 (code and config failures).
BACKOFF_LIMIT = 3
ACTIVE_DEADLINE_SECONDS = 7 * 24 * 3600
TTL_AFTER_FINISHED_SECONDS = 3 * 24 * 3600  # results live in storage; failed pods stay for logs until then
CLEAN_POD_POLICY = "Running"
RUN_AS = 1000

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

assert EXIT_RETRYABLE >= 128  # the ExitCode policy must see it as retryable


class RenderError(ValueError):
    """An experiment setting cannot become a valid Kubernetes object; the message names it."""


def storage_key(root: str) -> str:
    """8 hex digits identifying a storage root (its normalised URI's sha256).

    >>> storage_key("s3://bucket/sftrl") == storage_key("s3://bucket/sftrl/"), len(storage_key("s3://b/p"))
    (True, 8)
    """
    return hashlib.sha256(normalize(root).encode()).hexdigest()[:STORE_HEX]


def stage_root(stage: Stage) -> str:
    """The storage root a stage writes under (its output is ``<root>/stages/<id>``)."""
    return stage.config.output.rsplit(f"/{STAGES_DIR}/", 1)[0]


def job_name(stage_id: str, store: str, attempt: int = 1) -> str:
    """The PyTorchJob name of a stage's attempt on one storage root: DNS-1035, at most MAX_JOB_NAME."""
    base = re.sub(r"[^a-z0-9-]+", "-", f"{PREFIX}-{stage_id}".lower()).strip("-")
    suffix = f"-{store}" + ("" if attempt <= 1 else f"-{attempt}")
    if len(base) + len(suffix) > MAX_JOB_NAME:
        h = hashlib.sha256(base.encode()).hexdigest()[:8]
        base = f"{base[: MAX_JOB_NAME - len(suffix) - 9].rstrip('-')}-{h}"
    return base + suffix


def stage_job_name(stage: Stage, attempt: int = 1) -> str:
    return job_name(stage.id, storage_key(stage_root(stage)), attempt)


def stage_of_job(name: str) -> tuple[str, int] | None:
    """(stage id, attempt) of a job name made by ``job_name``, or None for other names."""
    m = re.match(rf"^{PREFIX}-([a-z]+-[0-9a-f]{{{ID_HEX}}})-[0-9a-f]{{{STORE_HEX}}}(?:-(\d+))?$", name)
    if not m:
        return None
    return m.group(1), int(m.group(2) or 1)


def stage_of(job: Mapping[str, Any]) -> tuple[str, int] | None:
    """(stage id, attempt) of a stage job, from its labels (its name as a fallback).

    >>> stage_of({"metadata": {"name": "x", "labels": {L_STAGE: "sft-679830671884", L_ATTEMPT: "2"}}})
    ('sft-679830671884', 2)
    """
    meta = job.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(L_STAGE) and str(labels.get(L_ATTEMPT, "")).isdigit():
        return str(labels[L_STAGE]), int(labels[L_ATTEMPT])
    return stage_of_job(str(meta.get("name", "")))


def store_of(job: Mapping[str, Any]) -> str | None:
    """The storage key of a stage job (label ``sftrl.io/storage``, else its name), or None."""
    meta = job.get("metadata") or {}
    label = (meta.get("labels") or {}).get(L_STORAGE)
    if label:
        return str(label)
    m = re.match(rf"^{PREFIX}-[a-z]+-[0-9a-f]{{{ID_HEX}}}-([0-9a-f]{{{STORE_HEX}}})(?:-\d+)?$", str(meta.get("name", "")))
    return m.group(1) if m else None


def owner_reference(experiment: Mapping[str, Any]) -> dict[str, Any]:
    """An ownerReference to an Experiment object (its name and uid): cascade deletion of its jobs."""
    meta = experiment.get("metadata") or {}
    return {"apiVersion": EXPERIMENT_API_VERSION, "kind": EXPERIMENT_KIND, "name": str(meta["name"]),
            "uid": str(meta["uid"])}


def stage_config(stage: Stage, metrics_port: int | None = METRICS_PORT,
                 pushgateway: str | None = None) -> StageConfig:
    """The stage.json of a stage run on Kubernetes: rank 0 serves metrics on ``metrics_port``."""
    update: dict[str, Any] = {"metrics_port": metrics_port}
    if pushgateway:
        update["pushgateway"] = pushgateway
    return stage.config.model_copy(update=update)


def config_uri(stage: Stage) -> str:
    return join(stage.config.output, STAGE_JSON)


def _check(value: str | None, pattern: re.Pattern[str], field: str, max_len: int = 63) -> None:
    if value is not None and (len(value) > max_len or not pattern.match(value)):
        raise RenderError(
            f"{field} '{value}' cannot be used in a Kubernetes object, because it must match "
            f"{pattern.pattern} and have at most {max_len} characters. Fix {field} in the experiment file")


def labels(exp_name: str, stage: Stage, attempt: int = 1, queue: str | None = None) -> dict[str, str]:
    """Labels of a stage's job and pods (the PodMonitor selects part-of=sftrl, component=stage)."""
    out = {
        L_NAME: "sftrl", L_PART_OF: "sftrl", L_COMPONENT: "stage", L_MANAGED_BY: "sftrl-operator",
        L_EXPERIMENT: exp_name, L_STAGE: stage.id, L_KIND: stage.kind, L_ATTEMPT: str(attempt),
        L_STORAGE: storage_key(stage_root(stage)),
    }
    if queue:
        out[QUEUE_LABEL] = queue
    return out


def _quantity(v: Any) -> str:
    return str(v)


def _container(stage: Stage, exp: Experiment, gpus: int, extra_env: Mapping[str, str], rank0: bool) -> dict[str, Any]:
    k8s = exp.spec.kubernetes
    res = exp.spec.resources.for_kind(stage.kind)
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if gpus > 0:
        limits["nvidia.com/gpu"] = requests["nvidia.com/gpu"] = str(gpus)
    for key in ("cpu", "memory"):
        v = getattr(res, key, None)
        if v:
            requests[key] = _quantity(v)
    env = [{"name": "PYTHONUNBUFFERED", "value": "1"},
           {"name": "SFTRL_STAGE", "value": stage.id}]
    env += [{"name": k, "value": str(v)} for k, v in sorted(extra_env.items())]
    c: dict[str, Any] = {
        "name": CONTAINER,
        "image": k8s.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["torchrun", "-m", "job_runtime", stage.kind, "--config", config_uri(stage)],
        "env": env,
        # Only rank 0 (the Master) serves metrics: the PodMonitor scrapes pods with a "metrics" port.
        "ports": [{"name": "pytorchjob-port", "containerPort": MASTER_PORT, "protocol": "TCP"}]
        + ([{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}] if rank0 else []),
        "resources": {k: v for k, v in (("requests", requests), ("limits", limits)) if v},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if k8s.storage_secret:
        c["envFrom"] = [{"secretRef": {"name": k8s.storage_secret}}]
    return c


def _shm_size(res: Any, gpus: int) -> str:
    v = getattr(res, "shm", None) or getattr(res, "shm_size", None)
    return str(v) if v else f"{max(gpus, 1) * 8}Gi"


def _template(stage: Stage, exp: Experiment, attempt: int, gpus: int, extra_env: Mapping[str, str],
              rank0: bool) -> dict[str, Any]:
    k8s = exp.spec.kubernetes
    res = exp.spec.resources.for_kind(stage.kind)
    spec: dict[str, Any] = {
        "containers": [_container(stage, exp, gpus, extra_env, rank0)],
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": _shm_size(res, gpus)}}],
    }
    if k8s.service_account:
        spec["serviceAccountName"] = k8s.service_account
    if k8s.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in k8s.image_pull_secrets]
    selector = {**k8s.node_selector, **(getattr(res, "node_selector", None) or {})}
    if selector:
        spec["nodeSelector"] = selector
    tolerations = [dict(t) for t in [*k8s.tolerations, *(getattr(res, "tolerations", None) or [])]]
    if tolerations:
        spec["tolerations"] = [t for i, t in enumerate(tolerations) if t not in tolerations[:i]]
    if k8s.priority_class:
        spec["priorityClassName"] = k8s.priority_class
    return {
        "metadata": {"labels": labels(exp.metadata.name, stage, attempt),
                     "annotations": {"kubectl.kubernetes.io/default-container": CONTAINER}},
        "spec": spec,
    }


def _validate_names(exp: Experiment) -> None:
    k8s = exp.spec.kubernetes
    _check(exp.metadata.name, LABEL_VALUE, "metadata.name")
    _check(k8s.queue, LABEL_VALUE, "spec.kubernetes.queue")
    _check(k8s.namespace, DNS1123_SUBDOMAIN, "spec.kubernetes.namespace")
    for field, v in (("spec.kubernetes.service_account", k8s.service_account),
                     ("spec.kubernetes.storage_secret", k8s.storage_secret),
                     ("spec.kubernetes.priority_class", k8s.priority_class)):
        _check(v, DNS1123_SUBDOMAIN, field, 253)
    for i, s in enumerate(k8s.image_pull_secrets):
        _check(s, DNS1123_SUBDOMAIN, f"spec.kubernetes.image_pull_secrets[{i}]", 253)
    for k, v in k8s.node_selector.items():
        _check(v, LABEL_VALUE, f"spec.kubernetes.node_selector.{k}")
    for kind in ("default", "sft", "rl", "eval", "distill", "probe"):
        res = getattr(exp.spec.resources, kind)
        for k, v in (getattr(res, "node_selector", None) or {}).items():
            _check(v, LABEL_VALUE, f"spec.resources.{kind}.node_selector.{k}")
    if not k8s.image.strip():
        raise RenderError("spec.kubernetes.image is empty, because every pod needs an image. "
                          "Fix spec.kubernetes.image in the experiment file (e.g. ghcr.io/sftrl/runtime:0.1.0)")


def render_job(stage: Stage, exp: Experiment, attempt: int = 1, namespace: str | None = None,
               extra_env: Mapping[str, str] | None = None,
               owners: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The PyTorchJob of one attempt of a stage, as a plain dict ready for the API server.

    ``owners``: the Experiment objects (with metadata.uid) that need the stage; each becomes an
    ownerReference, so the job is garbage-collected once all of them are deleted.

    >>> from controller.spec import validate_dict
    >>> from controller.plan import build_plan
    >>> exp = validate_dict({"metadata": {"name": "demo"}, "spec": {
    ...     "storage": "s3://b/p", "models": [{"name": "m", "path": "Qwen/Qwen2-VL-2B-Instruct"}],
    ...     "data": [{"name": "d", "sft": "s3://b/sft.parquet", "rl": "s3://b/rl.parquet"}],
    ...     "scales": [1000], "methods": ["sft"], "resources": {"default": {"gpus_per_node": 8}}}})
    >>> stage = next(s for s in build_plan(exp).stages.values() if s.kind == "sft")
    >>> job = render_job(stage, exp)
    >>> job["metadata"]["name"] == job_name(stage.id, storage_key("s3://b/p")), sorted(job["spec"]["pytorchReplicaSpecs"])
    (True, ['Master'])
    """
    _validate_names(exp)
    res = exp.spec.resources.for_kind(stage.kind)
    gpus, nodes = int(res.gpus_per_node), max(int(res.nodes), 1)
    env = extra_env or {}
    replicas: dict[str, Any] = {
        "Master": {"replicas": 1, "restartPolicy": "ExitCode",
                   "template": _template(stage, exp, attempt, gpus, env, rank0=True)}}
    if nodes > 1:
        replicas["Worker"] = {"replicas": nodes - 1, "restartPolicy": "ExitCode",
                              "template": _template(stage, exp, attempt, gpus, env, rank0=False)}
    meta_labels = labels(exp.metadata.name, stage, attempt, exp.spec.kubernetes.queue)
    metadata: dict[str, Any] = {
        "name": stage_job_name(stage, attempt),
        "namespace": namespace or exp.spec.kubernetes.namespace,
        "labels": meta_labels,
        "annotations": {A_RUN: stage.labels.run, A_CONFIG: config_uri(stage)},
    }
    refs = {r["uid"]: r for r in (owner_reference(o) for o in owners)}
    if refs:
        metadata["ownerReferences"] = sorted(refs.values(), key=lambda r: (r["name"], r["uid"]))
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "nprocPerNode": str(gpus if gpus > 0 else 1),
            "pytorchReplicaSpecs": replicas,
            "runPolicy": {
                "backoffLimit": BACKOFF_LIMIT,
                "activeDeadlineSeconds": ACTIVE_DEADLINE_SECONDS,
                "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_SECONDS,
                "cleanPodPolicy": CLEAN_POD_POLICY,
            },
        },
    }


def render_plan(plan: Plan, exp: Experiment, namespace: str | None = None,
                pushgateway: str | None = None) -> list[tuple[dict[str, Any], StageConfig]]:
    """Every stage's first-attempt PyTorchJob with the stage.json it reads, in topological order."""
    return [(render_job(s, exp, 1, namespace), stage_config(s, pushgateway=pushgateway)) for s in plan.stages.values()]


# --- the training operator's admission rules (release-1.9 webhook), as a pure check ------------


def webhook_errors(job: Mapping[str, Any]) -> list[str]:
    """What the Kubeflow training operator's validating webhook (release-1.9) would refuse.

    Rules: metadata.name is a DNS-1035 label; runPolicy.managedBy, when set, is a supported
    controller; with elasticPolicy a Worker is required and elasticPolicy.nProcPerNode must not sit
    beside nprocPerNode; replica types are Master or Worker; every replica has containers, each
    with an image, one of them named ``pytorch``; Master has exactly 1 replica and Worker >= 1.
    sftrl additionally requires exactly one Master (rank 0 serves metrics and writes results).

    >>> webhook_errors({"metadata": {"name": "Bad_Name"}, "spec": {"pytorchReplicaSpecs": {}}})[0]
    "metadata.name: 'Bad_Name' is not a DNS-1035 label"
    """
    errs: list[str] = []
    name = str(job.get("metadata", {}).get("name", ""))
    if len(name) > 63 or not DNS1035.match(name):
        errs.append(f"metadata.name: '{name}' is not a DNS-1035 label")
    spec = job.get("spec", {})
    managed = spec.get("runPolicy", {}).get("managedBy")
    if managed is not None and managed not in ("kubeflow.org/training-operator", "kueue.x-k8s.io/multikueue"):
        errs.append(f"spec.runPolicy.managedBy: unsupported value '{managed}'")
    rspecs = spec.get("pytorchReplicaSpecs")
    ep = spec.get("elasticPolicy")
    if ep is not None:
        if "Worker" not in (rspecs or {}):
            errs.append("spec.pytorchReplicaSpecs[Worker]: must be configured if elastic policy is used")
        if ep.get("nProcPerNode") is not None and spec.get("nprocPerNode") is not None:
            errs.append("spec.elasticPolicy.nProcPerNode: must not be used with spec.nprocPerNode")
    if not rspecs:
        return errs + ["spec.pytorchReplicaSpecs: must be required"]
    if "Master" not in rspecs:
        errs.append("spec.pytorchReplicaSpecs[Master]: exactly one Master is required")
    for rtype, r in rspecs.items():
        path = f"spec.pytorchReplicaSpecs[{rtype}]"
        if rtype not in ("Master", "Worker"):
            errs.append(f"{path}: unsupported replica type (Master, Worker)")
        containers = ((r or {}).get("template") or {}).get("spec", {}).get("containers") or []
        if not containers:
            errs.append(f"{path}.template.spec.containers: must be specified")
        for i, c in enumerate(containers):
            if not c.get("image"):
                errs.append(f"{path}.template.spec.containers[{i}].image: must be required")
        if not any(c.get("name") == CONTAINER for c in containers):
            errs.append(f"{path}.template.spec.containers: must have at least one container with name {CONTAINER}")
        n = (r or {}).get("replicas")
        if rtype == "Master" and n != 1:
            errs.append(f"{path}.replicas: must be 1")
        elif rtype != "Master" and n is not None and n < 1:
            errs.append(f"{path}.replicas: must be at least 1")
    return errs
