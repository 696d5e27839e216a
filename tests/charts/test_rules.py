"""The Prometheus rules file: `promtool check rules` and `promtool test rules` (real promtool)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, require_tool

RULES = ROOT / "charts/sftrl/rules/sftrl-rules.yaml"
TESTS_DIR = ROOT / "charts/sftrl/rules/tests"


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def alerts() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_rules_file_is_valid():
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_rule_unit_tests_pass():
    files = sorted(TESTS_DIR.glob("*.yaml"))
    assert files, f"no promtool unit tests in {TESTS_DIR}"
    out = promtool("test", "rules", *map(str, files))
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_is_tested_firing_and_silent():
    expected = {"SftrlDeceptiveReward", "SftrlDeceptiveRewardTrend", "SftrlSignalStarvation",
                "SftrlStageStalled", "SftrlStageFailed"}
    assert expected <= set(alerts())
    fires, silent = set(), set()
    for f in TESTS_DIR.glob("*.yaml"):
        for case in yaml.safe_load(f.read_text())["tests"]:
            for t in case.get("alert_rule_test", []):
                (fires if t.get("exp_alerts") else silent).add(t["alertname"])
    assert set(alerts()) <= fires, f"alerts never shown firing: {set(alerts()) - fires}"
    assert set(alerts()) <= silent, f"alerts never shown silent: {set(alerts()) - silent}"


@pytest.mark.parametrize(
    "old, new, why",
    [
        ("and on (experiment, run, stage)", "or on (experiment, run, stage)",
         "rising reward with rising accuracy would fire the trend alert"),
        ('(sftrl_deceptive_reward{job!="sftrl"})', "(sftrl_deceptive_reward)",
         "a finished stage's pushed flag would fire forever"),
        ("unless on (experiment, run, stage)\n", "or on (experiment, run, stage)\n",
         "a cleanly finished stage would count as stalled"),
    ],
)
def test_unit_tests_catch_broken_rules(tmp_path, old, new, why):
    """The unit tests are strict enough to fail on a plausible mistake in the rules."""
    text = RULES.read_text()
    assert old in text
    (tmp_path / "rules/tests").mkdir(parents=True)
    (tmp_path / "rules/sftrl-rules.yaml").write_text(text.replace(old, new))
    for f in TESTS_DIR.glob("*.yaml"):
        shutil.copy(f, tmp_path / "rules/tests" / f.name)
    out = promtool("test", "rules", *sorted(str(p) for p in (tmp_path / "rules/tests").glob("*.yaml")))
    assert out.returncode != 0, f"promtool unit tests did not notice: {why}"


# --- static checks of the dashboard and the rules against the exported metric names ------------

DASHBOARD = ROOT / "charts/sftrl/dashboards/sftrl.json"
METRIC_RE = re.compile(r"\b(sftrl_[a-z0-9_]+)")


def exported_names() -> set[str]:
    """Every sample name StageMetrics and OperatorMetrics export (with _total, _bucket, ...)."""
    from controller.kubernetes.metrics import OperatorMetrics
    from job_runtime import metrics as M

    return {n for names in (M.exported_sample_names(), _operator_names(OperatorMetrics())) for n in names}


def _operator_names(op) -> set[str]:
    op.observe_cycle("x", {"running": 1}, 0.1)
    return {s.name for f in op.registry.collect() for s in f.samples}


def test_dashboard_structure():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 38 and dash["uid"] == "sftrl"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("experiment", "model", "method", "run"):
        q = variables[name]["query"]
        assert variables[name]["type"] == "query" and "label_values(" in (q["query"] if isinstance(q, dict) else q)
    titles = {p["title"] for p in dash["panels"]}
    for needed in ("Reward (total)", "Reward components", "Held-out accuracy beside reward", "Signal availability",
                   "Completion length", "Truncated completions", "Clip ratios", "KL and entropy", "Throughput",
                   "Eval accuracy per benchmark", "Deceptive-reward flags"):
        assert needed in titles, needed
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]


def test_dashboard_and_rules_use_only_exported_metrics():
    names = exported_names()
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if v.get("definition")]
    doc = yaml.safe_load(RULES.read_text())
    exprs += [r["expr"] for g in doc["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in METRIC_RE.findall(e)}
    unknown = sorted(u for u in used if u not in names)
    assert not unknown, f"queries use metrics nobody exports: {unknown}"
