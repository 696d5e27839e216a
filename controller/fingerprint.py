"""Content fingerprints of an experiment's inputs (models, datasets, eval data), for stage ids.

A stage id hashes its inputs' *content*, not only their names: editing a training file in place,
uploading a new object under the same s3:// key or a new revision of a hub model gives new stage
ids, so the stages that read it run again. This is the I/O shell; ``controller.plan`` stays pure
and takes the result as a mapping ``uri -> fingerprint``.

===================  ======================================================================
input                fingerprint
===================  ======================================================================
builtin://...        none: defined by the code, which ``contract.RECIPE_VERSION`` covers
local file / folder  sha256 over every file's relative path and content (files up to
                     ``HASH_FILE_MAX`` bytes, ``HASH_TOTAL_MAX`` per input); larger files by
                     size and modification time (hashing a 15 GB checkpoint on every plan
                     would take minutes)
s3://                the object's ETag and size, or of every object under the prefix
hub id (org/name)    the resolved commit of ``main``: one request to the hub (``HF_ENDPOINT``,
                     ``HF_TOKEN``); with ``HF_HUB_OFFLINE=1``, or when the hub cannot be reached,
                     the revision in the local cache (huggingface_hub's cache layout,
                     ``<cache>/models--org--name/refs/main``; huggingface_hub/file_download.py)
===================  ======================================================================

Every failure is a problem "X, because Y. Do Z." naming the experiment field, never an exception,
and one unreachable store or hub is asked once, not once per input.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

from controller.spec import Experiment
from job_runtime.io import storage

HASH_FILE_MAX = 64 << 20  # files up to this size are hashed
HASH_TOTAL_MAX = 512 << 20  # bytes hashed per input at most; later files by size and mtime
HUB_TIMEOUT_S = float(os.environ.get("SFTRL_HUB_TIMEOUT", "5"))
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv", ".tsv", ".arrow", ".safetensors", ".bin", ".zip", ".tar")
TRUE = ("1", "true", "yes", "on")


@dataclass
class Input:
    uri: str
    where: str  # the experiment field, e.g. spec.data[0].sft
    kind: str  # builtin | local | s3 | hub-model | hub-dataset


@dataclass
class Fingerprints:
    values: dict[str, str] = field(default_factory=dict)  # uri -> fingerprint
    problems: list[str] = field(default_factory=list)  # "X, because Y. Do Z." (inputs that cannot be used)
    notes: list[str] = field(default_factory=list)  # worth saying, not wrong


def classify(uri: str, role: str) -> str:
    """Where an input lives. ``role`` is "model" or "data" (a bare org/name is a model or a dataset).

    >>> classify("builtin://tiny-qwen2-vl", "model"), classify("s3://b/k", "data"), classify("Qwen/Qwen2-VL-2B", "model")
    ('builtin', 's3', 'hub-model')
    >>> classify("hf://org/set", "data"), classify("org/set", "data"), classify("data/sft.jsonl", "data"), classify("./x", "model")
    ('hub-dataset', 'hub-dataset', 'local', 'local')
    """
    if uri.startswith("builtin://"):
        return "builtin"
    if uri.startswith("s3://"):
        return "s3"
    if uri.startswith("hf://"):
        return "hub-dataset" if role == "data" else "hub-model"
    if "://" in uri:
        return "local" if uri.startswith("file://") else "other"
    if uri.startswith(("/", ".", "~")) or Path(uri).expanduser().exists():
        return "local"
    if HUB_ID.match(uri) and not uri.lower().endswith(DATA_SUFFIXES):
        return "hub-dataset" if role == "data" else "hub-model"
    return "local"


def inputs_of(exp: Experiment) -> list[Input]:
    """Every input URI of the experiment, once, with the first field that names it."""
    s = exp.spec
    out: dict[str, Input] = {}

    def add(uri: str | None, where: str, role: str) -> None:
        if uri and uri not in out:
            out[uri] = Input(uri, where, classify(uri, role))

    for i, m in enumerate(s.models):
        add(m.path, f"spec.models[{i}].path", "model")
    for i, d in enumerate(s.data):
        for key in ("sft", "rl", "heldout"):
            add(getattr(d, key), f"spec.data[{i}].{key}", "data")
        if d.distill is not None:
            add(d.distill.teacher, f"spec.data[{i}].distill.teacher", "model")
            add(d.distill.prompts, f"spec.data[{i}].distill.prompts", "data")
    for name, uri in s.eval.data.items():
        add(uri, f"spec.eval.data.{name}", "data")
    return list(out.values())


# --- local ----------------------------------------------------------------------------------------


def local_fingerprint(path: Path) -> str:
    """sha256 of a file's or folder's content (big files: size and mtime), as 'local:<16 hex>'."""
    files = [("", path)] if path.is_file() else sorted(
        (str(p.relative_to(path)), p) for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
    )
    budget = HASH_TOTAL_MAX
    h = hashlib.sha256()
    for rel, p in files:
        st = p.stat()
        if st.st_size <= HASH_FILE_MAX and st.st_size <= budget:
            budget -= st.st_size
            what = f"{st.st_size}:{storage.sha256_file(p)}"
        else:
            what = f"{st.st_size}:mtime {st.st_mtime_ns}"
        h.update(f"{rel}\0{what}\n".encode())
    return f"local:{h.hexdigest()[:16]}"


def _local(inp: Input, fp: Fingerprints) -> None:
    path = storage.local_path(inp.uri) if inp.uri.startswith("file://") else Path(inp.uri).expanduser()
    if not path.exists():
        fp.problems.append(
            f"{inp.where}: {inp.uri} does not exist, because no file or folder is at {path.resolve()} "
            f"(relative paths are read from the directory sftrl runs in, now {Path.cwd()}). Fix the path"
        )
        return
    try:
        if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
            fp.problems.append(f"{inp.where}: {inp.uri} is an empty folder, because it holds no file. Point it at the data or model")
            return
        fp.values[inp.uri] = local_fingerprint(path)
    except OSError as e:
        fp.problems.append(f"{inp.where}: {inp.uri} cannot be read, because {e}. Fix its permissions")


# --- s3 -------------------------------------------------------------------------------------------


def _s3(inp: Input, fp: Fingerprints) -> None:
    b: Any = storage.backend(inp.uri)
    head = b.head(inp.uri)
    if head is not None:
        fp.values[inp.uri] = f"s3:{head['etag']}:{head['size']}"
        return
    objects = b.etags(inp.uri)
    if not objects:
        fp.problems.append(f"{inp.where}: {inp.uri} does not exist, because no object is at that key or under it. Fix the URI or upload the data")
        return
    h = hashlib.sha256("".join(f"{rel}\0{size}\0{etag}\n" for rel, (size, etag) in sorted(objects.items())).encode())
    fp.values[inp.uri] = f"s3:{h.hexdigest()[:16]}"


# --- the Hugging Face hub ------------------------------------------------------------------------


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _hub_name(uri: str) -> str:
    return uri[len("hf://"):].split("?", 1)[0].strip("/") if uri.startswith("hf://") else uri


def cached_revision(repo: str, repo_type: str) -> str | None:
    """The commit the local cache resolved ``main`` to (``<cache>/<type>s--org--name/refs/main``)."""
    ref = hub_cache_dir() / f"{repo_type}s--{repo.replace('/', '--')}" / "refs" / "main"
    try:
        sha = ref.read_text().strip()
    except OSError:
        return None
    return sha or None


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE


Opener = Callable[..., Any]


class HubUnreachable(Exception):
    pass


def hub_revision(repo: str, repo_type: str, opener: Opener = urllib.request.urlopen) -> str | None:
    """The commit of ``main`` from the hub (one request, no retries); None when the hub says there
    is no such repository (or it is private/gated and HF_TOKEN does not open it). Raises
    HubUnreachable when the hub does not answer."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    req = urllib.request.Request(f"{endpoint}/api/{repo_type}s/{repo}/revision/main")
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with opener(req, timeout=HUB_TIMEOUT_S) as resp:
            return str(json.loads(resp.read().decode("utf-8")).get("sha") or "") or None
    except urllib.error.HTTPError as e:
        if e.code in (401, 403, 404):
            return None
        raise HubUnreachable(f"the hub at {endpoint} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise HubUnreachable(f"the hub at {endpoint} cannot be reached ({reason})") from None


class _Hub:
    """Resolves hub ids, asking the hub at most until it first fails to answer."""

    def __init__(self, opener: Opener):
        self.opener = opener
        self.down: str | None = "HF_HUB_OFFLINE is set" if hub_offline() else None
        self.offline = self.down is not None

    def resolve(self, inp: Input, fp: Fingerprints) -> None:
        repo, repo_type = _hub_name(inp.uri), ("dataset" if inp.kind == "hub-dataset" else "model")
        if self.down is None:
            try:
                sha = hub_revision(repo, repo_type, self.opener)
            except HubUnreachable as e:
                self.down = str(e)
            else:
                if sha:
                    fp.values[inp.uri] = f"hub:{sha}"
                    return
                fp.problems.append(
                    f"{inp.where}: '{repo}' is not a {repo_type} on the Hugging Face hub (or it is private or gated and "
                    f"HF_TOKEN does not open it), and no local path of that name exists. Fix the id, set HF_TOKEN, or use a local path"
                )
                return
        sha = cached_revision(repo, repo_type)
        if sha:
            fp.values[inp.uri] = f"hub:{sha}"
            if not self.offline:
                fp.notes.append(f"{inp.where}: {self.down}; using the cached revision {sha[:12]} of '{repo}'. "
                                "Set HF_HUB_OFFLINE=1 so stages do not wait for the hub")
            return
        if self.offline:
            fp.problems.append(
                f"{inp.where}: '{repo}' is not in the local Hugging Face cache ({hub_cache_dir()}), and HF_HUB_OFFLINE "
                "forbids the hub. Download it where the hub is reachable (huggingface-cli download), or use a local path or s3://"
            )
        else:
            fp.problems.append(
                f"{inp.where}: '{repo}' cannot be resolved, because {self.down}, and it is not in the local cache "
                f"({hub_cache_dir()}). Check the network or HF_ENDPOINT, or download it first and set HF_HUB_OFFLINE=1, "
                "or use a local path or s3://"
            )


# --- all of them ----------------------------------------------------------------------------------


def needing(exp: Experiment, known: Collection[str] = ()) -> list[str]:
    """URIs of the experiment's inputs that have a fingerprint to compute (not builtin://) and are
    not in ``known``, in the order of the experiment file."""
    return [inp.uri for inp in inputs_of(exp) if inp.kind != "builtin" and inp.uri not in known]


def collect(exp: Experiment, opener: Opener = urllib.request.urlopen,
            only: Collection[str] | None = None) -> Fingerprints:
    """Fingerprints of every input of the experiment (or of the URIs in ``only``), and the problems
    that stop a run.

    Local inputs are all checked; after the first s3:// input whose store cannot be reached, and
    after the hub first fails to answer, the rest of their kind are not asked again.
    """
    fp = Fingerprints()
    hub = _Hub(opener)
    s3_down: str | None = None
    unchecked: list[str] = []
    for inp in inputs_of(exp):
        if only is not None and inp.uri not in only:
            continue
        if inp.kind == "local":
            _local(inp, fp)
        elif inp.kind == "s3":
            if s3_down is not None:
                unchecked.append(inp.where)
                continue
            try:
                _s3(inp, fp)
            except storage.StorageError as e:  # unreachable, no credentials, no bucket: asking again would repeat it
                s3_down = f"reading {inp.uri} failed first. Fix that one, then check again"
                fp.problems.append(f"{inp.where}: {e}")
        elif inp.kind in ("hub-model", "hub-dataset"):
            hub.resolve(inp, fp)
        elif inp.kind == "other":
            fp.problems.append(f"{inp.where}: {inp.uri} has an unsupported scheme, because only builtin://, s3://, "
                               "file://, hf:// and paths are read. Fix the URI")
    if unchecked:
        fp.problems.append(f"{', '.join(unchecked)}: not checked, because {s3_down}")
    return fp
