"""The s3:// backend's settings and credentials, read from the environment (no boto3 here).

Settings (all optional, read from the environment when the backend is built):

=============================  =====================================================  =========
variable                       meaning                                                default
=============================  =====================================================  =========
SFTRL_S3_ENDPOINT              endpoint of an S3-compatible store                     AWS
                               (falls back to AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL)
SFTRL_S3_REGION                region (falls back to AWS_REGION, AWS_DEFAULT_REGION)  us-east-1
SFTRL_S3_CREDENTIALS_FILE      a mounted secret holding the access key and secret     (chain)
SFTRL_S3_ADDRESSING_STYLE      path | virtual | auto                                  path with
                                                                                      an endpoint
SFTRL_S3_MULTIPART_MB          objects at least this large upload in parts            64
SFTRL_S3_CHUNK_MB              part size (S3 needs >= 5 MiB for all but the last)     64
SFTRL_S3_CONCURRENCY           parallel part transfers per file                       8
SFTRL_S3_MAX_ATTEMPTS          botocore attempts per request (retry mode below)       8
SFTRL_S3_RETRY_MODE            standard | adaptive (adaptive also rate-limits)        standard
SFTRL_S3_RETRIES               whole-operation attempts on top of botocore's          3
SFTRL_S3_BACKOFF_S             first back-off between whole-operation attempts        1.0
SFTRL_S3_CONNECT_TIMEOUT       seconds to open a connection                           10
SFTRL_S3_READ_TIMEOUT          seconds to wait for a response                         60
=============================  =====================================================  =========

Credentials come only from (1) ``SFTRL_S3_CREDENTIALS_FILE`` when set, else (2) boto3's standard
chain: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` and the shared config
files, web identity (IRSA, EKS Pod Identity), container and instance metadata. They are never
taken from the experiment file or a stage config, and never logged.

The credentials file may be a Kubernetes Secret mounted as a directory (one file per key), or a
single file in JSON, INI (``[default]`` as in ``~/.aws/credentials``) or ``KEY=VALUE`` form. Key
names are matched loosely: ``aws_access_key_id``, ``AWS_ACCESS_KEY_ID``, ``access-key-id`` and
``accessKeyId`` all name the access key (likewise the secret key and the session token).
"""

from __future__ import annotations

import configparser
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

from job_runtime.errors import StorageError

MiB = 1024 * 1024

# --- settings ------------------------------------------------------------------------------------


def _env_number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StorageError(f"{name}={raw!r} is not a number. Set it to a number >= {minimum} or unset it.") from None
    if value < minimum:
        raise StorageError(f"{name}={raw!r} is too small, because it must be >= {minimum}. Raise it or unset it.")
    return value


def _first_env(env: Mapping[str, str], *names: str) -> tuple[str | None, str | None]:
    """(value, variable name) of the first non-empty variable among names."""
    for n in names:
        v = env.get(n, "").strip()
        if v:
            return v, n
    return None, None


