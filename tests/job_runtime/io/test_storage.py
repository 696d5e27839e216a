"""job_runtime.io.storage: what "done" means (manifest sizes, full sha256), shared-storage file
modes, failure records and the writability check; file:// and a real S3 API (moto on loopback)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from job_runtime.io import storage


def _stage(tmp_path: Path) -> Path:
    d = tmp_path / "stage"
    (d / "model").mkdir(parents=True)
    (d / "model" / "model.safetensors").write_bytes(b"w" * 4096)
    (d / "samples.jsonl").write_text('{"id": 1}\n{"id": 2}\n')
    (d / "log.txt").write_text("=== attempt 1\n")
    storage.publish(d, storage.normalize(d))
    return d


def test_a_truncated_artifact_is_not_done_and_named(tmp_path):
    d = _stage(tmp_path)
    uri = storage.normalize(d)
    assert storage.is_complete(uri)
    with open(d / "model" / "model.safetensors", "r+b") as f:
        f.truncate(100)
    assert not storage.is_complete(uri)
    assert storage.incomplete_reason(uri) == "model/model.safetensors is 100 bytes, but its _SUCCESS manifest says 4096"
    (d / "samples.jsonl").write_text("")
    assert "(and 1 more)" in storage.incomplete_reason(uri)
    (d / "samples.jsonl").unlink()
    assert "samples.jsonl is missing" in " ".join(storage.manifest_problems(uri))


def test_the_log_is_no_artifact_so_it_may_grow_after_the_manifest(tmp_path):
    d = _stage(tmp_path)
    manifest = storage.read_manifest(storage.normalize(d))
    assert "log.txt" not in manifest["files"] and "samples.jsonl" in manifest["files"]
    with open(d / "log.txt", "a") as f:
        f.write("stage done\n")  # the runtime's last line, after publish
    assert storage.is_complete(storage.normalize(d))


def test_full_verify_finds_a_same_size_alteration(tmp_path):
    d = _stage(tmp_path)
    uri = storage.normalize(d)
    (d / "model" / "model.safetensors").write_bytes(b"x" * 4096)
    assert storage.is_complete(uri)  # sizes match: the cheap check cannot see it
    assert storage.manifest_problems(uri, full=True) == [
        "model/model.safetensors has a different sha256 than its _SUCCESS manifest records (same size: altered in place)"]


def test_s3_sizes_are_checked_with_one_listing(tmp_path, s3_bucket):
    d = _stage(tmp_path)
    uri = f"{s3_bucket}/stages/sft-1"
    storage.publish(d, uri)
    assert storage.is_complete(uri)
    storage.write_bytes(storage.join(uri, "model/model.safetensors"), b"w" * 10)
    assert storage.incomplete_reason(uri) == "model/model.safetensors is 10 bytes, but its _SUCCESS manifest says 4096"
    storage.write_bytes(storage.join(uri, "model/model.safetensors"), b"v" * 4096)
    assert storage.is_complete(uri) and "different sha256" in storage.manifest_problems(uri, full=True)[0]


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_writes_honour_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        assert storage.umask() == mask
        storage.write_json(storage.normalize(tmp_path / "plan.json"), {"a": 1})
        d = _stage(tmp_path)
    finally:
        os.umask(old)
    for p in (tmp_path / "plan.json", d / "_SUCCESS"):
        assert stat.S_IMODE(p.stat().st_mode) == mode, p


def test_a_published_model_is_readable_by_colleagues(tmp_path):
    """safetensors writes 0600; the published copy gets the umask's mode (checkpoints._publish_model)."""
    from job_runtime.train.checkpoints import publish_stage

    model = tmp_path / "work" / "model"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"w" * 64)
    os.chmod(model / "model.safetensors", 0o600)
    old = os.umask(0o022)
    try:
        publish_stage(storage.normalize(tmp_path / "out"), model)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out" / "model" / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "out" / "model").stat().st_mode) == 0o755


def test_failure_records_merge_and_clear(tmp_path):
    uri = storage.normalize(tmp_path / "stage")
    assert storage.read_failure(uri) is None
    storage.write_failure(uri, error="ValueError: bad", exit_code=1)
    storage.write_failure(uri, log="/x/log.txt")
    rec = storage.read_failure(uri)
    assert rec["error"] == "ValueError: bad" and rec["exit_code"] == 1 and rec["log"] == "/x/log.txt"
    storage.clear_failure(uri)
    assert storage.read_failure(uri) is None


def test_unwritable_places_are_named(tmp_path):
    (tmp_path / "file").write_text("x")
    assert storage.unwritable_reason(str(tmp_path / "file" / "runs")) == \
        f"{tmp_path / 'file' / 'runs'} cannot be created, because {tmp_path / 'file'} is a file"
    assert "/sys is not writable" in storage.unwritable_reason("/sys/sftrl-runs")  # read-only even for root
    assert storage.unwritable_reason(str(tmp_path / "new" / "deeper")) is None
    assert not (tmp_path / "new").exists()  # nothing is created
    assert "is a folder" in storage.unwritable_reason(str(tmp_path), folder=False)
