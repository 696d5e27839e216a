"""Shared test helpers.

In CI (env CI=true) a missing tool or data folder is a failure, never a skip: a green CI must
mean every test ran. Outside CI such tests skip with the reason.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
# Nothing here may leave this machine: boto3 must not probe the EC2 instance metadata address when
# no credentials are set, and no Hugging Face hub id may be resolved online (children inherit both).
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def missing(reason: str) -> None:
    """Fail in CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: .ci/run must install it)")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """Path of an executable, or fail (CI) / skip (elsewhere)."""
    path = shutil.which(name)
    if path is None:
        missing(f"tool '{name}' is not on PATH")
    return path  # type: ignore[return-value]


def require_shared(*parts: str) -> Path:
    """A path under ../shared, or fail (CI) / skip (elsewhere)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        missing(f"{path} is not present")
    return path


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    """Tests share 2 cores; keep torch from oversubscribing them."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    yield
