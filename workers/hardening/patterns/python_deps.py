"""python_missing_dep: an import failed for a module the project declares; install what it declares."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Final

from workers.hardening.base import FailureContext, MitigationResult
from workers.hardening.patterns.common import (
    BasePattern,
    Declared,
    failing_command,
    find_declaration,
    last_match,
    output_lines,
    split_words,
    tail,
)
from workers.toolchain import inspect_python
from workers.toolchain.python_signals import normalize_name

_MISSING: Final = (
    re.compile(r"No module named ['\"]?(?P<module>[A-Za-z_][\w.]*)"),
    re.compile(r"cannot import name ['\"]?\w+['\"]? from ['\"](?P<module>[A-Za-z_][\w.]*)['\"]"),
)
# Import names that differ from the distribution providing them.
ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "yaml": ("PyYAML",),
    "PIL": ("Pillow",),
    "sklearn": ("scikit-learn",),
    "skimage": ("scikit-image",),
    "cv2": ("opencv-python", "opencv-python-headless", "opencv-contrib-python"),
    "bs4": ("beautifulsoup4",),
    "dateutil": ("python-dateutil",),
    "dotenv": ("python-dotenv",),
    "jwt": ("PyJWT",),
    "attr": ("attrs",),
    "google.protobuf": ("protobuf",),
    "Crypto": ("pycryptodome",),
    "OpenSSL": ("pyOpenSSL",),
    "git": ("GitPython",),
    "serial": ("pyserial",),
    "zmq": ("pyzmq",),
    "magic": ("python-magic",),
    "multipart": ("python-multipart",),
    "docx": ("python-docx",),
    "jose": ("python-jose",),
    "nacl": ("PyNaCl",),
    "dns": ("dnspython",),
    "fitz": ("PyMuPDF",),
    "psycopg2": ("psycopg2", "psycopg2-binary"),
}


def top_level(module: str) -> str:
    """The module's import root, or the longest dotted prefix with a known distribution alias."""
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        if ".".join(parts[:end]) in ALIASES:
            return ".".join(parts[:end])
    return parts[0]


def candidate_names(module: str) -> set[str]:
    """Normalised distribution names that may provide module."""
    root = top_level(module)
    names = {normalize_name(root), normalize_name(module)}
    names.update(normalize_name(alias) for alias in ALIASES.get(root, ()))
    return names


def phase_python(ctx: FailureContext) -> tuple[str, Path | None]:
    """The interpreter the phase used: a venv named by the failing command, $VIRTUAL_ENV, else python3."""
    for word in split_words(failing_command(ctx)):
        text = os.path.expanduser(word.rsplit("=", 1)[-1])
        if "/bin/" not in text:
            continue
        venv = (ctx.cwd / text).parent.parent  # an absolute text replaces ctx.cwd
        if (venv / "pyvenv.cfg").is_file():
            return str(venv / "bin" / "python"), venv
    virtual = ctx.env.get("VIRTUAL_ENV")
    if virtual and (Path(virtual) / "pyvenv.cfg").is_file():
        return str(Path(virtual) / "bin" / "python"), Path(virtual)
    return "python3", None


def install_commands(declared: Declared, python: str, venv: Path | None) -> list[str]:
    """Install commands for the declaration, with the project's manager; later ones are fallbacks."""
    detection = inspect_python(declared.directory)
    manager = detection.package_manager if detection.detected else "pip"
    pip = f"{shlex.quote(python)} -m pip install --disable-pip-version-check --no-input"
    extra = shlex.quote(declared.extra) if declared.extra else None
    if declared.source.endswith(".txt"):
        if manager == "uv":
            source = shlex.quote(declared.source)
            return [f"uv pip install --python {shlex.quote(python)} -r {source}"]
        return [f"{pip} -r {shlex.quote(declared.source)}"]
    active = f"VIRTUAL_ENV={shlex.quote(str(venv))} " if venv else ""
    if manager == "uv":
        target = f"UV_PROJECT_ENVIRONMENT={shlex.quote(str(venv))} " if venv else ""
        option = (" --group " if declared.group else " --extra ") + extra if extra else ""
        return [f"{target}uv sync{option}"]
    if manager == "poetry":
        option = (" --with " if declared.group else " --extras ") + extra if extra else ""
        return [f"{active}poetry install{option}"]
    if manager == "pdm":
        return [f"{active}pdm install"]
    commands = []
    if declared.packaged:
        target = f".[{declared.extra}]" if declared.extra and not declared.group else "."
        commands.append(f"{pip} -e {shlex.quote(target)}")
    if declared.requirements:
        # without building the project: works where its build backend cannot be fetched
        commands.append(f"{pip} " + " ".join(shlex.quote(r) for r in declared.requirements))
    return commands


class PythonMissingDependency(BasePattern):
    """Installs a project's declared dependencies into the environment a failing phase imported from."""

    pattern_id = "python_missing_dep"
    name = "Missing Python dependency"
    priority = 60

    def missing_module(self, ctx: FailureContext) -> str | None:
        """The module the output says could not be imported."""
        match = last_match(_MISSING, output_lines(ctx))
        module = match.group("module").strip(".") if match else ""
        return module if module and "__main__" not in module else None

    def _detect(self, ctx: FailureContext) -> bool:
        return self.missing_module(ctx) is not None

    def _mitigate(self, ctx: FailureContext) -> MitigationResult:
        module = self.missing_module(ctx) or ""
        root = top_level(module)
        python, venv = phase_python(ctx)
        declared = find_declaration(ctx, candidate_names(module))
        if declared is not None:
            commands, cwd = install_commands(declared, python, venv), declared.directory
            why = f"module '{root}' is declared in {declared.source}"
        elif ctx.policy.allow_undeclared_installs:
            dist = ALIASES.get(root, (root,))[0]
            pip = f"{shlex.quote(python)} -m pip install --disable-pip-version-check --no-input"
            commands, cwd = [f"{pip} {shlex.quote(dist)}"], ctx.cwd
            why = f"module '{root}' is not declared; installing {dist} as the policy allows"
        else:
            dist = ALIASES.get(root, (root,))[0]
            return MitigationResult(
                suggestions=[
                    f"module '{root}' is not declared by the project (supply-chain safety); "
                    f"declare {dist} in requirements.txt or pyproject.toml"
                ]
            )
        result = MitigationResult()
        for command in commands:
            outcome = ctx.shell.run(command, cwd=cwd)
            if not outcome.ok:
                result.suggestions.append(f"`{command}` failed: {tail(outcome.output)}")
                continue
            result.actions_taken.append(f"{why}; installed with `{command}`")
            result.changed = True
            # only pip installs into `python` itself; managers use environments of their own
            check = f"{shlex.quote(python)} -c {shlex.quote('import ' + module)}"
            if " -m pip install " in command and not ctx.shell.run(check, cwd=ctx.cwd).ok:
                result.suggestions.append(f"'{module}' still cannot be imported after the install")
            break
        if not commands:
            result.suggestions.append(f"{why}, but nothing installs it; is it on PYTHONPATH?")
        return result
