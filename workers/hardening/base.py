"""The failure-hardening contract: what a pattern sees of a failure, and what its mitigation reports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from shared.failures import FailureInfo


@dataclass(frozen=True)
class CommandOutcome:
    """The result of a command a mitigation ran (its output is also appended to the attempt log)."""

    exit_code: int | None
    output: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        """Whether it exited 0."""
        return self.exit_code == 0 and not self.timed_out


class MitigationShell(Protocol):
    """Runs a mitigation's commands with the phase's environment, logging them to the attempt log."""

    def run(
        self, command: str, *, cwd: Path | None = None, timeout_s: float = 600
    ) -> CommandOutcome:
        """Run command with bash in cwd (default: the phase's directory)."""
        ...


@dataclass(frozen=True)
class HardeningPolicy:
    """What mitigations may do for this run."""

    allow_undeclared_installs: bool = False


@dataclass(frozen=True)
class FailureContext:
    """Everything a detector and a mitigation may look at, taken from the real failed attempt."""

    run_id: str
    phase_id: str
    attempt: int
    worktree: Path
    cwd: Path  # absolute directory the phase ran in (inside worktree)
    commands: tuple[str, ...]
    exit_code: int | None
    signal: int | None
    timed_out: bool
    output: str  # the attempt's output tail (up to ~64 KB)
    failure: FailureInfo
    scope: tuple[str, ...]
    outside_scope: tuple[str, ...]  # paths the attempt changed that scope does not allow
    env: Mapping[str, str]
    shell: MitigationShell
    policy: HardeningPolicy = field(default_factory=HardeningPolicy)
    previous_patterns: tuple[
        str, ...
    ] = ()  # patterns already applied to earlier attempts of this phase


@dataclass(frozen=True)
class RetryOverrides:
    """How the retry after a mitigation should differ from the failed attempt."""

    cwd: str | None = None  # relative to the worktree
    commands: tuple[str, ...] | None = None
    delay_s: float = 0.0


@dataclass
class MitigationResult:
    """What a mitigation did. `changed` means it acted on the worktree or environment."""

    actions_taken: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    changed: bool = False
    retry: RetryOverrides | None = None
    give_up_reason: str | None = None  # the failure is understood and retrying cannot help


class FailurePattern(Protocol):
    """A deterministic detector/mitigation pair, tried in priority order (1 first)."""

    pattern_id: str
    name: str
    priority: int

    def detect(self, ctx: FailureContext) -> bool:
        """Whether this pattern explains the failure."""
        ...

    def mitigate(self, ctx: FailureContext) -> MitigationResult:
        """Act in the worktree so that a retry can succeed; report what was done."""
        ...
