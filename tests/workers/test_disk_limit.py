"""The per-run disk limit on real processes, PostgreSQL and git: a phase filling its worktree is stopped."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared import repos
from shared.db import transaction
from shared.models import Run
from shared.runs import repository, service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from tests.conftest import wait_until
from workers.executor import RunExecutor

# Writes 50 MB into the worktree 1 MB at a time, then lingers; records its pid and a background child's.
SLOW_FILLER = (
    "sleep 300 & echo $! > {child}; "
    "python3 -c 'import os, time\n"
    'open("{pid}", "w").write(str(os.getpid()))\n'
    'with open("fill.bin", "wb") as out:\n'
    "    for _ in range(50):\n"
    '        out.write(b"x" * 1048576); out.flush(); time.sleep(0.05)\n'
    "time.sleep(60)'"
)


@pytest.fixture
def execute(
    sessions: sessionmaker[Session], settings: Settings, make_repo: Callable[..., Path]
) -> Callable[..., Run]:
    """Submit a run against a fresh repository, execute it in-process, return it with its attempts."""
    origin = make_repo({"README.md": "# disk\n"})
    name = f"disk-{uuid.uuid4().hex[:8]}"
    with transaction(sessions) as session:
        repos.add(session, name, str(origin))

    def do(phases: list[dict[str, Any]], *, run_settings: Settings = settings, **extra: Any) -> Run:
        spec = RunCreate.model_validate(
            {"repo": name, "goal": "stay within the disk limit", "phases": phases, **extra}
        )
        with transaction(sessions) as session:
            run_id = service.submit(session, run_settings, spec).run.id
        RunExecutor(run_settings, sessions, "disk-worker").execute(run_id)
        with sessions() as session:
            return repository.get_run_detail(session, run_id)

    return do


def _stat(pid: str) -> list[str] | None:
    """State, ppid, pgrp, ... of a process (after its parenthesised name), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def gone(pid: int) -> bool:
    """Dead (or a zombie waiting for a parent that is not ours)."""
    fields = _stat(str(pid))
    return fields is None or fields[0] == "Z"


def group_alive(pgid: int) -> list[str]:
    """Live (non-zombie) members of a process group."""
    members = []
    for entry in os.listdir("/proc"):
        fields = _stat(entry) if entry.isdigit() else None
        if fields and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(entry)
    return members


def test_phase_filling_its_worktree_is_stopped_and_fails_the_run(
    execute: Callable[..., Run], tmp_path: Path
) -> None:
    pid, child = tmp_path / "pid", tmp_path / "child"
    run = execute(
        [
            {
                "id": "fill",
                "run": SLOW_FILLER.format(pid=pid, child=child),
                "max_attempts": 3,
                "timeout_s": 30,  # shorter than the filler lingers: only the limit ends it as failed
            },
            {"id": "after", "run": "true"},
        ],
        budgets={"max_disk_mb": 5},
    )
    assert run.status == "failed"
    assert "phase fill: worktree exceeded the disk limit of 5 MB (measured " in (
        run.failure_reason or ""
    )
    assert [p.status for p in run.phases] == ["failed", "skipped"]
    [attempt] = run.phases[0].attempts  # not retried: it would fill the worktree again
    assert attempt.status == "failed" and attempt.failure_class == "disk_limit"
    tail = attempt.output_tail or ""
    assert "worktree exceeded the disk limit of 5 MB" in tail
    assert "[autopack] sent SIGTERM" in tail  # stopped while running, not after
    pgid = attempt.pgid
    assert pgid is not None
    for leftover in (int(pid.read_text()), int(child.read_text())):
        wait_until(lambda p=leftover: gone(p), timeout=10, what=f"process {leftover} to die")
    wait_until(lambda: not group_alive(pgid), timeout=10, what="the process group to be dead")


def test_setting_caps_the_runs_own_limit(
    execute: Callable[..., Run], settings: Settings, tmp_path: Path
) -> None:
    capped = settings.model_copy(update={"run_disk_limit_mb": 5})
    run = execute(
        [
            {
                "id": "fill",
                "run": SLOW_FILLER.format(pid=tmp_path / "pid", child=tmp_path / "child"),
                "timeout_s": 120,
            }
        ],
        run_settings=capped,
        budgets={"max_disk_mb": 500},
    )
    assert run.status == "failed"
    assert "worktree exceeded the disk limit of 5 MB" in (run.failure_reason or "")


def test_fast_command_filling_the_worktree_is_caught_when_it_ends(
    execute: Callable[..., Run], tmp_path: Path
) -> None:
    marker, staged = tmp_path / "second-command-ran", tmp_path / "staged.bin"
    # The worktree grows in one rename just before the command exits: only the check after it sees it.
    burst = f"head -c 20971520 /dev/zero > {staged} && mv {staged} burst.bin"
    run = execute([{"id": "burst", "run": [burst, f"touch {marker}"]}], budgets={"max_disk_mb": 5})
    assert run.status == "failed"
    assert "worktree exceeded the disk limit of 5 MB (measured 2" in (run.failure_reason or "")
    assert not marker.exists()  # the next command did not run


def test_phase_within_the_limit_passes_and_links_are_not_followed(
    execute: Callable[..., Run], tmp_path: Path
) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"y" * 20 * 1024 * 1024)
    run = execute(
        [
            {
                "id": "small",
                "run": [
                    "head -c 1048576 /dev/urandom > small.bin",
                    "ln small.bin small-again.bin",  # a hard link is the same blocks
                    f"ln -s {outside} outside-link.bin",  # 20 MB elsewhere, not in the worktree
                ],
            }
        ],
        budgets={"max_disk_mb": 5},
    )
    assert run.status == "succeeded", run.failure_reason
