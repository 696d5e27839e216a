"""Fixtures for job_runtime tests: a real moto S3 server on 127.0.0.1.

- ``moto_server()``: context manager that starts ``python -m moto.server`` on a free loopback port
  and yields its endpoint URL (use it directly for fault tests that stop or restart the store).
- ``s3_server`` (fixture): the endpoint of a session-wide moto server, with the environment set so
  ``job_runtime.io.storage`` talks to it (SFTRL_S3_ENDPOINT, test credentials, no user AWS config).
- ``s3_bucket`` (fixture): a fresh, empty bucket on that server, as ``s3://<name>``.

moto is a Python package (``moto[server]``): without it these fixtures skip, or fail when CI=true.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import contextmanager
from typing import Iterator

import pytest

from tests.conftest import missing

# Variables that could point the tests at a real account or store: cleared for every S3 test.
_AWS_VARS = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "SFTRL_S3_CREDENTIALS_FILE", "SFTRL_S3_REGION",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_server(extra_env: dict[str, str] | None = None, startup_timeout: float = 60.0) -> Iterator[str]:
    """Run moto's server mode on 127.0.0.1:<free port>; yields 'http://127.0.0.1:<port>'.

    extra_env goes to the server process, e.g. {"INITIAL_NO_AUTH_ACTION_COUNT": "5"} to enforce IAM
    after five unauthenticated setup calls.
    """
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        missing(f"moto[server] is not installed ({exc}); pip install 'moto[server]'")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | (extra_env or {})
    log = tempfile.TemporaryFile()  # a file, not a pipe: an unread pipe fills up and stalls the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                err = log.read().decode(errors="replace")[-2000:]
                pytest.fail(f"moto server exited with code {proc.returncode} at start: {err}")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"moto server did not answer on {endpoint} within {startup_timeout:.0f}s")
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def _moto_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


def reset_s3_backend() -> None:
    """Forget the cached S3Backend, so the next s3:// call reads the environment again."""
    from job_runtime.io import storage

    storage._BACKENDS.pop("s3", None)


def point_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Point job_runtime.io.storage's S3 backend at endpoint with moto's test credentials."""
    for var in _AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SFTRL_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)  # ignore the developer's ~/.aws
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("SFTRL_S3_BACKOFF_S", "0.05")  # keep retry back-off short in tests
    reset_s3_backend()


@pytest.fixture
def s3_server(_moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Endpoint URL of a running moto server; storage's s3:// backend is configured to use it."""
    point_at(monkeypatch, _moto_endpoint)
    yield _moto_endpoint
    reset_s3_backend()


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A new empty bucket on the moto server, as 's3://<bucket>'."""
    import boto3

    name = f"sftrl-test-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    client.close()
    return f"s3://{name}"
