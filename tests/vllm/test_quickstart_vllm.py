"""`sftrl run` of the quickstart inside the vLLM environment with ``eval.generation.backend: vllm``
prints the same table as with the HF backend: the training stages are reused (their ids do not
depend on the eval backend), only the eval stages run again, on vLLM.

To keep CI short the experiment is the quickstart with its RL methods left out (base and SFT, the
quickstart's SFT settings, so the table is not all zeros); the whole quickstart behaves the same
(README "Tests and CI" gives the command)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.vllm.conftest import stage_env

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.e2e]


def experiment(tmp_path: Path, backend: str) -> Path:
    raw = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    raw["metadata"]["name"] = f"quickstart-{backend}"  # two files, two experiments: the stages are shared
    s = raw["spec"]
    s["storage"] = str(tmp_path / "runs")
    s["data"] = s["data"][:1]  # the given-traces source (the distilled one has its own vLLM test)
    s["methods"] = ["sft"]
    s["scales"] = [256]
    s["eval"]["generation"] = {"backend": backend, "cpu_kv_cache_gib": 1}
    path = tmp_path / f"quickstart-{backend}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def table(output: str) -> str:
    m = re.search(r"^tiny\n(  method.*?)\n\n", output, re.M | re.S)
    assert m, output[-3000:]
    return m.group(1)


def test_quickstart_eval_on_vllm_prints_the_hf_table(tmp_path):
    outputs = {}
    for backend in ("hf", "vllm"):
        done = subprocess.run([sys.executable, "-m", "controller.cli", "run", str(experiment(tmp_path, backend))],
                              cwd=ROOT, env=stage_env(), capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        outputs[backend] = done.stdout
    hf, vllm = table(outputs["hf"]), table(outputs["vllm"])
    assert hf == vllm
    sft_row = next(line for line in hf.splitlines() if line.strip().startswith("sft"))
    assert not sft_row.split()[3].startswith("0.0"), hf  # SFT lifted the model: the table is not trivial
    stages = tmp_path / "runs" / "stages"
    evals = sorted(p.name for p in stages.iterdir() if p.name.startswith("eval-"))
    assert len(evals) == 4  # base and sft, each evaluated by both backends
    backends = sorted(json.loads((stages / e / "results.json").read_text())["backend"] for e in evals)
    assert backends == ["hf", "hf", "vllm", "vllm"]
    assert len([p for p in stages.iterdir() if p.name.startswith("sft-")]) == 1  # trained once, reused
