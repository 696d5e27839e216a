"""job_runtime.train.checkpoints: complete-only resume, pruning, sidecars, ordered stage publishing.

Runs against file:// and a real moto S3 server on 127.0.0.1 (the ``s3_bucket`` fixture).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from job_runtime.train import checkpoints
from job_runtime.io import storage
from job_runtime.train.checkpoints import CheckpointSync, latest_complete, prune, publish_stage, resume_dir


def _fake_checkpoint(root: Path, step: int, payload: str = "w") -> Path:
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_text(payload * 100)
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return d


def _state(step: int) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, is_local_process_zero=True, is_world_process_zero=True)


@pytest.fixture(params=["file", "s3"])
def output(request, tmp_path) -> str:
    if request.param == "file":
        return storage.normalize(tmp_path / "store" / "stages" / "abc")
    bucket = request.getfixturevalue("s3_bucket")
    return f"{bucket}/stages/abc"


def test_partial_checkpoint_is_never_taken_as_complete(output, tmp_path):
    assert latest_complete(output) is None
    assert resume_dir(output, tmp_path / "dl") is None
    ck = checkpoints.checkpoints_uri(output)
    storage.publish(_fake_checkpoint(tmp_path / "a", 2), storage.join(ck, "checkpoint-2"))
    # A newer checkpoint whose upload was cut short: files, no manifest.
    partial = _fake_checkpoint(tmp_path / "b", 4, payload="p")
    storage.upload_dir(partial, storage.join(ck, "checkpoint-4"))
    assert storage.exists(storage.join(ck, "checkpoint-4", "model.safetensors"))

    assert latest_complete(output) == (2, storage.join(ck, "checkpoint-2"))
    path = Path(resume_dir(output, tmp_path / "dl"))
    assert json.loads((path / "trainer_state.json").read_text())["global_step"] == 2
    assert (path / "model.safetensors").read_text() == "w" * 100


def test_checkpoint_sync_uploads_manifest_last_restores_sidecars_and_prunes(output, tmp_path, monkeypatch):
    work = tmp_path / "work"
    metrics = tmp_path / "metrics.jsonl"
    sync = CheckpointSync(output, keep=2, sidecars={"metrics.jsonl": metrics})
    args = SimpleNamespace(output_dir=str(work))
    order: list[str] = []
    real_upload, real_write = storage.upload_file, storage.write_json
    monkeypatch.setattr(storage, "upload_file", lambda l, u: (order.append(u), real_upload(l, u))[1])
    monkeypatch.setattr(storage, "write_json", lambda u, o: (order.append(u), real_write(u, o))[1])
    for step in (1, 2, 3):
        _fake_checkpoint(work, step)
        metrics.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, step + 1)))
        sync.on_save(args, _state(step), SimpleNamespace())
        mine = [u for u in order if f"checkpoint-{step}/" in u]
        assert mine[-1].endswith(f"checkpoint-{step}/_SUCCESS"), mine  # manifest written last
        assert len(mine) == 4  # 2 files + sidecar + manifest

    assert checkpoints.complete_steps(output) == [2, 3]  # keep=2: checkpoint-1 deleted
    assert storage.list_prefix(storage.join(checkpoints.checkpoints_uri(output), "checkpoint-1")) == []
    manifest = storage.read_manifest(storage.join(checkpoints.checkpoints_uri(output), "checkpoint-3"))
    assert manifest["step"] == 3
    assert set(manifest["files"]) == {"model.safetensors", "trainer_state.json", "sftrl_sidecars/metrics.jsonl"}

    restored = tmp_path / "restored" / "metrics.jsonl"
    path = resume_dir(output, tmp_path / "dl", sidecars={"metrics.jsonl": restored})
    assert path is not None and path.endswith("checkpoint-3")
    assert [json.loads(x)["step"] for x in restored.read_text().splitlines()] == [1, 2, 3]
    assert resume_dir(output, tmp_path / "dl") == path  # idempotent (every rank may call it)


def test_prune_removes_stale_partials_but_not_newer_ones(tmp_path):
    output = storage.normalize(tmp_path / "out")
    ck = checkpoints.checkpoints_uri(output)
    for step in (1, 3):
        storage.publish(_fake_checkpoint(tmp_path / f"c{step}", step), storage.join(ck, f"checkpoint-{step}"))
    storage.upload_dir(_fake_checkpoint(tmp_path / "p2", 2), storage.join(ck, "checkpoint-2"))  # stale partial
    storage.upload_dir(_fake_checkpoint(tmp_path / "p4", 4), storage.join(ck, "checkpoint-4"))  # upload in flight
    assert prune(output, keep=1) == [1, 2]
    steps, _ = checkpoints._scan(output)
    assert steps == {3: True, 4: False}


def test_a_checkpoint_that_fails_its_check_is_skipped_for_the_previous_one(output, tmp_path, caplog):
    ck = checkpoints.checkpoints_uri(output)
    for step in (2, 4):
        d = _fake_checkpoint(tmp_path / f"c{step}", step, payload=str(step))
        (d / checkpoints.SIDECAR_DIR).mkdir()
        (d / checkpoints.SIDECAR_DIR / "metrics.jsonl").write_text(json.dumps({"step": step}) + "\n")
        storage.publish(d, storage.join(ck, f"checkpoint-{step}"))
    storage.write_text(storage.join(ck, "checkpoint-4", "model.safetensors"), "tampered")  # same name, other bytes
    restored = tmp_path / "restored.jsonl"
    with caplog.at_level("WARNING"):
        path = resume_dir(output, tmp_path / "dl", sidecars={"metrics.jsonl": restored})
    assert path is not None and path.endswith("checkpoint-2")
    assert json.loads((Path(path) / "trainer_state.json").read_text())["global_step"] == 2
    assert json.loads(restored.read_text())["step"] == 2  # the sidecars of the checkpoint resumed from
    assert "skipping checkpoint" in caplog.text and "checkpoint-4" in caplog.text
    assert not (tmp_path / "dl" / "checkpoint-4").exists()  # nothing half-fetched is left to reuse
    assert [p.name for p in (tmp_path / "dl").glob(".checkpoint-*")] == []
    # a missing file fails the check the same way; with no checkpoint left that verifies: start fresh
    storage.delete_prefix(storage.join(ck, "checkpoint-2", "trainer_state.json"))
    assert resume_dir(output, tmp_path / "dl2") is None


def test_publish_stage_model_first_success_last(output, tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_text("x" * 50)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n')
    storage.write_text(storage.join(output, "_SUCCESS"), "{}")  # stale manifest of an older attempt
    order: list[str] = []
    real_upload, real_write, real_delete = storage.upload_file, storage.write_json, storage.delete_prefix
    monkeypatch.setattr(storage, "upload_file", lambda l, u: (order.append(u), real_upload(l, u))[1])
    monkeypatch.setattr(storage, "write_json", lambda u, o: (order.append(u), real_write(u, o))[1])
    monkeypatch.setattr(storage, "delete_prefix", lambda u: (order.append("delete " + u), real_delete(u))[1])

    manifest = publish_stage(output, model, {"metrics.jsonl": metrics}, global_step=7)

    assert order[0] == "delete " + storage.join(output, "_SUCCESS")  # stale manifest gone first
    assert order[-1] == storage.join(output, "_SUCCESS")
    assert order.index(storage.join(output, "metrics.jsonl")) == len(order) - 2  # after the model
    assert manifest["global_step"] == 7
    assert set(manifest["files"]) == {"model/config.json", "model/model.safetensors", "metrics.jsonl"}
    assert storage.read_manifest(output)["files"]["model/model.safetensors"]["size"] == 50
    # Publishing again replaces model/ wholesale (no stale files from the earlier attempt).
    (model / "config.json").unlink()
    publish_stage(output, model, {"metrics.jsonl": metrics})
    assert sorted(storage.list_prefix(storage.join(output, "model"))) == ["model.safetensors"]

