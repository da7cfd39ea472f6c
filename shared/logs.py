"""Logging set-up: JSON lines off a terminal, and run/phase/attempt context on every line."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "autopack_log", default=None
)


@contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Attach values (run_id, phase, attempt, request_id) to every log line in this block."""
    token = _context.set({**(_context.get() or {}), **values})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the current log context onto records."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.ctx = _context.get() or {}
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "ctx", {}),
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    """Terse human lines with the context appended."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = getattr(record, "ctx", {})
        if ctx:
            line += " " + " ".join(f"{k}={v}" for k, v in ctx.items())
        return line


def configure_logging(level: str = "INFO", json_logs: bool | None = None) -> None:
    """Install one handler on the root logger (idempotent)."""
    use_json = (not sys.stderr.isatty()) if json_logs is None else json_logs
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        JsonFormatter()
        if use_json
        else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_autopack", False):
            root.removeHandler(existing)
    handler._autopack = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Alembic narrates every connection at INFO; only its warnings matter to an operator.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def warn_failed(log: logging.Logger, what: str, error: BaseException) -> None:
    """Log a failed periodic job: one line while the database is unreachable, else the traceback.

    An outage makes the sweeper and the heartbeat fail every interval; a traceback per interval
    would bury everything else in the log, and says nothing the one line does not.
    """
    if isinstance(error, OperationalError | InterfaceError):
        origin = getattr(error, "orig", None) or error
        log.warning("%s; will retry (database unreachable: %s)", what, first_line(origin))
    else:
        log.warning("%s; will retry", what, exc_info=error)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type when empty), at most 200 characters."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
