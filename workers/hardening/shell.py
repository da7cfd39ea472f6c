"""The shell mitigations run their commands in: the phase's environment, output into the attempt log."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from workers.hardening.base import CommandOutcome
from workers.process import run_command

OUTPUT_LIMIT_BYTES = 65536  # what a mitigation gets back to read; the log keeps everything


def _never_stop() -> str | None:
    return None


class AttemptShell:
    """Runs a mitigation's commands with bash in their own process group, appending to the attempt log."""

    def __init__(
        self,
        cwd: Path,
        env: Mapping[str, str],
        log_path: Path,
        should_stop: Callable[[], str | None] = _never_stop,
        grace_s: float = 5.0,
    ) -> None:
        self.cwd, self.env, self.log_path, self.should_stop, self.grace_s = (
            cwd,
            dict(env),
            log_path,
            should_stop,
            grace_s,
        )

    def run(
        self, command: str, *, cwd: Path | None = None, timeout_s: float = 600
    ) -> CommandOutcome:
        """Run command in cwd (default: the phase's directory); its output comes back and stays in the log."""
        with self.log_path.open("ab") as log:
            log.write(b"[autopack] mitigation ")
            start = log.tell()
            result = run_command(
                command,
                cwd=cwd or self.cwd,
                env=self.env,
                log=log,
                timeout_s=timeout_s,
                should_stop=self.should_stop,
                grace_s=self.grace_s,
            )
        with self.log_path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(start, log.tell() - OUTPUT_LIMIT_BYTES))
            output = log.read().decode("utf-8", "replace")
        return CommandOutcome(result.exit_code, output, result.timed_out)
