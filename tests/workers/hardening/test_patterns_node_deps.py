"""node_missing_dep with real node and npm: a locked local dependency gets installed offline."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from workers.hardening.base import CommandOutcome, FailureContext
from workers.hardening.patterns.node_deps import NodeMissingDependency, package_name
from workers.hardening.testing import init_repo, make_context, phase_env, retry_phase

PATTERN = NodeMissingDependency()

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None, reason="node and npm needed"
)


def npm_env(tmp_path: Path) -> dict[str, str]:
    """npm confined to a private cache, offline, without audit or update checks."""
    return phase_env(
        tmp_path / "home",
        npm_config_cache=str(tmp_path / "npm-cache"),
        npm_config_offline="true",
        npm_config_audit="false",
        npm_config_fund="false",
        npm_config_update_notifier="false",
    )


def node_repo(tmp_path: Path, dependencies: dict[str, str], lock: bool = True) -> Path:
    """A committed Node project with a vendored `tinydep` package and, if asked, its lockfile."""
    repo = tmp_path / "repo"
    vendor = repo / "vendor" / "tinydep"
    vendor.mkdir(parents=True)
    (vendor / "package.json").write_text(
        '{"name": "tinydep", "version": "1.0.0", "main": "index.js"}'
    )
    (vendor / "index.js").write_text("module.exports = 42;\n")
    manifest = {"name": "app", "version": "1.0.0", "dependencies": dependencies}
    (repo / "package.json").write_text(json.dumps(manifest))
    (repo / ".gitignore").write_text("node_modules/\n")
    if lock:
        subprocess.run(
            ["npm", "install", "--package-lock-only"],
            cwd=repo,
            env=npm_env(tmp_path),
            check=True,
            capture_output=True,
        )
    return init_repo(repo, {})


@pytest.mark.parametrize(
    "command",
    [
        "node -e \"console.log('value', require('tinydep'))\"",
        "node --input-type=module -e \"import v from 'tinydep'; console.log('value', v)\"",
    ],
    ids=["commonjs", "esm"],
)
def test_install_locked_dependency_when_node_modules_is_missing(
    tmp_path: Path, command: str
) -> None:
    repo = node_repo(tmp_path, {"tinydep": "file:./vendor/tinydep"})
    ctx = make_context(command, worktree=repo, env=npm_env(tmp_path))
    assert ctx.exit_code == 1 and PATTERN.detect(ctx)

    result = PATTERN.mitigate(ctx)

    assert result.changed, result.suggestions
    assert result.actions_taken == [
        "package 'tinydep' is declared in package.json; installed with `npm ci` in ."
    ]
    retry = retry_phase(ctx, result, tmp_path / "retry.log")
    assert retry.ok and "value 42" in retry.output


def test_install_without_lockfile_uses_npm_install(tmp_path: Path) -> None:
    repo = node_repo(tmp_path, {"tinydep": "file:./vendor/tinydep"}, lock=False)
    ctx = make_context("node -e \"require('tinydep')\"", worktree=repo, env=npm_env(tmp_path))

    result = PATTERN.mitigate(ctx)

    assert result.changed and "`npm install`" in result.actions_taken[0]
    assert retry_phase(ctx, result, tmp_path / "retry.log").ok


def test_suggest_only_when_package_is_not_declared(tmp_path: Path) -> None:
    repo = node_repo(tmp_path, {})
    ctx = make_context(
        "node -e \"require('tinydep')\"",
        worktree=repo,
        env=npm_env(tmp_path),
        log_path=tmp_path / "a.log",
    )
    assert PATTERN.detect(ctx)

    result = PATTERN.mitigate(ctx)

    assert not result.changed and result.retry is None
    assert (
        "package 'tinydep' is not declared by the project (supply-chain safety)"
        in (result.suggestions[0])
    )
    assert not (repo / "node_modules").exists()
    assert "[autopack] mitigation" not in (tmp_path / "a.log").read_text()


def test_detect_nothing_when_relative_module_is_missing(tmp_path: Path) -> None:
    repo = node_repo(tmp_path, {"tinydep": "file:./vendor/tinydep"})
    ctx = make_context("node -e \"require('./lib/missing')\"", worktree=repo, env=npm_env(tmp_path))

    assert "Cannot find module './lib/missing'" in ctx.output
    assert not PATTERN.detect(ctx)


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("lodash/fp", "lodash"),
        ("@scope/pkg/sub/path", "@scope/pkg"),
        ("node:fs", None),
        ("/abs/file.js", None),
        ("../x", None),
        ("@scope", None),
    ],
)
def test_parse_package_name_from_specifier(spec: str, name: str | None) -> None:
    assert package_name(spec) == name


class RecordingShell:
    """Records commands instead of running them; only for choosing between managers not installed here."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, Path | None]] = []

    def run(
        self, command: str, *, cwd: Path | None = None, timeout_s: float = 600
    ) -> CommandOutcome:
        self.commands.append((command, cwd))
        return CommandOutcome(0, "")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"yarn.lock": ""}, "yarn install --frozen-lockfile"),
        ({"yarn.lock": "", ".yarnrc.yml": ""}, "yarn install --immutable"),
        ({"pnpm-lock.yaml": ""}, "pnpm install --frozen-lockfile"),
    ],
)
def test_choose_install_command_from_lockfile(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    repo = node_repo(tmp_path, {"tinydep": "file:./vendor/tinydep"}, lock=False)
    ctx = make_context("node -e \"require('tinydep')\"", worktree=repo, env=npm_env(tmp_path))
    for name, content in files.items():
        (repo / name).write_text(content)
    shell = RecordingShell()

    result = PATTERN.mitigate(with_shell(ctx, shell))

    assert result.changed and shell.commands == [(expected, repo.resolve())]


def with_shell(ctx: FailureContext, shell: RecordingShell) -> FailureContext:
    return replace(ctx, shell=shell)
