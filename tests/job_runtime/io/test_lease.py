"""Stage leases (job_runtime/io/lease.py) on file:// and on a real moto S3 server (127.0.0.1):
exactly one winner of a race, liveness from more than a pid, compare-and-swap renewal and release."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time

import pytest

from job_runtime.io import lease, storage
from tests.conftest import ROOT


@pytest.fixture(params=["file", "s3"])
def output(request, tmp_path) -> str:
    if request.param == "file":
        return storage.normalize(tmp_path / "stages" / "sft-0123456789ab")
    return f"{request.getfixturevalue('s3_bucket')}/stages/sft-0123456789ab"


def _write(output: str, **over) -> None:
    """A lease object as another holder left it (written without the lease API)."""
    now = time.time()
    d = {"token": "someone-else", "host": socket.gethostname(), "machine": lease.machine_id(), "pid": os.getpid(),
         "pid_start": lease.process_start(os.getpid()), "note": "x", "acquired_at": now, "renewed_at": now,
         "expires_at": now + 3600, "ttl": 60.0}
    d.update(over)
    storage.write_bytes(lease.lease_uri(output), json.dumps(d).encode())


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_conditional_write_primitives(output):
    uri = storage.join(output, "obj")
    v1 = storage.create_if_absent(uri, b"one")
    assert v1 and storage.create_if_absent(uri, b"two") is None
    assert storage.read_versioned(uri) == (b"one", v1)
    v2 = storage.replace_if_version(uri, b"three", v1)
    assert v2 and v2 != v1
    assert storage.replace_if_version(uri, b"stale", v1) is None  # a stale version never overwrites
    assert storage.delete_if_version(uri, v1) is False
    assert storage.read_versioned(uri) == (b"three", v2)
    assert storage.delete_if_version(uri, v2) is True
    assert storage.read_versioned(uri) is None and storage.replace_if_version(uri, b"x", v2) is None


def test_acquire_renew_release(output):
    a = lease.acquire(output, ttl=30, note="stage x")
    h, version = lease.read(output)
    assert h.token == a.token and h.pid == os.getpid() and h.pid_start == lease.process_start(os.getpid())
    assert version == a.version and h.expires_at == pytest.approx(time.time() + 30, abs=5)
    with pytest.raises(lease.LeaseHeld, match=f"pid {os.getpid()} on host"):
        lease.acquire(output, ttl=30)  # a live holder on this machine: our own pid
    before = a.holder.expires_at
    time.sleep(0.05)
    a.renew()
    assert a.holder.expires_at > before and lease.read(output)[1] == a.version
    assert not storage.list_prefix(output)  # a dot-file: never listed, never in a manifest
    assert a.release() and lease.read(output) is None


def test_a_dead_or_reused_pid_is_not_a_live_holder(output):
    _write(output, pid=_dead_pid())
    ok, why = lease.alive(lease.read(output)[0])
    assert not ok and "has exited" in why
    took = lease.acquire(output, ttl=30)  # no waiting for the expiry an hour away
    assert lease.read(output)[0].token == took.token
    took.release()
    # the pid exists (it is this very process) but the lease was written by another process that had it
    _write(output, pid=os.getpid(), pid_start=(lease.process_start(os.getpid()) or 0) + 12345)
    ok, why = lease.alive(lease.read(output)[0])
    assert not ok and "now another process" in why
    assert lease.acquire(output, ttl=30).token != "someone-else"


def test_remote_holders_are_judged_by_their_expiry(output):
    _write(output, host="another-host", pid=1, pid_start=1)
    with pytest.raises(lease.LeaseHeld, match="another-host"):
        lease.acquire(output, ttl=30)
    _write(output, host="another-host", pid=1, pid_start=1, expires_at=time.time() - lease.SKEW_S - 1)
    assert lease.acquire(output, ttl=30).holder.host == socket.gethostname()
    # a holder in another pid namespace (a container) with our host name: its pid means nothing here
    _write(output, machine="other-boot/pid:[1]", pid=_dead_pid())
    with pytest.raises(lease.LeaseHeld):
        lease.acquire(output, ttl=30)


def test_renewal_and_release_never_touch_a_lease_that_changed_hands(output):
    mine = lease.acquire(output, ttl=30)
    _write(output, host="another-host", token="thief")  # taken over (e.g. after we stalled past expiry)
    with pytest.raises(lease.LeaseLost):
        mine.renew()
    assert mine.release() is False and lease.read(output)[0].token == "thief"
    assert lease.release_token(output, "not-the-token") is False
    assert lease.release_token(output, "thief") is True and lease.read(output) is None


def test_adopt_hands_the_lease_to_the_child(output):
    parent = lease.acquire(output, ttl=30, pid=os.getppid(), note="launching")
    child = lease.adopt(output, parent.token)
    h = lease.read(output)[0]
    assert h.pid == os.getpid() and h.token == parent.token and h.note == "launching"
    with pytest.raises(lease.LeaseLost):
        lease.adopt(output, "wrong-token")
    child.release()
    with pytest.raises(lease.LeaseLost, match="gone"):
        lease.adopt(output, parent.token)


def test_an_ambiguous_create_of_our_own_lease_is_ours(output):
    token = "t-ambiguous"
    _write(output, token=token, host="another-host")  # our create landed, its answer was lost
    assert lease.acquire(output, ttl=30, token=token).token == token


def test_keeper_renews_and_stops_the_holder_that_lost(output):
    mine = lease.acquire(output, ttl=3)
    lost: list[str] = []
    with lease.Keeper(mine, on_lost=lost.append):
        first = mine.holder.expires_at
        deadline = time.time() + 10
        while mine.holder.expires_at == first and time.time() < deadline:
            time.sleep(0.1)
        assert mine.holder.expires_at > first and lease.read(output)[1] == mine.version
        _write(output, token="thief", host="another-host")
        deadline = time.time() + 10
        while not lost and time.time() < deadline:
            time.sleep(0.1)
    assert lost and "taken over" in lost[0]


def _race(output: str, n: int, barrier_path: str, q) -> None:
    while not os.path.exists(barrier_path):  # start together
        time.sleep(0.001)
    try:
        got = lease.acquire(output, ttl=30)
        q.put(("won", got.token))
        time.sleep(1.0)  # stay alive: the winner is a live holder while the others decide
    except lease.LeaseHeld:
        q.put(("lost", None))


@pytest.mark.parametrize("rounds", [5])
def test_of_racing_processes_exactly_one_wins(output, tmp_path, rounds):
    ctx = mp.get_context("fork")
    for r in range(rounds):
        out = storage.join(output, f"race-{r}")
        barrier = tmp_path / f"go-{r}"
        q = ctx.Queue()
        procs = [ctx.Process(target=_race, args=(out, 6, str(barrier), q)) for _ in range(6)]
        for p in procs:
            p.start()
        time.sleep(0.3)
        barrier.write_text("go")
        results = [q.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        winners = [t for what, t in results if what == "won"]
        assert len(winners) == 1, results
        assert lease.read(out)[0].token == winners[0]


def test_hold_waits_for_a_live_holder_and_says_so(output, caplog, monkeypatch):
    monkeypatch.delenv(lease.ENV_TOKEN, raising=False)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write(output, pid=other.pid, pid_start=lease.process_start(other.pid), token="other")
        import threading

        got: list = []

        def run():
            with lease.hold(output, note="stage", wait_log_s=0.0, poll_s=0.1) as held:
                got.append(held.token)

        with caplog.at_level("WARNING", logger="sftrl.lease"):
            t = threading.Thread(target=run)
            t.start()
            time.sleep(1.0)
            assert not got and f"held by pid {other.pid}" in caplog.text  # waiting, and saying for what
            other.kill()
            other.wait()
            t.join(timeout=30)
        assert got and got[0] != "other"
        assert lease.read(output) is None  # released at the end of the block
    finally:
        other.kill()


def test_leases_off_and_non_zero_ranks_hold_nothing(output, monkeypatch):
    monkeypatch.setenv(lease.ENV_SWITCH, "off")
    with lease.hold(output) as held:
        assert held is None
    monkeypatch.delenv(lease.ENV_SWITCH)
    monkeypatch.setenv("RANK", "1")
    with lease.hold(output) as held:
        assert held is None and lease.read(output) is None
    monkeypatch.setenv(lease.ENV_TTL, "soon")
    with pytest.raises(storage.StorageError, match="SFTRL_LEASE_TTL"):
        lease.ttl_from_env()


def test_doctests():
    import doctest

    assert doctest.testmod(lease).failed == 0
