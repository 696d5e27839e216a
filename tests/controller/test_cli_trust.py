"""What `sftrl plan`, `report`, `verify` and `run` say about stages in storage, on stages written
the way the runtime writes them (storage.publish, storage.write_failure): failed reads failed,
a truncated artifact is not done and is named, a report follows the file it is given, and a
second file of the same name cannot take over the first one's plan and report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controller import cli, spec, status
from controller.plan import build_plan
from job_runtime.io import storage
from tests.conftest import ROOT

QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def write(tmp_path: Path, name: str = "exp.yaml", methods=("sft",), folder: str = "") -> Path:
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["spec"].update(storage=str(tmp_path / "runs"), methods=list(methods), data=raw["spec"]["data"][:1])  # no distill
    p = tmp_path / folder / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


def sftrl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


def saved_plan(path: Path):
    """The plan as `sftrl run` makes and saves it (experiments/<name>/plan.json, spec.yaml)."""
    exp = spec.load(path)
    plan = build_plan(exp, {}, source=str(path))
    cli._write_experiment(exp, plan)
    return plan


def fake_stage(plan, sid: str, files: dict[str, bytes]) -> Path:
    d = storage.local_path(plan.stages[sid].config.output)
    for rel, data in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    storage.publish(d, storage.normalize(d))
    return d


def eval_files(correct: list[bool]) -> dict[str, bytes]:
    rows = [json.dumps({"benchmark": "synthetic", "id": str(i), "correct": c}) for i, c in enumerate(correct)]
    res = {"benchmarks": {"synthetic": {"score": sum(correct) / len(correct), "metric": "accuracy", "n": len(correct)}}}
    return {"samples.jsonl": ("\n".join(rows) + "\n").encode(), "results.json": json.dumps(res).encode()}


@pytest.fixture
def study(tmp_path):
    """Base eval done; the SFT stage done with a model; its eval failed (the runtime's record + the log path)."""
    p = write(tmp_path)
    plan = saved_plan(p)
    base, run = plan.runs[0], plan.runs[1]
    fake_stage(plan, base.eval, eval_files([True, False, False, True]))
    fake_stage(plan, run.train[0], {"model/model.safetensors": b"w" * 2048, "results.json": json.dumps(
        {"data": {"source": "x.jsonl", "total": 10, "used": 7, "skipped": {"unreadable image": 2, "no answer": 1}}}).encode()})
    out = plan.stages[run.eval].config.output
    log = storage.local_path(out) / "log.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("loading\nTraceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory\n")
    storage.write_failure(out, error="RuntimeError: CUDA out of memory", exit_code=1)
    status.record_failure(out, str(log), log.read_text(), 1)
    return p, plan


def test_plan_shows_failed_stages_with_their_error_and_log(study):
    p, plan = study
    r = sftrl("plan", str(p))
    assert r.returncode == 0, r.stderr
    ev = plan.runs[1].eval
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith(ev))
    assert line.split()[1] == "failed"
    log = storage.local_path(plan.stages[ev].config.output) / "log.txt"
    assert f"^ failed: RuntimeError: CUDA out of memory (exit 1; log: {log})" in r.stdout
    assert "(2 done, 1 failed, 1 to run)" in r.stdout


def test_a_truncated_artifact_is_not_done_and_named_until_rerun(study):
    p, plan = study
    sft = plan.runs[1].train[0]
    model = storage.local_path(plan.stages[sft].config.output) / "model" / "model.safetensors"
    with open(model, "r+b") as f:
        f.truncate(10)
    r = sftrl("plan", str(p))
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith(sft))
    assert line.split()[1:3] == ["not", "done"]
    assert "^ not done, because model/model.safetensors is 10 bytes, but its _SUCCESS manifest says 2048; it will run again" in r.stdout
    r = sftrl("verify", str(p))
    assert r.returncode == 1 and f"{sft:<18} MISMATCH: model/model.safetensors is 10 bytes" in r.stdout


def test_verify_finds_a_file_altered_in_place(study):
    p, plan = study
    base = plan.runs[0].eval
    samples = storage.local_path(plan.stages[base].config.output) / "samples.jsonl"
    samples.write_bytes(samples.read_bytes().replace(b"true", b"fals", 1))  # same size
    assert sftrl("plan", str(p)).stdout.count(" done ") >= 1  # the cheap check cannot see it
    r = sftrl("verify", str(p))
    assert r.returncode == 1
    assert f"{base:<18} MISMATCH: samples.jsonl has a different sha256" in r.stdout and "--rerun STAGE" in r.stdout


