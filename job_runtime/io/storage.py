"""Artifact storage by URI: file:// (and bare paths) and s3://.

Every function takes a URI and dispatches on its scheme, so callers never care where artifacts
live. Writes are atomic per object (temp file + rename locally; single PUT or completed multipart
upload on S3). A stage directory is complete only when its ``_SUCCESS`` manifest exists; the
manifest lists every file with its size and sha256 and is written last.

This module imports neither torch nor transformers (the controller imports it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol
from urllib.parse import urlparse

from job_runtime.errors import StorageError, StorageUnavailable  # re-exported: storage.StorageError
from job_runtime.io import scratch

SUCCESS = "_SUCCESS"
FAILED = "_FAILED"  # the last attempt's failure record (job_runtime.__main__, the local CLI); never an artifact
LOG_TXT = "log.txt"  # the local executor appends to it while and after the stage runs: never an artifact
NOT_ARTIFACTS = (SUCCESS, FAILED, LOG_TXT)


class Backend(Protocol):
    def exists(self, uri: str) -> bool: ...
    def read_bytes(self, uri: str) -> bytes: ...
    def write_bytes(self, uri: str, data: bytes) -> None: ...
    def list(self, uri: str) -> list[str]: ...  # relative keys of every object under a prefix
    def sizes(self, uri: str) -> dict[str, int]: ...  # relative key -> size of every object under a prefix
    def upload_file(self, local: Path, uri: str) -> None: ...
    def download_file(self, uri: str, local: Path) -> None: ...
    def delete_prefix(self, uri: str) -> None: ...
    # Conditional writes (compare-and-swap on one small object; leases use them). A version is an
    # opaque token of one stored content: a sha256 on file://, the ETag on s3://.
    def create_if_absent(self, uri: str, data: bytes) -> str | None: ...
    def read_versioned(self, uri: str) -> tuple[bytes, str] | None: ...
    def replace_if_version(self, uri: str, data: bytes, version: str) -> str | None: ...
    def delete_if_version(self, uri: str, version: str) -> bool: ...


# --- URIs -----------------------------------------------------------------------------------


def normalize(uri: str | os.PathLike[str]) -> str:
    """A bare or relative path becomes an absolute file:// URI; other URIs pass unchanged."""
    s = str(uri)
    if "://" in s:
        return s.rstrip("/") if s not in ("file:///",) else s
    return "file://" + str(Path(s).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    out = uri.rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def scheme(uri: str) -> str:
    return urlparse(uri).scheme if "://" in uri else "file"


def local_path(uri: str) -> Path:
    """The filesystem path of a file:// URI (or bare path)."""
    if "://" not in uri:
        return Path(uri)
    p = urlparse(uri)
    if p.scheme != "file":
        raise StorageError(f"{uri} is not a local path, because its scheme is {p.scheme}. Use a file:// URI.")
    return Path(p.path)


def is_local(uri: str) -> bool:
    return scheme(uri) == "file"


# --- file:// ---------------------------------------------------------------------------------


def umask() -> int:
    """This process's umask, read without changing it (Linux /proc; elsewhere set and restored)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def honour_umask(path: str | os.PathLike[str], directory: bool = False) -> None:
    """Give a file (0666) or folder (0777) the mode the umask allows, as open() and mkdir() would.

    Temp files from mkstemp and folders from mkdtemp are private (0600/0700); renamed into shared
    storage they would stay unreadable to colleagues.
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


class FileBackend:
    def exists(self, uri: str) -> bool:
        return local_path(uri).exists()

    def read_bytes(self, uri: str) -> bytes:
        try:
            return local_path(uri).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{uri} does not exist. Check the path or run the stage that writes it.") from None

    def write_bytes(self, uri: str, data: bytes) -> None:
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600: colleagues could not read it
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def list(self, uri: str) -> list[str]:
        root = local_path(uri)
        if not root.is_dir():
            return []
        return sorted(
            str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
        )

    def sizes(self, uri: str) -> dict[str, int]:
        root = local_path(uri)
        return {rel: (root / rel).stat().st_size for rel in self.list(uri)}

    def upload_file(self, local: Path, uri: str) -> None:
        dst = local_path(uri)
        if Path(local).resolve() == dst.resolve():
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
        shutil.copyfile(local, tmp)
        os.replace(tmp, dst)

    def download_file(self, uri: str, local: Path) -> None:
        src = local_path(uri)
        if src.resolve() == Path(local).resolve():
            return
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, local)

    def delete_prefix(self, uri: str) -> None:
        p = local_path(uri)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()

    # Conditional writes: the create is atomic by link(2) (fails if the name exists, and the content is
    # complete when the name appears); compare-and-swap runs under an flock(2) of a sibling file.

    def create_if_absent(self, uri: str, data: bytes) -> str | None:
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._temp_with(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return None
        except OSError:  # a filesystem without hard links: O_EXCL (content written right after)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return None
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        finally:
            os.unlink(tmp)
        return _digest(data)

    def read_versioned(self, uri: str) -> tuple[bytes, str] | None:
        try:
            data = local_path(uri).read_bytes()
        except FileNotFoundError:
            return None
        return data, _digest(data)

    def replace_if_version(self, uri: str, data: bytes, version: str) -> str | None:
        path = local_path(uri)
        with _flock(path):
            cur = self.read_versioned(uri)
            if cur is None or cur[1] != version:
                return None
            os.replace(self._temp_with(path, data), path)
        return _digest(data)

    def delete_if_version(self, uri: str, version: str) -> bool:
        path = local_path(uri)
        with _flock(path):
            cur = self.read_versioned(uri)
            if cur is None or cur[1] != version:
                return False
            path.unlink()
        return True

    @staticmethod
    def _temp_with(path: Path, data: bytes) -> str:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    """An exclusive flock(2) on ``.<name>.flock`` beside path (serialises compare-and-swap)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.flock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


_BACKENDS: dict[str, Backend] = {}


def backend(uri: str) -> Backend:
    s = scheme(uri)
    if s not in _BACKENDS:
        if s == "file":
            _BACKENDS[s] = FileBackend()
        elif s == "s3":
            from job_runtime.io.s3 import S3Backend  # boto3 only when s3:// is used

            _BACKENDS[s] = S3Backend()
        else:
            raise StorageError(
                f"Storage URI {uri} has the unsupported scheme '{s}'. Use file:///abs/path or s3://bucket/prefix."
            )
    return _BACKENDS[s]


def reset_backends() -> None:
    """Forget cached backends (tests that change S3 endpoints or credentials)."""
    _BACKENDS.clear()


# --- module-level API -------------------------------------------------------------------------


def exists(uri: str) -> bool:
    return backend(uri).exists(uri)


def read_bytes(uri: str) -> bytes:
    return backend(uri).read_bytes(uri)


def write_bytes(uri: str, data: bytes) -> None:
    backend(uri).write_bytes(uri, data)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def write_json(uri: str, obj: Any) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_jsonl(uri: str) -> Iterator[dict[str, Any]]:
    """Rows of a JSON-lines object; a torn last line (a writer killed mid-line) is skipped."""
    for line in read_text(uri).splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue


def list_prefix(uri: str) -> list[str]:
    return backend(uri).list(uri)


def upload_file(local: str | Path, uri: str) -> None:
    backend(uri).upload_file(Path(local), uri)


def download_file(uri: str, local: str | Path) -> None:
    backend(uri).download_file(uri, Path(local))


def delete_prefix(uri: str) -> None:
    backend(uri).delete_prefix(uri)


def create_if_absent(uri: str, data: bytes) -> str | None:
    """Write uri only if no object has that name (atomically); its version, or None if one exists."""
    return backend(uri).create_if_absent(uri, data)


def read_versioned(uri: str) -> tuple[bytes, str] | None:
    """(content, version) of uri, or None when it does not exist."""
    return backend(uri).read_versioned(uri)


def replace_if_version(uri: str, data: bytes, version: str) -> str | None:
    """Overwrite uri only if it still holds ``version``; the new version, or None if it changed or vanished."""
    return backend(uri).replace_if_version(uri, data, version)


def delete_if_version(uri: str, version: str) -> bool:
    """Delete uri only if it still holds ``version``; False if it changed or vanished."""
    return backend(uri).delete_if_version(uri, version)


def upload_dir(local_dir: str | Path, uri: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Copy every file under local_dir to uri/<relative path>; returns the relative paths."""
    local_dir = Path(local_dir)
    rels = []
    for p in sorted(local_dir.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            rel = str(p.relative_to(local_dir))
            if rel in skip:
                continue
            upload_file(p, join(uri, rel))
            rels.append(rel)
    return rels


def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Copy every object under uri into local_dir; returns local_dir."""
    local_dir = Path(local_dir)
    for rel in list_prefix(uri):
        download_file(join(uri, rel), local_dir / rel)
    return local_dir


def materialize(uri: str, cache_dir: str | Path | None = None) -> Path:
    """A local directory holding the objects under uri (itself for file://, a download for s3://)."""
    if is_local(uri):
        return local_path(uri)
    cache = Path(cache_dir) if cache_dir else scratch.mkdtemp("download")
    return download_dir(uri, cache)


# --- manifests --------------------------------------------------------------------------------


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def build_manifest(local_dir: str | Path, rels: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    local_dir = Path(local_dir)
    if rels is None:
        rels = [
            str(p.relative_to(local_dir))
            for p in sorted(local_dir.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and str(p.relative_to(local_dir)) not in NOT_ARTIFACTS
        ]
    files = {r: {"size": (local_dir / r).stat().st_size, "sha256": sha256_file(local_dir / r)} for r in rels}
    return {"files": files, "created": time.time(), **extra}


def publish(local_dir: str | Path, uri: str, **extra: Any) -> dict[str, Any]:
    """Upload local_dir to uri (a no-op copy when they are the same place), then write _SUCCESS.

    _SUCCESS is written last, so a reader that sees it sees every file it lists. ``log.txt`` and a
    stale ``_FAILED`` are not artifacts (the log grows after the stage's last line) and are left out.
    """
    local_dir = Path(local_dir)
    rels = upload_dir(local_dir, uri, skip=NOT_ARTIFACTS)
    manifest = build_manifest(local_dir, rels, **extra)
    write_json(join(uri, SUCCESS), manifest)
    return manifest


def read_manifest(uri: str) -> dict[str, Any] | None:
    """The _SUCCESS manifest under uri, or None when the prefix is not complete."""
    m = join(uri, SUCCESS)
    if not exists(m):
        return None
    try:
        return read_json(m)
    except (StorageError, json.JSONDecodeError):
        return None


def manifest_problems(uri: str, manifest: dict[str, Any] | None = None, full: bool = False) -> list[str]:
    """How the files under uri differ from their _SUCCESS manifest; [] when they match.

    Sizes only by default (one stat per file locally, one listing on S3): cheap enough to run
    whenever a stage is treated as done. ``full=True`` also recomputes every sha256 (reads every
    byte; S3 objects are downloaded to a scratch folder one at a time).

    >>> import tempfile, pathlib; d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "a.txt").write_text("abc")
    >>> m = publish(d, "file://" + str(d)); _ = (d / "a.txt").write_text("ab")
    >>> manifest_problems("file://" + str(d))
    ['a.txt is 2 bytes, but its _SUCCESS manifest says 3']
    """
    manifest = read_manifest(uri) if manifest is None else manifest
    if manifest is None:
        return [f"it has no {SUCCESS} manifest"]
    files = manifest.get("files")
    if not isinstance(files, dict):
        return [f"its {SUCCESS} manifest lists no files"]
    if is_local(uri):
        root = local_path(uri)
        sizes = {}
        for rel in files:
            try:
                sizes[rel] = (root / rel).stat().st_size
            except OSError:
                pass
    else:
        sizes = backend(uri).sizes(uri)
    problems = []
    for rel, meta in sorted(files.items()):
        want = meta.get("size") if isinstance(meta, dict) else None
        if rel not in sizes:
            problems.append(f"{rel} is missing, but its {SUCCESS} manifest lists it")
        elif want is not None and sizes[rel] != want:
            problems.append(f"{rel} is {sizes[rel]} bytes, but its {SUCCESS} manifest says {want}")
        elif full and isinstance(meta, dict) and meta.get("sha256") and _sha256_of(join(uri, rel)) != meta["sha256"]:
            problems.append(f"{rel} has a different sha256 than its {SUCCESS} manifest records (same size: altered in place)")
    return problems


def _sha256_of(uri: str) -> str:
    if is_local(uri):
        return sha256_file(local_path(uri))
    tmp = scratch.mkdtemp("verify")
    try:
        download_file(uri, tmp / "object")
        return sha256_file(tmp / "object")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def incomplete_reason(uri: str) -> str | None:
    """None when uri is complete (manifest present, every listed file at its size), else why not."""
    problems = manifest_problems(uri)
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more


def is_complete(uri: str) -> bool:
    """uri has its _SUCCESS manifest and every file it lists has the recorded size."""
    return incomplete_reason(uri) is None


# --- failure records --------------------------------------------------------------------------


def write_failure(uri: str, **info: Any) -> None:
    """Record why the last attempt of the stage under uri failed (``_FAILED``; best effort).

    ``info`` holds e.g. ``error`` (one line), ``exit_code`` and ``log``; later writes add to
    earlier ones, so the runner can add the log path to what the stage itself recorded.
    """
    target = join(uri, FAILED)
    try:
        old = read_failure(uri) or {}
        write_json(target, {**old, **{k: v for k, v in info.items() if v is not None}, "time": time.time()})
    except (StorageError, OSError):
        pass  # storage itself is what failed: the log and the exit code still say it


def read_failure(uri: str) -> dict[str, Any] | None:
    """The ``_FAILED`` record under uri, or None."""
    target = join(uri, FAILED)
    try:
        if not exists(target):
            return None
        rec = read_json(target)
    except (StorageError, OSError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def clear_failure(uri: str) -> None:
    """Forget the last failure (a new attempt starts); best effort."""
    try:
        target = join(uri, FAILED)
        if exists(target):
            delete_prefix(target)
    except (StorageError, OSError):
        pass


# --- can it be written? -------------------------------------------------------------------------


def unwritable_reason(uri: str, folder: bool = True) -> str | None:
    """Why a local folder (or, with folder=False, a file) at uri could not be created or written,
    or None. Nothing is created. s3:// URIs are not checked here (None).

    >>> unwritable_reason("/proc/sftrl-test")
    '/proc/sftrl-test cannot be created, because /proc is not writable (No such file or directory)'
    """
    if not is_local(uri):
        return None
    path = local_path(normalize(uri))
    if not folder and path.is_dir():
        return f"{path} is a folder, because a folder of that name exists. Name a file"
    probe = path if folder else path.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"{path} cannot be created, because {probe} is a file"
    try:  # the real test (root passes os.access on a read-only file system): a temp file, removed at once
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".sftrl-write-check-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        where = "it" if probe == path else str(probe)
        return f"{path} cannot be {'written' if probe == path else 'created'}, because {where} is not writable ({e.strerror})"
    return None
