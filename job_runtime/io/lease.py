"""Stage leases: at most one live writer per stage output, on file:// and s3:// alike.

A lease is one small JSON object, ``<stage output>/.lease`` (a dot-file: never listed, never in a
manifest), naming its holder: an owner token, the host, a machine id (boot id + pid namespace), the
pid and that process's start time, and an expiry that the holder pushes forward while it runs
(``renew``, every ``ttl / 3`` seconds, from a background thread: :class:`Keeper`).

Taking a lease is a conditional create, so of two writers racing for one stage exactly one wins:
``link(2)`` on file:// (fails if the name exists), ``PUT`` with ``If-None-Match: *`` on s3://.
Renewing, taking over a dead holder's lease and releasing are compare-and-swap on the version the
taker read (an ``flock(2)``-guarded compare on file://, ``If-Match: <ETag>`` on s3://), so a lease
that changed hands is never overwritten by its former holder.

When is a holder dead? On the same machine (same host name, boot id and pid namespace) when its pid
is gone *or now names another process* (a pid reused after a reboot or a container restart has
another start time): no waiting. Elsewhere when its expiry has passed (plus a little skew).

Who holds it: ``python -m job_runtime`` (the stage itself, global rank 0) for as long as the stage
runs, so a stage orphaned by a killed ``sftrl run`` keeps its lease and a rerun waits for it instead
of starting a second writer. The local executor takes the lease *before* launching (so two
``sftrl run`` of one experiment never both launch a stage) and hands it to its child through
``SFTRL_LEASE_TOKEN``; the child ``adopt``s it, writing its own pid. A stage started without a token
(a Kubernetes pod, a stage run by hand) takes the lease itself, waiting while a live holder has it.
A holder that cannot renew (the lease was taken over after it stalled past its expiry, or storage
stayed unreachable until the expiry) stops its process at once: it can no longer prove it is the
only writer.

Settings: ``SFTRL_LEASE_TTL`` (seconds, default 60), ``SFTRL_LEASES=off`` (no leases; for stores
without conditional writes). This module imports neither torch nor transformers.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterator

from job_runtime.io import storage

log = logging.getLogger("sftrl.lease")

LEASE = ".lease"
ENV_TOKEN = "SFTRL_LEASE_TOKEN"  # a lease taken for this process by its launcher (adopt it)
ENV_TTL = "SFTRL_LEASE_TTL"
ENV_SWITCH = "SFTRL_LEASES"  # "off": no leases
DEFAULT_TTL = 60.0
SKEW_S = 5.0  # clock skew allowed between hosts when judging a remote holder's expiry


class LeaseHeld(Exception):
    """A live holder has the lease."""

    def __init__(self, holder: Holder, why: str):
        self.holder, self.why = holder, why
        super().__init__(f"the lease of {holder.uri} is held by {why}")


class LeaseLost(Exception):
    """The lease is no longer ours (taken over, released by someone else, or unrenewable)."""


def enabled(env: dict[str, str] | None = None) -> bool:
    return (env if env is not None else os.environ).get(ENV_SWITCH, "").strip().lower() not in ("off", "0", "false")


def ttl_from_env(env: dict[str, str] | None = None) -> float:
    raw = (env if env is not None else os.environ).get(ENV_TTL, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_TTL
    except ValueError:
        raise storage.StorageError(f"{ENV_TTL}={raw!r} is not a number. Set it to seconds (e.g. 60) or unset it.") \
            from None
    if value < 1:
        raise storage.StorageError(f"{ENV_TTL}={raw!r} is too small, because renewals need time. Use >= 1.")
    return value


# --- who is this process ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def machine_id() -> str:
    """Boot id + pid namespace: processes with equal machine ids can check each other's pids."""
    parts = []
    for path in ("/proc/sys/kernel/random/boot_id",):
        try:
            parts.append(open(path).read().strip())
        except OSError:
            parts.append("?")
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        parts.append("?")
    return "/".join(parts)


