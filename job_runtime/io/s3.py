"""The s3:// backend of ``job_runtime.io.storage`` (AWS S3 and S3-compatible stores: MinIO, Ceph, ...).

``storage.backend("s3://...")`` builds one :class:`S3Backend` per process from the environment;
callers use the URI-level functions in ``job_runtime.io.storage`` and never see boto3. boto3 is
imported only here.

Settings and credentials: ``job_runtime.io.s3_settings`` (the ``SFTRL_S3_*`` variables, and where
credentials come from).

Errors: an endpoint that cannot be reached raises ``errors.StorageUnavailable`` (retryable); a
missing bucket, denied access, rejected credentials or a missing object raise
``errors.StorageError``. Messages are one line, name the bucket or URI and say what to do; no
botocore traceback is chained to them.
"""

from __future__ import annotations

import io
import random
import time
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

import boto3
import botocore.exceptions as bex
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from job_runtime.errors import StorageError, StorageUnavailable
from job_runtime.io.s3_settings import S3Settings, read_credentials_file

T = TypeVar("T")

# botocore / transfer errors meaning "the store could not be reached or did not answer in time"
_NETWORK_ERRORS = (
    bex.EndpointConnectionError,
    bex.ConnectTimeoutError,
    bex.ReadTimeoutError,
    bex.ConnectionClosedError,
    bex.ProxyConnectionError,
    bex.HTTPClientError,
    RetriesExceededError,
)
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_DENIED = {"403", "AccessDenied", "AllAccessDisabled", "Forbidden"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
_TRANSIENT = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown",
              "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed"}


# --- URIs --------------------------------------------------------------------------------------------


