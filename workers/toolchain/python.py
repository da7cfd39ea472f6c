"""Python adapter: pip/requirements, uv, poetry, pdm and hatch projects."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from workers.toolchain.base import (
    MALFORMED_CONFIDENCE,
    TOOLCHAIN_PYTHON,
    ToolchainDetection,
    clamp_confidence,
    existing,
    not_detected,
    read_toml,
    table,
)
from workers.toolchain.python_signals import (
    HATCH,
    PDM,
    PIP,
    POETRY,
    REQUIREMENTS_FILES,
    UV,
    declares_pytest,
    dev_extras,
    package_manager_signals,
    pip_installed_names,
    pyproject_dependency_names,
    pytest_config_reasons,
    requirements_file_names,
)

# Prefix that runs a command inside the environment each manager maintains.
RUN_PREFIX: dict[str, str] = {
    UV: "uv run ",
    POETRY: "poetry run ",
    PDM: "pdm run ",
    HATCH: "hatch run ",
}
INSTALL: dict[str, str] = {
    UV: "uv sync",
    POETRY: "poetry install",
    PDM: "pdm install",
    HATCH: "hatch env create",
}


@dataclass(slots=True)
class _Manifests:
    """What the Python manifests in one directory say, gathered before choosing commands."""

    reasons: list[str] = field(default_factory=list)
    pyproject: dict[str, object] = field(default_factory=dict)
    score: float = 0.0
    malformed: bool = False
    installable: bool = False
    packaged: bool = False
    requirements: list[str] = field(default_factory=list)


def _read_manifests(directory: Path) -> _Manifests:
    """Read pyproject.toml, setup.py/setup.cfg and requirements files into a _Manifests."""
    found = _Manifests()
    path = directory / "pyproject.toml"
    if path.is_file():
        parsed = read_toml(path)
        if not parsed.ok:
            found.score = MALFORMED_CONFIDENCE
            found.malformed = True
            found.reasons.append(f"pyproject.toml could not be parsed: {parsed.error}")
        else:
            found.pyproject = parsed.data
            poetry = table(parsed.data, "tool", "poetry")
            declares = bool(table(parsed.data, "project")) or bool(poetry)
            has_backend = bool(table(parsed.data, "build-system"))
            if declares or has_backend:
                found.score = 0.8
                found.installable = True
                found.packaged = has_backend or (
                    bool(poetry) and poetry.get("package-mode") is not False
                )
                found.reasons.append("pyproject.toml declares a Python project")
            else:
                found.score = 0.5
                found.reasons.append(
                    "pyproject.toml present but declares no project or build system"
                )
    for filename, score in (("setup.py", 0.75), ("setup.cfg", 0.7)):
        if (directory / filename).is_file():
            found.score = max(found.score, score)
            found.installable = found.packaged = True
            found.reasons.append(f"{filename} present")
    found.requirements = existing(directory, REQUIREMENTS_FILES)
    if found.requirements:
        found.score = max(found.score, 0.6)
        found.reasons.append(f"{', '.join(found.requirements)} present")
    return found


def _pip_install(directory: Path, found: _Manifests, use_pytest: bool) -> tuple[str, ...]:
    """Return pip commands that install the project and its test tools into the active env."""
    commands = [f"python -m pip install -r {name}" for name in found.requirements]
    extras = dev_extras(found.pyproject) if found.installable else []
    if found.installable:
        target = f'".[{",".join(extras)}]"' if extras else "."
        commands.append(f"python -m pip install -e {target}")
    installed = pip_installed_names(found.pyproject, extras)
    for name in found.requirements:
        installed |= requirements_file_names(directory / name)
    if use_pytest and not declares_pytest(installed):
        commands.append("python -m pip install pytest")
    return tuple(commands)


def _commands(
    manager: str, directory: Path, found: _Manifests, use_pytest: bool
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Return (install, build, test, smoke) commands for the chosen package manager."""
    if manager == PIP:
        install = _pip_install(directory, found, use_pytest)
        build = ("python -m pip wheel --no-deps --wheel-dir dist .",) if found.packaged else ()
        test = "python -m pytest" if use_pytest else "python -m unittest discover"
        return install, build, (test,), ("python --version", "python -m pip --version")
    prefix = RUN_PREFIX[manager]
    build = (f"{manager} build",) if found.packaged else ()
    if use_pytest:
        test = "hatch test" if manager == HATCH else f"{prefix}pytest"
    else:
        test = f"{prefix}python -m unittest discover"
    smoke = (f"{manager} --version", f"{prefix}python --version")
    return (INSTALL[manager],), build, (test,), smoke


def inspect_python(directory: Path, relative: str = ".") -> ToolchainDetection:
    """Detect a Python project in directory and propose the commands to set up and test it."""
    found = _read_manifests(directory)
    if found.score == 0.0:
        return not_detected(TOOLCHAIN_PYTHON, relative)
    reasons = found.reasons
    confidence = found.score

    signals = package_manager_signals(directory, found.pyproject)
    reasons.extend(signal.reason for signal in signals)
    if signals:
        manager = signals[0].manager
        others = sorted({signal.manager for signal in signals} - {manager})
        if others:
            reasons.append(
                f"conflicting package manager signals ({', '.join(others)}); using {manager}"
            )
        confidence += 0.15 if signals[0].lockfile else 0.05
    else:
        manager = PIP
        reasons.append("no lockfile or package manager config; using pip")

    names = pyproject_dependency_names(found.pyproject)
    for name in found.requirements:
        names |= requirements_file_names(directory / name)
    pytest_reasons = pytest_config_reasons(directory, found.pyproject)
    if declares_pytest(names):
        pytest_reasons.append("pytest declared as a dependency")
    use_pytest = bool(pytest_reasons)
    if use_pytest:
        reasons.extend(pytest_reasons)
        confidence += 0.05
    else:
        reasons.append("pytest neither declared nor configured; using unittest")

    if found.malformed:
        confidence = min(confidence, MALFORMED_CONFIDENCE + 0.1)
    install, build, test, smoke = _commands(manager, directory, found, use_pytest)
    return ToolchainDetection(
        toolchain=TOOLCHAIN_PYTHON,
        directory=relative,
        detected=True,
        confidence=clamp_confidence(confidence),
        reasons=tuple(reasons),
        package_manager=manager,
        install=install,
        build=build,
        test=test,
        smoke=smoke,
    )
