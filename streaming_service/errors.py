"""The service's error tree. Library errors are wrapped at the boundary (`raise X from exc`).

    StreamerError
    ├── ConfigError        bad setting or CLI argument; fatal, exit code 2
    ├── AuthError          Schwab token missing, unreadable or expired; fatal until the user re-authenticates
    └── SinkError
        ├── SinkUnavailable  transient (network, timeout, database restarting): retry the same batch
        └── SinkRejected     permanent (bad credentials, missing table, bad data): do not retry as is

Every message names the problem and the fix; none contains a secret.
"""

from collections.abc import Sequence

__all__ = [
    "AuthError",
    "ConfigError",
    "SinkError",
    "SinkRejected",
    "SinkUnavailable",
    "StreamerError",
]


class StreamerError(Exception):
    """Base of every error this service raises on purpose."""


class ConfigError(StreamerError):
    """A setting or argument is invalid; the message says which and what is allowed. `problems`:
    the same per bad setting, when known, as (what is wrong, what to change) pairs (for `check`)."""

    def __init__(self, message: str, problems: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class AuthError(StreamerError):
    """The Schwab credentials cannot be used; the message says how to create or renew them."""


class SinkError(StreamerError):
    """Writing to the database failed."""


class SinkUnavailable(SinkError):
    """The database could not be reached or timed out; the same batch may be retried unchanged.

    `retry_after`: seconds the server asked us to wait (HTTP Retry-After), or None."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SinkRejected(SinkError):
    """The database refused the write for a reason retrying will not fix."""
