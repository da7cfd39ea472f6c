"""`autopack toolchain` commands: detect the toolchains of a checkout and the commands to run."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from workers.toolchain import ToolchainDetection, detect
from workers.toolchain.detect import DEFAULT_MAX_DEPTH

app = typer.Typer(
    help="Detect project toolchains and the commands to install, build and test them.",
    no_args_is_help=True,
)

EXIT_BAD_PATH = 2


@app.callback()
def toolchain() -> None:
    """Detect project toolchains and the commands to install, build and test them."""


# Below this console width the eight-column table is unreadable, so a compact one is used.
WIDE_TABLE_MIN_WIDTH = 140


def _lines(values: tuple[str, ...]) -> Text:
    """Return values as one plain (markup-free) table cell, one value per line."""
    return Text("\n".join(values) if values else "-")


def _details(item: ToolchainDetection) -> Text:
    """Return reasons and commands of a detection as one labelled cell for narrow consoles."""
    details = Text()
    sections = (
        ("reasons", item.reasons),
        ("install", item.install),
        ("build", item.build),
        ("test", item.test),
    )
    for label, values in sections:
        if details:
            details.append("\n")
        details.append(f"{label}:", style="bold")
        for value in values or ("-",):
            details.append(f"\n  {value}")
    return details


def render_table(root: Path, detections: list[ToolchainDetection], *, wide: bool) -> Table:
    """Return a Rich table of the detections under root, one column per field when wide."""
    table = Table(title=f"Toolchains in {root}", show_lines=True)
    table.add_column("Directory", overflow="fold")
    table.add_column("Toolchain", no_wrap=True)
    table.add_column("Package manager" if wide else "PM", no_wrap=True)
    table.add_column("Confidence" if wide else "Conf.", justify="right", no_wrap=True)
    detail_columns = ("Reasons", "Install", "Build", "Test") if wide else ("Details",)
    for name in detail_columns:
        table.add_column(name, overflow="fold")
    for item in detections:
        summary = (
            Text(item.directory),
            Text(item.toolchain),
            Text(item.package_manager or "-"),
            Text(f"{item.confidence:.2f}"),
        )
        if wide:
            details = (
                _lines(item.reasons),
                _lines(item.install),
                _lines(item.build),
                _lines(item.test),
            )
            table.add_row(*summary, *details)
        else:
            table.add_row(*summary, _details(item))
    return table


@app.command("detect")
def detect_command(
    path: Annotated[Path, typer.Argument(help="Repository checkout or directory to scan.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the detections as JSON instead of a table.")
    ] = False,
    max_depth: Annotated[
        int, typer.Option("--max-depth", min=0, help="How many directory levels to descend.")
    ] = DEFAULT_MAX_DEPTH,
) -> None:
    """Detect the toolchains under PATH and the commands proposed for each directory."""
    if not path.exists():
        typer.echo(f"error: {path} does not exist", err=True)
        raise typer.Exit(code=EXIT_BAD_PATH)
    if not path.is_dir():
        typer.echo(f"error: {path} is not a directory", err=True)
        raise typer.Exit(code=EXIT_BAD_PATH)
    detections = detect(path, max_depth=max_depth)
    if as_json:
        payload = {
            "root": str(path.resolve()),
            "detections": [item.to_dict() for item in detections],
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    console = Console()
    if not detections:
        console.print(Text(f"No toolchain detected under {path}"))
        return
    wide = console.width >= WIDE_TABLE_MIN_WIDTH
    console.print(render_table(path, detections, wide=wide))
