"""The `autopack` command line."""

from __future__ import annotations

import typer

from cli import ab, admin, client, local, parallel, patterns, plan, serve

app = typer.Typer(
    name="autopack",
    help="Execute runs of phases against git repositories, locally or on Celery workers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("run")(local.run_command)
app.command("api")(serve.api_command)
app.command("worker")(serve.worker_command)
app.command("flower")(serve.flower_command)
app.command("submit")(client.submit_command)
app.command("status")(client.status_command)
app.command("runs")(client.runs_command)
app.command("workers")(client.workers_command)
app.command("cancel")(client.cancel_command)
app.command("parallel")(parallel.parallel_command)
app.add_typer(admin.db_app, name="db")
app.add_typer(admin.keys_app, name="keys")
app.add_typer(admin.repos_app, name="repos")
app.add_typer(patterns.app, name="patterns")
app.add_typer(ab.app, name="ab")
app.add_typer(plan.app, name="plan")


def _register_optional() -> None:
    """Sub-apps that live in their own modules."""
    try:
        from cli.toolchain import app as toolchain_app
    except ImportError:  # pragma: no cover - present once toolchain detection lands
        return
    app.add_typer(toolchain_app, name="toolchain")


_register_optional()


def main() -> None:
    """Entry point of the console script."""
    app()
