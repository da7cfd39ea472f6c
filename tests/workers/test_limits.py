"""Phase processes run under the resource limits of the settings."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from shared import repos
from shared.db import transaction
from shared.models import Run
from shared.runs import repository, service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from workers.executor import RunExecutor


def run_limited(
    sessions: sessionmaker[Session], settings: Settings, origin: Path, command: str
) -> Run:
    name = f"lim-{uuid.uuid4().hex[:8]}"
    with transaction(sessions) as session:
        repos.add(session, name, str(origin))
        run_id = service.submit(
            session,
            settings,
            RunCreate.model_validate(
                {
                    "repo": name,
                    "goal": "g",
                    "phases": [{"id": "p", "run": command, "timeout_s": 60}],
                }
            ),
        ).run.id
    RunExecutor(settings, sessions, "w").execute(run_id)
    with sessions() as session:
        return repository.get_run_detail(session, run_id)


def test_phase_sees_configured_limits(
    sessions: sessionmaker[Session], settings: Settings, make_repo: Callable[..., Path]
) -> None:
    limited = settings.model_copy(update={"phase_max_open_files": 77, "phase_max_processes": 4000})
    run = run_limited(sessions, limited, make_repo(), "ulimit -n; ulimit -u")
    assert run.status == "succeeded"
    assert (run.phases[0].attempts[0].output_tail or "").split()[-2:] == ["77", "4000"]


def test_cpu_time_limit_stops_busy_loop(
    sessions: sessionmaker[Session], settings: Settings, make_repo: Callable[..., Path]
) -> None:
    run = run_limited(
        sessions,
        settings.model_copy(update={"phase_cpu_seconds": 1}),
        make_repo(),
        "python3 -c 'while True: pass'",
    )
    attempt = run.phases[0].attempts[0]
    assert run.status == "failed" and attempt.status == "failed"
    assert (
        attempt.signal in {signal.SIGXCPU, signal.SIGKILL}
        or attempt.exit_code == 128 + signal.SIGXCPU
    )


def test_memory_limit_stops_large_allocation(
    sessions: sessionmaker[Session], settings: Settings, make_repo: Callable[..., Path]
) -> None:
    run = run_limited(
        sessions,
        settings.model_copy(update={"phase_memory_mb": 300}),
        make_repo(),
        "python3 -c 'x = bytearray(1024 * 1024 * 1024)'",
    )
    assert run.status == "failed"
    assert "MemoryError" in (run.phases[0].attempts[0].output_tail or "")
