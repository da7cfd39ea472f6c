"""Scaffold failure-pattern plugins from uncaught-failure groups: module, test and registration notes."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final

from shared.analysis.patterns import PatternGroup
from shared.failures import FailureClass

__all__ = [
    "ENTRY_POINT_GROUP",
    "PYPROJECT_SNIPPET",
    "README",
    "detection_regex",
    "pattern_class_name",
    "scaffold_patterns",
]

logger = logging.getLogger(__name__)

# Mirrors workers.hardening.registry.ENTRY_POINT_GROUP; shared may not import workers.
ENTRY_POINT_GROUP: Final = "autopack.failure_patterns"
README: Final = "README.md"
PYPROJECT_SNIPPET: Final = "pyproject-snippet.toml"

# The placeholders normalize_error_message writes; other `<word>` text (e.g. `<module>` in
# a traceback) is real message content and stays literal.
_PLACEHOLDERS: Final = ("time", "url", "path", "tmp", "addr", "hash", "line", "n", "name")
_TOKEN: Final = re.compile(r"('<name>'|<(?:" + "|".join(_PLACEHOLDERS) + r")>|\s+)")
_ANY: Final = ".+?"
# `'<name>'` stands for a name in single or double quotes; \x22/\x27 keep the regex free
# of quote characters so it can be written as a raw string literal.
_QUOTED: Final = r"[\x22\x27].+?[\x22\x27]"
_UNRELATED_MESSAGE: Final = "the build finished without any complaint"


def detection_regex(normalized_message: str) -> str:
    """A regex matching raw messages that normalize to normalized_message (placeholders become `.+?`)."""
    parts: list[str] = []
    for piece in _TOKEN.split(normalized_message.strip()):
        if not piece:
            continue
        if piece == "'<name>'":
            parts.append(_QUOTED)
        elif piece.startswith("<") and piece.endswith(">") and piece[1:-1] in _PLACEHOLDERS:
            parts.append(_ANY)
        elif piece.isspace():
            parts.append(r"\s+")
        else:
            parts.append(re.escape(piece))
    # an empty message must not turn into a detector that matches every failure
    return "".join(parts) or r"\A\Z"


def pattern_class_name(pattern_id: str) -> str:
    """`file_not_found_no_such_1a2b3c4d` -> `FileNotFoundNoSuch1a2b3c4dPattern`."""
    words = [word for word in re.split(r"[^A-Za-z0-9]+", pattern_id) if word]
    name = "".join(word[:1].upper() + word[1:] for word in words) or "Scaffolded"
    if not name[0].isalpha():
        name = f"P{name}"
    return f"{name}Pattern"


def _literal(text: str) -> str:
    """A Python string literal for text, double-quoted when that needs no escaping."""
    literal = repr(text)
    if literal.startswith("'") and '"' not in text and "'" not in text:
        literal = f'"{literal[1:-1]}"'
    return literal


def _regex_literal(pattern: str) -> str:
    """A raw string literal for the regex when it can be one, else an ordinary literal."""
    # a raw literal's value is its source text, except that it cannot hold its own quote
    # character or end in a backslash
    raw_safe = pattern.isprintable() and '"' not in pattern and not pattern.endswith("\\")
    return f'r"{pattern}"' if raw_safe else _literal(pattern)


def _compile_line(regex: str) -> str:
    """The MESSAGE_PATTERN assignment, wrapped the way formatters do when it is too long."""
    line = f"MESSAGE_PATTERN: Final = re.compile({_regex_literal(regex)})"
    if len(line) <= 100:
        return line
    return f"MESSAGE_PATTERN: Final = re.compile(\n    {_regex_literal(regex)}\n)"


def _failure_class(value: str) -> str:
    """The stored failure class when FailureClass knows it, else `unknown`."""
    known = {member.value for member in FailureClass}
    return value if value in known else FailureClass.UNKNOWN.value


def _import(module: str, name: str) -> str:
    """`from module import name`, wrapped the way formatters do when it is too long."""
    line = f"from {module} import {name}"
    return line if len(line) <= 100 else f"from {module} import (\n    {name},\n)"


def _registration(pattern_id: str, class_name: str) -> str:
    """The entry-point line registering one scaffolded module as a top-level module."""
    return f'{pattern_id} = "{pattern_id}:{class_name}"'


def render_module(group: PatternGroup) -> str:
    """The source of a pattern module detecting the group's failure, with a mitigation to write."""
    pattern_id = group.suggested_pattern_id
    class_name = pattern_class_name(pattern_id)
    regex = detection_regex(group.normalized_message)
    name = f"{group.error_type}: {group.normalized_message}"[:120]
    todo = (
        f"TODO: write a deterministic fix for {pattern_id} "
        f"(seen {group.count} times, {group.confidence} confidence)"
    )
    return f'''"""A failure pattern scaffolded by `autopack patterns --scaffold`: write its `mitigate`.

Pattern id: `{pattern_id}`. Register it in the pyproject.toml of the distribution that
ships this module (adjust the module path if it lives in a package), then reinstall it:

    [project.entry-points."{ENTRY_POINT_GROUP}"]
    {_registration(pattern_id, class_name)}
"""

from __future__ import annotations

import re
from typing import Final

from shared.failures import strip_ansi
from workers.hardening.base import FailureContext, MitigationResult

# What the pattern was scaffolded from. The regex keeps the message's wording and lets each
# placeholder (<path>, <line>, ...) match whatever the next occurrence has in its place.
NORMALIZED_MESSAGE: Final = {_literal(group.normalized_message)}
ERROR_TYPE: Final = {_literal(group.error_type)}
FAILURE_CLASS: Final = {_literal(group.failure_class)}
OCCURRENCES: Final = {group.count}
FIRST_SEEN: Final = {_literal(group.first_seen.isoformat())}
LAST_SEEN: Final = {_literal(group.last_seen.isoformat())}
{_compile_line(regex)}
TODO: Final = {_literal(todo)}


class {class_name}:
    """Recognises the failure it was scaffolded from; its mitigation is still to be written."""

    pattern_id = {_literal(pattern_id)}
    name = {_literal(name)}
    priority = 100

    def detect(self, ctx: FailureContext) -> bool:
        """Whether the failure's error message has the recorded shape."""
        return MESSAGE_PATTERN.search(strip_ansi(ctx.failure.message)) is not None

    def mitigate(self, ctx: FailureContext) -> MitigationResult:
        """TODO: act in ctx.worktree so that a retry can pass, then report changed=True."""
        return MitigationResult(suggestions=[TODO], changed=False)
'''