@dataclass(frozen=True)
class S3Settings:
    """Everything S3Backend reads from the environment (see the module docstring).

    >>> S3Settings.from_env({"SFTRL_S3_MULTIPART_MB": "8"}).multipart_threshold
    8388608
    """

    endpoint: str | None = None
    endpoint_var: str | None = None
    region: str = "us-east-1"
    credentials_file: str | None = None
    addressing_style: str = "auto"
    multipart_threshold: int = 64 * MiB
    multipart_chunksize: int = 64 * MiB
    concurrency: int = 8
    max_attempts: int = 8
    retry_mode: str = "standard"
    retries: int = 3
    backoff_s: float = 1.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "S3Settings":
        """Settings from env (default: os.environ); a bad value raises StorageError naming it."""
        env = os.environ if env is None else env
        endpoint, endpoint_var = _first_env(env, "SFTRL_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
        if endpoint and urlparse(endpoint).scheme not in ("http", "https"):
            raise StorageError(
                f"{endpoint_var}={endpoint!r} is not an http(s) URL. Set it like http://minio.storage:9000."
            )
        region, _ = _first_env(env, "SFTRL_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
        style = env.get("SFTRL_S3_ADDRESSING_STYLE", "").strip() or ("path" if endpoint else "auto")
        if style not in ("path", "virtual", "auto"):
            raise StorageError(f"SFTRL_S3_ADDRESSING_STYLE={style!r} is unknown. Use path, virtual or auto.")
        mode = env.get("SFTRL_S3_RETRY_MODE", "").strip() or "standard"
        if mode not in ("standard", "adaptive"):
            raise StorageError(f"SFTRL_S3_RETRY_MODE={mode!r} is unknown. Use standard or adaptive.")
        return cls(
            endpoint=endpoint.rstrip("/") if endpoint else None,
            endpoint_var=endpoint_var,
            region=region or "us-east-1",
            credentials_file=env.get("SFTRL_S3_CREDENTIALS_FILE", "").strip() or None,
            addressing_style=style,
            multipart_threshold=int(_env_number(env, "SFTRL_S3_MULTIPART_MB", 64, 0.001) * MiB),
            multipart_chunksize=int(_env_number(env, "SFTRL_S3_CHUNK_MB", 64, 5) * MiB),
            concurrency=int(_env_number(env, "SFTRL_S3_CONCURRENCY", 8, 1)),
            max_attempts=int(_env_number(env, "SFTRL_S3_MAX_ATTEMPTS", 8, 1)),
            retry_mode=mode,
            retries=int(_env_number(env, "SFTRL_S3_RETRIES", 3, 1)),
            backoff_s=_env_number(env, "SFTRL_S3_BACKOFF_S", 1.0, 0),
            connect_timeout=_env_number(env, "SFTRL_S3_CONNECT_TIMEOUT", 10, 0.1),
            read_timeout=_env_number(env, "SFTRL_S3_READ_TIMEOUT", 60, 0.1),
        )


# --- credentials from a mounted secret -------------------------------------------------------------

_KEY_ALIASES = {
    "accesskeyid": "aws_access_key_id",
    "accesskey": "aws_access_key_id",
    "secretaccesskey": "aws_secret_access_key",
    "secretkey": "aws_secret_access_key",
    "sessiontoken": "aws_session_token",
}


def _canonical_key(name: str) -> str | None:
    k = re.sub(r"[^a-z]", "", name.lower())
    k = k[3:] if k.startswith("aws") else k
    return _KEY_ALIASES.get(k)


def read_credentials_file(path: str) -> dict[str, str]:
    """Access key, secret and optional session token from a mounted secret (directory or file).

    Returns boto3 Session keyword arguments. Accepted forms: a directory with one file per key (a
    Kubernetes Secret volume), or a file in JSON, INI (``[default]`` section) or KEY=VALUE form.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "access-key-id").write_text("AK\\n"); _ = (d / "secret-access-key").write_text("SK")
    >>> sorted(read_credentials_file(str(d)).items())
    [('aws_access_key_id', 'AK'), ('aws_secret_access_key', 'SK')]
    """
    p = Path(path)
    raw: dict[str, str] = {}
    if p.is_dir():
        for f in sorted(p.iterdir()):
            if f.is_file() and not f.name.startswith("."):  # skip the ..data symlink farm of Secrets
                raw[f.name] = f.read_text().strip()
    elif p.is_file():
        text = p.read_text()
        stripped = text.strip()
        if stripped.startswith("{"):
            try:
                raw = {str(k): str(v) for k, v in json.loads(stripped).items()}
            except (json.JSONDecodeError, AttributeError):
                raise StorageError(
                    f"SFTRL_S3_CREDENTIALS_FILE={path} is not valid JSON. Write a JSON object with "
                    "aws_access_key_id and aws_secret_access_key."
                ) from None
        elif re.search(r"^\s*\[[^\]]+\]\s*$", text, re.MULTILINE):
            ini = configparser.ConfigParser()
            ini.read_string(text)
            section = "default" if ini.has_section("default") else ini.sections()[0]
            raw = dict(ini.items(section))
        else:
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#") and "=" in line:
                    k, v = line.removeprefix("export ").split("=", 1)
                    raw[k.strip()] = v.strip().strip("'\"")
    else:
        raise StorageError(
            f"SFTRL_S3_CREDENTIALS_FILE={path} does not exist, because the secret is not mounted there. "
            "Mount the Secret at that path or unset the variable to use the AWS credential chain."
        )
    creds: dict[str, str] = {}
    for k, v in raw.items():
        canonical = _canonical_key(k)
        if canonical and v:
            creds[canonical] = v
    missing = [k for k in ("aws_access_key_id", "aws_secret_access_key") if k not in creds]
    if missing:
        found = ", ".join(sorted(raw)) or "nothing"
        raise StorageError(
            f"SFTRL_S3_CREDENTIALS_FILE={path} lacks {' and '.join(missing)}, because it holds only: {found}. "
            "Add the keys (e.g. aws_access_key_id / aws_secret_access_key) to the secret."
        )
    return creds
