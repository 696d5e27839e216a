"""A FAKE Kubernetes API server, for tests only: nothing here is a real cluster.

No Kubernetes control plane runs on the CI machines, so the Kubernetes client code of sftrl
(controller/kubernetes/executor.py, controller/kubernetes/operator.py, controller/kubernetes/cli.py) is exercised against
this small HTTP server on 127.0.0.1. It implements just enough of the REST API for:

- ``kubeflow.org/v1`` PyTorchJobs, ``sftrl.io/v1alpha1`` Experiments (with a status subresource
  and ``metadata.generation``), core ``v1`` Events and Pods (and ``pods/{name}/log``);
- namespaced and cluster-wide lists with equality/existence label selectors;
- ``resourceVersion`` on every write, ``409 AlreadyExists`` on creating an existing name (also while
  an object of that name is still terminating), ``409 Conflict`` on a stale ``resourceVersion``
  given in a PUT or in a merge patch (optimistic concurrency), JSON merge patch (RFC 7386);
- what the operator relies on and what breaks it: deletion that lingers (``terminating_seconds``:
  the object shows a ``deletionTimestamp`` and its pods keep running until it is gone); the
  garbage collector (an object whose ownerReferences all name deleted objects is deleted, pods of
  a deleted job with it); the training operator's TTL (a finished PyTorchJob is deleted
  ``ttlSecondsAfterFinished`` after it ended, or ``ttl_seconds`` when a test sets it); status
  writes answered 409 as if another writer got there first (``status_conflict_rate``, seeded);
  a master pod whose exit code shows up ``pod_report_delay`` seconds after its job failed;
- optional validation of created PyTorchJobs against a CRD's openAPIV3Schema (422 Invalid).

A simulated training operator (a thread) moves each PyTorchJob through Created -> Running ->
Succeeded, creating its master pod with a log, and on success writes the stage's ``_SUCCESS``
manifest under the ``output`` of the stage.json the job's ``--config`` points at (as the real
job_runtime would). Hooks let tests inject exit codes per job name (1-127 fail at once,
128-255 restart until ``backoffLimit`` then fail with ``BackoffLimitExceeded``), transient 500s
for sftrl's clients (seeded), a 500 after a create that did happen (ambiguous create), and
permanent rejections of a create.

Accounting for assertions: ``creates`` (successful creates per PyTorchJob name), ``conflicts``
(409s per name) with ``conflicted`` (name, uid of the job that answered), ``created_uids`` (every
job ever created under a name), ``overlaps`` (a job created while another job of the same stage
and storage root was still live: two writers), ``gone`` (jobs removed: TTL, GC, deletion),
``phases_seen``, ``requests`` (method, path, status, user agent, RBAC verb/group/resource),
``status_history``.

>>> srv = FakeKubeApiServer().start()
>>> srv.url.startswith("http://127.0.0.1:")
True
>>> srv.stop()
"""

from __future__ import annotations

import copy
import json
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.fakes.cluster_sim import SimulatedCluster

# (group, version, plural) -> kind
RESOURCES: dict[tuple[str, str, str], str] = {
    ("", "v1", "pods"): "Pod",
    ("", "v1", "events"): "Event",
    ("kubeflow.org", "v1", "pytorchjobs"): "PyTorchJob",
    ("sftrl.io", "v1alpha1", "experiments"): "Experiment",
}
JOBS = ("kubeflow.org", "v1", "pytorchjobs")
EXPERIMENTS = ("sftrl.io", "v1alpha1", "experiments")
PODS = ("", "v1", "pods")
EVENTS = ("", "v1", "events")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def parse_selector(selector: str) -> list[tuple[str, str, str | None]]:
    """'a=b,c!=d,e,!f' -> [(key, op, value)] with op in =, !=, exists, !exists."""
    out: list[tuple[str, str, str | None]] = []
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            out.append((k.strip(), "!=", v.strip()))
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            out.append((k.strip(), "=", v.strip()))
        elif term.startswith("!"):
            out.append((term[1:].strip(), "!exists", None))
        else:
            out.append((term, "exists", None))
    return out


