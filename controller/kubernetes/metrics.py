"""The operator's own Prometheus metrics, and the HTTP endpoint that serves them with /healthz.

Three families, in their own ``CollectorRegistry`` (never the process-global one):

- ``sftrl_operator_stages{experiment, state}``: stages of each experiment by state, as of the last
  reconcile cycle (states missing from a cycle drop to 0, so ``state="failed"`` clears).
- ``sftrl_operator_reconcile_duration_seconds{experiment}``: histogram of reconcile cycle durations.
- ``sftrl_operator_api_errors_total{kind}``: Kubernetes API errors, ``kind`` = transient|permanent.

The operator calls::

    metrics = OperatorMetrics()
    server = metrics.serve(8080)            # /metrics and /healthz; port 0 picks a free one
    metrics.observe_cycle("sft-vs-rl", {"succeeded": 3, "running": 1}, seconds=0.4)
    metrics.api_error("transient")

Imports prometheus_client only (no kubernetes), so the pure parts of the controller stay testable.
"""

from __future__ import annotations

import threading
import time
from socketserver import ThreadingMixIn
from typing import Any, Iterable, Mapping
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from job_runtime.contract import PUSH_JOB

STATES: tuple[str, ...] = ("pending", "running", "succeeded", "failed")  # always exported, 0 if absent
ERROR_KINDS: tuple[str, ...] = ("transient", "permanent")
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def delete_stale(pushgateway: str, stage_ids: Iterable[str], timeout: float = 10.0) -> list[str]:
    """Delete the Pushgateway groups ``{job="sftrl", stage=<id>}`` of superseded stages.

    Returns the ids whose group was deleted (deleting a group that does not exist succeeds too).
    Raises RuntimeError naming the Pushgateway when it cannot be reached.

    >>> delete_stale("http://127.0.0.1:9", [])
    []
    """
    from prometheus_client import delete_from_gateway

    done = []
    for sid in stage_ids:
        try:
            delete_from_gateway(pushgateway, job=PUSH_JOB, grouping_key={"stage": sid}, timeout=timeout)
        except OSError as e:
            raise RuntimeError(
                f"Could not delete stage {sid} from the Pushgateway {pushgateway}, because {e}. "
                "Check the pushgateway URL and that it is running."
            ) from e
        done.append(sid)
    return done


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


class OperatorMetrics:
    """The operator's metrics in their own registry.

    >>> m = OperatorMetrics()
    >>> m.observe_cycle("exp", {"running": 2, "failed": 1}, seconds=0.2)
    >>> m.registry.get_sample_value("sftrl_operator_stages", {"experiment": "exp", "state": "failed"})
    1.0
    >>> m.observe_cycle("exp", {"running": 3}, seconds=0.1)
    >>> m.registry.get_sample_value("sftrl_operator_stages", {"experiment": "exp", "state": "failed"})
    0.0
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.stages = Gauge(
            "sftrl_operator_stages", "Stages of an experiment by state, as of the last reconcile cycle.",
            ["experiment", "state"], registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "sftrl_operator_reconcile_duration_seconds", "Duration of one reconcile cycle of an experiment.",
            ["experiment"], buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self.api_errors = Counter(
            "sftrl_operator_api_errors", "Kubernetes API errors by kind (transient: retried; permanent: not).",
            ["kind"], registry=self.registry,
        )
        self.last_cycle = Gauge(
            "sftrl_operator_last_reconcile_timestamp_seconds", "Unix time the last reconcile cycle ended.",
            registry=self.registry,
        )
        for kind in ERROR_KINDS:
            self.api_errors.labels(kind)  # exported as 0 from the start
        self._states: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._last_cycle_at = time.time()

    def heartbeat(self) -> None:
        """A loop pass finished (with or without Experiments): keeps /healthz healthy while idle."""
        with self._lock:
            self._last_cycle_at = time.time()
            self.last_cycle.set(self._last_cycle_at)

    def observe_cycle(self, experiment: str, counts_by_state: Mapping[str, int], seconds: float) -> None:
        """Record one reconcile cycle of ``experiment``: stage counts by state and its duration."""
        if seconds < 0:
            raise ValueError(f"reconcile duration is {seconds}, because a duration cannot be negative. Pass seconds >= 0.")
        with self._lock:
            seen = self._states.setdefault(experiment, set(STATES))
            seen.update(counts_by_state)
            for state in seen:
                self.stages.labels(experiment, state).set(int(counts_by_state.get(state, 0)))
            self.reconcile_duration.labels(experiment).observe(seconds)
            self._last_cycle_at = time.time()
            self.last_cycle.set(self._last_cycle_at)

    def forget(self, experiments: Iterable[str]) -> None:
        """Drop the series of experiments that were deleted."""
        with self._lock:
            for exp in experiments:
                for state in self._states.pop(exp, set()):
                    self.stages.remove(exp, state)
                try:
                    self.reconcile_duration.remove(exp)
                except KeyError:
                    pass

    def api_error(self, kind: str) -> None:
        """Count one Kubernetes API error; kind is 'transient' or 'permanent'."""
        if kind not in ERROR_KINDS:
            raise ValueError(f"API error kind is {kind!r}, because only {ERROR_KINDS} are counted. Use one of them.")
        self.api_errors.labels(kind).inc()

    def healthy(self, max_cycle_age_s: float | None = None) -> bool:
        """False when no reconcile cycle ended within ``max_cycle_age_s`` (None: always healthy)."""
        return max_cycle_age_s is None or time.time() - self._last_cycle_at <= max_cycle_age_s

    def serve(self, port: int, addr: str = "0.0.0.0", max_cycle_age_s: float | None = None) -> WSGIServer:
        """Serve /metrics and /healthz in a daemon thread; see the module-level ``serve``."""
        return serve(port, self, addr=addr, max_cycle_age_s=max_cycle_age_s)


def serve(
    port: int,
    metrics: OperatorMetrics | None = None,
    addr: str = "0.0.0.0",
    max_cycle_age_s: float | None = None,
) -> WSGIServer:
    """Serve ``metrics`` at /metrics and a liveness probe at /healthz, in a daemon thread.

    /healthz answers 200 "ok", or 503 when ``max_cycle_age_s`` is set and no reconcile cycle ended
    within it (a hung loop: let Kubernetes restart the operator). Port 0 picks a free port:
    ``server.server_port`` is the bound one; ``server.shutdown()`` stops serving.
    """
    metrics = metrics or OperatorMetrics()
    metrics_app = make_wsgi_app(metrics.registry)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            if metrics.healthy(max_cycle_age_s):
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ok\n"]
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [f"no reconcile cycle in the last {max_cycle_age_s} s\n".encode()]
        if path in ("/", "/metrics"):
            return metrics_app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    server = make_server(addr, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="sftrl-operator-metrics", daemon=True).start()
    return server
