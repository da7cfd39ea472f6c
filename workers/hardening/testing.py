"""Real command running for hardening: a subprocess MitigationShell and contexts built from real failed runs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.failures import classify_failure
from shared.scope import outside_scope
from workers.changes import changed_paths
from workers.hardening.base import (
    FailureContext,
    HardeningPolicy,
    MitigationResult,
)
from workers.hardening.shell import AttemptShell
from workers.process import run_command

# Like the executor's recovery tail: detectors see at most this much of the attempt's output.
OUTPUT_TAIL_BYTES = 65536
GRACE_S = 2.0


def _never_stop() -> str | None:
    return None


def _read_from(log_path: Path, offset: int) -> str:
    """What was appended to the log since offset, at most the last OUTPUT_TAIL_BYTES."""
    with log_path.open("rb") as log:
        log.seek(0, os.SEEK_END)
        log.seek(max(offset, log.tell() - OUTPUT_TAIL_BYTES))
        return log.read().decode("utf-8", "replace")


class SubprocessShell(AttemptShell):
    """The production mitigation shell, never asked to stop, with a short kill grace for tests."""

    def __init__(self, env: Mapping[str, str], default_cwd: Path, log_path: Path) -> None:
        super().__init__(default_cwd, env, log_path, grace_s=GRACE_S)


@dataclass(frozen=True)
class PhaseRun:
    """How one real run of a phase's commands ended."""

    commands: tuple[str, ...]
    exit_code: int | None
    signal: int | None
    timed_out: bool
    output: str

    @property
    def ok(self) -> bool:
        """Whether every command exited 0."""
        return self.exit_code == 0 and not self.timed_out


def run_phase(
    commands: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    timeout_s: float = 120,
) -> PhaseRun:
    """Run the commands in order like the shell phase runner, stopping at the first failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        start = log.tell()
        exit_code: int | None = 0
        signal: int | None = None
        timed_out = False
        for command in commands:
            result = run_command(
                command,
                cwd=cwd,
                env=env,
                log=log,
                timeout_s=timeout_s,
                should_stop=_never_stop,
                grace_s=GRACE_S,
            )
            exit_code, signal, timed_out = result.exit_code, result.signal, result.timed_out
            if not result.ok:
                break
    return PhaseRun(tuple(commands), exit_code, signal, timed_out, _read_from(log_path, start))


def scope_violations(worktree: Path, scope: Sequence[str]) -> list[str]:
    """Paths the worktree changed that scope does not allow (none when it is not a git worktree)."""
    if not scope or not (worktree / ".git").exists():
        return []
    return outside_scope([change.path for change in changed_paths(worktree)], scope)


def make_context(
    commands: str | Sequence[str],
    *,
    worktree: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    scope: Sequence[str] = (),
    policy: HardeningPolicy | None = None,
    previous_patterns: Sequence[str] = (),
    log_path: Path | None = None,
    timeout_s: float = 120,
    run_id: str = "run-test",
    phase_id: str = "phase",
    attempt: int = 1,
) -> FailureContext:
    """Run the phase's commands for real and describe the outcome as the registry would see it."""
    listed = (commands,) if isinstance(commands, str) else tuple(commands)
    phase_cwd = (cwd or worktree).resolve()
    phase_env = dict(os.environ if env is None else env)
    if log_path is None:
        # beside the worktree, so the log never shows up as a change of the worktree itself
        log_path = worktree.parent / f"{worktree.name}.{phase_id}.{attempt}.log"
    run = run_phase(listed, cwd=phase_cwd, env=phase_env, log_path=log_path, timeout_s=timeout_s)
    outside = scope_violations(worktree, scope)
    return FailureContext(
        run_id=run_id,
        phase_id=phase_id,
        attempt=attempt,
        worktree=worktree.resolve(),
        cwd=phase_cwd,
        commands=listed,
        exit_code=run.exit_code,
        signal=run.signal,
        timed_out=run.timed_out,
        output=run.output,
        failure=classify_failure(
            exit_code=run.exit_code,
            timed_out=run.timed_out,
            signal=run.signal,
            output_tail=run.output,
            scope_violations=outside,
        ),
        scope=tuple(scope),
        outside_scope=tuple(outside),
        env=phase_env,
        shell=SubprocessShell(phase_env, phase_cwd, log_path),
        policy=policy or HardeningPolicy(),
        previous_patterns=tuple(previous_patterns),
    )


def retry_phase(ctx: FailureContext, result: MitigationResult, log_path: Path) -> PhaseRun:
    """Run the phase again as the executor would after the mitigation (delay not waited for)."""
    overrides = result.retry
    cwd = ctx.cwd
    commands = ctx.commands
    if overrides is not None and overrides.cwd is not None:
        cwd = (ctx.worktree / overrides.cwd).resolve()
    if overrides is not None and overrides.commands is not None:
        commands = overrides.commands
    return run_phase(commands, cwd=cwd, env=ctx.env, log_path=log_path)


def phase_env(home: Path, **extra: str) -> dict[str, str]:
    """A minimal phase environment: PATH without virtualenvs, a private HOME, a UTF-8 locale."""
    entries = [
        entry
        for entry in os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep)
        if entry and not (Path(entry).parent / "pyvenv.cfg").is_file()
    ]
    home.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.pathsep.join(entries), "HOME": str(home), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def init_repo(path: Path, files: Mapping[str, str]) -> Path:
    """A git repository at path holding files in one commit."""
    path.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    identity = ["-c", "user.name=autopack", "-c", "user.email=autopack@example.invalid"]
    # --allow-empty: a test may start from an empty repository
    commit = [*identity, "commit", "-q", "--allow-empty", "-m", "initial"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], commit):
        subprocess.run(["git", *args], cwd=path, check=True, capture_output=True)
    return path
