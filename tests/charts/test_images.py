"""The Dockerfiles, read by a small parser (no container engine runs here): non-root users, the
entrypoints the chart and the PyTorchJobs rely on, and every version from images/versions.env.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.charts.helpers import CHART, one, render, rendered_pytorchjob, versions_env
from tests.conftest import ROOT

IMAGES = ROOT / "images"
DOCKERFILES = {name: IMAGES / name / "Dockerfile" for name in ("runtime", "controller")}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        op, _, args = full.partition(" ")
        out.append((op.upper(), args.strip()))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    ins = instructions(path)
    last_from = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    return ins[last_from:]


def exec_form(path: Path, op: str) -> list[str]:
    found = [args for o, args in final_stage(path) if o == op]
    assert found, f"{path.name}: no {op} in the final stage"
    return json.loads(found[-1])  # exec (JSON) form: no shell between the runtime and the process


def user_uid(path: Path) -> int:
    users = [args for op, args in final_stage(path) if op == "USER"]
    assert users, f"{path}: the final stage sets no USER, so it runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"{path}: USER {uid} must be numeric so Kubernetes' runAsNonRoot can verify it"
    return int(uid)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_final_stage_runs_as_a_numeric_non_root_user(name):
    assert user_uid(DOCKERFILES[name]) > 0


def test_runtime_entrypoint_is_torchrun():
    path = DOCKERFILES["runtime"]
    assert exec_form(path, "ENTRYPOINT") == ["torchrun"]
    assert exec_form(path, "CMD")[:2] == ["-m", "job_runtime"]


def test_runtime_image_runs_what_the_pytorchjobs_run():
    """render.py's container command is the image's entrypoint followed by `-m job_runtime`, and its
    pods run as the image's user."""
    job = rendered_pytorchjob()
    path = DOCKERFILES["runtime"]
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        pod = spec["template"]["spec"]
        command = pod["containers"][0]["command"]
        entry = exec_form(path, "ENTRYPOINT")
        assert command[: len(entry)] == entry
        assert command[len(entry) : len(entry) + 2] == exec_form(path, "CMD")[:2] == ["-m", "job_runtime"]
        assert pod["securityContext"]["runAsUser"] == user_uid(path)


def test_controller_entrypoint_is_the_chart_command():
    path = DOCKERFILES["controller"]
    assert exec_form(path, "ENTRYPOINT") + exec_form(path, "CMD") == ["sftrl", "operator"]
    dep = one(render(CHART / "ci" / "minimal-values.yaml"), "Deployment", "sftrl")
    pod = dep["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"] == ["sftrl", "operator"]
    assert pod["securityContext"]["runAsUser"] == user_uid(path)
    # It installs the project with exactly the extras the operator imports.
    assert re.search(r'pip install "/src\[kubernetes,metrics,s3\]"', DOCKERFILES["controller"].read_text())


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_every_version_comes_from_versions_env(name):
    path = DOCKERFILES[name]
    text = "\n".join(f"{op} {args}" for op, args in instructions(path))
    declared = {args.split("=")[0] for op, args in instructions(path) if op == "ARG"}
    pinned = versions_env()
    assert declared and declared <= set(pinned), f"ARGs {declared - set(pinned)} are not in versions.env"
    assert not [a for op, a in instructions(path) if op == "ARG" and "=" in a], "ARG defaults would be a second pin"
    used = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)\}?", text))
    assert used & set(pinned) == declared, "an ARG is declared but never used, or used but not declared"
    # No literal pins: a version in the file would drift from versions.env.
    assert not re.findall(r"[=:]=?\s*\d+\.\d+", re.sub(r"--(uid|gid) \d+|USER \d+:\d+", "", text)), text


def test_every_pin_is_used_by_a_dockerfile():
    texts = "".join(p.read_text() for p in DOCKERFILES.values())
    unused = [k for k in versions_env() if f"${{{k}}}" not in texts]
    assert unused == []


def test_runtime_pins_are_mutually_compatible():
    """The constraints vLLM and TRL publish (their wheel metadata), written down in one test."""
    v = versions_env()
    assert v["TRL_VERSION"] == "1.16.0"
    assert v["VLLM_VERSION"] == "0.31.0"  # trl 1.16: vllm>=0.22,<=0.31
    assert (v["TORCH_VERSION"], v["TORCHVISION_VERSION"], v["TORCHAUDIO_VERSION"]) == ("2.13.0", "0.28.0", "2.11.0")
    minor = tuple(int(x) for x in v["TRANSFORMERS_VERSION"].split(".")[:2])
    assert (5, 10) <= minor < (5, 18)  # vllm 0.31: transformers>=5.10.4,<5.18
    assert v["TORCH_CUDA"] == "cu" + "".join(v["CUDA_VERSION"].split(".")[:2])  # vllm 0.31 wheels: CUDA 13


def test_build_script_passes_every_pin():
    env = dict(os.environ, DOCKER="echo")
    out = subprocess.run([str(IMAGES / "build.sh"), "runtime"], capture_output=True, text=True, env=env, check=True).stdout
    for key, value in versions_env().items():
        assert f"--build-arg {key}={value}" in out
    app = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert f"-t ghcr.io/sftrl/runtime:{app}" in out and out.rstrip().endswith(f"ghcr.io/sftrl/runtime:{app}")
