"""Errors the runtime raises for problems the user can act on (printed without a traceback).

A leaf module: storage (``job_runtime.io.storage``, ``job_runtime.io.s3``) and the stages import
it, and it imports nothing, so the storage backends need not import each other for their errors.
"""


class StageError(Exception):
    """A failure the user can act on (bad data, a bad parameter): "X, because Y. Do Z."."""


class StorageError(RuntimeError):
    """A storage operation failed; the message says which URI and what to do."""


class StorageUnavailable(StorageError):
    """The store could not be reached (worth a retry)."""
