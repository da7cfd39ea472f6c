"""Rich displays of a run: live phase table and the final summary."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

STYLE = {
    "succeeded": "green",
    "failed": "red",
    "timed_out": "red",
    "running": "yellow",
    "pending": "dim",
    "skipped": "dim",
    "cancelled": "magenta",
    "queued": "cyan",
}


@dataclass
class PhaseProgress:
    """What the live display knows of one phase."""

    phase_id: str
    status: str = "pending"
    attempt: int = 0
    started: float | None = None
    ended: float | None = None


@dataclass
class LiveRun:
    """Receives executor events and renders them (an ExecutionObserver)."""

    run_id: str
    phases: dict[str, PhaseProgress] = field(default_factory=dict)

    @classmethod
    def for_phases(cls, run_id: str, phase_ids: Sequence[str]) -> LiveRun:
        """A display with every phase pending."""
        return cls(run_id, {p: PhaseProgress(p) for p in phase_ids})

    def attempt_started(self, phase_id: str, attempt: int) -> None:
        progress = self.phases.setdefault(phase_id, PhaseProgress(phase_id))
        progress.status, progress.attempt = "running", attempt
        progress.started = progress.started or time.monotonic()

    def attempt_finished(self, phase_id: str, attempt: int, status: str) -> None:
        progress = self.phases.setdefault(phase_id, PhaseProgress(phase_id))
        if status != "succeeded":
            progress.status = f"retrying ({status})"

    def phase_finished(self, phase_id: str, status: str) -> None:
        progress = self.phases.setdefault(phase_id, PhaseProgress(phase_id))
        progress.status, progress.ended = status, time.monotonic()

    def __rich__(self) -> RenderableType:
        table = Table(title=f"run {self.run_id}", expand=False)
        for column in ("phase", "status", "attempt", "elapsed"):
            table.add_column(column)
        now = time.monotonic()
        for p in self.phases.values():
            elapsed = "" if p.started is None else f"{(p.ended or now) - p.started:.1f}s"
            style = STYLE.get(p.status.split(" ")[0], "yellow")
            table.add_row(p.phase_id, Text(p.status, style=style), str(p.attempt or ""), elapsed)
        return table


def _duration(start: Any, end: Any) -> str:
    if isinstance(start, str):
        start = datetime.fromisoformat(start)
    if isinstance(end, str):
        end = datetime.fromisoformat(end)
    if start is None or end is None:
        return ""
    return f"{(end - start).total_seconds():.1f}s"


def summary(run: dict[str, Any]) -> RenderableType:
    """The final summary: status, per-phase duration and attempts, result commit."""
    table = Table(show_header=True, title=f"run {run['id']}")
    for column in ("phase", "status", "attempts", "duration", "reason"):
        table.add_column(column)
    for phase in run["phases"]:
        table.add_row(
            phase["phase_id"],
            Text(phase["status"], style=STYLE.get(phase["status"], "")),
            str(len(phase.get("attempts") or [])),
            _duration(phase.get("started_at"), phase.get("finished_at")),
            (phase.get("failure_reason") or "")[:80],
        )
    status = run["status"]
    lines: list[RenderableType] = [
        table,
        Text.assemble("status: ", (status, STYLE.get(status, "bold"))),
        Text(f"duration: {_duration(run.get('started_at'), run.get('finished_at')) or '-'}"),
        Text(f"result commit: {run.get('result_commit') or '-'}"),
    ]
    if run.get("failure_reason"):
        lines.append(Text(f"reason: {run['failure_reason']}", style="red"))
    if run.get("result_diffstat"):
        lines.append(Text(run["result_diffstat"].splitlines()[-1], style="dim"))
    return Group(*lines)
