"""Errors a stage raises for problems the user can act on (printed without a traceback)."""


class StageError(Exception):
    """A failure the user can act on (bad data, a bad parameter): "X, because Y. Do Z."."""