def process_start(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (/proc/<pid>/stat field 22), or None if gone.

    >>> process_start(os.getpid()) == process_start(os.getpid()) is not None
    True
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    # the command name (field 2) may hold spaces and ')': the fields after the last ')' are plain
    rest = stat[stat.rfind(")") + 2:].split()
    try:
        return int(rest[19])  # field 22 overall; rest starts at field 3
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Holder:
    """What ``.lease`` says about its holder."""

    uri: str
    token: str
    host: str
    machine: str
    pid: int
    pid_start: int | None
    note: str
    acquired_at: float
    renewed_at: float
    expires_at: float
    ttl: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        d = asdict(self)
        d.pop("uri")
        return (json.dumps(d, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, uri: str, data: bytes) -> Holder | None:
        try:
            d = json.loads(data.decode())
            return cls(uri=uri, token=str(d["token"]), host=str(d["host"]), machine=str(d["machine"]),
                       pid=int(d["pid"]), pid_start=None if d.get("pid_start") is None else int(d["pid_start"]),
                       note=str(d.get("note", "")), acquired_at=float(d["acquired_at"]),
                       renewed_at=float(d["renewed_at"]), expires_at=float(d["expires_at"]),
                       ttl=float(d.get("ttl", DEFAULT_TTL)), extra=dict(d.get("extra") or {}))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def local(self) -> bool:
        """Whether this process can check the holder's pid (same host, boot and pid namespace)."""
        return self.host == socket.gethostname() and self.machine == machine_id()

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        what = f" ({self.note})" if self.note else ""
        return (f"pid {self.pid} on host {self.host}{what}, lease renewed {max(0.0, now - self.renewed_at):.0f}s ago, "
                f"expires in {self.expires_at - now:.0f}s")


def alive(h: Holder, now: float | None = None) -> tuple[bool, str]:
    """(whether the holder may still be writing, why), from more than a pid.

    Same machine: the pid must exist with the start time recorded in the lease (a reused pid names
    another process: dead). Another machine: the expiry decides (plus SKEW_S).
    """
    now = time.time() if now is None else now
    if h.local():
        start = process_start(h.pid)
        if start is None:
            return False, f"pid {h.pid} on this host has exited"
        if h.pid_start is not None and start != h.pid_start:
            return False, f"pid {h.pid} on this host is now another process (its start time differs)"
        return True, h.describe(now)
    if now > h.expires_at + SKEW_S:
        return False, f"the lease of pid {h.pid} on host {h.host} expired {now - h.expires_at:.0f}s ago"
    return True, h.describe(now)


def lease_uri(output: str) -> str:
    """``<output>/.lease``.

    >>> lease_uri("s3://b/stages/sft-0123")
    's3://b/stages/sft-0123/.lease'
    """
    return storage.join(output, LEASE)


def read(output: str) -> tuple[Holder | None, str] | None:
    """(holder, version) of a stage's lease; holder None when unreadable; None when there is none."""
    uri = lease_uri(output)
    got = storage.read_versioned(uri)
    if got is None:
        return None
    return Holder.from_bytes(uri, got[0]), got[1]


def _holder(output: str, token: str, ttl: float, pid: int | None, note: str, acquired_at: float | None = None,
            extra: dict[str, Any] | None = None) -> Holder:
    pid = os.getpid() if pid is None else pid
    now = time.time()
    return Holder(uri=lease_uri(output), token=token, host=socket.gethostname(), machine=machine_id(), pid=pid,
                  pid_start=process_start(pid), note=note, acquired_at=now if acquired_at is None else acquired_at,
                  renewed_at=now, expires_at=now + ttl, ttl=ttl, extra=dict(extra or {}))


@dataclass
class Lease:
    """A lease this process holds (``version`` is what it last wrote)."""

    output: str
    holder: Holder
    version: str

    @property
    def token(self) -> str:
        return self.holder.token

    def renew(self) -> None:
        """Push the expiry forward; raises LeaseLost when the lease is no longer ours."""
        h = self.holder
        new = _holder(self.output, h.token, h.ttl, h.pid, h.note, h.acquired_at, h.extra)
        version = storage.replace_if_version(lease_uri(self.output), new.to_bytes(), self.version)
        if version is None:
            raise LeaseLost(f"the lease of {lease_uri(self.output)} was taken over or removed")
        self.holder, self.version = new, version

    def release(self) -> bool:
        """Remove the lease if it is still ours (never someone else's)."""
        return storage.delete_if_version(lease_uri(self.output), self.version)


def acquire(output: str, ttl: float | None = None, pid: int | None = None, note: str = "",
            token: str | None = None, extra: dict[str, Any] | None = None) -> Lease:
    """Take the stage's lease: create it, or take over a dead holder's. Raises LeaseHeld."""
    ttl = ttl_from_env() if ttl is None else ttl
    token = token or uuid.uuid4().hex
    uri = lease_uri(output)
    last: tuple[Holder, str] | None = None
    for _ in range(8):
        mine = _holder(output, token, ttl, pid, note, extra=extra)
        version = storage.create_if_absent(uri, mine.to_bytes())
        if version is not None:
            return Lease(output, mine, version)
        cur = read(output)
        if cur is None:
            continue  # released between our create and read: try again
        holder, version = cur
        if holder is not None and holder.token == token:  # our own create, answered ambiguously
            return Lease(output, holder, version)
        ok, why = alive(holder) if holder is not None else (False, "an unreadable lease")
        if ok:
            raise LeaseHeld(holder, why)  # type: ignore[arg-type]
        new = storage.replace_if_version(uri, mine.to_bytes(), version)
        if new is not None:
            log.warning("took over the lease of %s, because %s", output, why)
            return Lease(output, mine, new)
        if holder is not None:
            last = (holder, why)
    if last is not None:
        raise LeaseHeld(last[0], f"{last[1]} (and others were taking it over)")
    raise storage.StorageUnavailable(f"cannot take the lease {uri}, because it kept changing. Retry.")


def adopt(output: str, token: str, pid: int | None = None, note: str | None = None) -> Lease:
    """Take over a lease acquired for this process by its launcher (same token): write our pid."""
    cur = read(output)
    if cur is None or cur[0] is None or cur[0].token != token:
        holder = cur[0] if cur else None
        raise LeaseLost(f"the lease of {output} handed to this process is gone"
                        + (f": now held by {holder.describe()}" if holder else ""))
    old, version = cur
    mine = _holder(output, token, old.ttl, pid, old.note if note is None else note, old.acquired_at, old.extra)
    new = storage.replace_if_version(lease_uri(output), mine.to_bytes(), version)
    if new is None:
        raise LeaseLost(f"the lease of {output} changed hands while this process was adopting it")
    return Lease(output, mine, new)


def release_token(output: str, token: str) -> bool:
    """Remove the lease if it still carries ``token`` (a launcher cleaning up after a killed child)."""
    cur = read(output)
    if cur is None or cur[0] is None or cur[0].token != token:
        return False
    return storage.delete_if_version(lease_uri(output), cur[1])


def _stop_process(reason: str) -> None:
    from job_runtime.contract import EXIT_LEASE

    log.error("stopping this stage at once, because %s: another writer may own its output now", reason)
    logging.shutdown()
    os._exit(EXIT_LEASE)


class Keeper:
    """Renews a lease every ``ttl / 3`` seconds in a daemon thread.

    When renewal proves the lease lost, or storage stays unreachable until the expiry is near,
    ``on_lost(reason)`` runs (default: exit the process at once with EXIT_LEASE).
    """

    def __init__(self, lease: Lease, on_lost: Callable[[str], None] = _stop_process, retry_s: float = 1.0):
        self.lease, self.on_lost, self.retry_s = lease, on_lost, retry_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sftrl-lease", daemon=True)

    def __enter__(self) -> Keeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        period = self.lease.holder.ttl / 3.0
        wait = period
        while not self._stop.wait(wait):
            try:
                self.lease.renew()
                wait = period
            except LeaseLost as e:
                if not self._stop.is_set():
                    self.on_lost(str(e))
                return
            except storage.StorageError as e:
                left = self.lease.holder.expires_at - time.time()
                if left < period / 2:
                    if not self._stop.is_set():
                        self.on_lost(f"the lease could not be renewed before it expires ({e})")
                    return
                log.warning("cannot renew the lease of %s yet (%s); retrying", self.lease.output, e)
                wait = min(self.retry_s, max(left / 4, 0.1))


def _global_rank_zero(env: dict[str, str] | None = None) -> bool:
    env = env if env is not None else dict(os.environ)
    return env.get("RANK", "0").strip() in ("", "0")


@contextmanager
def hold(output: str, note: str = "", wait_log_s: float = 30.0, poll_s: float | None = None) -> Iterator[Lease | None]:
    """Hold the stage's lease for the duration of the block (global rank 0 only; None when off).

    With ``SFTRL_LEASE_TOKEN`` set (a launcher took the lease for us) the lease is adopted, or
    LeaseLost is raised when it is no longer there to adopt. Without it the lease is taken here,
    waiting (and saying every ``wait_log_s`` seconds what for) while a live holder has it.
    """
    if not enabled() or not _global_rank_zero():
        yield None
        return
    token = os.environ.pop(ENV_TOKEN, "").strip()
    if token:
        lease = adopt(output, token, note=note or None)
    else:
        ttl = ttl_from_env()
        poll = poll_s if poll_s is not None else min(5.0, ttl / 4)
        said = 0.0
        while True:
            try:
                lease = acquire(output, ttl, note=note)
                break
            except LeaseHeld as e:
                if time.monotonic() - said >= wait_log_s:
                    log.warning("waiting for the lease of %s: held by %s", output, e.why)
                    said = time.monotonic()
                time.sleep(poll)
    log.info("holding the lease of %s as pid %d on host %s", output, os.getpid(), lease.holder.host)
    keeper = Keeper(lease)
    keeper._thread.start()
    try:
        yield lease
    finally:
        keeper.stop()
        try:
            lease.release()
        except storage.StorageError as e:  # it expires on its own
            log.warning("could not release the lease of %s: %s", output, e)
