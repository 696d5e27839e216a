"""StageMetrics and OperatorMetrics: metrics.jsonl rows, Prometheus names and values, serving,
the deceptive-reward hook, and pushes to a real Pushgateway (Debian prometheus-pushgateway)."""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.kubernetes.metrics import OperatorMetrics, delete_stale
from controller.kubernetes.metrics import serve as serve_operator
from job_runtime import metrics as M
from job_runtime.contract import EVAL_ACCURACY_METRIC, METRIC_LABELS, TRAIN_METRICS, Labels, StageConfig
from tests.conftest import require_tool

LABELS = Labels(experiment="exp", run="grpo-2000-s0", stage="st1", model="tiny", method="grpo",
                data="synthetic", scale="2000", seed="0")
LV = LABELS.model_dump()

# A GRPO log dict as TRL 1.16 writes it (plus the keys the stage adds).
TRL_ROW = {
    "loss": 0.01, "grad_norm": 1.5, "learning_rate": 1e-6, "num_tokens": 4096.0, "epoch": 0.1,
    "reward": 0.55, "reward_std": 0.2, "rewards/accuracy_reward/mean": 0.5, "rewards/accuracy_reward/std": 0.4,
    "rewards/format_reward/mean": 1.0, "frac_reward_zero_std": 0.25, "completions/mean_length": 120.0,
    "completions/max_length": 256.0, "completions/clipped_ratio": 0.1, "clip_ratio/region_mean": 0.02,
    "clip_ratio/low_mean": 0.01, "clip_ratio/high_mean": 0.01, "kl": 0.003, "entropy": 1.2,
    "mean_token_accuracy": 0.7, "dynamic_sampling/dropped_groups": 2.0,
}
# jsonl keys whose values are shares (0..1): their gauges must be named *_ratio.
FRACTIONS = {"frac_reward_zero_std", "signal_availability", "completions/clipped_ratio", "clip_ratio/region_mean",
             "clip_ratio/low_mean", "clip_ratio/high_mean", "heldout_accuracy", "mean_token_accuracy"}
NON_BASE_UNITS = {"ms", "milliseconds", "microseconds", "nanoseconds", "minutes", "hours", "days", "kb", "mb", "gb",
                  "kilobytes", "megabytes", "gigabytes", "percent", "pct", "celsius"}


def cfg(kind="rl", port=None, pushgateway=None, **params) -> StageConfig:
    return StageConfig(kind=kind, id="st1", output="file:///tmp/st1", model="builtin://tiny-qwen2-vl",
                       labels=LABELS, params=params, metrics_port=port, pushgateway=pushgateway)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample(registry, name, **labels) -> float | None:
    return registry.get_sample_value(name, {**LV, **labels})


@pytest.fixture
def stage(tmp_path):
    m = M.StageMetrics(cfg(deceptive={"window": 3, "stop": True}, heldout_size=1000), tmp_path / "metrics.jsonl")
    yield m
    m.close()


# --- names ----------------------------------------------------------------------------------


def _families(stage: M.StageMetrics, op: OperatorMetrics):
    stage.log(5, TRL_ROW)
    stage.log(5, {"heldout_accuracy": 0.4})
    stage.log_eval("mathvista", 0.5)
    op.observe_cycle("exp", {"running": 1}, 0.1)
    op.api_error("transient")
    return [("stage", f) for f in stage.registry.collect()] + [("operator", f) for f in op.registry.collect()]


def test_metric_names_follow_prometheus_conventions(stage):
    fams = _families(stage, OperatorMetrics())
    assert len(fams) >= len(TRAIN_METRICS) + 5
    for origin, f in fams:
        assert re.fullmatch(r"sftrl_[a-z][a-z0-9_]*[a-z0-9]", f.name), f.name
        assert f.documentation.strip(), f"{f.name} has no help text"
        tokens = set(f.name.split("_"))
        assert not tokens & NON_BASE_UNITS, f"{f.name}: use base units (seconds, bytes, ratios)"
        assert "percent" not in f.name and "ratio_ratio" not in f.name
        if f.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in f.samples), f.name
        else:
            assert not f.name.endswith("_total"), f"{f.name}: only counters end in _total"
        if f.type in ("histogram", "summary"):
            assert f.name.endswith(("_seconds", "_bytes")), f"{f.name}: a histogram needs a base unit"
        if "timestamp" in f.name:
            assert f.name.endswith("_timestamp_seconds"), f.name
        if f.name.endswith("_ratio"):
            for s in f.samples:
                assert 0.0 <= s.value <= 1.0, f"{s.name}{s.labels} = {s.value} is not a ratio"
        if origin == "stage":
            for s in f.samples:
                assert set(METRIC_LABELS) <= set(s.labels), f"{s.name} lacks the stage labels"


