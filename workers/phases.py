"""Phase kinds: how one attempt of each kind executes in a worktree."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shared.settings import Settings
from workers.disk import DiskLimit
from workers.patching import PatchRejected, apply_patch
from workers.process import CommandResult, run_command
from workers.toolchain import detect_primary


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
    disk_limit: DiskLimit | None = None  # the run's worktree size limit, when it has one


@dataclass(frozen=True)
class PhaseResult:
    """The end of one attempt: the last command's result and the reason when it failed."""

    result: CommandResult
    reason: str | None
    commands: list[str]


class PhaseRunner(Protocol):
    """Executes one attempt of a phase kind."""

    def commands(self, spec: Mapping[str, Any], worktree: Path) -> list[str]:
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


def limits_of(settings: Settings) -> dict[str, int]:
    """The prlimit options the settings ask for."""
    wanted = {
        "cpu": settings.phase_cpu_seconds,
        "as": settings.phase_memory_mb * 1024 * 1024 if settings.phase_memory_mb else None,
        "nofile": settings.phase_max_open_files,
        "nproc": settings.phase_max_processes,
    }
    return {name: value for name, value in wanted.items() if value}


def run_commands(commands: list[str], spec: Mapping[str, Any], ctx: AttemptContext) -> PhaseResult:
    """Run commands in order with bash in the phase's directory, stopping at the first failure."""
    with ctx.log_path.open("ab") as log:
        try:
            cwd = resolve_cwd(ctx.worktree, spec.get("cwd"))
        except ValueError as error:
            log.write(f"[autopack] {error}\n".encode())
            return PhaseResult(CommandResult(None, None, False, None), str(error), commands)
        missing = [
            name for name in spec.get("secret_env") or [] if name not in ctx.settings.secrets
        ]
        if missing:
            reason = f"secret(s) {', '.join(missing)} are not configured on this worker (AUTOPACK_SECRETS)"
            log.write(f"[autopack] {reason}\n".encode())
            return PhaseResult(CommandResult(None, None, False, None), reason, commands)
        env = build_env(ctx.settings, spec.get("env") or {}, ctx.env)
        env.update(
            {
                name: ctx.settings.secrets[name].get_secret_value()
                for name in spec.get("secret_env") or []
            }
        )
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
                limits=limits_of(ctx.settings),
                disk_limit=ctx.disk_limit,
            )
            if not result.ok:
                return PhaseResult(
                    result, describe_failure(command, result, ctx.timeout_s), commands
                )
    return PhaseResult(result, None, commands)


class ShellPhaseRunner:
    """Runs the phase's commands."""

    def commands(self, spec: Mapping[str, Any], worktree: Path) -> list[str]:
        return list(spec["run"])

    def run(self, spec: Mapping[str, Any], ctx: AttemptContext) -> PhaseResult:
        return run_commands(self.commands(spec, ctx.worktree), spec, ctx)


class ValidatePhaseRunner:
    """Runs the install/build/test/smoke commands of the toolchain detected in the phase's directory."""

    def commands(self, spec: Mapping[str, Any], worktree: Path) -> list[str]:
        try:
            directory = resolve_cwd(worktree, spec.get("cwd"))
        except ValueError:
            return []
        detection = detect_primary(directory)
        if detection is None:
            return []
        steps = spec.get("steps") or ["install", "test"]
        return [command for step in steps for command in getattr(detection, step)]

    def run(self, spec: Mapping[str, Any], ctx: AttemptContext) -> PhaseResult:
        commands = self.commands(spec, ctx.worktree)
        if not commands:
            where = spec.get("cwd") or "the worktree root"
            reason = f"no toolchain detected in {where} (looked for Python, Node, Go, Rust and Java projects)"
            with ctx.log_path.open("ab") as log:
                log.write(f"[autopack] {reason}\n".encode())
            return PhaseResult(CommandResult(None, None, False, None), reason, commands)
        with ctx.log_path.open("ab") as log:
            log.write(f"[autopack] validate: {len(commands)} inferred command(s)\n".encode())
        return run_commands(commands, spec, ctx)


class PatchPhaseRunner:
    """Applies the phase's unified diff with `git apply --3way`, inside its scope."""

    def commands(self, spec: Mapping[str, Any], worktree: Path) -> list[str]:
        return ["git apply --3way <patch>"]

    def run(self, spec: Mapping[str, Any], ctx: AttemptContext) -> PhaseResult:
        commands = self.commands(spec, ctx.worktree)
        with ctx.log_path.open("ab") as log:
            try:
                paths = apply_patch(ctx.worktree, spec["patch"], list(spec.get("scope") or []))
            except PatchRejected as error:
                log.write(f"[autopack] {error}\n".encode())
                return PhaseResult(CommandResult(1, None, False, None), str(error), commands)
            log.write(f"[autopack] patch applied to {', '.join(paths)}\n".encode())
            excess = ctx.disk_limit.check() if ctx.disk_limit else None
            if excess:
                log.write(f"[autopack] {excess}\n".encode())
                return PhaseResult(CommandResult(0, None, False, excess, True), excess, commands)
        return PhaseResult(CommandResult(0, None, False, None), None, commands)


def describe_failure(command: str, result: CommandResult, timeout_s: float) -> str:
    """A one-line reason for a failed command."""
    short = command if len(command) <= 120 else command[:117] + "..."
    if result.timed_out:
        return f"timed out after {timeout_s:.0f}s: {short}"
    if result.disk_exceeded:
        return f"{result.stopped} while running: {short}"
    if result.stopped:
        return f"stopped ({result.stopped}): {short}"
    if result.signal is not None:
        return f"killed by signal {result.signal}: {short}"
    return f"exit code {result.exit_code}: {short}"


RUNNERS: dict[str, PhaseRunner] = {
    "shell": ShellPhaseRunner(),
    "validate": ValidatePhaseRunner(),
    "patch": PatchPhaseRunner(),
}


def runner_for(kind: str) -> PhaseRunner:
    """The runner of a phase kind."""
    try:
        return RUNNERS[kind]
    except KeyError:
        raise ValueError(f"phase kind {kind!r} is not supported by this worker") from None
