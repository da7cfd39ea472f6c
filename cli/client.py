"""CLI clients of the HTTP API: submit, status, runs."""

from __future__ import annotations

import random
import time
from typing import Annotated, Any

import httpx
import typer
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cli.common import EXIT_FAILED, EXIT_OK, console, fail, load_spec
from cli.context import load_settings
from cli.progress import STYLE, summary
from shared.runs.states import TERMINAL_RUN_STATUSES
from shared.settings import Settings

TRANSIENT_STATUS = {502, 503, 504}


def make_client(settings: Settings) -> httpx.Client:
    """An HTTP client for the configured API with the configured key."""
    headers = {}
    if settings.api_key:
        headers["X-API-Key"] = settings.api_key.get_secret_value()
    return httpx.Client(base_url=settings.api_url, headers=headers, timeout=30)


def _explain(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text[:300]
    if isinstance(detail, list):
        return "; ".join(f"{d.get('field') or d.get('loc')}: {d.get('msg')}" for d in detail)
    return str(detail)


def request(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """Send a request, retrying transient failures with backoff; exit 2 with one line on errors."""
    delay = 0.5
    for attempt in range(5):
        try:
            response = client.request(method, url, **kwargs)
        except httpx.TransportError as error:
            if attempt == 4:
                fail(f"cannot reach the API at {client.base_url}: {type(error).__name__}")
        else:
            if response.status_code not in TRANSIENT_STATUS or attempt == 4:
                break
        time.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, 10)
    if response.status_code == 401:
        fail(f"unauthorized: {_explain(response)} (set AUTOPACK_API_KEY)")
    if response.status_code >= 400:
        fail(f"{method} {url} -> {response.status_code}: {_explain(response)}")
    return response


LONG_POLL_S = 5.0


def wait_for(client: httpx.Client, run_id: str, timeout_s: float | None = None) -> dict[str, Any]:
    """Follow the run's status with long polls until it is terminal; returns the full run.

    Each poll returns as soon as the status changes (or after LONG_POLL_S, to refresh the
    progress line); the server wakes it through PostgreSQL notifications.
    """
    deadline = (time.monotonic() + timeout_s) if timeout_s else None
    params: dict[str, Any] = {}
    with Live(console=console, refresh_per_second=4, transient=True) as live:
        while True:
            asked = time.monotonic()
            status = request(client, "GET", f"/runs/{run_id}/status", params=params).json()
            live.update(_status_line(status))
            if status["status"] in TERMINAL_RUN_STATUSES:
                break
            if deadline and time.monotonic() > deadline:
                fail(f"run {run_id} still {status['status']} after {timeout_s}s", EXIT_FAILED)
            unchanged = bool(params) and status["status"] == params["from_status"]
            if unchanged and time.monotonic() - asked < params["wait_s"] / 2:
                time.sleep(random.uniform(0.4, 0.6))  # an older server without long polls
            wait = LONG_POLL_S
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            params = {"wait_s": round(wait, 3), "from_status": status["status"]}
    return dict(request(client, "GET", f"/runs/{run_id}").json())


def _status_line(status: dict[str, Any]) -> Text:
    phases = ", ".join(f"{k} {v}" for k, v in status["phases"].items() if v)
    current = f" · {status['current_phase']}" if status.get("current_phase") else ""
    return Text.assemble(
        (f"{status['id']} ", "bold"),
        (status["status"], STYLE.get(status["status"], "")),
        f" · {status['percent_complete']:.0f}%{current} · {phases}",
    )


def submit_command(
    file: Annotated[
        typer.FileText | None, typer.Argument(help="Run file (YAML or JSON).", show_default=False)
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the run to its end.")] = False,
    timeout: Annotated[
        float | None, typer.Option(help="Give up waiting after this many seconds.")
    ] = None,
) -> None:
    """Submit a run file to the API; with --wait, exit 0 succeeded, 1 failed."""
    if file is None:
        fail("give a run file")
    from pathlib import Path

    spec = load_spec(Path(file.name))
    settings = load_settings()
    with make_client(settings) as client:
        response = request(
            client, "POST", "/runs", json=spec.model_dump(mode="json", exclude_none=True)
        )
        run = response.json()
        verb = "submitted" if response.status_code == 202 else "already exists:"
        console.print(f"{verb} run [bold]{run['id']}[/] ({run['status']})")
        if not wait:
            return
        final = wait_for(client, run["id"], timeout)
    console.print(summary(final))
    raise typer.Exit(EXIT_OK if final["status"] == "succeeded" else EXIT_FAILED)


def status_command(run_id: str) -> None:
    """Show a run's phases, attempts and result."""
    with make_client(load_settings()) as client:
        run = request(client, "GET", f"/runs/{run_id}").json()
    console.print(summary(run))


def runs_command(
    status: Annotated[list[str] | None, typer.Option(help="Filter by status (repeatable).")] = None,
    repo: Annotated[str | None, typer.Option(help="Filter by repository.")] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="Filter by label key=value (repeatable).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
) -> None:
    """List runs, newest first."""
    params: dict[str, Any] = {"limit": limit, "status": status or [], "label": label or []}
    if repo:
        params["repo"] = repo
    with make_client(load_settings()) as client:
        page = request(client, "GET", "/runs", params=params).json()
    table = Table("id", "repo", "status", "created", "result")
    for run in page["items"]:
        table.add_row(
            run["id"],
            run["repo"],
            Text(run["status"], style=STYLE.get(run["status"], "")),
            run["created_at"][:19],
            (run.get("result_commit") or "")[:12],
        )
    console.print(table)


def workers_command(
    all_: Annotated[bool, typer.Option("--all", help="Include workers that shut down.")] = False,
) -> None:
    """List workers with their status (alive, stale, stalled), queues and current runs."""
    with make_client(load_settings()) as client:
        rows = request(client, "GET", "/workers", params={"include_stopped": all_}).json()
    table = Table("worker", "host", "pid", "status", "queues", "running", "received", "last seen")
    styles = {"alive": "green", "stale": "red", "stalled": "red", "stopped": "dim"}
    for row in rows:
        table.add_row(
            row["id"],
            row["host"],
            str(row["pid"]),
            Text(row["status"], style=styles.get(row["status"], "")),
            ",".join(row["queues"]),
            ",".join(row["active_runs"]) or "-",
            str(row["received_total"]),
            row["last_seen_at"][:19],
        )
    console.print(table)


def cancel_command(
    run_id: str,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the run has stopped.")] = False,
    timeout: Annotated[float, typer.Option(help="Give up waiting after this many seconds.")] = 120,
) -> None:
    """Cancel a run (a running phase gets SIGINT, SIGTERM, then SIGKILL); exit 2 if it already ended."""
    with make_client(load_settings()) as client:
        run = request(client, "POST", f"/runs/{run_id}/cancel").json()
        console.print(f"run [bold]{run_id}[/] is {run['status']}")
        if wait and run["status"] not in TERMINAL_RUN_STATUSES:
            run = wait_for(client, run_id, timeout)
            console.print(f"run [bold]{run_id}[/] is {run['status']}")
