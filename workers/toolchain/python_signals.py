"""Signals read from a Python project's files: package manager, declared dependencies, pytest."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from workers.toolchain.base import read_text, string_list, table

PIP = "pip"
UV = "uv"
POETRY = "poetry"
PDM = "pdm"
HATCH = "hatch"

LOCKFILES: tuple[tuple[str, str], ...] = (
    ("uv.lock", UV),
    ("poetry.lock", POETRY),
    ("pdm.lock", PDM),
)
CONFIG_FILES: tuple[tuple[str, str], ...] = (
    ("uv.toml", UV),
    ("poetry.toml", POETRY),
    ("pdm.toml", PDM),
    ("hatch.toml", HATCH),
)
TOOL_TABLES: tuple[tuple[str, str], ...] = (
    ("uv", UV),
    ("poetry", POETRY),
    ("pdm", PDM),
    ("hatch", HATCH),
)
BUILD_BACKENDS: dict[str, str] = {
    "uv_build": UV,
    "poetry.core.masonry.api": POETRY,
    "poetry.masonry.api": POETRY,
    "pdm.backend": PDM,
    "pdm.pep517.api": PDM,
    "hatchling.build": HATCH,
}

REQUIREMENTS_FILES: tuple[str, ...] = (
    "requirements.txt",
    "requirements-dev.txt",
    "requirements-test.txt",
    "requirements_dev.txt",
    "requirements_test.txt",
    "dev-requirements.txt",
    "test-requirements.txt",
)
TEST_EXTRAS: tuple[str, ...] = ("dev", "test", "tests", "testing")

_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")


@dataclass(frozen=True, slots=True)
class Signal:
    """One piece of evidence pointing at a package manager."""

    manager: str
    reason: str
    lockfile: bool = False


def normalize_name(name: str) -> str:
    """Return a distribution name normalised as in PEP 503 (lowercase, runs of -_. become -)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str | None:
    """Return the normalised distribution name at the start of a PEP 508 requirement string."""
    match = _REQUIREMENT_NAME.match(requirement)
    return normalize_name(match.group(1)) if match else None


def package_manager_signals(directory: Path, pyproject: dict[str, object]) -> list[Signal]:
    """Return package manager evidence, strongest first: lockfiles, config, tool tables, backend."""
    signals: list[Signal] = []
    for filename, manager in LOCKFILES:
        if (directory / filename).is_file():
            signals.append(Signal(manager, f"{filename} lockfile present", lockfile=True))
    for filename, manager in CONFIG_FILES:
        if (directory / filename).is_file():
            signals.append(Signal(manager, f"{filename} config file present"))
    tool = table(pyproject, "tool")
    for key, manager in TOOL_TABLES:
        if isinstance(tool.get(key), dict):
            signals.append(Signal(manager, f"[tool.{key}] table in pyproject.toml"))
    backend = table(pyproject, "build-system").get("build-backend")
    if isinstance(backend, str) and backend in BUILD_BACKENDS:
        signals.append(
            Signal(BUILD_BACKENDS[backend], f"build-backend {backend!r} in pyproject.toml")
        )
    return signals


def _names_from_requirements(values: object) -> set[str]:
    """Return distribution names from a list of PEP 508 strings."""
    return {name for item in string_list(values) if (name := requirement_name(item))}


def _names_from_keys(values: object) -> set[str]:
    """Return distribution names from a Poetry-style {name: spec} table."""
    if not isinstance(values, dict):
        return set()
    return {normalize_name(key) for key in values if isinstance(key, str)}


def pyproject_dependency_names(pyproject: dict[str, object]) -> set[str]:
    """Return every distribution name the pyproject declares, in any dependency list or group."""
    project = table(pyproject, "project")
    names = _names_from_requirements(project.get("dependencies"))
    for values in table(project, "optional-dependencies").values():
        names |= _names_from_requirements(values)
    for values in table(pyproject, "dependency-groups").values():
        names |= _names_from_requirements(values)
    poetry = table(pyproject, "tool", "poetry")
    names |= _names_from_keys(poetry.get("dependencies"))
    names |= _names_from_keys(poetry.get("dev-dependencies"))
    for group in table(poetry, "group").values():
        if isinstance(group, dict):
            names |= _names_from_keys(group.get("dependencies"))
    for values in table(pyproject, "tool", "pdm", "dev-dependencies").values():
        names |= _names_from_requirements(values)
    names |= _names_from_requirements(table(pyproject, "tool", "uv").get("dev-dependencies"))
    for env in table(pyproject, "tool", "hatch", "envs").values():
        if isinstance(env, dict):
            names |= _names_from_requirements(env.get("dependencies"))
            names |= _names_from_requirements(env.get("extra-dependencies"))
    return names


def requirements_file_names(path: Path) -> set[str]:
    """Return the distribution names in a requirements file, skipping options and comments."""
    text = read_text(path)
    if text is None:
        return set()
    names: set[str] = set()
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        name = requirement_name(line)
        if name:
            names.add(name)
    return names


def declares_pytest(names: set[str]) -> bool:
    """Whether pytest, or a pytest plugin that pulls it in, is among the declared names."""
    return any(name == "pytest" or name.startswith("pytest-") for name in names)


def pytest_config_reasons(directory: Path, pyproject: dict[str, object]) -> list[str]:
    """Return reasons showing pytest is configured for this directory (empty when it is not)."""
    reasons: list[str] = []
    tool = table(pyproject, "tool")
    pytest_table = table(tool, "pytest")
    if pytest_table:
        key = "ini_options" if "ini_options" in pytest_table else None
        name = f"tool.pytest.{key}" if key else "tool.pytest"
        reasons.append(f"[{name}] table in pyproject.toml")
    for filename in ("pytest.ini", ".pytest.ini", "conftest.py"):
        if (directory / filename).is_file():
            reasons.append(f"{filename} present")
    for filename, section in (("tox.ini", "[pytest]"), ("setup.cfg", "[tool:pytest]")):
        text = read_text(directory / filename) if (directory / filename).is_file() else None
        if text is not None and section in text:
            reasons.append(f"{section} section in {filename}")
    for tests_dir in ("tests", "test"):
        if (directory / tests_dir / "conftest.py").is_file():
            reasons.append(f"{tests_dir}/conftest.py present")
    if (directory / "tests").is_dir():
        reasons.append("tests/ directory present")
    return reasons


def dev_extras(pyproject: dict[str, object]) -> list[str]:
    """Return the optional-dependency extras conventionally holding test and dev tools."""
    extras = table(pyproject, "project", "optional-dependencies")
    return [name for name in TEST_EXTRAS if name in extras]


def pip_installed_names(pyproject: dict[str, object], extras: list[str]) -> set[str]:
    """Return the names pip installs for the project with the given extras (no groups or tools)."""
    project = table(pyproject, "project")
    names = _names_from_requirements(project.get("dependencies"))
    optional = table(project, "optional-dependencies")
    for extra in extras:
        names |= _names_from_requirements(optional.get(extra))
    return names
