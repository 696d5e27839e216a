"""Every mistake before a stage starts: `sftrl validate` (and `run`) check the experiment against the
world and answer with one message per problem and exit 2, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

QUICKSTART = ROOT / "examples" / "quickstart.yaml"


@pytest.fixture(scope="module")
def trl_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xdg-cache")  # TRL's config fields are read once per module


def write(tmp_path: Path, edit=None, text: str | None = None) -> Path:
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["spec"]["storage"] = str(tmp_path / "runs")
    if edit:
        edit(raw["spec"])
    p = tmp_path / "exp.yaml"
    p.write_text(text if text is not None else yaml.safe_dump(raw, sort_keys=False))
    return p


def sftrl(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=600)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def test_the_quickstart_passes_every_check(tmp_path, trl_cache):
    r = sftrl("validate", str(QUICKSTART), env={"XDG_CACHE_HOME": str(trl_cache)})
    assert r.returncode == 0, r.stderr
    assert "inputs, TRL keys and storage checked" in r.stdout and f"storage file://{ROOT / 'runs'}" in r.stdout


def test_a_local_model_path_that_does_not_exist(tmp_path):
    def edit(s):
        s["models"][0].update(path="./models/my-sft-checkpoint")
        s["resources"]["default"]["gpus_per_node"] = 1

    p = write(tmp_path, edit)
    refused(sftrl("validate", str(p)), "spec.models[0].path: ./models/my-sft-checkpoint does not exist, because no file or folder is at")


def test_a_hub_id_offline_and_not_cached(tmp_path):
    p = write(tmp_path, lambda s: s["data"][0].update(rl="hf://org/rl-questions"))
    refused(sftrl("validate", str(p), env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf")}),
            "spec.data[0].rl: 'org/rl-questions' is not in the local Hugging Face cache")


def test_a_hub_that_cannot_be_reached_is_said_at_once(tmp_path):
    def edit(s):
        s["data"][0].update(rl="hf://org/rl-questions", heldout="hf://org/heldout")

    env = {"HF_HUB_OFFLINE": "", "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HUB_CACHE": str(tmp_path / "hf")}
    r = sftrl("validate", str(write(tmp_path, edit)), env=env)
    refused(r, "spec.data[0].rl: 'org/rl-questions' cannot be resolved, because the hub at http://127.0.0.1:",
            "cannot be reached", "2 problems")


def test_a_misspelt_trl_key(tmp_path, trl_cache):
    def edit(s):
        s["rl"]["trl"] = {"num_iteratons": 2}
        s["sft"]["trl"] = {"neftune_noise_alpha": 5.0}  # a real SFTConfig field: fine

    r = sftrl("validate", str(write(tmp_path, edit)), env={"XDG_CACHE_HOME": str(trl_cache)})
    refused(r, "spec.rl.trl.num_iteratons: trl.GRPOConfig has no field 'num_iteratons'", "did you mean 'num_iterations'?",
            "1 problem")


def test_storage_beneath_a_file_or_in_a_read_only_folder(tmp_path):
    (tmp_path / "a-file").write_text("x")
    r = sftrl("validate", str(write(tmp_path, lambda s: s.update(storage=str(tmp_path / "a-file" / "runs")))))
    refused(r, f"spec.storage: {tmp_path / 'a-file' / 'runs'} cannot be created, because {tmp_path / 'a-file'} is a file")
    r = sftrl("validate", str(write(tmp_path, lambda s: s.update(storage="/sys/sftrl-runs"))))
    refused(r, "spec.storage: /sys/sftrl-runs cannot be created, because /sys is not writable")
    r = sftrl("run", str(write(tmp_path, lambda s: s.update(storage="/sys/sftrl-runs"))))
    refused(r, "spec.storage: /sys/sftrl-runs cannot be created")


def test_s3_storage_that_cannot_be_reached(tmp_path):
    env = {"SFTRL_S3_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
           "SFTRL_S3_RETRIES": "1", "SFTRL_S3_MAX_ATTEMPTS": "1", "SFTRL_S3_CONNECT_TIMEOUT": "2"}
    r = sftrl("validate", str(write(tmp_path, lambda s: s.update(storage="s3://bucket/sftrl"))), env=env)
    refused(r, "spec.storage: s3://bucket/sftrl is not writable, because S3 endpoint http://127.0.0.1:")


def test_duplicate_yaml_keys(tmp_path):
    text = QUICKSTART.read_text().replace("  scales: [512]\n", "  scales: [512]\n  seeds: [0]\n  scales: [64]\n")
    r = sftrl("validate", str(write(tmp_path, text=text)))
    line = text.splitlines().index("  scales: [64]") + 1
    refused(r, f"line {line}: key 'scales' repeats the one at line {line - 2} of the same mapping, and only one can count")


@pytest.mark.parametrize("n", ["0", "-1"])
def test_max_parallel_below_one(tmp_path, n):
    p = write(tmp_path)
    refused(sftrl("run", str(p), "--max-parallel", n), f"--max-parallel {n}: must be at least 1")
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_relative_storage_is_the_files_folder_wherever_sftrl_runs(tmp_path):
    p = write(tmp_path, lambda s: s.update(storage="./runs"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd in (ROOT, elsewhere):
        r = sftrl("plan", str(p), "--no-status", env={"PYTHONPATH": str(ROOT)}, cwd=cwd)
        assert r.returncode == 0 and f"storage file://{tmp_path / 'runs'}" in r.stdout, r.stderr


def test_outputs_that_cannot_be_written_are_refused_without_a_traceback(tmp_path):
    (tmp_path / "a-file").write_text("x")
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"unique_id": "1", "problem": "1+1", "answer": "2", "response": "\\\\boxed{2}"}\n')
    for out in (tmp_path / "a-file" / "scored.jsonl", Path("/sys/scored.jsonl")):
        r = sftrl("eval", "score", "math500", "--input", str(rows), "--output", str(out))
        refused(r, f"--output {out}: {out} cannot be created, because")
        assert "accuracy" not in r.stdout  # checked before any scoring
    r = sftrl("render", str(ROOT / "examples" / "paper.yaml"), "-o", str(tmp_path / "a-file" / "jobs"))
    refused(r, f"error: cannot use {tmp_path / 'a-file' / 'jobs'}, because Not a directory")
    r = sftrl("report", str(QUICKSTART), "-o", "/sys/report")
    refused(r, "-o /sys/report: /sys/report cannot be created, because /sys is not writable")
