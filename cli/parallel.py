"""`autopack parallel`: submit or execute many runs with bounded concurrency, then report."""

from __future__ import annotations

import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from cli.client import make_client, request
from cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    console,
    err_console,
    fail,
    load_spec,
)
from cli.context import load_settings, open_sessions
from cli.parallel_runner import (
    INTERRUPTED,
    REJECTED,
    TIMEOUT,
    ApiDriver,
    Batch,
    Driver,
    LocalDriver,
    RunItem,
)
from cli.progress import STYLE
from shared import repos
from shared.errors import InvalidInput, NotFound
from shared.runs import repository, service
from shared.runs.states import RunStatus
from shared.settings import Settings

RUN_FILE_SUFFIXES = (".yaml", ".yml", ".json")
LIVE_ROWS = 12


def collect_files(inputs: list[Path]) -> list[Path]:
    """Run files in the order given; a directory contributes its *.yaml|*.yml|*.json, sorted."""
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix in RUN_FILE_SUFFIXES
            )
            if not found:
                fail(f"{path}: no *.yaml, *.yml or *.json run files in this directory")
            files.extend(found)
        else:
            files.append(path)
    return files


def build_items(files: list[Path], run_ids: list[str], *, local: bool) -> list[RunItem]:
    """Validate every file (exit 2 naming the first bad one) and give each a run id key."""
    items: list[RunItem] = []
    owner: dict[str, str] = {}
    for path in files:
        spec = load_spec(path)
        if spec.run_id is not None:
            if spec.run_id in owner:
                fail(f"{path}: run_id {spec.run_id!r} is also used by {owner[spec.run_id]}")
            owner[spec.run_id] = str(path)
        elif not local:
            # A client-chosen id makes retried submissions idempotent (same id + same spec).
            spec = spec.model_copy(update={"run_id": service.new_run_id()})
        items.append(RunItem(source=str(path), spec=spec))
    for run_id in run_ids:
        if run_id in owner:
            fail(f"--id {run_id}: given twice (or also the run_id of {owner[run_id]})")
        owner[run_id] = "--id"
        items.append(RunItem(source="--id", run_id=run_id))
    return items


def _local_settings(settings: Settings, repo_args: list[str]) -> Settings:
    extra = {}
    for arg in repo_args:
        name, sep, source = arg.partition("=")
        if not sep or not name or not source:
            fail(f"--repo {arg!r} must be NAME=PATH_OR_URL")
        try:
            extra[name] = repos.check_source(source)
        except InvalidInput as error:
            fail(str(error))
    return settings.model_copy(update={"repos": {**settings.repos, **extra}})


def local_driver(settings: Settings, batch: Batch) -> LocalDriver:
    """Open the embedded database and check every repository and --id before executing anything."""
    sessions = open_sessions(settings, auto_migrate=True)
    with sessions() as session:
        for item in batch.items:
            try:
                if item.spec is not None:
                    repos.resolve(session, settings, item.spec.repo)
                else:
                    assert item.run_id is not None
                    item.status = repository.get_run(session, item.run_id).status
                    item.start_if_created = item.status == RunStatus.CREATED
            except NotFound as error:
                hint = ""
                if item.spec is not None:
                    hint = f" (pass --repo {item.spec.repo}=PATH_OR_URL, or `autopack repos add`)"
                fail(f"{item.source}: {error}{hint}")
    return LocalDriver(settings, sessions, batch)


def api_driver(settings: Settings, batch: Batch) -> ApiDriver:
    """Check that the API answers with this key, and that every --id exists, before submitting."""
    with make_client(settings) as client:
        request(client, "GET", "/runs", params={"limit": 1})
        for item in batch.items:
            if item.spec is None:
                item.status = request(client, "GET", f"/runs/{item.run_id}/status").json()["status"]
                item.start_if_created = item.status == RunStatus.CREATED
    return ApiDriver(settings, batch)


@dataclass
class BatchView:
    """The live display: one overall progress bar and a table of the runs in flight."""

    batch: Batch

    def __rich__(self) -> RenderableType:
        items = self.batch.items
        done = sum(1 for i in items if i.outcome is not None)
        active = [i for i in items if i.active]
        ended = sorted((i for i in items if i.ended), key=lambda i: i.ended or 0, reverse=True)
        counts = Counter(i.category for i in items if i.category)
        now = time.monotonic()
        header = Table.grid(padding=(0, 1))
        header.add_row(
            ProgressBar(total=len(items), completed=done, width=40),
            Text(
                f"{done}/{len(items)} done · {len(active)} in flight · {now - self.batch.started:.0f}s"
            ),
            Text(" ".join(f"{k} {v}" for k, v in sorted(counts.items())), style="dim"),
        )
        table = Table("run", "source", "status", "phase", "%", "elapsed")
        for item in (active + ended)[:LIVE_ROWS]:
            status = item.outcome or item.status
            table.add_row(
                item.run_id or "-",
                item.source,
                Text(status, style=STYLE.get(status.split(" ")[0], "yellow")),
                item.current_phase or "",
                f"{item.percent:.0f}",
                f"{(item.ended or now) - (item.began or now):.1f}s",
            )
        hidden = len(active) + len(ended) - LIVE_ROWS
        if hidden > 0:
            table.caption = f"… and {hidden} more"
        return Group(header, table)


