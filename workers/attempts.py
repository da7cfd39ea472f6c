"""The executor's attempt-level pieces: progress observers, an attempt before it is recorded, and
the helpers that shape an attempt's spec, cwd and output."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shared.runs.states import AttemptStatus
from workers.hardening.base import RetryOverrides
from workers.phases import resolve_cwd
from workers.process import CommandResult
from workers.recovery import FailedAttempt


class ExecutionObserver(Protocol):
    """Receives progress as it happens (the CLI's live display)."""

    def attempt_started(self, phase_id: str, attempt: int) -> None:
        """An attempt of a phase began."""

    def attempt_finished(self, phase_id: str, attempt: int, status: str) -> None:
        """An attempt of a phase ended with status."""

    def phase_finished(self, phase_id: str, status: str) -> None:
        """A phase reached a final status."""


class NullObserver:
    """Ignores progress."""

    def attempt_started(self, phase_id: str, attempt: int) -> None:
        return None

    def attempt_finished(self, phase_id: str, attempt: int, status: str) -> None:
        return None

    def phase_finished(self, phase_id: str, status: str) -> None:
        return None


def worker_identity() -> str:
    """host:pid:nonce — unique per process incarnation."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class AttemptStep:
    """An attempt that ran, before it is recorded."""

    attempt_id: int
    number: int
    result: CommandResult
    reason: str | None
    log_path: Path
    worktree: Path
    cwd: Path
    commands: list[str]
    env: dict[str, str]
    outside_scope: list[str]
    duration_s: float
    secret_names: list[str]

    @property
    def status(self) -> AttemptStatus:
        """How the attempt ended."""
        if self.result.ok and self.reason is None:
            return AttemptStatus.SUCCEEDED
        if self.result.timed_out:
            return AttemptStatus.TIMED_OUT
        if self.result.stopped == "cancel requested":
            return AttemptStatus.CANCELLED
        return AttemptStatus.FAILED

    def failed(self, attempts_left: bool) -> FailedAttempt:
        """The view recovery reasons about."""
        return FailedAttempt(
            number=self.number,
            worktree=self.worktree,
            cwd=self.cwd,
            commands=self.commands,
            exit_code=self.result.exit_code,
            signal=self.result.signal,
            timed_out=self.result.timed_out,
            output=read_tail(self.log_path, RECOVERY_TAIL_BYTES),
            outside_scope=self.outside_scope,
            env=self.env,
            log_path=self.log_path,
            duration_s=self.duration_s,
            attempts_left=attempts_left,
        )


RECOVERY_TAIL_BYTES = 65536


def read_tail(path: Path, size: int) -> str:
    with path.open("rb") as handle:
        handle.seek(0, 2)
        handle.seek(max(handle.tell() - size, 0))
        return handle.read().decode("utf-8", "replace")


def with_overrides(spec: dict[str, Any], overrides: RetryOverrides) -> dict[str, Any]:
    """The phase spec as the next attempt runs it."""
    effective = dict(spec)
    if overrides.cwd is not None:
        effective["cwd"] = overrides.cwd
    if overrides.commands is not None:
        effective["run"] = list(overrides.commands)
    return effective


def safe_cwd(worktree: Path, cwd: str | None) -> Path:
    try:
        return resolve_cwd(worktree, cwd)
    except ValueError:
        return worktree.resolve()
