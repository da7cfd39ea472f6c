"""`autopack patterns`: group the failures no hardening pattern caught and scaffold patterns for them."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from cli.common import console, err_console, fail
from cli.context import load_settings, open_sessions
from shared.analysis import PatternGroup, analyze_uncaught, scaffold_patterns
from shared.models import Run

app = typer.Typer(
    help="Group the failures no hardening pattern caught, to find the next patterns worth writing.",
    pretty_exceptions_enable=False,
)

DEFAULT_TOP: Final = 20
_AGE: Final = re.compile(r"^\s*(\d{1,9})\s*([smhdw])\s*$")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_EXCERPT_LINES: Final = 15
_MAX_PHASES_SHOWN: Final = 3
# Below this console width the ten-column table is unreadable, so a compact one is used.
WIDE_TABLE_MIN_WIDTH: Final = 150


def parse_moment(option: str, value: str, now: datetime) -> datetime:
    """An ISO 8601 time (naive means UTC) or an age such as `30m`, `24h`, `7d` before now."""
    age = _AGE.match(value)
    if age:
        try:
            return now - timedelta(**{_UNITS[age.group(2)]: int(age.group(1))})
        except OverflowError:
            fail(f"{option}: {value.strip()!r} reaches back before year 1")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        fail(f"{option}: expected an ISO 8601 time or an age like 24h or 7d, got {value!r}")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_count(option: str, value: str, minimum: int) -> int:
    """A whole number of at least minimum, or exit 2 naming the option."""
    try:
        number = int(value)
    except ValueError:
        fail(f"{option}: expected a whole number, got {value!r}")
    if number < minimum:
        fail(f"{option}: must be at least {minimum}, got {number}")
    return number


def _when(moment: datetime) -> str:
    """A timestamp as UTC wall-clock time, to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _phases(group: PatternGroup) -> str:
    """The group's phase ids, the first few of them when there are many."""
    shown = ", ".join(group.phase_ids[:_MAX_PHASES_SHOWN])
    extra = len(group.phase_ids) - _MAX_PHASES_SHOWN
    return f"{shown} +{extra}" if extra > 0 else shown


def render_table(groups: list[PatternGroup], total: int, *, wide: bool = True) -> Table:
    """The groups as a Rich table; cells are Text so stored messages are never read as markup."""
    title = f"Uncaught failure groups (top {len(groups)} of {total})"
    table = Table(title=title if total > len(groups) else "Uncaught failure groups")
    # (cell key, header, column options); the compact table drops detail columns and folds
    columns: list[tuple[str, str, dict[str, Any]]] = [
        ("signature", "signature", {"no_wrap": True}),
        ("type", "type", {"overflow": "fold", "min_width": 8}),
        ("class", "class", {"no_wrap": True}),
        ("count", "count", {"justify": "right", "no_wrap": True}),
        ("confidence", "confidence" if wide else "conf.", {"no_wrap": True}),
        ("runs", "runs", {"justify": "right", "no_wrap": True}),
        ("phases", "phases", {"overflow": "fold"}),
        ("first seen", "first seen", {"no_wrap": True}),
        ("last seen", "last seen", {"overflow": "fold", "min_width": 10}),
        ("suggested id", "suggested id", {"no_wrap": wide, "overflow": "fold"}),
    ]
    if not wide:
        columns = [c for c in columns if c[0] not in {"class", "phases", "first seen"}]
    for _, header, options in columns:
        table.add_column(header, **options)
    for group in groups:
        confidence_style = {"high": "bold red", "medium": "yellow"}.get(group.confidence, "")
        cells = {
            "signature": Text(group.signature[:12]),
            "type": Text(group.error_type),
            "class": Text(group.failure_class),
            "count": Text(str(group.count)),
            "confidence": Text(group.confidence, style=confidence_style),
            "runs": Text(str(len(group.run_ids))),
            "phases": Text(_phases(group)),
            "first seen": Text(_when(group.first_seen)),
            "last seen": Text(_when(group.last_seen)),
            "suggested id": Text(group.suggested_pattern_id),
        }
        table.add_row(*(cells[key] for key, _, _ in columns))
    return table


def render_sample(group: PatternGroup) -> Text:
    """The top group's representative failure: where it happened, its message and output tail."""
    sample = group.sample
    text = Text()
    text.append("top sample", style="bold")
    text.append(
        f" ({group.signature[:12]}, run {sample.run_id}, phase {sample.phase_id}, "
        f"attempt {sample.attempt})\n"
    )
    text.append("message: ", style="bold")
    text.append(f"{sample.message}\n")
    text.append("normalized: ", style="bold")
    text.append(f"{group.normalized_message}\n")
    text.append("suggested id: ", style="bold")
    text.append(f"{group.suggested_pattern_id}\n")
    excerpt = sample.excerpt.splitlines()[-_EXCERPT_LINES:]
    if excerpt:
        text.append("output:\n", style="bold")
        text.append("\n".join(f"  {line}" for line in excerpt), style="dim")
    return text


