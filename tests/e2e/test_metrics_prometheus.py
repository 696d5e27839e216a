"""A real GRPO stage on the tiny model, watched by a real Prometheus and Pushgateway.

Starts Debian's ``prometheus`` and ``prometheus-pushgateway`` on 127.0.0.1 (free ports, storage in
tmp), scraping every second: the stage's rank-0 /metrics, the operator's /metrics (OperatorMetrics
fed with reconcile cycles) and the Pushgateway (honor_labels, as the chart's ServiceMonitor does).
Then runs ``python -m job_runtime rl --config stage.json`` with a metrics port, then the eval stage
of its model (``python -m job_runtime eval``, scores pushed to the Pushgateway), and evaluates every query of every panel of the Grafana dashboard through
Prometheus' HTTP API, with the dashboard variables resolved the way Grafana does
(``label_values`` queries) and substituted. Each query must return data. Prometheus also loads the
alerting rules file, which must evaluate without errors.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import ROOT, require_tool

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DASHBOARD = ROOT / "charts/sftrl/dashboards/sftrl.json"
RULES = ROOT / "charts/sftrl/rules/sftrl-rules.yaml"
LABELS = {"experiment": "e2e-metrics", "run": "grpo-16-s0", "stage": "rl0e2e", "model": "tiny",
          "method": "grpo", "data": "synthetic", "scale": "16", "seed": "0"}
GRAFANA_MACROS = {"$__rate_interval": "10s", "$__interval": "2s", "${__interval}": "2s", "$__range": "5m"}
STAGE_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, params: dict[str, Any] | None = None) -> dict:
    if params:
        url = f"{url}?{urllib.parse.urlencode(params, doseq=True)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # Prometheus explains a bad query in the body
        pytest.fail(f"{urllib.parse.unquote(url)} -> HTTP {e.code}: {e.read().decode()[:1000]}")


def wait_ready(url: str, proc: subprocess.Popen, log: Path, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{what} not ready at {url} after {timeout}s: {log.read_text()[-2000:]}")


@contextmanager
def daemon(args: list[str], log: Path, ready_url: str, what: str) -> Iterator[subprocess.Popen]:
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_ready(ready_url, proc, log, what)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def operator_metrics(experiment: str) -> Iterator[int]:
    """The operator's metrics endpoint, observing a reconcile cycle every half second."""
    from controller.kubernetes.metrics import OperatorMetrics, serve

    op = OperatorMetrics()
    server = serve(0, op, addr="127.0.0.1")
    stop = threading.Event()

    def cycles():
        n = 0
        while not stop.wait(0.5):
            n += 1
            op.observe_cycle(experiment, {"running": 1, "succeeded": n // 10}, seconds=0.01 * (n % 7))

    t = threading.Thread(target=cycles, daemon=True)
    t.start()
    try:
        yield server.server_port
    finally:
        stop.set()
        t.join()
        server.shutdown()
        server.server_close()


def prometheus_config(path: Path, stage_port: int, operator_port: int, pushgateway_port: int) -> None:
    path.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "stages", "static_configs": [{"targets": [f"127.0.0.1:{stage_port}"]}]},
            {"job_name": "operator", "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"]}]},
            {"job_name": "pushgateway", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{pushgateway_port}"]}]},
        ],
    }, indent=2))


def stage_config(tmp: Path, port: int, pushgateway: str) -> Path:
    """A tiny GRPO stage: 6 steps of 2 prompts x 2 rollouts, held-out accuracy every 2 steps."""
    cfg = {
        "kind": "rl", "id": LABELS["stage"], "output": (tmp / "stages" / LABELS["stage"]).as_uri(),
        "model": "builtin://tiny-qwen2-vl", "algorithm": "grpo", "seed": 0, "scale": 16,
        "data": {"train": "builtin://synthetic/rl?n=16", "heldout": "builtin://synthetic/test?n=8"},
        "params": {
            "global_batch_size": 2, "mini_batch_size": 2, "per_device_batch_size": 4, "num_generations": 2, "epochs": 1,
            "learning_rate": 1e-4, "max_prompt_length": 256, "max_completion_length": 24, "beta": 0.04,
            "heldout_every_steps": 2, "heldout_size": 8, "save_steps": 100, "generation": {"backend": "hf"},
            "deceptive": {"window": 3}, "trl": {"max_steps": 6},
        },
        "labels": LABELS, "metrics_port": port, "pushgateway": pushgateway,
    }
    path = tmp / "stage.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def eval_config(tmp: Path, pushgateway: str) -> Path:
    """The eval stage of the GRPO stage's model: 4 synthetic items, scores pushed to the Pushgateway."""
    rl_output = tmp / "stages" / LABELS["stage"]
    cfg = {
        "kind": "eval", "id": "ev0e2e", "output": (tmp / "stages" / "ev0e2e").as_uri(),
        "model": (rl_output / "model").as_uri(), "parents": [LABELS["stage"]],
        "params": {"benchmarks": ["synthetic"], "limit": 4, "max_new_tokens": 16, "batch_size": 4},
        "labels": {**LABELS, "stage": "ev0e2e"}, "pushgateway": pushgateway,
    }
    path = tmp / "eval.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def run_stage(kind: str, config: Path) -> None:
    env = {**os.environ, "SFTRL_METRICS_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-m", "job_runtime", kind, "--config", str(config)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=STAGE_TIMEOUT_S,
    )
    assert done.returncode == 0, f"{kind} stage failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"


