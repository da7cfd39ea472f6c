"""Tests for scanning trees: monorepos, skipped directories, depth, ordering, primary pick."""

import json
from pathlib import Path

import pytest

from workers.toolchain import detect, detect_primary, is_skipped_directory

PYPROJECT = """[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "api"
version = "0.1.0"
dependencies = ["fastapi", "uvicorn"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""
PACKAGE_JSON = json.dumps(
    {
        "name": "web",
        "private": True,
        "scripts": {"build": "next build", "test": "jest"},
        "dependencies": {"next": "14.2.3", "react": "18.3.1"},
    }
)
GO_MOD = "module example.com/svc\n\ngo 1.22\n"


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return root


def _monorepo(root: Path) -> Path:
    return _write(
        root,
        {
            "README.md": "# platform\n",
            "api/pyproject.toml": PYPROJECT,
            "api/uv.lock": "version = 1\n",
            "api/src/api/__init__.py": "",
            "api/tests/test_health.py": "def test_health():\n    assert True\n",
            "web/package.json": PACKAGE_JSON,
            "web/package-lock.json": '{"lockfileVersion": 3}',
            "svc/go.mod": GO_MOD,
            "svc/main.go": "package main\n\nfunc main() {}\n",
        },
    )


def test_detect_monorepo_reports_each_toolchain_with_directory(tmp_path: Path) -> None:
    results = detect(_monorepo(tmp_path))
    summary = [(item.directory, item.toolchain, item.package_manager) for item in results]
    assert summary == [("api", "python", "uv"), ("svc", "go", "go"), ("web", "node", "npm")]
    assert all(item.detected for item in results)


def test_detect_ignores_node_modules_tree(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "package.json": PACKAGE_JSON,
            "node_modules/left-pad/package.json": json.dumps({"name": "left-pad"}),
            "node_modules/@scope/pkg/package.json": json.dumps({"name": "@scope/pkg"}),
            "node_modules/node-gyp/gyp/pyproject.toml": PYPROJECT,
        },
    )
    results = detect(tmp_path)
    assert [(item.directory, item.toolchain) for item in results] == [(".", "node")]


@pytest.mark.parametrize(
    "skipped",
    [".venv", "venv", "target", "build", "dist", ".git", "__pycache__", ".tox", "vendor", ".cache"],
)
def test_detect_skips_vendored_and_generated_directories(tmp_path: Path, skipped: str) -> None:
    _write(tmp_path, {f"{skipped}/pkg/pyproject.toml": PYPROJECT, f"{skipped}/go.mod": GO_MOD})
    assert detect(tmp_path) == []


def test_is_skipped_directory_covers_dot_directories() -> None:
    assert is_skipped_directory(".mypy_cache")
    assert is_skipped_directory(".idea")
    assert is_skipped_directory("node_modules")
    assert not is_skipped_directory("services")


def test_detect_respects_max_depth(tmp_path: Path) -> None:
    _write(tmp_path, {"a/b/c/go.mod": GO_MOD})
    assert detect(tmp_path, max_depth=2) == []
    assert [item.directory for item in detect(tmp_path, max_depth=3)] == ["a/b/c"]


def test_detect_sorts_by_directory_then_confidence(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pyproject.toml": "[tool.ruff]\nline-length = 100\n",
            "package.json": PACKAGE_JSON,
            "yarn.lock": "# yarn lockfile v1\n",
            "tools/go.mod": GO_MOD,
        },
    )
    results = detect(tmp_path)
    assert [(item.directory, item.toolchain) for item in results] == [
        (".", "node"),
        (".", "python"),
        ("tools", "go"),
    ]
    assert results[0].confidence > results[1].confidence


def test_detect_does_not_follow_symlinked_directories(tmp_path: Path) -> None:
    _write(tmp_path, {"svc/go.mod": GO_MOD})
    (tmp_path / "svc" / "loop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "alias").symlink_to(tmp_path / "svc", target_is_directory=True)
    assert [item.directory for item in detect(tmp_path)] == ["svc"]


def test_detect_on_empty_directory_returns_nothing(tmp_path: Path) -> None:
    assert detect(tmp_path) == []


def test_detect_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        detect(tmp_path / "missing")


def test_detect_file_root_raises(tmp_path: Path) -> None:
    path = _write(tmp_path, {"go.mod": GO_MOD}) / "go.mod"
    with pytest.raises(NotADirectoryError):
        detect(path)


def test_detect_negative_depth_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_depth"):
        detect(tmp_path, max_depth=-1)


def test_detect_primary_picks_highest_confidence_at_root(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pyproject.toml": "[tool.black]\nline-length = 88\n",
            "package.json": PACKAGE_JSON,
            "pnpm-lock.yaml": "lockfileVersion: '9.0'\n",
            "backend/go.mod": GO_MOD,
        },
    )
    primary = detect_primary(tmp_path)
    assert primary is not None
    assert (primary.toolchain, primary.package_manager, primary.directory) == (
        "node",
        "pnpm",
        ".",
    )


def test_detect_primary_ignores_subdirectories(tmp_path: Path) -> None:
    assert detect_primary(_monorepo(tmp_path)) is None


def test_detect_malformed_files_do_not_crash(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "py/pyproject.toml": "[project\nname=",
            "js/package.json": "{not json",
            "rs/Cargo.toml": "[package]\nname = \n",
            "go/go.mod": "\x00\x01 garbage",
        },
    )
    results = detect(tmp_path)
    assert [(item.directory, item.toolchain) for item in results] == [
        ("go", "go"),
        ("js", "node"),
        ("py", "python"),
        ("rs", "rust"),
    ]
    assert all(item.confidence <= 0.5 for item in results)