def selector_matches(labels: dict[str, str], terms: list[tuple[str, str, str | None]]) -> bool:
    for k, op, v in terms:
        have = labels.get(k)
        if (op == "=" and have != v) or (op == "!=" and have == v) or (op == "exists" and have is None) \
                or (op == "!exists" and have is not None):
            return False
    return True


@dataclass
class _Sim:
    t0: float
    phase: str = "Created"
    restarts: int = 0


@dataclass
class Request:
    method: str
    path: str
    status: int
    agent: str
    verb: str
    group: str
    resource: str


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


@dataclass
class FakeKubeApiServer(SimulatedCluster):
    """The FAKE API server plus its simulated training operator. See the module docstring."""

    job_seconds: float = 0.2  # how long a simulated job runs
    start_delay: float = 0.05  # Created -> Running
    queue_seconds: float = 0.0  # Kueue-labelled jobs stay Suspended this long
    tick: float = 0.02
    seed: int = 0
    transient_rate: float = 0.0  # share of sftrl requests answered 500 (before doing anything)
    ambiguous_create_rate: float = 0.0  # share of sftrl creates done, then answered 500
    transient_agents: tuple[str, ...] = ("sftrl",)
    pytorchjob_schema: dict[str, Any] | None = None  # validate creates against it when set
    crds: set[str] = field(default_factory=lambda: {"pytorchjobs", "experiments"})
    exit_codes: dict[str, int] = field(default_factory=dict)  # job name -> exit code of every run
    stage_exit_codes: dict[str, int] = field(default_factory=dict)  # stage id -> exit code of every attempt
    stage_errors: dict[str, str] = field(default_factory=dict)  # stage id -> error line its failing run records
    reject_creates: dict[str, tuple[int, str]] = field(default_factory=dict)  # job name -> (code, message)
    ttl_seconds: float | None = None  # None: each job's ttlSecondsAfterFinished (days: never in a test)
    terminating_seconds: float = 0.0  # how long a deleted object lingers with a deletionTimestamp
    status_conflict_rate: float = 0.0  # share of sftrl's conditional status patches answered 409
    pod_report_delay: float = 0.0  # a failed master pod shows its exit code this much later

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.rv = 0
        self.store: dict[tuple[str, str, str], dict[tuple[str, str], dict[str, Any]]] = {r: {} for r in RESOURCES}
        self.logs: dict[tuple[str, str], str] = {}
        self.sim: dict[tuple[str, str], _Sim] = {}
        self.creates: Counter[str] = Counter()
        self.conflicts: Counter[str] = Counter()
        self.config_missing_at_create: list[str] = []
        self.requests: list[Request] = []
        self.status_history: dict[str, list[dict[str, Any]]] = {}
        self.conflicted: list[tuple[str, str]] = []
        self.created_uids: dict[str, list[str]] = {}
        self.overlaps: list[tuple[str, str]] = []
        self.gone: list[tuple[str, str, str]] = []  # (name, why, phase at removal)
        self.phases_seen: set[str] = set()
        self.terminating: dict[tuple[tuple[str, str, str], tuple[str, str]], float] = {}  # -> remove at
        self.finished_at: dict[tuple[str, str], float] = {}  # job -> monotonic time it ended
        self._pending_pods: list[tuple[float, str, dict[str, Any], dict[str, Any], str, int]] = []
        self.rng = random.Random(self.seed)
        self._stop = threading.Event()
        self.httpd: ThreadingHTTPServer | None = None
        self.url = ""

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self, simulate: bool = True) -> FakeKubeApiServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                server._handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients killed mid-request (the SIGKILL tests) are expected

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, name="fake-kube-api", daemon=True).start()
        if simulate:
            threading.Thread(target=self._simulate_loop, name="fake-training-operator", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        path = Path(path)
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        }))
        return path

    # --- direct access for tests ----------------------------------------------------------------

    def objects(self, resource: tuple[str, str, str], namespace: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(o) for (ns, _), o in sorted(self.store[resource].items())
                    if namespace is None or ns == namespace]

    def get(self, resource: tuple[str, str, str], namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            o = self.store[resource].get((namespace, name))
            return copy.deepcopy(o) if o is not None else None

    def put_object(self, resource: tuple[str, str, str], obj: dict[str, Any]) -> dict[str, Any]:
        """Create an object as an admin would (no fault injection, no accounting)."""
        with self.lock:
            return self._create(resource, obj["metadata"].get("namespace", "default"), obj, count=False)

    def calls(self, agent: str = "sftrl") -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.agent.startswith(agent)]

    # --- HTTP -------------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urlparse(h.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        agent = h.headers.get("User-Agent", "")
        verb, group, resource = "?", "?", "?"
        try:
            route = self._route(url.path)
            group, resource = route[0][0], route[0][2] + (f"/{route[3]}" if route[3] else "")
            verb = self._verb(h.command, route)
            ours = agent.startswith(self.transient_agents)
            if ours and self.transient_rate and self.rng.random() < self.transient_rate:
                raise ApiError(500, "InternalError", "injected transient error (fake API server)")
            body = json.loads(raw) if raw else None
            code, out, text = self._dispatch(h.command, route, query, body, ours)
        except ApiError as e:
            code, text = e.code, None
            out = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": e.message, "reason": e.reason, "code": e.code}
        except json.JSONDecodeError as e:
            code, text = 400, None
            out = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": str(e),
                   "reason": "BadRequest", "code": 400}
        with self.lock:
            self.requests.append(Request(h.command, url.path, code, agent, verb, group, resource))
        data = text.encode() if text is not None else json.dumps(out).encode()
        h.send_response(code)
        h.send_header("Content-Type", "text/plain" if text is not None else "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _route(self, path: str) -> tuple[tuple[str, str, str], str | None, str | None, str | None]:
        """-> (resource, namespace, name, subresource)."""
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        ns = None
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        if not rest:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        key = (group, version, rest[0])
        if key not in RESOURCES or (group and rest[0] not in self.crds):
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        return key, ns, (rest[1] if len(rest) > 1 else None), (rest[2] if len(rest) > 2 else None)

    @staticmethod
    def _verb(method: str, route: tuple) -> str:
        if method == "GET":
            return "get" if route[2] else "list"
        return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, "?")

    def _dispatch(self, method: str, route: tuple, query: dict[str, str], body: Any, ours: bool
                  ) -> tuple[int, dict[str, Any] | None, str | None]:
        res, ns, name, sub = route
        with self.lock:
            if method == "GET" and name is None:
                return 200, self._list(res, ns, query.get("labelSelector", "")), None
            if method == "POST" and name is None:
                if ns is None:
                    raise ApiError(405, "MethodNotAllowed", "create needs a namespace")
                obj = self._create(res, ns, body, count=True)
                if ours and res == JOBS and self.ambiguous_create_rate and self.rng.random() < self.ambiguous_create_rate:
                    raise ApiError(500, "InternalError", "injected error after the create was stored (fake)")
                return 201, obj, None
            key = (ns or "default", name or "")
            if key not in self.store[res]:
                raise ApiError(404, "NotFound", f'{res[2]} "{name}" not found')
            cur = self.store[res][key]
        if method == "GET" and sub == "log":
            return 200, None, self._log(key, query)
        with self.lock:
            cur = self.store[res].get(key)
            if cur is None:
                raise ApiError(404, "NotFound", f'{res[2]} "{name}" not found')
            if method == "GET":
                return 200, copy.deepcopy(cur), None
            if method == "DELETE":
                self.delete(res, key, "deleted")
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}, None
            if method in ("PUT", "PATCH"):
                want = (body or {}).get("metadata", {}).get("resourceVersion")
                stale = want and want != cur["metadata"]["resourceVersion"]
                if (want and ours and sub == "status" and self.status_conflict_rate
                        and self.rng.random() < self.status_conflict_rate):
                    cur["metadata"]["resourceVersion"] = self._bump()  # another writer got there first
                    stale = True
                if stale:
                    raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {res[2]} "{name}": '
                                                    "the object has been modified; please apply your changes "
                                                    "to the latest version and try again")
                if method == "PUT":
                    new = copy.deepcopy(body)
                else:
                    new = merge_patch(cur, {k: v for k, v in (body or {}).items() if k != "metadata"})
                    if sub != "status" and "metadata" in (body or {}):
                        new = merge_patch(new, {"metadata": body["metadata"]})
                return 200, self._update(res, key, cur, new, status_only=(sub == "status")), None
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    # --- storage of objects -----------------------------------------------------------------------

    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _list(self, res: tuple[str, str, str], ns: str | None, selector: str) -> dict[str, Any]:
        terms = parse_selector(selector)
        items = [copy.deepcopy(o) for (ons, _), o in sorted(self.store[res].items())
                 if (ns is None or ons == ns) and selector_matches(o["metadata"].get("labels") or {}, terms)]
        return {"kind": f"{RESOURCES[res]}List", "apiVersion": "/".join(filter(None, res[:2])),
                "metadata": {"resourceVersion": str(self.rv)}, "items": items}

    def _create(self, res: tuple[str, str, str], ns: str, body: Any, count: bool) -> dict[str, Any]:
        if not isinstance(body, dict) or not body.get("metadata", {}).get("name"):
            if isinstance(body, dict) and body.get("metadata", {}).get("generateName"):
                body["metadata"]["name"] = body["metadata"]["generateName"] + uuid.uuid4().hex[:5]
            else:
                raise ApiError(422, "Invalid", "metadata.name: Required value: name or generateName is required")
        name = body["metadata"]["name"]
        if res == JOBS and name in self.reject_creates:
            code, msg = self.reject_creates[name]
            raise ApiError(code, "Forbidden" if code == 403 else "Invalid", msg)
        if res == JOBS and self.pytorchjob_schema is not None:
            import jsonschema

            try:
                jsonschema.validate(body, self.pytorchjob_schema)
            except jsonschema.ValidationError as e:
                raise ApiError(422, "Invalid", f"PyTorchJob.kubeflow.org \"{name}\" is invalid: {e.message}") from None
        if (ns, name) in self.store[res]:
            if count:
                self.conflicts[name] += 1
                self.conflicted.append((name, self.store[res][(ns, name)]["metadata"]["uid"]))
            raise ApiError(409, "AlreadyExists", f'{res[2]}.{res[0] or "core"} "{name}" already exists')
        if res == JOBS and count:
            self._check_overlap(ns, body)
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        meta.update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion=self._bump(), creationTimestamp=_now(),
                    generation=1)
        if res == EXPERIMENTS:
            obj.pop("status", None)
        self.store[res][(ns, name)] = obj
        if res == JOBS:
            self.created_uids.setdefault(name, []).append(meta["uid"])
            if count:
                self.creates[name] += 1
            obj["status"] = {"conditions": [self._cond("Created", f"PyTorchJob {name} is created.")]}
            if self._config_missing(obj):
                self.config_missing_at_create.append(name)
            self.sim[(ns, name)] = _Sim(time.monotonic())
        return copy.deepcopy(obj)

    def _update(self, res: tuple, key: tuple[str, str], cur: dict, new: dict, status_only: bool) -> dict[str, Any]:
        if status_only:
            out = copy.deepcopy(cur)
            out["status"] = new.get("status")
            self.status_history.setdefault(key[1], []).append(copy.deepcopy(out["status"]))
        else:
            out = copy.deepcopy(new)
            out["status"] = copy.deepcopy(cur.get("status"))  # the status subresource is separate
            for k in ("uid", "creationTimestamp", "namespace", "name", "generation"):
                out["metadata"][k] = cur["metadata"].get(k)
            if out.get("spec") != cur.get("spec"):
                out["metadata"]["generation"] = cur["metadata"].get("generation", 1) + 1
        if out.get("status") is None:
            out.pop("status", None)
        out["metadata"]["resourceVersion"] = self._bump()
        self.store[res][key] = out
        return copy.deepcopy(out)


def pytorchjob_schema(crd_path: str | Path) -> dict[str, Any]:
    """The openAPIV3Schema of a PyTorchJob CRD file (for ``FakeKubeApiServer(pytorchjob_schema=...)``)."""
    import yaml

    crd = yaml.safe_load(Path(crd_path).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]

