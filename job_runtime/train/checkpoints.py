"""Checkpoints in storage, resuming from them, and publishing a stage's final artifacts.

A stage trains into a local working directory; this module keeps storage in step with it:

- `CheckpointSync` (a TrainerCallback) uploads each ``checkpoint-<step>/`` the Trainer saves to
  ``<output>/checkpoints/checkpoint-<step>/`` and writes that checkpoint's own ``_SUCCESS``
  manifest LAST, then deletes all but the newest ``keep`` complete checkpoints.
- `latest_complete` finds the newest checkpoint with a manifest; files without one (a writer
  killed mid-upload) are never taken as a checkpoint.
- `resume_dir` fetches the newest complete checkpoint whose files match their manifest (sizes and
  sha256) to local disk (for file:// outputs it is verified in place) and returns the path to pass
  to ``trainer.train(resume_from_checkpoint=...)``. A checkpoint that fails the check (a corrupted
  or overwritten object) is skipped, with a warning, for the next older complete one, so a damaged
  newest checkpoint never fails every retry of the stage; with none left the stage starts fresh.
- `publish_stage` publishes ``model/`` first, then the other files (metrics.jsonl, results.json),
  and the stage's ``_SUCCESS`` last. On file:// the model is written into a temp directory
  beside ``model/`` and renamed into place, so a reader never sees half a model.

"Sidecars" are small files that must travel with a checkpoint so a resumed stage continues
exactly where it stopped (the RL and SFT stages pass their metrics.jsonl): they are copied into
the checkpoint before upload and restored by `resume_dir`.

Typical use in a stage::

    sync = CheckpointSync(cfg.output, keep=3, sidecars={"metrics.jsonl": metrics_path})
    ckpt = resume_dir(cfg.output, work / "resume", sidecars={"metrics.jsonl": metrics_path})
    trainer = GRPOTrainer(..., callbacks=[sync, ...])
    trainer.train(resume_from_checkpoint=ckpt)
    publish_stage(cfg.output, model_dir=work / "model", files={"metrics.jsonl": metrics_path})
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from job_runtime.io import storage
from job_runtime.contract import CHECKPOINTS_DIR, MODEL_DIR, SUCCESS

try:  # transformers is present wherever a stage trains; the pure helpers below work without it.
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover
    TrainerCallback = object  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

_CKPT = re.compile(r"^checkpoint-(\d+)$")
SIDECAR_DIR = "sftrl_sidecars"  # inside a checkpoint: the sidecar files travel here
_DOWNLOADED = ".sftrl_complete"  # marker of a fully downloaded local copy


def checkpoints_uri(output_uri: str) -> str:
    """``<output>/checkpoints``.

    >>> checkpoints_uri("s3://b/stages/abc")
    's3://b/stages/abc/checkpoints'
    """
    return storage.join(output_uri, CHECKPOINTS_DIR)


def _scan(output_uri: str) -> tuple[dict[int, bool], list[str]]:
    """{step: has manifest} of every checkpoint prefix under <output>/checkpoints."""
    steps: dict[int, bool] = {}
    keys = storage.list_prefix(checkpoints_uri(output_uri))
    for key in keys:
        head, _, rest = key.partition("/")
        m = _CKPT.match(head)
        if not m:
            continue
        step = int(m.group(1))
        steps[step] = steps.get(step, False) or rest == SUCCESS
    return steps, keys


def complete_steps(output_uri: str) -> list[int]:
    """Steps of the checkpoints that have a _SUCCESS manifest, ascending."""
    steps, _ = _scan(output_uri)
    return sorted(s for s, done in steps.items() if done)


def latest_complete(output_uri: str) -> tuple[int, str] | None:
    """(step, uri) of the newest checkpoint with a manifest, or None.

    A checkpoint directory without ``_SUCCESS`` (its upload was cut short) is ignored.

    >>> import tempfile; root = "file://" + tempfile.mkdtemp()
    >>> latest_complete(root) is None
    True
    """
    steps = complete_steps(output_uri)
    if not steps:
        return None
    step = steps[-1]
    return step, storage.join(checkpoints_uri(output_uri), f"checkpoint-{step}")


def _verify(local: Path, manifest: dict[str, Any]) -> None:
    for rel, meta in manifest.get("files", {}).items():
        p = local / rel
        if not p.is_file() or p.stat().st_size != meta["size"] or storage.sha256_file(p) != meta["sha256"]:
            raise storage.StorageError(
                f"checkpoint file {rel} in {local} does not match its manifest (size or sha256), because the "
                "copy is incomplete or the stored object changed"
            )


def resume_dir(
    output_uri: str, local_dir: str | os.PathLike[str], sidecars: dict[str, str | os.PathLike[str]] | None = None
) -> str | None:
    """Local path of the newest complete checkpoint that verifies (downloaded when remote), or None
    to start fresh.

    Checkpoints are tried newest first; one whose files do not match its manifest is skipped (logged)
    for the next older one. Sidecar files stored with the chosen checkpoint are copied back to their
    local paths (e.g. the stage's metrics.jsonl, cut at the checkpoint's step). Idempotent: a copy
    already fetched and verified is reused, so every rank on a node may call it after the node's
    first rank has.

    >>> import tempfile; resume_dir("file://" + tempfile.mkdtemp(), tempfile.mkdtemp()) is None
    True
    """
    base = checkpoints_uri(output_uri)
    for step in reversed(complete_steps(output_uri)):
        uri = storage.join(base, f"checkpoint-{step}")
        try:
            path = _fetch_verified(uri, step, Path(local_dir))
        except storage.StorageUnavailable:
            raise  # the store is down: retry the stage later, do not fall back to an older step
        except storage.StorageError as e:
            log.warning("skipping checkpoint %s, because %s; trying the previous complete one", uri, e)
            continue
        _restore_sidecars(path, sidecars)
        log.info("resuming from checkpoint %s (step %d)", uri, step)
        return str(path)
    return None


def _fetch_verified(uri: str, step: int, local_dir: Path) -> Path:
    """The checkpoint at uri as a local directory whose files match its manifest (StorageError if not)."""
    manifest = storage.read_manifest(uri) or {}
    if storage.is_local(uri):
        path = storage.local_path(uri)
        _verify(path, manifest)
        return path
    path = local_dir / f"checkpoint-{step}"
    if (path / _DOWNLOADED).exists():
        return path
    if path.exists():
        shutil.rmtree(path)
    local_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".checkpoint-{step}-", dir=local_dir))
    try:
        for rel in manifest.get("files", {}):
            storage.download_file(storage.join(uri, rel), tmp / rel)
        _verify(tmp, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-fetched is left to reuse
        raise
    (tmp / _DOWNLOADED).write_text(str(step))
    os.replace(tmp, path)
    return path


def _restore_sidecars(path: Path, sidecars: dict[str, str | os.PathLike[str]] | None) -> None:
    for name, dest in (sidecars or {}).items():
        src = path / SIDECAR_DIR / name
        if src.is_file():
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)


def prune(output_uri: str, keep: int) -> list[int]:
    """Delete all but the newest `keep` complete checkpoints, and incomplete ones older than the
    newest complete one (debris of killed uploads); returns the deleted steps.

    A checkpoint's manifest is deleted before its files, so a half-deleted one is never complete.
    """
    steps, _ = _scan(output_uri)
    complete = sorted(s for s, done in steps.items() if done)
    if not complete:
        return []
    keep_steps = set(complete[-keep:]) if keep > 0 else set()
    newest = complete[-1]
    doomed = sorted(s for s in steps if s not in keep_steps and (steps[s] or s < newest))
    base = checkpoints_uri(output_uri)
    for s in doomed:
        uri = storage.join(base, f"checkpoint-{s}")
        if steps[s]:
            storage.delete_prefix(storage.join(uri, SUCCESS))
        storage.delete_prefix(uri)
    return doomed


def _dist() -> tuple[bool, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return True, dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    return False, 1


class CheckpointSync(TrainerCallback):  # type: ignore[misc,valid-type]
    """Upload every saved checkpoint to ``<output>/checkpoints/checkpoint-<step>/``, manifest last.

    Args:
        output_uri: the stage's output prefix (file:// or s3://).
        keep: complete checkpoints kept in storage (older ones are deleted after each upload).
        sidecars: name -> local path of small files copied into the checkpoint before upload and
            restored by `resume_dir` (e.g. {"metrics.jsonl": path}).

    Multi-node without a shared disk: each node's first rank uploads the files it holds (DeepSpeed
    writes per-rank shards), the manifests are gathered, and global rank 0 writes the merged one.
    The upload runs synchronously inside the save step.
    """

    def __init__(self, output_uri: str, keep: int = 3, sidecars: dict[str, str | os.PathLike[str]] | None = None):
        self.output_uri = storage.normalize(output_uri)
        self.keep = keep
        self.sidecars = {k: Path(v) for k, v in (sidecars or {}).items()}
        self.uploaded: list[int] = []

    def on_save(self, args, state, control, **kwargs):  # noqa: D401 - Trainer hook
        step = state.global_step
        local = Path(args.output_dir) / f"checkpoint-{step}"
        uri = storage.join(checkpoints_uri(self.output_uri), f"checkpoint-{step}")
        distributed, _ = _dist()
        manifest: dict[str, Any] | None = None
        if state.is_local_process_zero and local.is_dir():
            if state.is_world_process_zero:
                for name, src in self.sidecars.items():
                    if src.is_file():
                        dst = local / SIDECAR_DIR / name
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(src, dst)
            rels = storage.upload_dir(local, uri, skip=(SUCCESS,))
            manifest = storage.build_manifest(local, rels)
        if distributed:
            import torch.distributed as dist

            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, manifest)
            files: dict[str, Any] = {}
            for part in parts:
                if part:
                    files.update(part["files"])
            manifest = {**(manifest or {}), "files": files}
        if state.is_world_process_zero and manifest is not None:
            manifest["step"] = step
            storage.write_json(storage.join(uri, SUCCESS), manifest)  # last: the checkpoint is complete
            self.uploaded.append(step)
            deleted = prune(self.output_uri, self.keep)
            log.info("checkpoint %d synced to %s (pruned %s)", step, uri, deleted or "none")
        return control


def publish_stage(
    output_uri: str,
    model_dir: str | os.PathLike[str] | None,
    files: dict[str, str | os.PathLike[str]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Publish a stage's final artifacts: ``model/`` first, then `files`, then ``_SUCCESS`` last.

    `files` maps a name under the output (e.g. "metrics.jsonl") to a local path. The manifest lists
    every published file with size and sha256, plus `extra` (e.g. global_step=...). A stale
    ``_SUCCESS`` is removed first, so a crash mid-publish leaves the stage incomplete, never wrong.

    >>> import tempfile, pathlib; out = tempfile.mkdtemp(); f = pathlib.Path(out, "m.jsonl")
    >>> _ = f.write_text("{}\\n")
    >>> sorted(publish_stage("file://" + out + "/stage", None, {"metrics.jsonl": f})["files"])
    ['metrics.jsonl']
    """
    output_uri = storage.normalize(output_uri)
    files = {k: Path(v) for k, v in (files or {}).items()}
    success = storage.join(output_uri, SUCCESS)
    if storage.exists(success):
        storage.delete_prefix(success)
    listing: dict[str, Any] = {}
    if model_dir is not None:
        model_dir = Path(model_dir)
        m = storage.build_manifest(model_dir)
        listing.update({f"{MODEL_DIR}/{rel}": meta for rel, meta in m["files"].items()})
        _publish_model(model_dir, storage.join(output_uri, MODEL_DIR))
    for name, path in files.items():
        storage.upload_file(path, storage.join(output_uri, name))
        listing[name] = {"size": path.stat().st_size, "sha256": storage.sha256_file(path)}
    manifest = {"created": time.time(), **extra, "files": listing}
    storage.write_json(success, manifest)  # last: the stage is complete
    return manifest


def _publish_model(model_dir: Path, uri: str) -> None:
    if storage.is_local(uri):
        dst = storage.local_path(uri)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if model_dir.resolve() == dst.resolve():
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True, copy_function=shutil.copyfile)  # new files: umask modes
        old = None
        if dst.exists():
            old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
            os.replace(dst, old)
        os.replace(tmp, dst)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    else:
        storage.delete_prefix(uri)  # no stale shards from an earlier attempt
        storage.upload_dir(model_dir, uri)
