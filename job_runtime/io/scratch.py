"""Scratch folders in the system temp folder: removed on exit, swept when their owner is gone.

A stage trains in a scratch folder (``sftrl-sft-...``, ``sftrl-rl-...``) and publishes from it. A
``finally`` removes it on a normal exit and on Ctrl-C; :func:`install` turns SIGTERM (what
``sftrl run`` and Kubernetes send) into the same clean exit; nothing runs after SIGKILL, so
:func:`sweep` removes, at the next start, every scratch folder whose owning process is gone.

A folder's name says who owns it: ``sftrl-<tag>-<host>.<pid>-<random>``. Only folders of this
host whose process no longer exists are swept, so concurrent stages and other machines sharing
a temp folder are left alone. Standard library only (the controller imports it).

>>> import os, tempfile
>>> d = mkdtemp("doc", base=tempfile.mkdtemp())
>>> owner(d.name) == (HOST, os.getpid()), d.name.startswith("sftrl-doc-")
(True, True)
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path

PREFIX = "sftrl-"
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_NAME = re.compile(rf"^{PREFIX}.*-([0-9a-f]{{8}})\.(\d+)-[^-]+$")


def mkdtemp(tag: str, base: str | os.PathLike[str] | None = None) -> Path:
    """A new private folder ``<temp>/sftrl-<tag>-<host>.<pid>-<random>``; the caller removes it."""
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{tag}-{HOST}.{os.getpid()}-", dir=base))


def owner(name: str) -> tuple[str, int] | None:
    """(host, pid) encoded in a scratch folder's name, or None for other names."""
    m = _NAME.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep(base: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove this host's scratch folders whose process is gone; returns what was removed."""
    root = Path(base or tempfile.gettempdir())
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    for p in entries:
        who = owner(p.name)
        if who is None or who[0] != HOST or who[1] == os.getpid() or _alive(who[1]):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
                removed.append(p)
        except OSError:
            pass  # another user's folder, or already gone
    return removed


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: scratch folders are removed


def install() -> None:
    """SIGTERM exits through ``finally`` blocks (as Ctrl-C does) instead of dying on the spot.

    Exit status 143 keeps the training operator's and the local runner's "retry 128-255" rule.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
