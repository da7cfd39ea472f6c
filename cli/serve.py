"""`autopack api|worker|flower`: the distributed system's processes."""

from __future__ import annotations

import os
from typing import Annotated

import typer
import uvicorn

from cli.context import load_settings, open_sessions
from shared.logs import configure_logging


def api_command(
    host: Annotated[str | None, typer.Option(help="Bind address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings).")] = None,
    workers: Annotated[int, typer.Option(help="Uvicorn worker processes.")] = 1,
) -> None:
    """Serve the HTTP API under uvicorn (refuses an unmigrated database)."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_json)
    open_sessions(settings)
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers,
        log_config=None,
        access_log=False,
    )


def worker_command(
    concurrency: Annotated[int, typer.Option(help="Runs executed at once by this worker.")] = 2,
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated queues (default from settings).")
    ] = None,
    hostname: Annotated[
        str | None, typer.Option(help="Celery node name (default autopack-PID@HOST).")
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO",
    pool: Annotated[str, typer.Option(help="Celery pool (prefork, threads, solo).")] = "prefork",
) -> None:
    """Start a Celery worker that executes runs (refuses an unmigrated database)."""
    from workers.celery_app import create_celery

    settings = load_settings()
    configure_logging(loglevel, settings.log_json)
    open_sessions(settings)
    queue_list = [q.strip() for q in (queues or settings.queue).split(",") if q.strip()]
    app = create_celery(settings, queue_list)
    app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            f"--queues={','.join(queue_list)}",
            f"--hostname={hostname or f'autopack-{os.getpid()}@%h'}",
            f"--loglevel={loglevel}",
            f"--pool={pool}",
            "--task-events",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    # Celery's worker_main drops the exit code; the shutdown request holds it (3 after a stall).
    from celery.worker import state

    code = (
        state.should_stop
        if isinstance(state.should_stop, int) and not isinstance(state.should_stop, bool)
        else 0
    )
    if code:
        raise typer.Exit(code)


def flower_command(
    port: Annotated[int | None, typer.Option(help="Port (default from settings).")] = None,
    address: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
) -> None:
    """Start Flower on the configured broker (basic auth from AUTOPACK_FLOWER_BASIC_AUTH)."""
    from workers.celery_app import create_celery

    settings = load_settings()
    app = create_celery(settings)
    argv = ["flower", f"--port={port or settings.flower_port}", f"--address={address}"]
    if settings.flower_basic_auth:
        argv.append(f"--basic-auth={settings.flower_basic_auth.get_secret_value()}")
    app.start(argv=argv)
