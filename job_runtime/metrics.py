"""Stage metrics: every logged step lands in metrics.jsonl, in Prometheus, and past the detector.

``StageMetrics(cfg, jsonl_path)`` is the one object a stage logs through:

- ``log(step, values)`` takes a TRL log dict (or the stage's own values, e.g. ``heldout_accuracy``),
  derives ``signal_availability`` (1 - frac_reward_zero_std) and ``tokens_per_second`` (from TRL's
  cumulative ``num_tokens``), drops values that are not finite numbers (counted, never fatal),
  appends one JSON row to metrics.jsonl and sets the Prometheus gauges of ``contract.TRAIN_METRICS``
  (plus the extras below), labelled with ``cfg.labels`` (experiment, run, stage, model, method,
  data, scale, seed).
- Rows carrying ``heldout_accuracy`` feed the deceptive-reward detector (``job_runtime.train.deceptive``)
  with the mean training reward since the previous held-out evaluation; the verdict becomes
  ``deceptive_reward`` (0/1) in the row and the gauge ``sftrl_deceptive_reward``, a warning with the
  numbers, and, when ``rl.deceptive.stop`` is set, ``should_stop = True`` (``best_heldout`` says
  which step to keep).
- ``log_eval(benchmark, score)`` records an eval stage's headline score per benchmark (a row key
  ``eval_accuracy/<benchmark>`` passed to ``log`` does the same, without the range check).
- Rank 0 (env RANK unset or 0) serves ``/metrics`` over HTTP when ``cfg.metrics_port`` is set
  (0 = any free port; ``.port`` says which), from its own ``CollectorRegistry``.
- With ``cfg.pushgateway`` set, ``log_eval`` and ``close`` push the stage's metrics to the
  Pushgateway under the grouping key ``{job="sftrl", stage=<id>}``; the operator removes the
  groups of superseded stages.
- ``trainer_callback()`` is the TRL/transformers callback that does all of this on every log and
  stops training when ``should_stop`` is set.

Works without prometheus_client installed as long as neither metrics_port nor pushgateway is set.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from job_runtime.contract import (
    EVAL_ACCURACY_METRIC,
    METRIC_LABELS,
    PUSH_JOB,
    TRAIN_METRICS,
    DeceptiveParams,
    RLParams,
    StageConfig,
)
from job_runtime.train.deceptive import DeceptiveRewardDetector, Verdict

log = logging.getLogger("sftrl.metrics")

METRICS_ADDR_ENV = "SFTRL_METRICS_ADDR"  # bind address of the /metrics server (default 0.0.0.0)
LINGER_ENV = "SFTRL_METRICS_LINGER_S"  # at close, wait up to this long for a last scrape (default 30)

# Gauges beyond the contract's TRAIN_METRICS (same labels): metrics.jsonl key -> (name, help).
EXTRA_METRICS: dict[str, tuple[str, str]] = {
    "clip_ratio/low_mean": ("sftrl_clip_low_ratio", "Share of tokens clipped at the lower bound (negative advantage)."),
    "clip_ratio/high_mean": ("sftrl_clip_high_ratio", "Share of tokens clipped at the upper bound (positive advantage)."),
    "completions/max_length": ("sftrl_completion_max_length_tokens", "Longest completion of the step."),
    "mean_token_accuracy": ("sftrl_train_token_accuracy_ratio", "SFT: share of next tokens predicted exactly."),
}
GAUGES: dict[str, tuple[str, str]] = {**TRAIN_METRICS, **EXTRA_METRICS}
REWARD_COMPONENT = ("sftrl_reward_component", "Mean of one reward function before weighting (label: component).")
STEPS = ("sftrl_train_steps", "Optimiser steps completed.")  # exported as sftrl_train_steps_total
TOKENS = ("sftrl_train_tokens", "Tokens processed in training (TRL num_tokens).")  # _total
LAST_STEP = ("sftrl_last_step_timestamp_seconds", "Unix time of the latest logged step (stage start before it).")
FINISHED = ("sftrl_stage_finished", "1 once the stage has finished cleanly.")
DROPPED = ("sftrl_metric_values_dropped", "Logged values dropped because they were not finite numbers.")
PUSH_ERRORS = ("sftrl_pushgateway_errors", "Failed pushes to the Pushgateway.")


def derive(values: dict[str, Any]) -> dict[str, float]:
    """Finite numeric values plus derived keys (signal availability from frac_reward_zero_std).

    >>> derive({"reward": 0.5, "frac_reward_zero_std": 0.25, "epoch": "x", "kl": float("nan")})
    {'reward': 0.5, 'frac_reward_zero_std': 0.25, 'signal_availability': 0.75}
    """
    out = {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
    if "frac_reward_zero_std" in out:
        out["signal_availability"] = 1.0 - out["frac_reward_zero_std"]
    return out


def reward_component(key: str) -> str | None:
    """The reward function's short name in a TRL key ``rewards/<fn>/mean``, else None.

    >>> reward_component("rewards/accuracy_reward/mean"), reward_component("rewards/format_reward/std")
    ('accuracy', None)
    """
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "rewards" or parts[2] != "mean":
        return None
    name = parts[1]
    return name[: -len("_reward")] if name.endswith("_reward") and len(name) > 7 else name


def eval_benchmark(key: str) -> str | None:
    """The benchmark of an eval row key ``eval_accuracy/<benchmark>``, else None.

    >>> eval_benchmark("eval_accuracy/mathvista"), eval_benchmark("reward")
    ('mathvista', None)
    """
    prefix = "eval_accuracy/"
    return key[len(prefix):] if key.startswith(prefix) and len(key) > len(prefix) else None


def is_rank_zero() -> bool:
    """True in the process that serves and pushes metrics: env RANK unset or 0."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def _prometheus():
    try:
        import prometheus_client
    except ImportError as e:  # pragma: no cover - the runtime image installs it
        raise RuntimeError(
            "metrics_port or pushgateway is set, because the stage config asks for Prometheus metrics, "
            "but prometheus_client is not installed. Install sftrl[metrics] or unset both fields."
        ) from e
    return prometheus_client


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


