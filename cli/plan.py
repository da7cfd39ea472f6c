"""`autopack plan` commands: preview the phases a free-text or markdown plan becomes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from cli.common import console, fail
from shared.plans import DEFAULT_MIN_CONFIDENCE, NormalizedPlan, accept, normalize_plan
from workers.toolchain import detect

app = typer.Typer(
    help="Preview how a free-text or markdown plan becomes run phases.",
    no_args_is_help=True,
)


@app.callback()
def plan() -> None:
    """Preview how a free-text or markdown plan becomes run phases."""


def read_plan(path: Path) -> str:
    """The plan file's text, or exit 2 with a one-line reason."""
    if not path.exists():
        fail(f"plan file {str(path)!r} does not exist")
    if not path.is_file():
        fail(f"plan file {str(path)!r} is not a file")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        fail(f"{path}: cannot read the plan: {' '.join(str(error).split())}")


def _work(phase: dict[str, Any]) -> Text:
    """What a phase runs: its commands, its validate steps, or a patch marker."""
    if phase["kind"] == "shell":
        return Text("\n".join(phase["run"]))
    if phase["kind"] == "validate":
        return Text(f"steps: {', '.join(phase['steps'])}")
    return Text("(patch)")


def render_table(result: NormalizedPlan) -> Table:
    """A Rich table of the phases, one row each; cells are plain text, never markup."""
    table = Table(title="Phases", show_lines=True)
    table.add_column("ID", overflow="fold")
    table.add_column("Kind", no_wrap=True)
    table.add_column("Commands / steps", overflow="fold")
    table.add_column("Scope", overflow="fold")
    table.add_column("Cwd", overflow="fold")
    for phase in result.phases:
        scope = "\n".join(phase.get("scope") or []) or "-"
        table.add_row(
            Text(phase["id"]),
            Text(phase["kind"]),
            _work(phase),
            Text(scope),
            Text(phase.get("cwd") or "-"),
        )
    return table


def _print_section(title: str, items: list[str]) -> None:
    """A titled bullet list, or the title with 'none'."""
    console.print(Text(f"{title}:" if items else f"{title}: none", style="bold"))
    for item in items:
        console.print(Text(f"  - {item}"))


@app.command("normalize")
def normalize_command(
    file: Annotated[Path, typer.Argument(help="Plan file (free text or markdown).")],
    repo: Annotated[
        Path | None,
        typer.Option("--repo", help="Checkout whose toolchains confirm the validate phases."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the normalized plan as JSON instead.")
    ] = False,
) -> None:
    """Preview the phases FILE would become; --repo enables toolchain detection there."""
    text = read_plan(file)
    if repo is not None and not repo.is_dir():
        fail(f"--repo {str(repo)!r} is not a directory")
    result = normalize_plan(text, worktree=repo, detect=detect if repo is not None else None)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    if result.phases:
        console.print(render_table(result))
    else:
        console.print(Text("No phases.", style="bold"))
    console.print(Text(f"confidence: {result.confidence:.2f}", style="bold"))
    _print_section("warnings", result.warnings)
    _print_section("decisions", result.decisions)
    _print_section("deliverables", result.deliverables)
    console.print(Text(f"scope size: {result.scope_size_bytes} bytes"))
    refusal = accept(result, DEFAULT_MIN_CONFIDENCE)
    verdict = f"would be refused: {refusal}" if refusal else "would run"
    console.print(Text(f"verdict (min confidence {DEFAULT_MIN_CONFIDENCE:.2f}): {verdict}"))
