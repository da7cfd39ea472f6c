"""Phase kinds: how one attempt of each kind executes in a worktree."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shared.settings import Settings
from workers.process import CommandResult, run_command


@dataclass(frozen=True)
class AttemptContext:
    """What one attempt needs to run: where, with what environment, until when."""

    settings: Settings
    worktree: Path
    log_path: Path
    timeout_s: float
    should_stop: Callable[[], str | None]
    env: Mapping[str, str]
    on_spawn: Callable[[int], None] | None = None


@dataclass(frozen=True)
class PhaseResult:
    """The end of one attempt: the last command's result and the reason when it failed."""

    result: CommandResult
    reason: str | None
    commands: list[str]


class PhaseRunner(Protocol):
    """Executes one attempt of a phase kind."""

    def commands(self, spec: Mapping[str, Any]) -> list[str]:
        """The commands this attempt will run, recorded on the attempt."""
        ...

    def run(self, spec: Mapping[str, Any], ctx: AttemptContext) -> PhaseResult:
        """Run the attempt."""
        ...


def build_env(
    settings: Settings, phase_env: Mapping[str, str], extra: Mapping[str, str]
) -> dict[str, str]:
    """Only allow-listed variables of the worker reach a phase, plus the phase's own."""
    env = {name: os.environ[name] for name in settings.env_allowlist if name in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(extra)
    env.update(phase_env)
    return env


def resolve_cwd(worktree: Path, cwd: str | None) -> Path:
    """The phase's directory; it must stay inside the worktree even through symlinks."""
    root = worktree.resolve()
    target = (root / cwd).resolve() if cwd else root
    if not target.is_relative_to(root):
        raise ValueError(f"cwd {cwd!r} resolves outside the worktree")
    if not target.is_dir():
        raise ValueError(f"cwd {cwd!r} does not exist in the worktree")
    return target


class ShellPhaseRunner:
    """Runs each command with bash, stopping at the first failure."""

    def commands(self, spec: Mapping[str, Any]) -> list[str]:
        return list(spec["run"])

    def run(self, spec: Mapping[str, Any], ctx: AttemptContext) -> PhaseResult:
        commands = self.commands(spec)
        with ctx.log_path.open("ab") as log:
            try:
                cwd = resolve_cwd(ctx.worktree, spec.get("cwd"))
            except ValueError as error:
                log.write(f"[autopack] {error}\n".encode())
                return PhaseResult(CommandResult(None, None, False, None), str(error), commands)
            env = build_env(ctx.settings, spec.get("env") or {}, ctx.env)
            deadline = time.monotonic() + ctx.timeout_s
            result = CommandResult(0, None, False, None)
            for command in commands:
                remaining = max(deadline - time.monotonic(), 0.001)
                result = run_command(
                    command,
                    cwd=cwd,
                    env=env,
                    log=log,
                    timeout_s=remaining,
                    should_stop=ctx.should_stop,
                    grace_s=ctx.settings.kill_grace_s,
                    on_spawn=ctx.on_spawn,
                )
                if not result.ok:
                    return PhaseResult(
                        result, describe_failure(command, result, ctx.timeout_s), commands
                    )
        return PhaseResult(result, None, commands)


def describe_failure(command: str, result: CommandResult, timeout_s: float) -> str:
    """A one-line reason for a failed command."""
    short = command if len(command) <= 120 else command[:117] + "..."
    if result.timed_out:
        return f"timed out after {timeout_s:.0f}s: {short}"
    if result.stopped:
        return f"stopped ({result.stopped}): {short}"
    if result.signal is not None:
        return f"killed by signal {result.signal}: {short}"
    return f"exit code {result.exit_code}: {short}"


RUNNERS: dict[str, PhaseRunner] = {"shell": ShellPhaseRunner()}


def runner_for(kind: str) -> PhaseRunner:
    """The runner of a phase kind."""
    try:
        return RUNNERS[kind]
    except KeyError:
        raise ValueError(f"phase kind {kind!r} is not supported by this worker") from None
