"""Helpers shared by the built-in failure patterns: safe entry points, output and tree access."""

from __future__ import annotations

import configparser
import logging
import os
import re
import shlex
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from shared.failures import split_output_lines
from workers.hardening.base import FailureContext, MitigationResult
from workers.toolchain import is_skipped_directory
from workers.toolchain.base import read_text, read_toml, string_list, table
from workers.toolchain.python_signals import normalize_name, requirement_name

logger = logging.getLogger(__name__)

# Bounds that keep tree scans cheap on large monorepos.
MAX_SCAN_DEPTH = 6
MAX_SCAN_DIRECTORIES = 5000


class BasePattern:
    """A pattern whose detector and mitigation never raise: errors become "not detected" or a suggestion."""

    pattern_id: str = ""
    name: str = ""
    priority: int = 100
    max_applications: int = 1

    def detect(self, ctx: FailureContext) -> bool:
        """Whether this pattern explains the failure."""
        try:
            return self._detect(ctx)
        except Exception:
            logger.warning("detector of %s failed on odd input", self.pattern_id, exc_info=True)
            return False

    def mitigate(self, ctx: FailureContext) -> MitigationResult:
        """Act in the worktree so that a retry can succeed; report what was done."""
        try:
            return self._mitigate(ctx)
        except Exception as error:
            logger.warning("mitigation of %s failed", self.pattern_id, exc_info=True)
            return MitigationResult(suggestions=[f"{self.pattern_id} could not act: {error}"])

    def _detect(self, ctx: FailureContext) -> bool:
        """The pattern's detector; may raise on input it did not foresee."""
        raise NotImplementedError

    def _mitigate(self, ctx: FailureContext) -> MitigationResult:
        """The pattern's mitigation; may raise when the worktree is not as expected."""
        raise NotImplementedError


def output_lines(ctx: FailureContext) -> list[str]:
    """The attempt's output as ANSI-free lines, stripped, empty ones dropped."""
    return [line.strip() for line in split_output_lines(ctx.output) if line.strip()]


def last_match(patterns: Iterable[re.Pattern[str]], lines: list[str]) -> re.Match[str] | None:
    """The match of the latest line any pattern matches (the newest error is the one that failed)."""
    compiled = tuple(patterns)
    for line in reversed(lines):
        for pattern in compiled:
            match = pattern.search(line)
            if match is not None:
                return match
    return None


def failing_command(ctx: FailureContext) -> str:
    """The command that failed: the last one the log shows starting, else the last one."""
    if not ctx.commands:
        return ""
    firsts = {(command.splitlines() or [""])[0].strip(): command for command in ctx.commands}
    for line in reversed(output_lines(ctx)):
        if line.startswith("$ ") and line[2:].strip() in firsts:
            return firsts[line[2:].strip()]
    return ctx.commands[-1]


def split_words(command: str) -> list[str]:
    """Shell words of a command, tolerating unbalanced quotes."""
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def inside(root: Path, path: Path) -> Path | None:
    """path fully resolved (symlinks and `..` included) when it stays inside root, else None."""
    try:
        resolved_root = root.resolve()
        resolved = path.resolve()
    except (OSError, RuntimeError):
        return None
    return resolved if resolved.is_relative_to(resolved_root) else None


def relative(root: Path, path: Path) -> str:
    """path relative to root in POSIX form, "." for root itself."""
    text = path.resolve().relative_to(root.resolve()).as_posix()
    return text or "."


def ancestors(start: Path, stop: Path) -> list[Path]:
    """start and its parents up to stop (inclusive), nearest first; empty when start is outside stop."""
    current = inside(stop, start)
    root = stop.resolve()
    if current is None:
        return []
    found = [current]
    while current != root:
        current = current.parent
        found.append(current)
    return found


