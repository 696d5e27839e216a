"""The FAKE cluster's moving parts, for tests only (mixed into tests/fakes/fake_kube_apiserver.py):
a simulated Kubeflow training operator (Created -> Running -> Restarting | Succeeded | Failed, a
master pod with a log, the stage's ``_SUCCESS`` written on success and, when a test gives a stage an
error line, its ``_FAILED`` record on failure, as job_runtime would), the
garbage collector (ownerReferences), lingering deletion, and the training operator's TTL for
finished jobs. Nothing here is a real cluster."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

JOBS = ("kubeflow.org", "v1", "pytorchjobs")
EXPERIMENTS = ("sftrl.io", "v1alpha1", "experiments")
PODS = ("", "v1", "pods")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class SimulatedCluster:
    """Methods of FakeKubeApiServer that play the training operator, the GC and the TTL controller.
    They run under the server's lock, from its simulation thread (``start(simulate=True)``)."""

    # --- the simulated training operator ----------------------------------------------------------

    @staticmethod
    def _cond(kind: str, message: str, reason: str | None = None, status: str = "True") -> dict[str, Any]:
        return {"type": kind, "status": status, "reason": reason or f"PyTorchJob{kind}", "message": message,
                "lastUpdateTime": _now(), "lastTransitionTime": _now()}

    @staticmethod
    def _config_uri(job: dict[str, Any]) -> str | None:
        c = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
        args = list(c.get("command", [])) + list(c.get("args", []))
        return args[args.index("--config") + 1] if "--config" in args else None

    def _config_missing(self, job: dict[str, Any]) -> bool:
        from job_runtime.io import storage

        uri = self._config_uri(job)
        return uri is None or not storage.exists(uri)

    def _set(self, job: dict[str, Any], cond: dict[str, Any]) -> None:
        conds = [c for c in job["status"].get("conditions", []) if c["type"] != cond["type"]]
        if cond["type"] in ("Succeeded", "Failed", "Restarting"):
            for c in conds:
                if c["type"] == "Running":
                    c["status"] = "False"
        if cond["type"] == "Running":
            conds = [c for c in conds if c["type"] not in ("Restarting", "Suspended")]
        conds.append(cond)
        job["status"]["conditions"] = conds
        job["metadata"]["resourceVersion"] = self._bump()

    def _pod(self, ns: str, job: dict[str, Any], state: dict[str, Any], phase: str, restarts: int) -> None:
        name = job["metadata"]["name"]
        tmpl = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
        labels = dict(tmpl.get("metadata", {}).get("labels", {}))
        labels.update({"training.kubeflow.org/job-name": name, "training.kubeflow.org/replica-type": "master",
                       "training.kubeflow.org/replica-index": "0", "training.kubeflow.org/job-role": "master"})
        owner = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": name,
                 "uid": job["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{name}-master-0", "namespace": ns, "labels": labels,
                            "resourceVersion": self._bump(), "uid": str(uuid.uuid4()), "ownerReferences": [owner]},
               "spec": {"containers": [{"name": "pytorch", "image": tmpl["spec"]["containers"][0]["image"]}]},
               "status": {"phase": phase, "containerStatuses": [
                   {"name": "pytorch", "state": state, "restartCount": restarts, "ready": phase == "Running"}]}}
        self.store[PODS][(ns, pod["metadata"]["name"])] = pod

    def _log(self, key: tuple[str, str], query: dict[str, str]) -> str:
        if query.get("follow") == "true":  # stream until the pod ends (here: return once it has)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with self.lock:
                    pod = self.store[PODS].get(key)
                    if pod is None or pod["status"]["phase"] in ("Succeeded", "Failed"):
                        break
                time.sleep(self.tick)
        with self.lock:
            return self.logs.get(key, "")

    def _simulate_loop(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                for key in list(self.sim):
                    self._step(key)
                self._housekeeping()
            time.sleep(self.tick)

    # --- deletion, garbage collection, TTL ------------------------------------------------------------

    def delete(self, res: tuple[str, str, str], key: tuple[str, str], why: str) -> None:
        """Delete as the API server does: at once, or (terminating_seconds) first mark it Terminating."""
        with self.lock:
            obj = self.store[res].get(key)
            if obj is None or (res, key) in self.terminating:
                return
            if self.terminating_seconds > 0:
                obj["metadata"]["deletionTimestamp"] = _now()
                obj["metadata"]["resourceVersion"] = self._bump()
                self.terminating[(res, key)] = time.monotonic() + self.terminating_seconds
            else:
                self._remove(res, key, why)

    def _remove(self, res: tuple[str, str, str], key: tuple[str, str], why: str) -> None:
        obj = self.store[res].pop(key, None)
        self.terminating.pop((res, key), None)
        if obj is None:
            return
        if res == JOBS:
            self.gone.append((key[1], why, self._phase(obj)))
            self.sim.pop(key, None)
            self.finished_at.pop(key, None)
            uid = obj["metadata"]["uid"]
            for pk, pod in list(self.store[PODS].items()):
                if any(o.get("uid") == uid for o in pod["metadata"].get("ownerReferences") or []):
                    del self.store[PODS][pk]

    @staticmethod
    def _phase(job: dict[str, Any]) -> str:
        conds = [c["type"] for c in (job.get("status") or {}).get("conditions", []) if c.get("status") == "True"]
        for kind in ("Succeeded", "Failed", "Restarting", "Running", "Suspended"):
            if kind in conds:
                return kind
        return "Created"

    def _live(self, job: dict[str, Any]) -> bool:
        return self._phase(job) not in ("Succeeded", "Failed")

    def _check_overlap(self, ns: str, body: dict[str, Any]) -> None:
        labels = body.get("metadata", {}).get("labels") or {}
        stage, store = labels.get("sftrl.io/stage"), labels.get("sftrl.io/storage")
        for (ons, oname), other in self.store[JOBS].items():
            ol = other["metadata"].get("labels") or {}
            if ons == ns and ol.get("sftrl.io/stage") == stage and ol.get("sftrl.io/storage") == store and (
                    self._live(other) or other["metadata"].get("deletionTimestamp")):
                self.overlaps.append((body["metadata"]["name"], oname))

    def _housekeeping(self) -> None:
        now = time.monotonic()
        for (res, key), until in list(self.terminating.items()):
            if now >= until:
                self._remove(res, key, "deleted")
        uids = {o["metadata"]["uid"] for r in (JOBS, EXPERIMENTS) for o in self.store[r].values()}
        for key, job in list(self.store[JOBS].items()):
            refs = job["metadata"].get("ownerReferences") or []
            if refs and not any(r.get("uid") in uids for r in refs):
                self.delete(JOBS, key, "garbage-collected")
            self.phases_seen.add(self._phase(job))
        for key, job in list(self.store[JOBS].items()):
            ended = self.finished_at.get(key)
            if ended is None:
                continue
            ttl = self.ttl_seconds if self.ttl_seconds is not None else \
                job["spec"].get("runPolicy", {}).get("ttlSecondsAfterFinished")
            if ttl is not None and now - ended >= float(ttl):
                self.delete(JOBS, key, "ttl")
        for item in list(self._pending_pods):
            if now >= item[0]:
                self._pending_pods.remove(item)
                _, ns, job, term, phase, restarts = item
                if (ns, job["metadata"]["name"]) in self.store[JOBS]:
                    self._pod(ns, job, term, phase, restarts)

    def _step(self, key: tuple[str, str]) -> None:
        from job_runtime.io import storage

        sim, job = self.sim[key], self.store[JOBS].get(key)
        if job is None or job["metadata"].get("deletionTimestamp"):
            return  # gone, or terminating: its pods are being stopped, nothing more happens
        ns, name = key
        t = time.monotonic() - sim.t0
        queued = "kueue.x-k8s.io/queue-name" in job["metadata"].get("labels", {})
        pod_key = (ns, f"{name}-master-0")
        if sim.phase == "Created":
            if queued and self.queue_seconds > 0 and t < self.queue_seconds:
                if not any(c["type"] == "Suspended" for c in job["status"]["conditions"]):
                    self._set(job, self._cond("Suspended", f"PyTorchJob {name} is suspended.", "JobSuspended"))
                return
            if t >= self.start_delay + (self.queue_seconds if queued else 0):
                sim.phase, sim.t0 = "Running", time.monotonic()
                self._set(job, self._cond("Running", f"PyTorchJob {ns}/{name} is running."))
                self._pod(ns, job, {"running": {"startedAt": _now()}}, "Running", sim.restarts)
                self.logs[pod_key] = self.logs.get(pod_key, "") + f"[rank0] {name}: starting (attempt run {sim.restarts})\n"
            return
        if sim.phase != "Running" or t < self.job_seconds:
            return
        stage = (job["metadata"].get("labels") or {}).get("sftrl.io/stage", "")
        code = self.exit_codes.get(name, self.stage_exit_codes.get(stage, 0))
        uri = self._config_uri(job)
        if code == 0:
            try:
                cfg = storage.read_json(uri) if uri else None
            except Exception:  # noqa: BLE001 - a missing config is the stage's exit 2
                cfg = None
            if cfg is None:
                code = 2
            else:
                out = cfg["output"]
                metrics = (json.dumps({"step": 1, "loss": 1.0}) + "\n").encode()
                storage.write_bytes(storage.join(out, "metrics.jsonl"), metrics)
                storage.write_json(storage.join(out, "_SUCCESS"), {  # as a real stage: the true size and sha256
                    "files": {"metrics.jsonl": {"size": len(metrics), "sha256": hashlib.sha256(metrics).hexdigest()}},
                    "created": time.time(), "stage": cfg["id"], "job": name})
        elif stage in self.stage_errors and uri:  # a failing stage records its error line, as job_runtime does
            try:
                storage.write_failure(storage.read_json(uri)["output"], error=self.stage_errors[stage], exit_code=code)
            except Exception:  # noqa: BLE001 - no config: nothing to record, as a real stage
                pass
        term = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "finishedAt": _now()}}
        self.logs[pod_key] = self.logs.get(pod_key, "") + f"[rank0] {name}: exit {code}\n"
        if code == 0:
            sim.phase = "Succeeded"
            self.finished_at[key] = time.monotonic()
            self._pod(ns, job, term, "Succeeded", sim.restarts)
            self._set(job, self._cond("Succeeded", f"PyTorchJob {ns}/{name} successfully completed."))
            job["status"]["completionTime"] = _now()
            return
        spec = job["spec"]["pytorchReplicaSpecs"]["Master"]
        backoff = job["spec"].get("runPolicy", {}).get("backoffLimit", 0)
        retryable = spec.get("restartPolicy") == "ExitCode" and code >= 128
        if retryable and sim.restarts < backoff:
            sim.restarts += 1
            sim.phase, sim.t0 = "Created", time.monotonic() - self.start_delay
            self._pod(ns, job, term, "Failed", sim.restarts)
            self._set(job, self._cond("Restarting", f"PyTorchJob {name} is restarting because 1 Master replica(s) "
                                                    "failed.", "PyTorchJobRestarting"))
            return
        sim.phase = "Failed"
        self.finished_at[key] = time.monotonic()
        if self.pod_report_delay > 0:  # the pod's status lags: running, then its exit code
            self._pending_pods.append((time.monotonic() + self.pod_report_delay, ns, job, term, "Failed", sim.restarts))
        else:
            self._pod(ns, job, term, "Failed", sim.restarts)
        if retryable:
            self._set(job, self._cond("Failed", f"Job {name} has failed because it has reached the specified "
                                                "backoff limit", "BackoffLimitExceeded"))
        else:
            self._set(job, self._cond("Failed", f"PyTorchJob {name} is failed because 1 Master replica(s) failed."))
        job["status"]["completionTime"] = _now()
