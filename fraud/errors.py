"""Errors a user can act on. `fraudctl` prints them as one line and exits non-zero."""


class FraudError(Exception):
    """A clear, one-line problem with input, configuration or the environment (no traceback shown)."""

    exit_code = 1