def walk_directories(root: Path, max_depth: int = MAX_SCAN_DEPTH) -> Iterator[Path]:
    """root and its non-vendored, non-hidden subdirectories, breadth-first and bounded."""
    pending: deque[tuple[Path, int]] = deque([(root, 0)])
    seen = 0
    while pending and seen < MAX_SCAN_DIRECTORIES:
        directory, depth = pending.popleft()
        seen += 1
        yield directory
        if depth >= max_depth:
            continue
        try:
            with os.scandir(directory) as entries:
                names = sorted(
                    entry.name
                    for entry in entries
                    if entry.is_dir(follow_symlinks=False) and not is_skipped_directory(entry.name)
                )
        except OSError:
            continue
        pending.extend((directory / name, depth + 1) for name in names)


def tail(text: str, max_lines: int = 6, max_chars: int = 600) -> str:
    """The last few non-empty lines of command output, for a suggestion."""
    lines = [line for line in split_output_lines(text) if line.strip()]
    joined = " | ".join(lines[-max_lines:])
    return joined[-max_chars:]


# --- What a Python project declares (requirements files, pyproject.toml, setup.cfg/setup.py) ---

_ARCHIVE: Final = re.compile(r"^([A-Za-z0-9][\w.-]*?)-v?\d[^/]*\.(?:whl|tar\.gz|tgz|zip)$")
_EGG: Final = re.compile(r"[#&]egg=([A-Za-z0-9][\w.-]*)")
_INCLUDE: Final = re.compile(r"^(?:-r|--requirement)(?:\s+|=|(?=\S))(\S+)")
_SETUP_PY_REQUIRES: Final = re.compile(r"install_requires\s*=\s*\[(.*?)\]", re.DOTALL)
_MAX_INCLUDE_DEPTH = 5


@dataclass(frozen=True)
class Declared:
    """Where the project declares the missing module's distribution, and how to install it."""

    directory: Path
    source: str  # the declaring file, relative to directory
    extra: str | None = None  # the extra or group that declares it
    group: bool = False  # a Poetry / PEP 735 dependency group rather than an extra
    requirements: tuple[str, ...] = ()  # PEP 508 strings pip can install without a build
    packaged: bool = False  # the directory builds a distribution (pip install -e . works)


def local_project_name(directory: Path) -> str | None:
    """The distribution a local project directory builds: its pyproject/setup.cfg name, else its folder name."""
    if not directory.is_dir():
        return None
    pyproject = read_toml(directory / "pyproject.toml").data
    project = table(pyproject, "project")
    if isinstance(project.get("name"), str):
        return normalize_name(str(project["name"]))
    poetry = table(table(pyproject, "tool"), "poetry")
    if isinstance(poetry.get("name"), str):
        return normalize_name(str(poetry["name"]))
    setup_cfg = read_text(directory / "setup.cfg") or ""
    match = re.search(r"^\[metadata\][^\[]*?^name\s*=\s*(\S+)", setup_cfg, re.M | re.S)
    if match:
        return normalize_name(match.group(1))
    return normalize_name(directory.name)


def line_name(line: str, base: Path | None = None) -> str | None:
    """The distribution one requirements line names (`name>=1`, `name @ url`, wheel path, local dir, `#egg=`)."""
    egg = _EGG.search(line)
    if egg:
        return normalize_name(egg.group(1))
    first = line.split(";", 1)[0].split()[0] if line.split() else ""
    archive = _ARCHIVE.match(first.rstrip("/").rsplit("/", 1)[-1])
    if archive and ("/" in first or archive.group(0) == first):
        return normalize_name(archive.group(1))
    if base is not None and (first.startswith((".", "/")) or "/" in first) and ":" not in first:
        return local_project_name((base / first).resolve())
    if "/" in first or first.startswith((".", "~")) or ":" in first.split("@", 1)[0]:
        return None  # a bare URL names no distribution we can read
    return requirement_name(line)


def requirements_names(path: Path, seen: set[Path] | None = None, depth: int = 0) -> set[str]:
    """Distribution names a requirements file declares, following `-r` includes."""
    seen = set() if seen is None else seen
    text = read_text(path) if depth <= _MAX_INCLUDE_DEPTH and path not in seen else None
    if text is None:
        return set()
    seen.add(path)
    names: set[str] = set()
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        include = _INCLUDE.match(line)
        if include:
            names |= requirements_names(path.parent / include.group(1), seen, depth + 1)
            continue
        line = re.sub(r"^(?:-e|--editable)\s+", "", line)
        if line and not line.startswith(("#", "-")) and (name := line_name(line, path.parent)):
            names.add(name)
    return names