def run_batch(batch: Batch, driver: Driver, out: Console) -> None:
    """Track every run on a pool of batch.concurrency threads under a live display."""
    with (
        ThreadPoolExecutor(batch.concurrency, thread_name_prefix="parallel") as pool,
        Live(BatchView(batch), console=out, refresh_per_second=4, transient=True),
    ):
        futures = [pool.submit(driver.track, item) for item in batch.items]
        halted = False
        try:
            while wait(futures, timeout=0.25).not_done:
                if not halted and batch.halted():
                    driver.halt(TIMEOUT)
                    halted = True
        except KeyboardInterrupt:
            driver.halt(INTERRUPTED)
            wait(futures)


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


def summary_table(batch: Batch) -> Table:
    """The final per-run table."""
    table = Table("run", "source", "status", "duration", "attempts", "result", "reason")
    for item in batch.items:
        status = item.outcome or item.status
        table.add_row(
            item.run_id or "-",
            item.source,
            Text(status, style=STYLE.get(status.split(" ")[0], "yellow")),
            _duration(item.duration_s),
            "-" if item.attempts is None else str(item.attempts),
            (item.result_commit or "-")[:12],
            (item.reason or "")[:60],
        )
    return table


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ").strip() or "-"


def totals(batch: Batch) -> Counter[str]:
    """Runs by final status (timeouts, rejections and errors as their own categories)."""
    return Counter(item.category or item.status for item in batch.items)


def render_report(batch: Batch, *, mode: str, wall_s: float, started_at: datetime) -> str:
    """The Markdown report: one row per run, totals by status, wall time."""
    lines = [
        "# Autopack parallel report",
        "",
        f"- started: {started_at.isoformat(timespec='seconds')}",
        f"- mode: {mode}",
        f"- concurrency: {batch.concurrency}",
        f"- timeout: {'none' if batch.timeout_s is None else f'{batch.timeout_s:g}s'}",
        f"- runs: {len(batch.items)}",
        f"- wall time: {wall_s:.1f}s",
        "",
        "## Runs",
        "",
        "| run id | source | status | duration | attempts | result commit | reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for item in batch.items:
        cells = [
            item.run_id or "-",
            item.source,
            item.outcome or item.status,
            _duration(item.duration_s),
            "-" if item.attempts is None else str(item.attempts),
            item.result_commit or "-",
            (item.reason or "")[:200],
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", "## Totals by status", "", "| status | runs |", "|---|---|"]
    lines += [f"| {status} | {count} |" for status, count in sorted(totals(batch).items())]
    lines += ["", f"Wall time: {wall_s:.1f}s", ""]
    return "\n".join(lines)


def exit_code(batch: Batch) -> int:
    """0 when every run succeeded; 2 when the server rejected one as bad input; else 1."""
    categories = totals(batch)
    if categories[REJECTED]:
        return EXIT_BAD_INPUT
    return EXIT_OK if categories[RunStatus.SUCCEEDED] == len(batch.items) else EXIT_FAILED


def parallel_command(
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(help="Run files, or directories of them.", show_default=False),
    ] = None,
    run_ids: Annotated[
        list[str] | None,
        typer.Option("--id", help="A run already created (start: false is started; repeatable)."),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="At most this many runs in flight at once.")
    ] = 4,
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Stop following runs after this many seconds.")
    ] = None,
    report: Annotated[
        str, typer.Option(help="Markdown report file; '-' for stdout.")
    ] = "parallel-report.md",
    local: Annotated[
        bool, typer.Option("--local", help="Execute here on the embedded database, no services.")
    ] = False,
    repo: Annotated[
        list[str] | None,
        typer.Option("--repo", help="With --local: register NAME=PATH_OR_URL (repeatable)."),
    ] = None,
) -> None:
    """Run many runs at once (at most --concurrency in flight); exit 0 all succeeded, 1 not, 2 bad input."""
    if repo and not local:
        fail("--repo only applies with --local (register repositories on the server instead)")
    report_path = None if report == "-" else Path(report)
    if report_path is not None and not report_path.parent.is_dir():
        fail(f"--report {report}: directory {str(report_path.parent)!r} does not exist")
    items = build_items(collect_files(inputs or []), run_ids or [], local=local)
    if not items:
        fail("give run files, a directory of run files, or --id RUN_ID")
    settings = load_settings()
    batch = Batch(items, concurrency, timeout)
    if local:
        driver: Driver = local_driver(_local_settings(settings, repo or []), batch)
        mode = "local (embedded database)"
    else:
        driver = api_driver(settings, batch)
        mode = f"api ({settings.api_url})"
    out = err_console if report_path is None else console
    started_at = datetime.now(UTC)
    batch.started = time.monotonic()
    run_batch(batch, driver, out)
    wall_s = time.monotonic() - batch.started
    text = render_report(batch, mode=mode, wall_s=wall_s, started_at=started_at)
    out.print(summary_table(batch))
    counts = ", ".join(f"{count} {status}" for status, count in sorted(totals(batch).items()))
    where = "stdout" if report_path is None else str(report_path)
    out.print(f"{len(items)} runs: {counts} · wall time {wall_s:.1f}s · report: {where}")
    if report_path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        report_path.write_text(text, encoding="utf-8")
    raise typer.Exit(exit_code(batch))
