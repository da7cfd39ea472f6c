"""The one error hierarchy; the API and the CLI map these to status codes and exit codes."""

from __future__ import annotations


class AutopackError(Exception):
    """Base of every error Autopack raises on purpose."""


class NotFound(AutopackError):
    """The named thing does not exist."""


class Conflict(AutopackError):
    """The request contradicts the current state (wrong status, different spec under an id)."""


class InvalidInput(AutopackError):
    """The input is wrong; the message names the field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Unauthorized(AutopackError):
    """No credentials, or credentials that match no active key."""


class Forbidden(AutopackError):
    """Authenticated, but the key lacks the scope the request needs."""


class Transient(AutopackError):
    """A dependency is unavailable for now; retrying later may succeed."""


class Permanent(AutopackError):
    """A failure that retrying will not fix."""


class LeaseLost(AutopackError):
    """This worker no longer holds the run's lease: it must stop writing."""


class NotMigrated(Permanent):
    """The database schema is not at the version this code needs."""


class CancelRequested(AutopackError):
    """The run's cancellation was requested: the worker starts no more work for it."""