def render_test(group: PatternGroup) -> str:
    """The source of a pytest module feeding the group's real sample through the detector."""
    pattern_id = group.suggested_pattern_id
    class_name = pattern_class_name(pattern_id)
    regex = re.compile(detection_regex(group.normalized_message))
    # a detector reduced to placeholders matches anything, so that test would fail as written
    negative = (
        ""
        if regex.search(_UNRELATED_MESSAGE)
        else """

def test_detect_ignores_unrelated_failure() -> None:
    assert PATTERN.detect(failure_context(UNRELATED, UNRELATED)) is False
"""
    )
    return f'''"""Generated test: the detector must recognise the failure it was scaffolded from."""

from __future__ import annotations

from pathlib import Path

from shared.failures import FailureClass, FailureInfo, compute_signature, normalize_error_message
from workers.hardening.base import CommandOutcome, FailureContext

{_import(pattern_id, class_name)}

# A real occurrence recorded in error_logs.
SAMPLE_RUN_ID = {_literal(group.sample.run_id)}
SAMPLE_PHASE_ID = {_literal(group.sample.phase_id)}
SAMPLE_MESSAGE = {_literal(group.sample.message)}
SAMPLE_OUTPUT = {_literal(group.sample.excerpt)}
UNRELATED = {_literal(_UNRELATED_MESSAGE)}
PATTERN = {class_name}()


class NoShell:
    """A shell detectors must never need."""

    def run(
        self, command: str, *, cwd: Path | None = None, timeout_s: float = 600
    ) -> CommandOutcome:
        """Fail the test: detection has to be side-effect free."""
        raise AssertionError(f"detect ran a command: {{command}}")


def failure_context(message: str, output: str) -> FailureContext:
    """A failure context around message, as the executor would build it."""
    normalized = normalize_error_message(message)
    failure = FailureInfo(
        failure_class=FailureClass({_literal(_failure_class(group.failure_class))}),
        error_type={_literal(group.error_type)},
        message=message,
        normalized_message=normalized,
        signature=compute_signature(normalized),
        sample=output,
    )
    return FailureContext(
        run_id=SAMPLE_RUN_ID,
        phase_id=SAMPLE_PHASE_ID,
        attempt=1,
        worktree=Path.cwd(),
        cwd=Path.cwd(),
        commands=("true",),
        exit_code=1,
        signal=None,
        timed_out=False,
        output=output,
        failure=failure,
        scope=(),
        outside_scope=(),
        env={{}},
        shell=NoShell(),
    )


def test_detect_matches_recorded_sample() -> None:
    assert PATTERN.detect(failure_context(SAMPLE_MESSAGE, SAMPLE_OUTPUT)) is True
{negative}

def test_mitigate_reports_todo_without_changes() -> None:
    result = PATTERN.mitigate(failure_context(SAMPLE_MESSAGE, SAMPLE_OUTPUT))
    assert result.changed is False
    assert result.suggestions and result.suggestions[0].startswith("TODO")
'''


