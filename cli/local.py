"""`autopack run FILE`: execute a run on this machine with no services (embedded mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live

from cli.common import EXIT_FAILED, EXIT_OK, console, fail, load_spec
from cli.context import load_settings, open_sessions
from cli.progress import LiveRun, summary
from shared.db import transaction
from shared.errors import AutopackError, Conflict, InvalidInput
from shared.repos import check_source
from shared.runs import repository, service
from shared.runs.states import RunStatus
from workers.attempts import worker_identity
from workers.executor import RunExecutor


def run_command(
    file: Annotated[Path, typer.Argument(help="Run file (YAML or JSON).")],
    repo: Annotated[
        list[str] | None,
        typer.Option("--repo", help="Register NAME=PATH_OR_URL for this run (repeatable)."),
    ] = None,
) -> None:
    """Execute a run here, in-process, on the embedded database; exit 0 succeeded, 1 failed, 2 bad input."""
    settings = load_settings()
    spec = load_spec(file)
    extra = {}
    for item in repo or []:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            fail(f"--repo {item!r} must be NAME=PATH_OR_URL")
        try:
            extra[name] = check_source(source)
        except InvalidInput as error:
            fail(str(error))
    settings = settings.model_copy(update={"repos": {**settings.repos, **extra}})
    sessions = open_sessions(settings, auto_migrate=True)
    try:
        with transaction(sessions) as session:
            submitted = service.submit(session, settings, spec.model_copy(update={"start": True}))
            run_id = submitted.run.id
    except InvalidInput as error:
        hint = ""
        if error.field == "repo":
            hint = f" (pass --repo {spec.repo}=PATH_OR_URL, or `autopack repos add {spec.repo} PATH_OR_URL`)"
        fail(f"{error}{hint}")
    except Conflict as error:
        fail(str(error))
    live = LiveRun.for_phases(run_id, [p.id for p in spec.phases])
    # One run, in this process: if its concurrency key is full, it waits here for a slot.
    executor = RunExecutor(
        settings, sessions, worker_identity(), observer=live, wait_for_admission=True
    )
    try:
        with Live(live, console=console, refresh_per_second=4, transient=True):
            executor.execute(run_id)
    except AutopackError as error:
        fail(f"run {run_id} stopped: {error}", EXIT_FAILED)
    with sessions() as session:
        run = service.run_read(repository.get_run_detail(session, run_id))
    console.print(summary(run.model_dump(mode="json")))
    raise typer.Exit(EXIT_OK if run.status == RunStatus.SUCCEEDED else EXIT_FAILED)
