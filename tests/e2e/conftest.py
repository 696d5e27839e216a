"""e2e fixtures: the real moto S3 server of tests/job_runtime/conftest.py (s3:// runs)."""

from tests.job_runtime.conftest import _moto_endpoint, s3_bucket, s3_server  # noqa: F401