def test_report_shows_failed_cells_stages_and_skipped_rows(study, tmp_path):
    p, plan = study
    r = sftrl("report", str(p))
    assert r.returncode == 0, r.stderr
    sft_row = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("sft "))
    assert "failed" in sft_row and "pending" not in sft_row
    html = (tmp_path / "runs" / "experiments" / "quickstart" / "report" / "report.html").read_text()
    assert "<td class='failed'>failed</td>" in html and "RuntimeError: CUDA out of memory" in html
    assert "log.txt" in html and "re-run `sftrl report`" not in html.lower()
    assert "3 rows were skipped in all (unreadable image: 2; no answer: 1)" in html


def test_summary_of_a_run_lists_failures_and_skipped_rows(study, tmp_path):
    from controller.report.load import summary_text

    _, plan = study
    text = summary_text(plan.root, plan.experiment, str(tmp_path / "out"))
    assert "Training data: 3 rows skipped (unreadable image: 2; no answer: 1)" in text
    assert f"1 stage(s) failed (their cells read 'failed'):\n  {plan.runs[1].eval} (tiny-sft-synthetic-512-s0): RuntimeError: CUDA out of memory; log: " in text


def test_a_report_follows_the_file_it_is_given(tmp_path):
    a = write(tmp_path, methods=("sft",), folder="a")
    b = write(tmp_path, methods=("grpo",), folder="b")  # same metadata.name, same storage
    saved_plan(a)
    r = sftrl("run", str(b))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"experiment name 'quickstart' in storage file://{tmp_path / 'runs'} belongs to {a}" in r.stderr
    assert "pass --replace" in r.stderr
    saved = json.loads((tmp_path / "runs" / "experiments" / "quickstart" / "plan.json").read_text())
    assert saved["source"] == str(a)  # untouched
    r = sftrl("report", str(b))
    assert r.returncode == 2 and "pass -o DIR" in r.stderr
    r = sftrl("report", str(b), "-o", str(tmp_path / "b-report"))
    assert r.returncode == 0, r.stderr
    assert "grpo" in r.stdout and "\n  sft " not in r.stdout  # b's runs, not the saved plan's
    r = sftrl("report", str(a))
    assert r.returncode == 0 and "\n  sft " in r.stdout and "grpo" not in r.stdout


def test_rerun_names_stages_or_runs(tmp_path):
    plan = build_plan(spec.load(write(tmp_path, methods=("sft", "grpo"))))
    sft_run = next(r for r in plan.runs if r.method == "sft")
    ids, problems = cli.resolve_rerun(plan, [sft_run.name])
    assert ids == [*sft_run.train, sft_run.eval] and problems == []
    ids, problems = cli.resolve_rerun(plan, [sft_run.eval[:9]])
    assert ids == [sft_run.eval] and problems == []
    _, problems = cli.resolve_rerun(plan, ["tiny-sft-synthetic-51-s0", "eval-"])
    assert problems[0] == "--rerun tiny-sft-synthetic-51-s0: is neither a run nor a stage of this plan; did you mean 'tiny-sft-synthetic-512-s0'?"
    assert problems[1].startswith("--rerun eval-: matches 3 stages")
    r = sftrl("run", str(tmp_path / "exp.yaml"), "--rerun", "nope-nope")
    assert r.returncode == 2 and "--rerun nope-nope: is neither a run nor a stage" in r.stderr


def test_plan_gives_up_on_unreachable_storage_after_the_first_stage(tmp_path, monkeypatch, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"SFTRL_S3_ENDPOINT": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
                 "SFTRL_S3_RETRIES": "1", "SFTRL_S3_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(k, v)
    storage.reset_backends()
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["spec"].update(storage="s3://bucket/sftrl")
    raw["spec"]["data"][0].update(sft="s3://bucket/data/sft.jsonl", rl="s3://bucket/data/rl.jsonl")
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(raw))
    from job_runtime.io.s3 import S3Backend

    calls = []
    real_check = S3Backend.check_endpoint

    def counting_check(self):
        calls.append(1)
        return real_check(self)

    monkeypatch.setattr(S3Backend, "check_endpoint", counting_check)
    try:
        assert cli.main(["plan", str(p)]) == 0
    finally:
        storage.reset_backends()
    err = capsys.readouterr().err
    assert "cannot tell which stages are done" in err and "not checked, because reading s3://bucket/data/sft.jsonl failed first" in err
    assert len(calls) == 2  # once for the inputs, once for the stages: not once per input or stage


def test_rerun_forgets_exactly_the_named_stages_results(study):
    _, plan = study
    base, sft = plan.runs[0].eval, plan.runs[1].train[0]
    out = storage.local_path(plan.stages[base].config.output)
    (out / "log.txt").write_text("=== attempt 1\n")
    cli.invalidate(plan, base)
    assert not storage.is_complete(storage.normalize(out)) and sorted(p.name for p in out.iterdir()) == ["log.txt"]
    assert storage.is_complete(plan.stages[sft].config.output)  # untouched