def split_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of an s3:// URI; the key has no leading or trailing slash.

    >>> split_uri("s3://bucket/runs/stages/abc/")
    ('bucket', 'runs/stages/abc')
    """
    p = urlparse(uri)
    if p.scheme != "s3" or not p.netloc:
        raise StorageError(f"{uri} is not an S3 URI, because it lacks s3://<bucket>/. Write s3://bucket/prefix.")
    return p.netloc, p.path.strip("/")


# --- the backend ----------------------------------------------------------------------------------------


class S3Backend:
    """The ``storage.Backend`` protocol on S3, configured from the environment.

    Construction checks that the endpoint answers (one quick request), so a wrong endpoint fails at
    start with ``StorageUnavailable`` instead of deep inside a stage.

    >>> be = S3Backend()                                    # doctest: +SKIP
    >>> be.write_bytes("s3://bucket/x/a.txt", b"hi")        # doctest: +SKIP
    >>> be.list("s3://bucket/x")                            # doctest: +SKIP
    ['a.txt']
    """

    list_page_size = 1000  # keys per ListObjectsV2 page (S3's maximum)
    delete_batch = 1000  # keys per DeleteObjects call (S3's maximum)

    def __init__(self, settings: S3Settings | None = None, *, check: bool = True) -> None:
        self.settings = s = settings or S3Settings.from_env()
        session_kwargs: dict[str, str] = {"region_name": s.region}
        if s.credentials_file:
            session_kwargs.update(read_credentials_file(s.credentials_file))
        self._session = boto3.session.Session(**session_kwargs)
        self.client = self._client(s.max_attempts, s.connect_timeout, s.read_timeout)
        self.endpoint = self.client.meta.endpoint_url
        self.transfer = TransferConfig(
            multipart_threshold=s.multipart_threshold,
            multipart_chunksize=s.multipart_chunksize,
            max_concurrency=s.concurrency,
            use_threads=s.concurrency > 1,
            preferred_transfer_client="classic",
        )
        self._checked_buckets: set[str] = set()
        if check:
            self.check_endpoint()

    def _client(self, attempts: int, connect_timeout: float, read_timeout: float) -> Any:
        s = self.settings
        config = Config(
            retries={"max_attempts": attempts, "mode": s.retry_mode},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            s3={"addressing_style": s.addressing_style},
            max_pool_connections=max(10, s.concurrency * 2),
        )
        return self._session.client("s3", endpoint_url=s.endpoint, config=config)

    # --- errors and retries -------------------------------------------------------------------

    def _where(self) -> str:
        if self.settings.endpoint_var:
            return f"Check {self.settings.endpoint_var}={self.settings.endpoint}"
        return "Check SFTRL_S3_ENDPOINT (unset means AWS)"

    def _translate(self, exc: BaseException, uri: str, action: str) -> StorageError:
        """A one-line StorageError (or StorageUnavailable) for a boto3/botocore exception."""
        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, BaseException):
            exc = exc.__context__
        bucket = urlparse(uri).netloc or uri
        if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError, bex.CredentialRetrievalError)):
            return StorageError(
                f"Cannot {action} {uri}, because no usable S3 credentials were found ({exc}). Set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, mount a Secret and set SFTRL_S3_CREDENTIALS_FILE, "
                "or use a pod identity (IRSA)."
            )
        if isinstance(exc, _NETWORK_ERRORS):
            return StorageUnavailable(
                f"S3 endpoint {self.endpoint} is unreachable (while trying to {action} {uri}), because "
                f"{_one_line(exc)}. {self._where()} and that the store is up and reachable from here."
            )
        if isinstance(exc, bex.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = _status(exc)
            detail = _one_line(exc)
            if code == "NoSuchBucket":
                return StorageError(
                    f"S3 bucket '{bucket}' does not exist (endpoint {self.endpoint}), so cannot {action} {uri}. "
                    "Create the bucket or fix the storage URI."
                )
            if code in _BAD_CREDENTIALS:
                return StorageError(
                    f"S3 rejected the credentials for bucket '{bucket}' ({code}), so cannot {action} {uri}. "
                    "Check the access key and secret (SFTRL_S3_CREDENTIALS_FILE or AWS_* variables)."
                )
            if code in _DENIED or status == "403":
                return StorageError(
                    f"Access to S3 bucket '{bucket}' is denied, so cannot {action} {uri}, because {detail}. "
                    "Grant these credentials s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on it."
                )
            if code in _NOT_FOUND or status == "404":
                return StorageError(f"{uri} does not exist. Check the path or run the stage that writes it.")
            if code in _TRANSIENT or status.startswith("5"):
                return StorageUnavailable(
                    f"S3 endpoint {self.endpoint} kept failing to {action} {uri}, because {detail}. "
                    "Retry later; if it persists check the store's health."
                )
            return StorageError(f"Cannot {action} {uri}, because S3 answered {code or status}: {detail}.")
        return StorageError(f"Cannot {action} {uri}, because {type(exc).__name__}: {_one_line(exc)}.")

    def _retry(self, action: str, uri: str, fn: Callable[[], T]) -> T:
        """fn() with whole-operation retries (exponential back-off with jitter) on unavailability.

        botocore already retries each request SFTRL_S3_MAX_ATTEMPTS times; this outer loop rides out
        longer outages (a restarting MinIO, a network blip) before giving up with StorageUnavailable.
        """
        attempts = self.settings.retries
        for attempt in range(attempts):
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - every failure is translated below
                err = self._translate(exc, uri, action)
            if not isinstance(err, StorageUnavailable) or attempt == attempts - 1:
                raise err
            delay = self.settings.backoff_s * (2**attempt)
            time.sleep(delay * (0.5 + random.random()))
        raise AssertionError("unreachable")  # pragma: no cover

    def check_endpoint(self) -> None:
        """One quick request: StorageUnavailable if nothing answers, StorageError for bad credentials."""
        probe = self._client(2, min(self.settings.connect_timeout, 5.0), min(self.settings.read_timeout, 15.0))
        try:
            probe.list_buckets()
        except bex.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _BAD_CREDENTIALS:
                raise StorageError(
                    f"S3 endpoint {self.endpoint} rejected the credentials ({code}). Check the access key and "
                    "secret (SFTRL_S3_CREDENTIALS_FILE or AWS_* variables)."
                ) from None
            # AccessDenied etc.: the endpoint answered; scoped credentials may not list buckets.
        except _NETWORK_ERRORS as exc:
            raise StorageUnavailable(
                f"S3 endpoint {self.endpoint} is unreachable, because {_one_line(exc)}. "
                f"{self._where()} and that the store is up and reachable from here."
            ) from None
        except (bex.NoCredentialsError, bex.PartialCredentialsError, bex.CredentialRetrievalError) as exc:
            raise self._translate(exc, f"s3:// (endpoint {self.endpoint})", "reach") from None
        except bex.BotoCoreError as exc:
            raise StorageUnavailable(
                f"S3 endpoint {self.endpoint} could not be used, because {_one_line(exc)}. {self._where()}."
            ) from None
        finally:
            probe.close()

    def _bucket(self, uri: str) -> tuple[str, str]:
        """(bucket, key); the first use of a bucket checks that it exists, so a typo fails loudly."""
        bucket, key = split_uri(uri)
        if bucket not in self._checked_buckets:

            def head() -> None:
                try:
                    self.client.head_bucket(Bucket=bucket)
                except bex.ClientError as exc:
                    status = _status(exc)
                    if status == "404":
                        raise StorageError(
                            f"S3 bucket '{bucket}' does not exist (endpoint {self.endpoint}), needed for {uri}. "
                            "Create the bucket or fix the storage URI."
                        ) from None
                    if status != "403":  # 403: object-scoped policies may forbid HeadBucket; objects will tell
                        raise

            self._retry("open", uri, head)
            self._checked_buckets.add(bucket)
        return bucket, key

    # --- the Backend protocol ---------------------------------------------------------------------

    def exists(self, uri: str) -> bool:
        bucket, key = self._bucket(uri)
        if not key:
            return True  # the bucket itself: _bucket() checked it

        def head() -> bool:
            try:
                self.client.head_object(Bucket=bucket, Key=key)
                return True
            except bex.ClientError as exc:
                if _status(exc) == "404":
                    return False
                raise

        return self._retry("check", uri, head)

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = self._bucket(uri)
        return self._retry("read", uri, lambda: self.client.get_object(Bucket=bucket, Key=key)["Body"].read())

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = self._bucket(uri)
        self._retry(
            "write",
            uri,
            lambda: self.client.upload_fileobj(io.BytesIO(data), bucket, key, Config=self.transfer),
        )

    def list(self, uri: str) -> list[str]:
        """Relative keys of every object under the prefix (as a directory: 'a/b' never matches 'a/bc')."""
        return sorted(
            rel for rel in self._keys(uri) if not rel.endswith("/") and not rel.rsplit("/", 1)[-1].startswith(".")
        )

    def sizes(self, uri: str) -> dict[str, int]:
        """Relative key -> size of every object under the prefix (one listing)."""
        return {rel: size for rel, (size, _) in self.etags(uri).items()}

    def head(self, uri: str) -> dict[str, Any] | None:
        """{size, etag} of the object named uri, or None when there is none."""
        bucket, key = self._bucket(uri)

        def head() -> dict[str, Any] | None:
            try:
                r = self.client.head_object(Bucket=bucket, Key=key)
            except bex.ClientError as exc:
                if _status(exc) == "404":
                    return None
                raise
            return {"size": int(r["ContentLength"]), "etag": str(r.get("ETag", "")).strip('"')}

        return self._retry("check", uri, head)

    def etags(self, uri: str) -> dict[str, tuple[int, str]]:
        """Relative key -> (size, ETag) of every object under the prefix (one listing)."""
        bucket, key = self._bucket(uri)
        prefix = f"{key}/" if key else ""

        def collect() -> dict[str, tuple[int, str]]:
            out: dict[str, tuple[int, str]] = {}
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": self.list_page_size}
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    out[obj["Key"][len(prefix) :]] = (int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))
            return {rel: v for rel, v in out.items() if rel and not rel.endswith("/")}

        return self._retry("list", uri, collect)

    def _keys(self, uri: str) -> list[str]:
        """Every key under uri/, relative, including dot-files and folder markers."""
        bucket, key = self._bucket(uri)
        prefix = f"{key}/" if key else ""

        def collect() -> list[str]:
            out: list[str] = []
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": self.list_page_size}
            )
            for page in pages:
                out.extend(obj["Key"][len(prefix) :] for obj in page.get("Contents", []))
            return [rel for rel in out if rel]

        return self._retry("list", uri, collect)

    def upload_file(self, local: Path, uri: str) -> None:
        bucket, key = self._bucket(uri)
        if not Path(local).is_file():
            raise StorageError(f"Cannot upload {local} to {uri}, because {local} is not a file.")
        self._retry("upload", uri, lambda: self.client.upload_file(str(local), bucket, key, Config=self.transfer))

    def download_file(self, uri: str, local: Path) -> None:
        """Download to local (s3transfer writes a temp file and renames it, so readers never see half)."""
        bucket, key = self._bucket(uri)
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        self._retry(
            "download", uri, lambda: self.client.download_file(bucket, key, str(local), Config=self.transfer)
        )

    def delete_prefix(self, uri: str) -> None:
        """Delete the object named uri and every object under uri/ (like rm -r)."""
        bucket, key = self._bucket(uri)
        keys = [f"{key}/{rel}" if key else rel for rel in self._keys(uri)]
        if key and self.exists(uri):
            keys.append(key)
        for i in range(0, len(keys), self.delete_batch):
            batch = [{"Key": k} for k in keys[i : i + self.delete_batch]]
            delete = {"Objects": batch, "Quiet": True}
            resp = self._retry("delete", uri, lambda: self.client.delete_objects(Bucket=bucket, Delete=delete))
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"Cannot delete {len(errors)} objects under {uri}, because S3 answered {first.get('Code')}: "
                    f"{first.get('Message')} (e.g. {first.get('Key')}). Check s3:DeleteObject on bucket '{bucket}'."
                )

    # --- conditional writes (leases): S3's If-None-Match / If-Match, the ETag as the version -------

    def create_if_absent(self, uri: str, data: bytes) -> str | None:
        bucket, key = self._bucket(uri)

        def put() -> str | None:
            try:
                return str(self.client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")["ETag"])
            except bex.ClientError as exc:
                if _condition_failed(exc):
                    return None
                raise self._unsupported(exc, uri, "If-None-Match") from None

        return self._retry("create", uri, put)

    def read_versioned(self, uri: str) -> tuple[bytes, str] | None:
        bucket, key = self._bucket(uri)

        def get() -> tuple[bytes, str] | None:
            try:
                resp = self.client.get_object(Bucket=bucket, Key=key)
            except bex.ClientError as exc:
                if _status(exc) == "404" or str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND:
                    return None
                raise
            return resp["Body"].read(), str(resp["ETag"])

        return self._retry("read", uri, get)

    def replace_if_version(self, uri: str, data: bytes, version: str) -> str | None:
        bucket, key = self._bucket(uri)

        def put() -> str | None:
            try:
                return str(self.client.put_object(Bucket=bucket, Key=key, Body=data, IfMatch=version)["ETag"])
            except bex.ClientError as exc:
                if _condition_failed(exc) or _status(exc) == "404":
                    return None
                raise self._unsupported(exc, uri, "If-Match") from None

        return self._retry("replace", uri, put)

    def delete_if_version(self, uri: str, version: str) -> bool:
        bucket, key = self._bucket(uri)

        def delete() -> bool:
            try:
                self.client.delete_object(Bucket=bucket, Key=key, IfMatch=version)
                return True
            except bex.ClientError as exc:
                if _condition_failed(exc) or _status(exc) == "404":
                    return False
                raise self._unsupported(exc, uri, "If-Match") from None

        return self._retry("delete", uri, delete)

    def _unsupported(self, exc: bex.ClientError, uri: str, header: str) -> BaseException:
        """A store that does not implement conditional writes says so once, clearly."""
        if _status(exc) in ("501", "400") and "NotImplemented" in str(exc.response.get("Error", {}).get("Code", "")):
            return StorageError(
                f"S3 endpoint {self.endpoint} does not support conditional writes ({header}), which stage leases "
                f"need to keep two writers out of {uri}. Use a store that supports them (AWS S3, MinIO, Ceph RGW), "
                "or set SFTRL_LEASES=off to run without leases (then never run two `sftrl run` of one experiment)."
            )
        return exc


def _condition_failed(exc: bex.ClientError) -> bool:
    """412 PreconditionFailed, or 409 ConditionalRequestConflict (a concurrent conditional write won)."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return _status(exc) == "412" or code in ("PreconditionFailed", "ConditionalRequestConflict")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()).rstrip(".") or type(exc).__name__


def _status(exc: bex.ClientError) -> str:
    return str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