def test_fractions_are_named_ratio():
    for key in FRACTIONS:
        assert M.GAUGES[key][0].endswith("_ratio"), key
    for key, (name, doc) in M.GAUGES.items():
        if doc.lower().startswith("share of") or ("accuracy" in key and not key.startswith("rewards/")):
            assert name.endswith("_ratio"), name
    assert EVAL_ACCURACY_METRIC[0].endswith("_ratio")


# --- logging --------------------------------------------------------------------------------


def test_log_writes_jsonl_and_sets_labelled_gauges(stage):
    row = stage.log(3, TRL_ROW)
    assert row["signal_availability"] == pytest.approx(0.75)
    reg = stage.registry
    assert sample(reg, "sftrl_reward") == 0.55
    assert sample(reg, "sftrl_signal_availability_ratio") == pytest.approx(0.75)
    assert sample(reg, "sftrl_reward_accuracy") == 0.5 and sample(reg, "sftrl_reward_format") == 1.0
    assert sample(reg, "sftrl_reward_component", component="accuracy") == 0.5
    assert sample(reg, "sftrl_reward_component", component="format") == 1.0
    assert sample(reg, "sftrl_clip_high_ratio") == 0.01 and sample(reg, "sftrl_completion_truncated_ratio") == 0.1
    assert sample(reg, "sftrl_train_steps_total") == 3
    assert sample(reg, "sftrl_train_tokens_total") == 4096
    assert sample(reg, "sftrl_deceptive_reward") == 0  # present from the start for rl
    stage.log(7, {**TRL_ROW, "num_tokens": 8192.0})
    assert sample(reg, "sftrl_train_steps_total") == 7  # a counter of steps, not of log calls
    assert sample(reg, "sftrl_train_tokens_total") == 8192
    assert sample(reg, "sftrl_train_tokens_per_second") > 0
    lines = rows(stage.path)
    assert [r["step"] for r in lines] == [3, 7]
    assert lines[1]["tokens_per_second"] > 0 and "time" in lines[0]
    assert lines[0]["rewards/format_reward/mean"] == 1.0  # every number lands in the jsonl


def test_non_finite_values_are_dropped_and_counted(stage):
    row = stage.log(1, {"reward": 0.3, "kl": math.nan, "entropy": math.inf, "note": "text"})
    assert row == {"reward": 0.3}
    assert stage.dropped == 2 and sample(stage.registry, "sftrl_metric_values_dropped_total") == 2
    assert json.loads(stage.path.read_text())["reward"] == 0.3  # the jsonl stays valid JSON


def test_log_eval_sets_benchmark_gauge_and_rejects_bad_scores(tmp_path):
    with M.StageMetrics(cfg(kind="eval"), tmp_path / "m.jsonl") as m:
        m.log_eval("mathvista", 0.25)
        assert sample(m.registry, "sftrl_eval_accuracy_ratio", benchmark="mathvista") == 0.25
        with pytest.raises(ValueError, match="mathvision.*divide percentages by 100"):
            m.log_eval("mathvision", 42.0)
        m.log(0, {"eval_accuracy/gpqa": 0.3})  # how job_runtime/stages/eval.py logs its scores
        assert sample(m.registry, "sftrl_eval_accuracy_ratio", benchmark="gpqa") == 0.3
    assert rows(tmp_path / "m.jsonl")[0]["eval_accuracy/mathvista"] == 0.25


# --- the deceptive-reward hook --------------------------------------------------------------


def _deceptive_run(m: M.StageMetrics) -> list[dict]:
    out = []
    for k in range(6):  # reward rises, held-out accuracy falls
        for j in range(2):
            m.log(10 * k + j + 1, {"reward": 0.2 + 0.1 * k})
        out.append(m.log(10 * k + 2, {"heldout_accuracy": 0.8 - 0.1 * k}))
    return out


def test_deceptive_reward_flags_sets_gauge_and_stops(stage, caplog):
    from transformers import TrainerControl, TrainerState

    callback = stage.trainer_callback()
    control = TrainerControl()
    callback.on_log(None, TrainerState(global_step=1, is_world_process_zero=True), control, logs={"reward": 0.1})
    assert not control.should_training_stop
    with caplog.at_level("WARNING", logger="sftrl.metrics"):
        verdicts = _deceptive_run(stage)
    flags = [r["deceptive_reward"] for r in verdicts]
    assert flags[-1] == 1.0 and flags[0] == 0.0
    assert sample(stage.registry, "sftrl_deceptive_reward") == 1
    assert stage.should_stop and stage.best_heldout == (2, 0.8)
    assert "DECEPTIVE REWARD" in caplog.text and "stopping" in caplog.text
    callback.on_step_end(None, TrainerState(global_step=53), control)
    assert control.should_training_stop
    assert [r.get("deceptive_reward") for r in rows(stage.path) if "heldout_accuracy" in r] == flags


