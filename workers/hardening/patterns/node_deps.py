"""node_missing_dep: a bare package could not be resolved; install what package.json declares."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Final

from workers.hardening.base import FailureContext, MitigationResult
from workers.hardening.patterns.common import (
    BasePattern,
    ancestors,
    last_match,
    output_lines,
    relative,
    tail,
)
from workers.toolchain import inspect_node
from workers.toolchain.base import read_json_object, table

_SPEC = r"""['"](?P<spec>[^'"\s]+)['"]"""
_MISSING: Final = (
    re.compile(r"Cannot find module " + _SPEC),
    re.compile(r"Cannot find package " + _SPEC),
    re.compile(r"Module not found: Error: Can't resolve " + _SPEC),
    re.compile(r"Failed to resolve import " + _SPEC),
)
DEPENDENCY_TABLES: Final = ("dependencies", "devDependencies", "optionalDependencies")
LOCKFILES: Final = ("package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml")


def package_name(spec: str) -> str | None:
    """The package a bare specifier names (`@scope/pkg/sub` → `@scope/pkg`); None for paths and builtins."""
    if spec.startswith((".", "/", "node:", "file:", "data:", "#")) or "\\" in spec:
        return None
    parts = spec.split("/")
    name = "/".join(parts[:2]) if spec.startswith("@") else parts[0]
    if spec.startswith("@") and len(parts) < 2:
        return None
    return name or None


def declaring_manifest(ctx: FailureContext, package: str) -> Path | None:
    """The nearest package.json from the phase's cwd up to the worktree that declares package."""
    for directory in ancestors(ctx.cwd, ctx.worktree):
        manifest = directory / "package.json"
        if not manifest.is_file():
            continue
        data = read_json_object(manifest).data
        if any(package in table(data, key) for key in DEPENDENCY_TABLES):
            return manifest
    return None


def install_directory(ctx: FailureContext, manifest: Path) -> Path:
    """Where to install: the nearest directory with a lockfile (a workspace root), else the manifest's."""
    for directory in ancestors(manifest.parent, ctx.worktree):
        if (directory / "package.json").is_file() and any(
            (directory / name).is_file() for name in LOCKFILES
        ):
            return directory
    return manifest.parent


class NodeMissingDependency(BasePattern):
    """Installs a Node project's locked dependencies when a declared package is missing."""

    pattern_id = "node_missing_dep"
    name = "Missing Node dependency"
    priority = 70

    def missing_package(self, ctx: FailureContext) -> str | None:
        """The bare package the output says could not be found."""
        # CommonJS (MODULE_NOT_FOUND), ESM (ERR_MODULE_NOT_FOUND), TypeScript, bundlers
        match = last_match(_MISSING, output_lines(ctx))
        return package_name(match.group("spec")) if match else None

    def _detect(self, ctx: FailureContext) -> bool:
        return self.missing_package(ctx) is not None

    def _mitigate(self, ctx: FailureContext) -> MitigationResult:
        package = self.missing_package(ctx) or ""
        manifest = declaring_manifest(ctx, package)
        if manifest is None and not ctx.policy.allow_undeclared_installs:
            return MitigationResult(
                suggestions=[
                    f"package '{package}' is not declared by the project (supply-chain safety); "
                    f"add it to package.json dependencies or devDependencies"
                ]
            )
        if manifest is None:
            # allowed by policy: add it with the manager the project's own manifest implies
            directory = next(
                (d for d in ancestors(ctx.cwd, ctx.worktree) if (d / "package.json").is_file()),
                ctx.cwd,
            )
            detection = inspect_node(directory)
            manager = detection.package_manager if detection.detected else "npm"
            # npm can install without rewriting package.json; yarn and pnpm only add
            verb = "install --no-save" if manager == "npm" else "add"
            command = f"{manager} {verb} {shlex.quote(package)}"
            why = f"package '{package}' is not declared; adding it as the policy allows"
        else:
            directory = install_directory(ctx, manifest)
            detection = inspect_node(directory)
            command = detection.install[0] if detection.install else "npm install"
            declared_in = relative(ctx.worktree, manifest)
            why = f"package '{package}' is declared in {declared_in}"
        outcome = ctx.shell.run(command, cwd=directory)
        if not outcome.ok:
            return MitigationResult(suggestions=[f"`{command}` failed: {tail(outcome.output)}"])
        where = relative(ctx.worktree, directory)
        return MitigationResult(
            actions_taken=[f"{why}; installed with `{command}` in {where}"], changed=True
        )
