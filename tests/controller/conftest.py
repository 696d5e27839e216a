"""Fixtures of the controller tests: the real S3 API (moto server on loopback) of tests/job_runtime."""

from tests.job_runtime.conftest import _moto_endpoint, s3_bucket, s3_server  # noqa: F401 - fixtures