def test_deceptive_reward_without_stop_only_flags(tmp_path):
    with M.StageMetrics(cfg(deceptive={"window": 3}), tmp_path / "m.jsonl") as m:
        assert _deceptive_run(m)[-1]["deceptive_reward"] == 1.0
        assert not m.should_stop


def test_healthy_run_is_not_flagged(stage):
    for k in range(6):
        stage.log(10 * k + 1, {"reward": 0.2 + 0.1 * k})
        assert stage.log(10 * k + 2, {"heldout_accuracy": 0.3 + 0.1 * k}).get("deceptive_reward", 0.0) == 0.0
    assert not stage.should_stop


# --- serving ---------------------------------------------------------------------------------


def test_rank_zero_serves_metrics_on_a_free_port(tmp_path, monkeypatch):
    monkeypatch.setenv(M.METRICS_ADDR_ENV, "127.0.0.1")
    m = M.StageMetrics(cfg(port=0), tmp_path / "m.jsonl")
    assert m.port and m.port > 0
    m.log(2, TRL_ROW)
    status, body = get(f"http://127.0.0.1:{m.port}/metrics")
    assert status == 200
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    steps = [s for s in fams["sftrl_train_steps"].samples if s.name == "sftrl_train_steps_total"]
    assert steps[0].value == 2 and steps[0].labels == LV
    assert get(f"http://127.0.0.1:{m.port}/healthz") == (200, "ok\n")
    port = m.port
    monkeypatch.setenv(M.LINGER_ENV, "0.5")  # one scrape seen: close waits for another, at most this long
    t0 = time.monotonic()
    m.close()
    assert 0.4 < time.monotonic() - t0 < 5
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_other_ranks_do_not_serve(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    with M.StageMetrics(cfg(port=0), tmp_path / "m.jsonl") as m:
        assert m.port is None
        m.log(1, {"loss": 1.0})
    assert rows(tmp_path / "m.jsonl")[0]["loss"] == 1.0


def test_port_in_use_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(M.METRICS_ADDR_ENV, "127.0.0.1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(RuntimeError, match=r"metrics_port \d+ cannot be served.*Pick a free port"):
            M.StageMetrics(cfg(port=s.getsockname()[1]), tmp_path / "m.jsonl")


def test_close_waits_for_a_last_scrape_that_sees_the_stage_finished(tmp_path, monkeypatch):
    monkeypatch.setenv(M.METRICS_ADDR_ENV, "127.0.0.1")
    monkeypatch.setenv(M.LINGER_ENV, "10")
    m = M.StageMetrics(cfg(port=0), tmp_path / "m.jsonl")
    url = f"http://127.0.0.1:{m.port}/metrics"
    for _ in range(2):  # a scraper is watching
        assert "sftrl_stage_finished{" in get(url)[1]
    seen: list[str] = []

    def scraper():
        while not m._closed:
            time.sleep(0.05)
        seen.append(get(url)[1])

    t = threading.Thread(target=scraper)
    t.start()
    m.close()
    t.join()
    finished = [s for f in text_string_to_metric_families(seen[0]) for s in f.samples
                if s.name == "sftrl_stage_finished"]
    assert finished[0].value == 1.0


# --- Pushgateway (real) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory):
    exe = require_tool("prometheus-pushgateway")
    port = free_port()
    log = open(tmp_path_factory.mktemp("pgw") / "pushgateway.log", "w")
    proc = subprocess.Popen([exe, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if get(f"{url}/-/ready")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("prometheus-pushgateway did not become ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _pushed(url: str, name: str) -> list:
    return [s for f in text_string_to_metric_families(get(f"{url}/metrics")[1]) for s in f.samples if s.name == name]


def test_eval_outcomes_are_pushed_per_stage_and_stale_groups_deleted(tmp_path, pushgateway):
    with M.StageMetrics(cfg(kind="eval", pushgateway=pushgateway), tmp_path / "m.jsonl") as m:
        m.log_eval("mathvista", 0.5)
        [s] = _pushed(pushgateway, "sftrl_eval_accuracy_ratio")
        assert s.value == 0.5 and s.labels["job"] == "sftrl" and s.labels["stage"] == "st1"
        assert s.labels["benchmark"] == "mathvista" and s.labels["run"] == LV["run"]
    [fin] = [s for s in _pushed(pushgateway, "sftrl_stage_finished") if s.labels["stage"] == "st1"]
    assert fin.value == 1.0  # close() pushed the final state
    assert delete_stale(pushgateway, ["st1", "never-pushed"]) == ["st1", "never-pushed"]
    assert _pushed(pushgateway, "sftrl_eval_accuracy_ratio") == []


def test_operator_deletes_the_pushed_groups_of_superseded_stages(tmp_path, pushgateway):
    from types import SimpleNamespace

    from controller.kubernetes.operator import ClusterDefaults, Operator

    with M.StageMetrics(cfg(kind="eval", pushgateway=pushgateway), tmp_path / "m.jsonl") as m:
        m.log_eval("mathvista", 0.5)
    assert _pushed(pushgateway, "sftrl_eval_accuracy_ratio")
    op = Operator(SimpleNamespace(), "default", defaults=ClusterDefaults(pushgateway=pushgateway))
    op._forget_superseded({"st1"})
    assert _pushed(pushgateway, "sftrl_eval_accuracy_ratio") == []


def test_unreachable_pushgateway_is_counted_not_fatal(tmp_path):
    with M.StageMetrics(cfg(kind="eval", pushgateway=f"http://127.0.0.1:{free_port()}"), tmp_path / "m.jsonl") as m:
        m.log_eval("gpqa", 0.3)
        assert m.push_errors == 1 and sample(m.registry, "sftrl_pushgateway_errors_total") == 1
    with pytest.raises(RuntimeError, match="Could not delete stage x from the Pushgateway"):
        delete_stale(f"http://127.0.0.1:{free_port()}", ["x"])


# --- the operator's metrics ------------------------------------------------------------------


def test_operator_metrics_and_endpoints():
    op = OperatorMetrics()
    op.observe_cycle("exp", {"succeeded": 3, "failed": 1, "queued": 2}, seconds=0.3)
    op.observe_cycle("exp", {"succeeded": 4, "queued": 0}, seconds=2.0)
    op.api_error("transient")
    op.api_error("permanent")
    op.api_error("permanent")
    r = op.registry
    assert r.get_sample_value("sftrl_operator_stages", {"experiment": "exp", "state": "failed"}) == 0
    assert r.get_sample_value("sftrl_operator_stages", {"experiment": "exp", "state": "succeeded"}) == 4
    assert r.get_sample_value("sftrl_operator_stages", {"experiment": "exp", "state": "queued"}) == 0
    assert r.get_sample_value("sftrl_operator_reconcile_duration_seconds_count", {"experiment": "exp"}) == 2
    assert r.get_sample_value("sftrl_operator_reconcile_duration_seconds_bucket", {"experiment": "exp", "le": "0.5"}) == 1
    assert r.get_sample_value("sftrl_operator_api_errors_total", {"kind": "permanent"}) == 2
    with pytest.raises(ValueError, match="only .* are counted"):
        op.api_error("weird")
    op.forget(["exp"])
    assert r.get_sample_value("sftrl_operator_stages", {"experiment": "exp", "state": "succeeded"}) is None

    server = serve_operator(0, op, addr="127.0.0.1")
    stale = op.serve(0, addr="127.0.0.1", max_cycle_age_s=1e-9)
    try:
        port = server.server_port
        status, body = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and 'sftrl_operator_api_errors_total{kind="transient"} 1.0' in body
        assert get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        assert get(f"http://127.0.0.1:{stale.server_port}/healthz")[0] == 503
        assert get(f"http://127.0.0.1:{port}/nope")[0] == 404
    finally:
        for s in (server, stale):
            s.shutdown()
            s.server_close()


def test_resume_restores_steps_detector_window_and_best(tmp_path):
    path = tmp_path / "m.jsonl"
    with M.StageMetrics(cfg(deceptive={"window": 3}), path) as m:
        for k in range(3):
            m.log(10 * k + 1, {"reward": 0.2 + 0.1 * k})
            m.log(10 * k + 2, {"heldout_accuracy": 0.8 - 0.1 * k})
    with path.open("a") as f:
        f.write('{"step": 23, "reward"')  # a line cut by a crash
    with M.StageMetrics(cfg(deceptive={"window": 3}), path) as m:
        assert sample(m.registry, "sftrl_train_steps_total") == 22 and m.best_heldout == (2, 0.8)
        m.log(31, {"reward": 0.5})
        # the window spans the resume: without the replay, 1 point could not give a verdict
        assert m.log(32, {"heldout_accuracy": 0.5})["deceptive_reward"] == 1.0
        assert sample(m.registry, "sftrl_train_steps_total") == 32
    lines = path.read_text().splitlines()
    assert lines[-3] == '{"step": 23, "reward"' and [json.loads(x)["step"] for x in lines[-2:]] == [31, 32]
