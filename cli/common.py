"""Helpers shared by the CLI commands: one-line errors, spec loading, settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console

from shared.runs.spec import RunCreate

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print one line to stderr and exit with code (2: bad input)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def field_path(loc: tuple[int | str, ...]) -> str:
    """('phases', 1, 'id') -> 'phases[1].id'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def describe_validation(error: ValidationError) -> str:
    """All of a pydantic error's problems on one line, each with its field path."""
    return "; ".join(f"{field_path(e['loc']) or 'spec'}: {e['msg']}" for e in error.errors())


def read_spec_data(path: Path) -> dict[str, Any]:
    """Parse a run file (YAML or JSON) into a mapping, or exit 2 saying why."""
    if not path.is_file():
        fail(f"run file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        fail(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {first}")
    if not isinstance(data, dict):
        fail(f"{path}: a run file must be a mapping with repo, goal and phases")
    return data


def load_spec(path: Path) -> RunCreate:
    """A validated run spec from a file, or exit 2 with the field paths."""
    data = read_spec_data(path)
    try:
        return RunCreate.model_validate(data)
    except ValidationError as error:
        fail(f"{path}: {describe_validation(error)}")