def report_document(
    groups: list[PatternGroup], filters: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """The JSON document of --json: the filters used and every group in full."""
    return {
        "generated_at": now.isoformat(),
        "filters": filters,
        "total_groups": len(groups),
        "total_occurrences": sum(group.count for group in groups),
        "groups": [group.to_dict() for group in groups],
    }


def _write_json(target: str, document: dict[str, Any]) -> None:
    """Write the document to a file, or to stdout for `-` (unstyled, so it stays valid JSON)."""
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        Path(target).write_text(text, encoding="utf-8")
    except OSError as error:
        fail(f"--json: cannot write {target!r}: {error.strerror or error}")


def _analyze(
    run_id: str | None,
    since: datetime | None,
    until: datetime | None,
    min_count: int,
) -> list[PatternGroup]:
    """Run the analysis against the configured database (PostgreSQL or the embedded SQLite)."""
    sessions = open_sessions(load_settings(), auto_migrate=True)
    try:
        with sessions() as session:
            if run_id is not None and session.get(Run, run_id) is None:
                fail(f"--run: run {run_id!r} not found")
            return analyze_uncaught(
                session, run_id=run_id, since=since, until=until, min_count=min_count
            )
    except OperationalError as error:
        fail(f"cannot reach the database: {str(error.orig).strip().splitlines()[0]}")
    finally:
        bind = sessions.kw.get("bind")
        if isinstance(bind, Engine):
            bind.dispose()


def _scaffold(groups: list[PatternGroup], directory: Path, top: int, quiet: bool) -> None:
    """Write pattern modules for the top groups and say what was written and what was kept."""
    out = err_console if quiet else console
    skipped: list[Path] = []
    try:
        written = scaffold_patterns(groups, directory, top, on_skip=skipped.append)
    except OSError as error:
        fail(f"--scaffold: cannot write to {str(directory)!r}: {error.strerror or error}")
    for path in written:
        out.print(Text(f"wrote {path}"))
    for path in skipped:
        out.print(Text(f"kept {path} (exists; not overwritten)"))


@app.callback(invoke_without_command=True, subcommand_metavar="")
def patterns(
    run: Annotated[
        str | None, typer.Option("--run", metavar="RUN_ID", help="Only this run's failures.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(metavar="ISO|AGE", help="From this time on: ISO 8601 or an age like 24h, 7d."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(metavar="ISO|AGE", help="Before this time: ISO 8601 or an age like 1h."),
    ] = None,
    min_count: Annotated[
        str, typer.Option("--min-count", metavar="N", help="Only groups seen at least N times.")
    ] = "1",
    top: Annotated[
        str,
        typer.Option(metavar="N", help="Groups shown and scaffolded (JSON has them all)."),
    ] = str(DEFAULT_TOP),
    json_file: Annotated[
        str | None,
        typer.Option("--json", metavar="FILE", help="Write every group as JSON; - for stdout."),
    ] = None,
    scaffold: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR", help="Write a pattern module and test for each top group here."
        ),
    ] = None,
) -> None:
    """Group uncaught failures by normalized signature, most frequent first."""
    now = datetime.now(UTC)
    if run is not None and not run.strip():
        fail("--run: give a run id")
    since_at = parse_moment("--since", since, now) if since is not None else None
    until_at = parse_moment("--until", until, now) if until is not None else None
    if since_at is not None and until_at is not None and since_at >= until_at:
        fail(f"--since ({since_at.isoformat()}) must be before --until ({until_at.isoformat()})")
    minimum = parse_count("--min-count", min_count, 1)
    shown = parse_count("--top", top, 1)
    if json_file is not None and not json_file.strip():
        fail("--json: give a file name or - for stdout")
    # bad targets are reported before the database is read, not after
    if json_file not in (None, "-") and not Path(json_file).parent.is_dir():
        fail(f"--json: directory {str(Path(json_file).parent)!r} does not exist")
    if scaffold is not None and scaffold.exists() and not scaffold.is_dir():
        fail(f"--scaffold: {str(scaffold)!r} is not a directory")

    groups = _analyze(run, since_at, until_at, minimum)
    to_stdout = json_file == "-"
    if json_file is not None:
        filters = {
            "run_id": run,
            "since": since_at.isoformat() if since_at else None,
            "until": until_at.isoformat() if until_at else None,
            "min_count": minimum,
        }
        _write_json(json_file, report_document(groups, filters, now))
    if not to_stdout:
        filtered = any(value is not None for value in (run, since, until)) or minimum > 1
        _print_report(groups, shown, filtered)
        if json_file is not None:
            console.print(Text(f"wrote {len(groups)} group(s) to {json_file}"))
    if scaffold is not None:
        _scaffold(groups, scaffold, shown, quiet=to_stdout)


def _print_report(groups: list[PatternGroup], top: int, filtered: bool) -> None:
    """The human report: a table of the top groups, then the top group's sample."""
    if not groups:
        console.print(Text("no uncaught failures" + (" match the filters" if filtered else "")))
        return
    occurrences = sum(group.count for group in groups)
    wide = console.width >= WIDE_TABLE_MIN_WIDTH
    console.print(render_table(groups[:top], len(groups), wide=wide))
    console.print(
        Text(f"{len(groups)} group(s), {occurrences} uncaught failure(s)"), highlight=False
    )
    console.print(render_sample(groups[0]))
