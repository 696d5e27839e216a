"""bench/gpu_train.py runs end to end on CPU with the tiny Qwen2.5-VL (a smoke test: the figures it
prints are not checked, only that every phase ran through the real stage code and plain HF)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_gpu_train_bench_smoke_on_cpu(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_train.py"), "--model", "tiny", "--work", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"^device: CPU .*model: tiny", out, re.M), out
    sft = re.search(r"^SFT .*stage ([\d,.]+) tokens/s \((\d+) steps\), plain HF ([\d,.]+) tokens/s", out, re.M)
    assert sft and int(sft.group(2)) >= 2 and float(sft.group(1).replace(",", "")) > 0, out
    rl = re.search(r"^GRPO .*stage rollout ([\d.]+) s, update ([\d.]+) s; plain HF generate ([\d.]+) s, update ([\d.]+) s",
                   out, re.M)
    assert rl and all(float(x) > 0 for x in rl.groups()), out
    assert not list(tmp_path.iterdir())  # the scratch folder is cleaned up
