"""The s3:// backend against a real moto server (server mode, 127.0.0.1), through storage's URI API."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import pytest

from job_runtime.io import storage
from job_runtime.io.storage import StorageError, StorageUnavailable
from tests.job_runtime.conftest import free_port, moto_server, point_at, reset_s3_backend

import boto3  # the s3 extra (make venv installs it)
from job_runtime.io.s3_settings import S3Settings, read_credentials_file  # noqa: E402


def _client(endpoint: str, **creds: str):
    creds = creds or {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds)


def _assert_one_clean_line(err: BaseException) -> None:
    """A user-facing storage error: one line, no botocore traceback chained to it."""
    msg = str(err)
    assert "\n" not in msg and "Traceback" not in msg
    assert err.__cause__ is None
    assert err.__suppress_context__ or err.__context__ is None


# --- the storage API over s3:// ---------------------------------------------------------------


def test_bytes_text_json_roundtrip(s3_bucket: str) -> None:
    uri = storage.join(s3_bucket, "runs/stages/abc/results.json")
    assert not storage.exists(uri)
    storage.write_json(uri, {"accuracy": 0.5, "n": 3})
    assert storage.exists(uri)
    assert storage.read_json(uri) == {"accuracy": 0.5, "n": 3}
    storage.write_bytes(storage.join(s3_bucket, "bin"), bytes(range(256)))
    assert storage.read_bytes(storage.join(s3_bucket, "bin")) == bytes(range(256))
    jl = storage.join(s3_bucket, "metrics.jsonl")
    storage.write_text(jl, '{"step": 1}\n{"step": 2}\n{"step": 3, "lo')  # torn last line
    assert [r["step"] for r in storage.read_jsonl(jl)] == [1, 2]


def test_read_missing_object_names_the_uri(s3_bucket: str) -> None:
    uri = storage.join(s3_bucket, "nope/stage.json")
    with pytest.raises(StorageError, match="does not exist") as exc:
        storage.read_bytes(uri)
    assert uri in str(exc.value) and not isinstance(exc.value, StorageUnavailable)
    _assert_one_clean_line(exc.value)
    with pytest.raises(StorageError, match="does not exist"):
        storage.download_file(uri, Path("/tmp/never-written"))


def test_list_returns_relative_keys_of_a_directory_prefix(s3_bucket: str) -> None:
    for key in ("s/abc/a.txt", "s/abc/sub/b.txt", "s/abcdef/c.txt", "s/abc/.hidden", "top.txt"):
        storage.write_text(storage.join(s3_bucket, key), key)
    assert storage.list_prefix(storage.join(s3_bucket, "s/abc")) == ["a.txt", "sub/b.txt"]
    assert storage.list_prefix(storage.join(s3_bucket, "s/abc/")) == ["a.txt", "sub/b.txt"]
    assert storage.list_prefix(storage.join(s3_bucket, "s/missing")) == []
    assert "top.txt" in storage.list_prefix(s3_bucket)


def test_list_and_delete_page_through_many_keys(s3_bucket: str) -> None:
    be = storage.backend(s3_bucket)
    be.list_page_size, be.delete_batch = 7, 6  # S3 pages at 1000; small pages exercise the same loop
    calls: list[str] = []
    for op in ("ListObjectsV2", "DeleteObjects"):
        be.client.meta.events.register(f"before-call.s3.{op}", lambda model, **_: calls.append(model.name))
    for i in range(30):
        storage.write_bytes(storage.join(s3_bucket, f"many/{i:02d}"), b"")
    keys = storage.list_prefix(storage.join(s3_bucket, "many"))
    assert keys == [f"{i:02d}" for i in range(30)]
    assert calls.count("ListObjectsV2") == 5  # ceil(30 / 7) pages
    storage.delete_prefix(storage.join(s3_bucket, "many"))
    assert calls.count("DeleteObjects") == 5  # ceil(30 / 6) batches
    assert storage.list_prefix(storage.join(s3_bucket, "many")) == []


def test_multipart_upload_above_threshold(s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SFTRL_S3_MULTIPART_MB", "1")
    monkeypatch.setenv("SFTRL_S3_CHUNK_MB", "5")  # S3's minimum part size
    reset_s3_backend()
    big = tmp_path / "model.safetensors"
    data = os.urandom(11 * 1024 * 1024)  # 11 MiB -> parts of 5 + 5 + 1
    big.write_bytes(data)
    uri = storage.join(s3_bucket, "stages/x/model/model.safetensors")
    storage.upload_file(big, uri)
    small_uri = storage.join(s3_bucket, "stages/x/model/config.json")
    storage.write_bytes(small_uri, b"{}")

    bucket = s3_bucket.removeprefix("s3://")
    client = _client(os.environ["SFTRL_S3_ENDPOINT"])
    etag = client.head_object(Bucket=bucket, Key="stages/x/model/model.safetensors")["ETag"].strip('"')
    assert etag.endswith("-3"), f"expected a 3-part multipart ETag, got {etag}"
    assert "-" not in client.head_object(Bucket=bucket, Key="stages/x/model/config.json")["ETag"]
    # write_bytes goes through the same transfer config: a large payload is multipart too
    storage.write_bytes(storage.join(s3_bucket, "blob"), data[: 6 * 1024 * 1024])
    assert client.head_object(Bucket=bucket, Key="blob")["ETag"].strip('"').endswith("-2")

    out = tmp_path / "back" / "model.safetensors"
    storage.download_file(uri, out)
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert [p.name for p in out.parent.iterdir()] == ["model.safetensors"]  # no temp file left


def test_publish_manifest_and_dirs(s3_bucket: str, tmp_path: Path) -> None:
    local = tmp_path / "stage"
    (local / "model").mkdir(parents=True)
    (local / "model" / "config.json").write_text('{"a": 1}')
    (local / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (local / ".tmp-ignored").write_text("x")
    (local / storage.SUCCESS).write_text("stale local manifest")
    uri = storage.join(s3_bucket, "root/stages/abc123")

    assert not storage.is_complete(uri) and storage.read_manifest(uri) is None
    manifest = storage.publish(local, uri, stage="abc123")
    assert storage.is_complete(uri)
    read = storage.read_manifest(uri)
    assert read == json.loads(json.dumps(manifest)) and read["stage"] == "abc123"
    assert sorted(read["files"]) == ["metrics.jsonl", "model/config.json"]
    cfg = read["files"]["model/config.json"]
    assert cfg == {"size": 8, "sha256": hashlib.sha256(b'{"a": 1}').hexdigest()}
    assert storage.list_prefix(uri) == [storage.SUCCESS, "metrics.jsonl", "model/config.json"]

    back = storage.download_dir(uri, tmp_path / "back")
    assert (back / "model" / "config.json").read_text() == '{"a": 1}'
    assert json.loads((back / storage.SUCCESS).read_text())["files"] == read["files"]
    mat = storage.materialize(storage.join(uri, "model"), tmp_path / "cache")
    assert (mat / "config.json").read_text() == '{"a": 1}'

    storage.write_text(storage.join(s3_bucket, "root/stages/torn/_SUCCESS"), '{"files": ')
    assert not storage.is_complete(storage.join(s3_bucket, "root/stages/torn"))


def test_delete_prefix_is_rm_r_and_spares_siblings(s3_bucket: str) -> None:
    for key in ("d/abc/a", "d/abc/sub/b", "d/abc/.dot", "d/abcdef/keep", "d/file.txt"):
        storage.write_text(storage.join(s3_bucket, key), "x")
    storage.delete_prefix(storage.join(s3_bucket, "d/abc"))
    assert storage.list_prefix(storage.join(s3_bucket, "d/abc")) == []
    assert not storage.exists(storage.join(s3_bucket, "d/abc/.dot"))
    assert storage.list_prefix(storage.join(s3_bucket, "d")) == ["abcdef/keep", "file.txt"]
    storage.delete_prefix(storage.join(s3_bucket, "d/file.txt"))
    assert not storage.exists(storage.join(s3_bucket, "d/file.txt"))
    storage.delete_prefix(storage.join(s3_bucket, "d/never-there"))  # a no-op, as for file://


# --- errors ---------------------------------------------------------------------------------------


def test_unreachable_endpoint_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    point_at(monkeypatch, endpoint)
    with pytest.raises(StorageUnavailable) as exc:
        storage.exists("s3://bucket/stages/x/_SUCCESS")
    msg = str(exc.value)
    assert msg.startswith(f"S3 endpoint {endpoint} is unreachable, because ")
    assert f"Check SFTRL_S3_ENDPOINT={endpoint}" in msg
    _assert_one_clean_line(exc.value)
    assert "s3" not in storage._BACKENDS  # not cached: the next call tries again
    reset_s3_backend()


def test_store_going_away_mid_run_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    with moto_server() as endpoint:
        point_at(monkeypatch, endpoint)
        monkeypatch.setenv("SFTRL_S3_RETRIES", "2")
        monkeypatch.setenv("SFTRL_S3_MAX_ATTEMPTS", "2")
        _client(endpoint).create_bucket(Bucket="gone")
        storage.write_text("s3://gone/x", "1")
    with pytest.raises(StorageUnavailable, match="unreachable") as exc:
        storage.read_text("s3://gone/x")
    assert "s3://gone/x" in str(exc.value)
    _assert_one_clean_line(exc.value)
    reset_s3_backend()


def test_missing_bucket_is_named(s3_server: str) -> None:
    with pytest.raises(StorageError, match="S3 bucket 'no-such-bucket-x' does not exist") as exc:
        storage.write_text("s3://no-such-bucket-x/stages/a/stage.json", "{}")
    assert not isinstance(exc.value, StorageUnavailable)
    _assert_one_clean_line(exc.value)


def test_no_credentials_anywhere(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    reset_s3_backend()
    with pytest.raises(StorageError, match="no usable S3 credentials.*SFTRL_S3_CREDENTIALS_FILE") as exc:
        storage.exists("s3://any/x")
    _assert_one_clean_line(exc.value)


def test_bad_settings_are_reported_by_name(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFTRL_S3_MULTIPART_MB", "lots")
    reset_s3_backend()
    with pytest.raises(StorageError, match="SFTRL_S3_MULTIPART_MB='lots' is not a number"):
        storage.exists("s3://any/x")
    with pytest.raises(StorageError, match="SFTRL_S3_CHUNK_MB='1' is too small"):
        S3Settings.from_env({"SFTRL_S3_CHUNK_MB": "1"})
    with pytest.raises(StorageError, match="SFTRL_S3_ENDPOINT='minio:9000' is not an http"):
        S3Settings.from_env({"SFTRL_S3_ENDPOINT": "minio:9000"})
    s = S3Settings.from_env({"AWS_ENDPOINT_URL": "http://minio:9000/", "SFTRL_S3_RETRY_MODE": "adaptive"})
    assert (s.endpoint, s.endpoint_var, s.addressing_style, s.retry_mode) == (
        "http://minio:9000", "AWS_ENDPOINT_URL", "path", "adaptive")


# --- credentials from a mounted secret ----------------------------------------------------------


def _k8s_secret_dir(root: Path, values: dict[str, str]) -> Path:
    """The layout kubelet gives a Secret volume: ..data -> ..<timestamp>/, keys symlinked via ..data."""
    stamp = root / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    for k, v in values.items():
        (stamp / k).write_text(v + "\n")
    (root / "..data").symlink_to(stamp.name)
    for k in values:
        (root / k).symlink_to(f"..data/{k}")
    return root


@pytest.fixture(scope="module")
def iam_moto() -> Iterator[dict[str, str]]:
    """A moto server that enforces IAM after setup: a bucket, a key allowed s3:*, a key with no policy."""
    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "6"}) as endpoint:  # the 6 setup calls below
        admin = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", **admin)
        _client(endpoint).create_bucket(Bucket="locked")
        keys = {}
        for user in ("writer", "nobody"):
            iam.create_user(UserName=user)
            keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="writer", PolicyName="s3", PolicyDocument=json.dumps(policy))
        yield {
            "endpoint": endpoint,
            "writer_id": keys["writer"]["AccessKeyId"],
            "writer_secret": keys["writer"]["SecretAccessKey"],
            "nobody_id": keys["nobody"]["AccessKeyId"],
            "nobody_secret": keys["nobody"]["SecretAccessKey"],
        }


def test_credentials_from_mounted_secret(
    iam_moto: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    point_at(monkeypatch, iam_moto["endpoint"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENVIRONMENTBOGUS")  # the secret file must win
    secret = _k8s_secret_dir(
        tmp_path / "s3-secret",
        {"access-key-id": iam_moto["writer_id"], "secret-access-key": iam_moto["writer_secret"]},
    )
    monkeypatch.setenv("SFTRL_S3_CREDENTIALS_FILE", str(secret))
    reset_s3_backend()
    storage.write_text("s3://locked/stages/a/stage.json", "{}")
    assert storage.read_text("s3://locked/stages/a/stage.json") == "{}"
    assert storage.list_prefix("s3://locked/stages") == ["a/stage.json"]
    reset_s3_backend()


def test_access_denied_names_the_bucket(
    iam_moto: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    point_at(monkeypatch, iam_moto["endpoint"])
    ini = tmp_path / "credentials"
    ini.write_text(f"[default]\naws_access_key_id = {iam_moto['nobody_id']}\n"
                   f"aws_secret_access_key = {iam_moto['nobody_secret']}\n")
    monkeypatch.setenv("SFTRL_S3_CREDENTIALS_FILE", str(ini))
    reset_s3_backend()
    with pytest.raises(StorageError, match="Access to S3 bucket 'locked' is denied") as exc:
        storage.write_text("s3://locked/x", "1")
    assert not isinstance(exc.value, StorageUnavailable)
    _assert_one_clean_line(exc.value)
    reset_s3_backend()


def test_rejected_credentials_fail_at_start(iam_moto: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    point_at(monkeypatch, iam_moto["endpoint"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY0000000")
    with pytest.raises(StorageError, match="rejected the credentials \\(InvalidAccessKeyId\\)") as exc:
        storage.exists("s3://locked/x")
    _assert_one_clean_line(exc.value)
    reset_s3_backend()


@pytest.mark.parametrize(
    "name, text",
    [
        ("creds.json", '{"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "T"}'),
        ("credentials", "[default]\naws_access_key_id = AK\naws_secret_access_key = SK\naws_session_token = T\n"),
        ("s3.env", "# minio\nexport ACCESS_KEY_ID='AK'\nSECRET_ACCESS_KEY=\"SK\"\nsessionToken=T\n"),
    ],
)
def test_credentials_file_forms(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    assert read_credentials_file(str(tmp_path / name)) == {
        "aws_access_key_id": "AK", "aws_secret_access_key": "SK", "aws_session_token": "T"}


def test_credentials_file_errors(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist, because the secret is not mounted"):
        read_credentials_file(str(tmp_path / "absent"))
    (tmp_path / "half").write_text("aws_access_key_id=AK\nregion=x\n")
    with pytest.raises(StorageError, match="lacks aws_secret_access_key, because it holds only: aws_access_key_id, reg"):
        read_credentials_file(str(tmp_path / "half"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(StorageError, match="is not valid JSON"):
        read_credentials_file(str(tmp_path / "bad.json"))
