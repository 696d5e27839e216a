"""A stage run by hand from its stage.json alone reproduces the run.

The stage gets only its stage.json and a scrubbed environment (PATH, HOME, a thread count): nothing
from the experiment file, nothing else from the environment. Two such runs into different outputs
log the same losses and publish byte-identical weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from controller import spec
from controller.plan import build_plan
from job_runtime.io import storage
from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_sft_stage_from_stage_json_alone_is_reproducible(tmp_path):
    raw = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    raw["spec"].update(storage=str(tmp_path / "unused"), scales=[32], methods=["sft"])
    raw["spec"]["sft"].update(epochs=1, global_batch_size=8, per_device_batch_size=8)
    stage = next(s for s in build_plan(spec.validate_dict(raw)).stages.values() if s.kind == "sft")
    env = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "OMP_NUM_THREADS": "1"}
    results = []
    for name in ("a", "b"):
        out = storage.normalize(tmp_path / name)
        cfg = stage.config.model_copy(update={"output": out})
        (tmp_path / f"{name}.json").write_text(cfg.model_dump_json())
        r = subprocess.run([sys.executable, "-m", "job_runtime", "sft", "--config", str(tmp_path / f"{name}.json")],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
        manifest = storage.read_manifest(out)
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses = [row["loss"] for row in rows if "loss" in row]
        weights = {k: v["sha256"] for k, v in manifest["files"].items() if k.startswith("model/") and "safetensors" in k}
        results.append((losses, weights))
    (la, wa), (lb, wb) = results
    assert la and la == lb
    assert wa and wa == wb
