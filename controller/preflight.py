"""Checks of an experiment against the world, before any stage (or GPU) starts.

``sftrl validate`` and ``sftrl run`` run them after the file itself validated; each problem is
one line "X, because Y. Do Z." naming the field, all reported at once, exit 2.

- every input exists or resolves: local paths, s3:// objects, hub ids (one quick request each,
  honouring HF_HUB_OFFLINE; a hub that does not answer is said once) -- ``controller.fingerprint``,
  which also returns the content fingerprints that stage ids need;
- every key under ``sft.trl`` / ``rl.trl`` is a field of TRL's ``SFTConfig`` / ``GRPOConfig``. The
  controller never imports the training stack (``.importlinter``), so the field names are read by
  a child Python process of this environment, once per TRL version (cached under
  ``~/.cache/sftrl``); where TRL is not installed the check is skipped with a note, and the
  runtime checks the keys when the stage starts;
- the storage root can be written (a local folder, or one under a read-only folder or an existing
  file; on s3:// a probe object is written and deleted);
- ``--max-parallel`` is at least 1.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from controller import fingerprint
from controller.spec import Experiment
from job_runtime.io import storage

_TRL_FIELDS = (
    "import dataclasses, json, trl\n"
    "print(json.dumps({'sft': [f.name for f in dataclasses.fields(trl.SFTConfig)],"
    " 'rl': [f.name for f in dataclasses.fields(trl.GRPOConfig)]}))\n"
)
TRL_CLASS = {"sft": "trl.SFTConfig", "rl": "trl.GRPOConfig"}


@dataclass
class Preflight:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


# --- TRL config keys -----------------------------------------------------------------------------


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "sftrl"


def trl_config_fields(python: str = sys.executable) -> dict[str, list[str]] | None:
    """{'sft': SFTConfig field names, 'rl': GRPOConfig field names} of the installed TRL, or None
    when TRL is not installed. Read in a child process (the controller never imports TRL) and
    cached per TRL version."""
    try:
        version = importlib.metadata.version("trl")
    except importlib.metadata.PackageNotFoundError:
        return None
    cache = _cache_dir() / f"trl-{version}-config-fields.json"
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    try:
        r = subprocess.run([python, "-c", _TRL_FIELDS], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    try:
        fields = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        storage.write_json(str(cache), fields)
    except (OSError, storage.StorageError):
        pass
    return fields


def trl_key_problems(exp: Experiment, fields: dict[str, list[str]]) -> list[str]:
    """One problem per key under sft.trl / rl.trl that TRL's config class does not have.

    >>> from controller.spec import validate_dict
    >>> import yaml; raw = yaml.safe_load(open("examples/quickstart.yaml"))
    >>> raw["spec"]["rl"]["trl"] = {"num_iteratons": 2}
    >>> trl_key_problems(validate_dict(raw), {"sft": [], "rl": ["num_iterations", "beta"]})
    ["spec.rl.trl.num_iteratons: trl.GRPOConfig has no field 'num_iteratons', because TRL would reject it when the stage starts; did you mean 'num_iterations'?"]
    """
    out = []
    for kind in ("sft", "rl"):
        known = fields.get(kind) or []
        for key in getattr(exp.spec, kind).trl:
            if key in known:
                continue
            near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean '{near[0]}'?" if near else f". Use a {TRL_CLASS[kind]} field"
            out.append(f"spec.{kind}.trl.{key}: {TRL_CLASS[kind]} has no field '{key}', because TRL would reject it "
                       f"when the stage starts{hint}")
    return out


# --- storage ----------------------------------------------------------------------------------------


def storage_problem(root: str) -> str | None:
    """Why the storage root cannot be written, or None (local: permissions only, nothing is created;
    s3://: a probe object is written and deleted)."""
    root = storage.normalize(root)
    if storage.is_local(root):
        why = storage.unwritable_reason(root)
        return f"spec.storage: {why}. Choose a writable storage path" if why else None
    try:
        probe_uri = storage.join(root, f".sftrl-write-check-{uuid.uuid4().hex[:12]}")
        storage.write_bytes(probe_uri, b"ok")
        storage.delete_prefix(probe_uri)
    except storage.StorageError as e:
        return f"spec.storage: {root} is not writable, because {e}"
    return None


# --- all checks --------------------------------------------------------------------------------------


def check(exp: Experiment, max_parallel: int | None = None, opener: Callable[..., Any] = urllib.request.urlopen,
          trl_fields: Callable[[], dict[str, list[str]] | None] = trl_config_fields,
          check_storage: bool = True) -> Preflight:
    """Every check above; never raises for a user's mistake."""
    fp = fingerprint.collect(exp, opener)
    out = Preflight(list(fp.problems), list(fp.notes), dict(fp.values))
    if exp.spec.sft.trl or exp.spec.rl.trl:
        fields = trl_fields()
        if fields is None:
            out.notes.append("sft.trl / rl.trl keys were not checked, because TRL is not installed here; "
                             "the stage checks them when it starts")
        else:
            out.problems += trl_key_problems(exp, fields)
    if check_storage:
        problem = storage_problem(exp.spec.storage)
        if problem:
            out.problems.append(problem)
    if max_parallel is not None and max_parallel < 1:
        out.problems.append(f"--max-parallel {max_parallel}: must be at least 1, because it is how many stages run "
                            "at once. Pass 1 or more (or leave it out to use execution.max_parallel)")
    return out
