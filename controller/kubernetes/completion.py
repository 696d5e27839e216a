"""Which stages are done on a cluster: ``_SUCCESS`` manifests whose files have their recorded sizes.

A stage is done when its ``_SUCCESS`` manifest is in storage and every file it lists has the size
the manifest records: the check of ``storage.is_complete`` (job_runtime/io/storage.py), so a
truncated model or an emptied samples file makes the stage not done, on a cluster as locally, and
the reason names the file. The operator asks every cycle, so the check must cost nothing in a
steady cycle:

- a manifest is judged once, when it first appears (one read of it, one listing or a stat per file
  of its stage), and the verdict is kept by the manifest's *identity*: its inode, size and mtime on
  a local root, its ETag on S3. A manifest rewritten by a new attempt has a new identity and is
  judged again; a verdict is never recomputed otherwise;
- a local root is scanned once per refresh (one directory walk and a stat per manifest);
- an S3 root is listed once, when first seen (its pages; a restarted operator judges the manifests
  it finds with 16 threads); after that only the stages whose latest job succeeded are asked (one
  HEAD each), and ``done_now`` asks a stage just before it is launched, so a stage that another
  experiment or a local ``sftrl run`` finished meanwhile is never run again. A steady cycle
  (jobs running, nothing finished) makes no storage call at all: ``python bench/k8s_scale.py``
  prints the count.

Nothing here talks to Kubernetes.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

from job_runtime.contract import STAGES_DIR, SUCCESS
from job_runtime.io import storage

log = logging.getLogger("sftrl.k8s")

JUDGE_THREADS = 16


class Completion:
    """Verdicts on the ``_SUCCESS`` manifests of one or more storage roots, kept by identity."""

    def __init__(self) -> None:
        self.verdicts: dict[tuple[str, str], tuple[str, str | None]] = {}  # (root, stage) -> (identity, why not done)
        self._scanned: dict[str, tuple[int, set[str]]] = {}  # local root -> (refresh, stages done then)
        self._listed: set[str] = set()  # S3 roots listed in full
        self._probed: dict[tuple[str, str], int] = {}  # (root, stage) -> refresh it was asked in

    # --- asked by the executor ---------------------------------------------------------------------

    def completed(self, root: str, stage_ids: Iterable[str], probe: Iterable[str] = (), fresh: int = 0) -> set[str]:
        """The stages of ``stage_ids`` that are done. ``probe``: stages worth asking again on S3 (their
        latest job succeeded); ``fresh``: the caller's refresh count (local roots: one scan each)."""
        wanted = set(stage_ids)
        if storage.is_local(root):
            seen = self._scanned.get(root)
            if seen is None or seen[0] != fresh:
                seen = self._scanned[root] = (fresh, self._scan_local(root))
            return seen[1] & wanted
        if root not in self._listed:
            self._list_remote(root)
            self._listed.add(root)
        for sid in probe:
            if self._probed.get((root, sid)) != fresh and not self.ok(root, sid):
                self._probed[(root, sid)] = fresh
                self._probe_remote(root, sid)
        return {sid for sid in wanted if self.ok(root, sid)}

    def incomplete(self, root: str, stage_ids: Iterable[str]) -> dict[str, str]:
        """Stage id -> why its manifest does not make it done, for the stages that have one."""
        out = {}
        for sid in stage_ids:
            v = self.verdicts.get((root, sid))
            if v is not None and v[1] is not None:
                out[sid] = v[1]
        return out

    def done_now(self, root: str, stage_id: str) -> bool:
        """Ask storage now (one stat or HEAD; the manifest itself once per identity)."""
        if storage.is_local(root):
            return self._judge_local(root, stage_id, storage.local_path(storage.join(root, STAGES_DIR, stage_id, SUCCESS)))
        if not self.ok(root, stage_id):
            self._probe_remote(root, stage_id)
        return self.ok(root, stage_id)

    def ok(self, root: str, stage_id: str) -> bool:
        v = self.verdicts.get((root, stage_id))
        return v is not None and v[1] is None

    # --- judging a manifest ----------------------------------------------------------------------------

    def judge(self, root: str, stage_id: str, identity: str) -> str | None:
        """None when the stage's manifest (of this identity) matches its files, else why not; cached."""
        key = (root, stage_id)
        cached = self.verdicts.get(key)
        if cached is not None and cached[0] == identity:
            return cached[1]
        out = storage.join(root, STAGES_DIR, stage_id)
        try:
            manifest = storage.read_json(storage.join(out, SUCCESS))
            problems = storage.manifest_problems(out, manifest if isinstance(manifest, dict) else {})
        except (storage.StorageError, ValueError) as e:
            problems = [f"its {SUCCESS} manifest cannot be read ({e})"]
        why = None
        if problems:
            why = problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
            log.warning("stage %s is not done, because %s; it runs again", stage_id, why)
        self.verdicts[key] = (identity, why)
        return why

    def _judge_local(self, root: str, stage_id: str, path: Path) -> bool:
        try:
            st = path.stat()
        except OSError:
            self.verdicts.pop((root, stage_id), None)
            return False
        return self.judge(root, stage_id, f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}") is None

    def _scan_local(self, root: str) -> set[str]:
        base = storage.local_path(storage.join(root, STAGES_DIR))
        found = {p.parent.name: p for p in base.glob(f"*/{SUCCESS}")} if base.is_dir() else {}
        for key in [k for k in self.verdicts if k[0] == root and k[1] not in found]:
            del self.verdicts[key]  # its manifest is gone: nothing to say about it any more
        return {sid for sid, path in found.items() if self._judge_local(root, sid, path)}

    def _list_remote(self, root: str) -> None:
        """One listing of stages/ (its pages), then a verdict on every manifest not judged yet."""
        b: Any = storage.backend(root)
        found = {}
        for rel, (_, etag) in b.etags(storage.join(root, STAGES_DIR)).items():
            parts = rel.split("/")
            if len(parts) == 2 and parts[1] == SUCCESS:
                found[parts[0]] = etag
        todo = [(sid, etag) for sid, etag in found.items() if (self.verdicts.get((root, sid)) or ("",))[0] != etag]
        if len(todo) > 1:  # e.g. a restarted operator on a root with thousands of finished stages
            with ThreadPoolExecutor(JUDGE_THREADS) as pool:
                list(pool.map(lambda item: self.judge(root, *item), todo))
        else:
            for sid, etag in todo:
                self.judge(root, sid, etag)

    def _probe_remote(self, root: str, stage_id: str) -> None:
        b: Any = storage.backend(root)
        head = b.head(storage.join(root, STAGES_DIR, stage_id, SUCCESS))
        if head is None:
            self.verdicts.pop((root, stage_id), None)
        else:
            self.judge(root, stage_id, str(head["etag"]))