def render_readme(groups: Sequence[PatternGroup]) -> str:
    """How to finish, test and register the scaffolded patterns."""
    rows = "\n".join(
        f"| `{g.suggested_pattern_id}` | `{pattern_class_name(g.suggested_pattern_id)}` "
        f"| {g.error_type} | {g.failure_class} | {g.count} | {g.confidence} |"
        for g in groups
    )
    return f"""# Scaffolded failure patterns

Generated by `autopack patterns --scaffold` from failures no hardening pattern caught.
Each `<id>.py` detects one group of failures by its normalized error message; its
`mitigate` is a TODO that changes nothing until you write it.

| id | class | error type | failure class | count | confidence |
|----|-------|------------|---------------|-------|------------|
{rows}

## Finish a pattern

1. Write `mitigate`: act in `ctx.worktree` (use `ctx.shell.run(...)` for commands, so they
   land in the attempt log), list what you did in `actions_taken` and set `changed=True`.
   Set `give_up_reason` instead when retrying cannot help.
2. Tighten `detect` if the regex is broader than the failure you mean; lower `priority`
   (1 is tried first) only when the pattern must run before the built-in ones.
3. Run the generated tests: `python -m pytest {{this directory}}`.

## Register

Autopack loads plugins from the `{ENTRY_POINT_GROUP}` entry-point group. Add the lines of
`{PYPROJECT_SNIPPET}` to the `pyproject.toml` of the distribution that ships these modules
(prefix the module path with its package, e.g. `mypkg.<id>:<ClassName>`) and reinstall it:

```toml
{_snippet(groups)}```
"""


def _snippet(groups: Iterable[PatternGroup]) -> str:
    """The entry-point table registering the groups' modules."""
    lines = [f'[project.entry-points."{ENTRY_POINT_GROUP}"]']
    lines += [
        _registration(g.suggested_pattern_id, pattern_class_name(g.suggested_pattern_id))
        for g in groups
    ]
    return "\n".join(lines) + "\n"


def _write_new(path: Path, text: str, on_skip: Callable[[Path], None] | None) -> bool:
    """Create path with text unless it already exists (exclusive create: never overwrites)."""
    try:
        with path.open("x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        logger.info("scaffold: %s exists; left as it is", path)
        if on_skip is not None:
            on_skip(path)
        return False
    return True


def scaffold_patterns(
    groups: Sequence[PatternGroup],
    directory: Path,
    top: int,
    *,
    on_skip: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Write a pattern module and its test for each of the top groups, plus registration notes; returns the new files."""
    if top < 0:
        raise ValueError(f"top must be >= 0, got {top}")
    chosen: list[PatternGroup] = []
    seen: set[str] = set()
    for group in groups:
        if len(chosen) == top:
            break
        # groups differing only by failure class share an id; the more frequent one wins
        if group.suggested_pattern_id not in seen:
            seen.add(group.suggested_pattern_id)
            chosen.append(group)
    if not chosen:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    files: list[tuple[Path, str]] = []
    for group in chosen:
        files.append((directory / f"{group.suggested_pattern_id}.py", render_module(group)))
        files.append((directory / f"test_{group.suggested_pattern_id}.py", render_test(group)))
    files.append((directory / README, render_readme(chosen)))
    files.append(
        (
            directory / PYPROJECT_SNIPPET,
            "# Add to the pyproject.toml of the distribution shipping these modules.\n"
            + _snippet(chosen),
        )
    )
    for path, text in files:
        if _write_new(path, text, on_skip):
            written.append(path)
    return written