# --- the dashboard ------------------------------------------------------------------------------


def dashboard_targets(dash: dict) -> list[tuple[str, dict]]:
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p["title"], t))
            walk(p.get("panels", []))

    walk(dash["panels"])
    return out


def substitute(expr: str, values: dict[str, str]) -> str:
    for macro, v in GRAFANA_MACROS.items():
        expr = expr.replace(macro, v)
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def grafana_regex_escape(value: str) -> str:
    """A selected value inside a PromQL regex string, escaped as Grafana's Prometheus source does."""
    return re.sub(r"([$^*+?.()|{}\[\]\\])", r"\\\\\1", value)


def resolve_variables(dash: dict, api: str, start: float, end: float) -> dict[str, str]:
    """Each query variable's options from Prometheus (as Grafana's label_values does); pick ours."""
    values: dict[str, str] = {}
    for var in dash["templating"]["list"]:
        if var["type"] == "datasource":
            assert var["query"] == "prometheus"
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
        assert m, f"variable {var['name']}: not a label_values query: {query}"
        selector, label = substitute(m.group(1), values), m.group(2)
        got = http_json(f"{api}/label/{label}/values", {"match[]": selector, "start": start, "end": end})
        assert got["status"] == "success"
        assert LABELS[label] in got["data"], f"variable {var['name']} offers {got['data']}, not {LABELS[label]}"
        values[var["name"]] = grafana_regex_escape(LABELS[label])
    return values


def has_finite_value(result: list[dict]) -> bool:
    for series in result:
        points = series.get("values") or ([series["value"]] if "value" in series else [])
        if any(math.isfinite(float(v)) for _, v in points):
            return True
    return False


# --- the test -----------------------------------------------------------------------------------


def test_dashboard_queries_return_data_for_a_real_grpo_stage(tmp_path):
    prometheus = require_tool("prometheus")
    pushgateway_bin = require_tool("prometheus-pushgateway")
    prom_port, pgw_port, stage_port = free_port(), free_port(), free_port()
    pgw_url = f"http://127.0.0.1:{pgw_port}"
    api = f"http://127.0.0.1:{prom_port}/api/v1"
    dash = json.loads(DASHBOARD.read_text())

    with operator_metrics(LABELS["experiment"]) as op_port, daemon(
        [pushgateway_bin, f"--web.listen-address=127.0.0.1:{pgw_port}", "--persistence.file="],  # in memory only
        tmp_path / "pushgateway.log", f"{pgw_url}/-/ready", "prometheus-pushgateway",
    ):
        prometheus_config(tmp_path / "prometheus.yml", stage_port, op_port, pgw_port)
        with daemon(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            tmp_path / "prometheus.log", f"http://127.0.0.1:{prom_port}/-/ready", "prometheus",
        ):
            start = time.time()
            run_stage("rl", stage_config(tmp_path, stage_port, pgw_url))
            run_stage("eval", eval_config(tmp_path, pgw_url))
            # the Pushgateway is scraped every second: wait for the eval scores to arrive
            deadline = time.monotonic() + 30
            while not http_json(f"{api}/query", {"query": 'sftrl_eval_accuracy_ratio{stage="ev0e2e"}'})["data"]["result"]:
                assert time.monotonic() < deadline, "eval scores pushed but never scraped from the Pushgateway"
                time.sleep(0.5)
            end = time.time()

            # every metric the stage logged is in metrics.jsonl too
            rows = [json.loads(x) for x in (tmp_path / "stages" / LABELS["stage"] / "metrics.jsonl").read_text().splitlines()]
            assert any("heldout_accuracy" in r for r in rows) and any("reward" in r for r in rows)
            assert any("deceptive_reward" in r for r in rows)

            values = resolve_variables(dash, api, start, end)
            empty = []
            targets = dashboard_targets(dash)
            assert len(targets) >= 20
            for title, t in targets:
                expr = substitute(t["expr"], values)
                if t.get("instant"):
                    got = http_json(f"{api}/query", {"query": expr, "time": end})
                else:
                    got = http_json(f"{api}/query_range", {"query": expr, "start": start, "end": end, "step": "1s"})
                assert got["status"] == "success", f"{title}: {expr}: {got}"
                if not has_finite_value(got["data"]["result"]):
                    empty.append(f"{title} [{t['refId']}]: {expr}")
            assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

            # the alerting rules load and evaluate in the real Prometheus
            groups = http_json(f"{api}/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            assert {r["name"] for r in rules} >= {"SftrlDeceptiveReward", "SftrlStageStalled", "SftrlStageFailed"}
            assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