def _from_requirements(directory: Path, wanted: set[str]) -> Declared | None:
    """The first requirements file of directory (requirements.txt first) declaring a wanted name."""
    files = {*directory.glob("*requirements*.txt"), *directory.glob("requirements/*.txt")}
    ordered = sorted(files, key=lambda p: (p.name != "requirements.txt", p.as_posix()))[:20]
    for path in ordered:
        if wanted & requirements_names(path):
            return Declared(directory, path.relative_to(directory).as_posix())
    return None


def _names(requirements: list[str]) -> set[str]:
    """Normalised names of PEP 508 requirement strings."""
    return {name for item in requirements if (name := requirement_name(item))}


def _from_pyproject(directory: Path, wanted: set[str]) -> Declared | None:
    """A declaration in pyproject.toml: dependencies, extras, PEP 735 and Poetry groups, or the project itself."""
    path = directory / "pyproject.toml"
    if not path.is_file():
        return None
    data = read_toml(path).data
    project, poetry = table(data, "project"), table(data, "tool", "poetry")
    packaged = bool(table(data, "build-system")) or (directory / "setup.py").is_file()
    base = string_list(project.get("dependencies"))
    sections: list[tuple[str | None, bool, list[str], set[str]]] = [
        (None, False, base, _names(base))
    ]
    for option, values in table(project, "optional-dependencies").items():
        sections.append((option, False, base + string_list(values), _names(string_list(values))))
    for group_name, values in table(data, "dependency-groups").items():
        sections.append((group_name, True, string_list(values), _names(string_list(values))))
    poetry_groups = {"dev": poetry.get("dev-dependencies")} | {
        name: group.get("dependencies")
        for name, group in table(poetry, "group").items()
        if isinstance(group, dict)
    }
    for poetry_group, keys in [(None, poetry.get("dependencies")), *poetry_groups.items()]:
        keyed = {normalize_name(key) for key in keys} if isinstance(keys, dict) else set()
        sections.append((poetry_group, poetry_group is not None, [], keyed))
    for label, is_group, requirements, names in sections:
        if wanted & names:
            return Declared(
                directory, "pyproject.toml", label, is_group, tuple(requirements), packaged
            )
    own = {project.get("name"), poetry.get("name")}
    if wanted & {normalize_name(name) for name in own if isinstance(name, str)}:
        return Declared(directory, "pyproject.toml", packaged=packaged)
    return None


def _from_setup(directory: Path, wanted: set[str]) -> Declared | None:
    """A declaration in setup.cfg install_requires (or a literal list in setup.py), or the project itself."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(read_text(directory / "setup.cfg") or "")
    except configparser.Error:
        return None
    requires = parser.get("options", "install_requires", fallback="").splitlines()
    setup_py = read_text(directory / "setup.py") or ""
    listed = _SETUP_PY_REQUIRES.search(setup_py)
    requires += re.findall(r"['\"]([^'\"]+)['\"]", listed.group(1)) if listed else []
    requires = [line.strip() for line in requires if line.strip()]
    own = parser.get("metadata", "name", fallback="")
    if not (setup_py or parser.sections()):
        return None
    if wanted & (_names(requires) | ({normalize_name(own)} if own else set())):
        source = "setup.cfg" if parser.sections() else "setup.py"
        return Declared(directory, source, requirements=tuple(requires), packaged=True)
    return None


def find_declaration(ctx: FailureContext, wanted: set[str]) -> Declared | None:
    """The nearest declaration of one of the wanted names, from the phase's cwd up to the worktree."""
    for directory in ancestors(ctx.cwd, ctx.worktree):
        for reader in (_from_requirements, _from_pyproject, _from_setup):
            found = reader(directory, wanted)
            if found is not None:
                return found
    return None
