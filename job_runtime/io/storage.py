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

SUCCESS = "_SUCCESS"


class Backend(Protocol):
    def exists(self, uri: str) -> bool: ...
    def read_bytes(self, uri: str) -> bytes: ...
    def write_bytes(self, uri: str, data: bytes) -> None: ...
    def list(self, uri: str) -> list[str]: ...  # relative keys of every object under a prefix
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
    cache = Path(cache_dir or tempfile.mkdtemp(prefix="sftrl-"))
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
            if p.is_file() and not p.name.startswith(".") and p.name != SUCCESS
        ]
    files = {r: {"size": (local_dir / r).stat().st_size, "sha256": sha256_file(local_dir / r)} for r in rels}
    return {"files": files, "created": time.time(), **extra}


def publish(local_dir: str | Path, uri: str, **extra: Any) -> dict[str, Any]:
    """Upload local_dir to uri (a no-op copy when they are the same place), then write _SUCCESS.

    _SUCCESS is written last, so a reader that sees it sees every file it lists.
    """
    local_dir = Path(local_dir)
    rels = upload_dir(local_dir, uri, skip=(SUCCESS,))
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


def is_complete(uri: str) -> bool:
    return read_manifest(uri) is not None