def serve_registry(registry: Any, port: int, addr: str = "0.0.0.0", on_scrape=None) -> WSGIServer:
    """Serve ``registry`` at /metrics (and 200 at /healthz) in a daemon thread; port 0 picks one.

    Returns the server; ``server.server_port`` is the bound port, ``server.shutdown()`` stops it.
    """
    prom = _prometheus()
    metrics_app = prom.make_wsgi_app(registry)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path in ("/", "/metrics"):
            if on_scrape is not None:
                on_scrape()
            return metrics_app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics\n"]

    server = make_server(addr, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="sftrl-metrics", daemon=True).start()
    return server


def exported_sample_names() -> set[str]:
    """Every sample name a stage can export (gauges, counters with _total), for dashboard checks.

    >>> "sftrl_train_steps_total" in exported_sample_names()
    True
    """
    names = {n for n, _ in GAUGES.values()} | {REWARD_COMPONENT[0], EVAL_ACCURACY_METRIC[0], LAST_STEP[0], FINISHED[0]}
    return names | {f"{n}_total" for n, _ in (STEPS, TOKENS, DROPPED, PUSH_ERRORS)}


class StageMetrics:
    """One stage's metrics: metrics.jsonl rows, Prometheus gauges, the deceptive-reward detector.

    >>> import tempfile, json
    >>> from job_runtime.contract import StageConfig, Labels
    >>> cfg = StageConfig(kind="rl", id="s1", output="file:///tmp/s1", model="m",
    ...                   labels=Labels(experiment="e", run="r", stage="s1", model="m", method="grpo"))
    >>> d = tempfile.mkdtemp()
    >>> with StageMetrics(cfg, d + "/metrics.jsonl") as m:
    ...     m.log(1, {"reward": 0.5, "frac_reward_zero_std": 0.25})["signal_availability"]
    0.75
    """

    def __init__(self, cfg: StageConfig, jsonl_path: str | Path):
        self.cfg = cfg
        self.path = Path(jsonl_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")
        if self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n"):
            self._f.write("\n")  # a line cut by a crash must not swallow the next row
        self._lock = threading.Lock()
        self.should_stop = False
        self.rank_zero = is_rank_zero()
        self.port: int | None = None
        self.best_heldout: tuple[int, float] | None = None  # (step, accuracy) of the best held-out score
        self.last_verdict: Verdict | None = None
        self.dropped = 0
        self.push_errors = 0
        self._closed = False
        self._last_step = 0
        self._prev_tokens: tuple[float, float] | None = None  # (num_tokens, time) of the previous row
        self._rewards_since_heldout: list[float] = []
        self._last_reward: float | None = None
        params = cfg.typed_params() if cfg.kind == "rl" else None
        deceptive = params.deceptive if isinstance(params, RLParams) else DeceptiveParams()
        self.stop_on_deceptive = bool(deceptive.stop)
        items = params.heldout_size if isinstance(params, RLParams) else None
        self.detector = DeceptiveRewardDetector(deceptive, accuracy_items=items)
        self._server: WSGIServer | None = None
        self._scrapes: list[float] = []
        self._scraped_after_close = threading.Event()

        self.registry = None
        history = self._read_history()
        wants_prom = cfg.metrics_port is not None or bool(cfg.pushgateway)
        try:
            prom = _prometheus()
        except RuntimeError:
            if wants_prom:
                raise
            prom = None
        if prom is not None:
            self._build(prom)
        self._replay(history)
        if prom is not None and self.rank_zero and cfg.metrics_port is not None:
            addr = os.environ.get(METRICS_ADDR_ENV, "0.0.0.0")
            try:
                self._server = serve_registry(self.registry, int(cfg.metrics_port), addr, self._on_scrape)
            except OSError as e:
                self._f.close()
                raise RuntimeError(
                    f"metrics_port {cfg.metrics_port} cannot be served on {addr}, because {e}. "
                    "Pick a free port, or 0 for any free port."
                ) from e
            self.port = self._server.server_port
            log.info("serving Prometheus metrics on http://%s:%d/metrics", addr, self.port)

    def _read_history(self) -> list[dict[str, Any]]:
        """Rows already in metrics.jsonl (a resumed stage restores it with its checkpoint)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: the rest of the history still counts
            if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
                out.append(row)
        return out

    def _replay(self, history: list[dict[str, Any]]) -> None:
        """Restore the step count, the detector's window and the best held-out score after a resume."""
        for row in history:
            step = int(row["step"])
            if isinstance(row.get("reward"), (int, float)):
                self._rewards_since_heldout.append(float(row["reward"]))
                self._last_reward = float(row["reward"])
            if isinstance(row.get("heldout_accuracy"), (int, float)):
                acc = float(row["heldout_accuracy"])
                if self.best_heldout is None or acc > self.best_heldout[1]:
                    self.best_heldout = (step, acc)
                if self._rewards_since_heldout:
                    rewards = self._rewards_since_heldout
                    self.last_verdict = self.detector.update(step, sum(rewards) / len(rewards), acc)
                    self._rewards_since_heldout = []
            self._last_step = max(self._last_step, step)
        if history and self.registry is not None:
            self._steps.inc(self._last_step)
            if self.last_verdict is not None and self.cfg.kind == "rl":
                self._gauges["deceptive_reward"].labels(*self._label_values).set(float(self.last_verdict.flagged))
        if history:
            log.info("metrics: resumed %d rows of %s up to step %d", len(history), self.path, self._last_step)

    # --- Prometheus ---------------------------------------------------------------------

    def _build(self, prom: Any) -> None:
        self.registry = prom.CollectorRegistry(auto_describe=True)
        lv = self.cfg.labels.model_dump()
        self._label_values = [str(lv[k]) for k in METRIC_LABELS]
        labels = list(METRIC_LABELS)
        self._gauges = {
            key: prom.Gauge(name, doc, labels, registry=self.registry) for key, (name, doc) in GAUGES.items()
        }
        self._component = prom.Gauge(*REWARD_COMPONENT, [*labels, "component"], registry=self.registry)
        self._eval = prom.Gauge(*EVAL_ACCURACY_METRIC, [*labels, "benchmark"], registry=self.registry)
        self._steps = prom.Counter(*STEPS, labels, registry=self.registry).labels(*self._label_values)
        self._tokens = prom.Counter(*TOKENS, labels, registry=self.registry).labels(*self._label_values)
        self._last_step_ts = prom.Gauge(*LAST_STEP, labels, registry=self.registry).labels(*self._label_values)
        self._finished = prom.Gauge(*FINISHED, labels, registry=self.registry).labels(*self._label_values)
        self._dropped = prom.Counter(*DROPPED, labels, registry=self.registry).labels(*self._label_values)
        self._push_errors = prom.Counter(*PUSH_ERRORS, labels, registry=self.registry).labels(*self._label_values)
        self._last_step_ts.set(time.time())
        self._finished.set(0)
        if self.cfg.kind == "rl":  # present from the start, so dashboards and alerts see a 0
            self._gauges["deceptive_reward"].labels(*self._label_values).set(0)

    def _on_scrape(self) -> None:
        self._scrapes = [*self._scrapes[-3:], time.time()]
        if self._closed:
            self._scraped_after_close.set()

    def _set_gauges(self, row: dict[str, float]) -> None:
        if self.registry is None:
            return
        for key, value in row.items():
            if key in self._gauges:
                self._gauges[key].labels(*self._label_values).set(value)
            comp = reward_component(key)
            if comp is not None:
                self._component.labels(*self._label_values, comp).set(value)
            bench = eval_benchmark(key)
            if bench is not None:
                self._eval.labels(*self._label_values, bench).set(value)

    def push(self) -> bool:
        """Push this stage's metrics to cfg.pushgateway (rank 0). Failures are logged and counted."""
        if not self.cfg.pushgateway or self.registry is None or not self.rank_zero:
            return False
        prom = _prometheus()
        try:
            prom.push_to_gateway(
                self.cfg.pushgateway, job=PUSH_JOB, registry=self.registry,
                grouping_key={"stage": self.cfg.id}, timeout=10,
            )
            return True
        except OSError as e:
            self.push_errors += 1
            self._push_errors.inc()
            log.warning(
                "could not push metrics of stage %s to the Pushgateway %s, because %s; metrics.jsonl has them",
                self.cfg.id, self.cfg.pushgateway, e,
            )
            return False

    # --- logging ------------------------------------------------------------------------

    def log(self, step: int, values: dict[str, Any]) -> dict[str, float]:
        """Record one logged step; returns the row written to metrics.jsonl (without step/time)."""
        now = time.time()
        with self._lock:
            row = derive(values)
            dropped = sum(
                1 for v in values.values()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v)
            )
            self._throughput(row, now)
            if "reward" in row:
                self._rewards_since_heldout.append(row["reward"])
                self._last_reward = row["reward"]
            if "heldout_accuracy" in row:
                self._heldout(int(step), row)
            self._write({"step": int(step), "time": now, **row})
            if self.registry is not None:
                self._set_gauges(row)
                if step > self._last_step:
                    self._steps.inc(step - self._last_step)
                self._last_step_ts.set(now)
                if dropped:
                    self._dropped.inc(dropped)
            self._last_step = max(self._last_step, int(step))
            self.dropped += dropped
        if any(eval_benchmark(k) for k in row):
            self.push()  # eval outcomes outlive the pod
        return row

    def _throughput(self, row: dict[str, float], now: float) -> None:
        if "num_tokens" not in row:
            return
        tokens = row["num_tokens"]
        if self._prev_tokens is not None:
            prev_tokens, prev_time = self._prev_tokens
            if tokens >= prev_tokens:
                if self.registry is not None:
                    self._tokens.inc(tokens - prev_tokens)
                if "tokens_per_second" not in row and now > prev_time:
                    row["tokens_per_second"] = (tokens - prev_tokens) / (now - prev_time)
        elif self.registry is not None:
            self._tokens.inc(tokens)
        self._prev_tokens = (tokens, now)

    def _heldout(self, step: int, row: dict[str, float]) -> None:
        acc = row["heldout_accuracy"]
        if self.best_heldout is None or acc > self.best_heldout[1]:
            self.best_heldout = (step, acc)
        recent = self._rewards_since_heldout or ([self._last_reward] if self._last_reward is not None else [])
        self._rewards_since_heldout = []
        if not recent:
            return  # no training reward yet (e.g. a held-out score before the first step)
        verdict = self.detector.update(step, sum(recent) / len(recent), acc)
        self.last_verdict = verdict
        row["deceptive_reward"] = 1.0 if verdict.flagged else 0.0
        if verdict.flagged:
            log.warning("stage %s: %s", self.cfg.id, verdict.describe())
            if self.stop_on_deceptive and not self.should_stop:
                self.should_stop = True
                best = self.best_heldout
                log.warning(
                    "stage %s: stopping, because rl.deceptive.stop is set; best held-out accuracy %.4f at step %d",
                    self.cfg.id, best[1], best[0],
                )
        else:
            log.info("stage %s: %s", self.cfg.id, verdict.describe())

    def log_eval(self, benchmark: str, score: float) -> dict[str, float]:
        """Record a benchmark's headline score (0..1) and push it when a Pushgateway is set.

        Raises ValueError for a score that is not a 0..1 ratio (a bug in the caller, not data).
        """
        if not isinstance(score, (int, float)) or not math.isfinite(score) or not 0.0 <= score <= 1.0:
            raise ValueError(
                f"eval score of benchmark {benchmark!r} is {score!r}, because scores are 0..1 ratios it is "
                "out of range. Pass accuracy as a fraction (divide percentages by 100)."
            )
        return self.log(self._last_step, {f"eval_accuracy/{benchmark}": float(score)})

    def _write(self, row: dict[str, Any]) -> None:
        if self._f.closed:
            return
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()

    # --- integration --------------------------------------------------------------------

    def trainer_callback(self):
        """A transformers TrainerCallback: logs every on_log (world process zero), honours should_stop."""
        from transformers import TrainerCallback

        metrics = self

        class _Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and state.is_world_process_zero:
                    metrics.log(state.global_step, logs)
                if metrics.should_stop:
                    control.should_training_stop = True

            def on_step_end(self, args, state, control, **kwargs):
                if metrics.should_stop:
                    control.should_training_stop = True

        return _Callback()

    def close(self, failed: bool = False) -> None:
        """Finish: mark the stage finished (unless failed), push, wait briefly for a last scrape, stop.

        With a metrics server, close waits for one more scrape, so the final values reach Prometheus
        and not only the Pushgateway: up to two observed scrape intervals plus a second, or, before
        two scrapes have been seen (a short stage), up to ``SFTRL_METRICS_LINGER_S`` (default 30)
        seconds. A scrape ends the wait at once; stages without ``metrics_port`` never wait.
        """
        if self._closed:
            return
        if self.registry is not None and not failed:
            self._finished.set(1)
        self._closed = True
        self.push()
        server, self._server = self._server, None
        if server is not None:
            gaps = [b - a for a, b in zip(self._scrapes, self._scrapes[1:])]
            limit = float(os.environ.get(LINGER_ENV, "30"))
            self._scraped_after_close.wait(min(limit, 2 * max(gaps) + 1.0) if gaps else limit)
            server.shutdown()
            server.server_close()
        with self._lock:
            if not self._f.closed:
                self._f.close()

    def __enter__(self) -> "StageMetrics":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)
