"""Detection on real projects already on this machine (no network; skipped when absent)."""

import importlib.metadata
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from workers.toolchain import detect, detect_primary

REPO_ROOT = Path(__file__).resolve().parents[3]
NODE_MODULE_ROOTS = (
    Path("/usr/lib/node_modules"),
    Path("/usr/local/lib/node_modules"),
    Path("/usr/share/nodejs"),
)


def _installed_source_dirs() -> Iterator[Path]:
    """Yield source trees of installed distributions that ship or point at a pyproject.toml."""
    for dist in importlib.metadata.distributions():
        direct_url = dist.read_text("direct_url.json")
        if direct_url:
            url = json.loads(direct_url).get("url", "")
            if url.startswith("file://"):
                yield Path(unquote(urlparse(url).path))
        for file in dist.files or ():
            if file.name == "pyproject.toml":
                yield Path(str(dist.locate_file(file))).parent


def _existing_with(candidates: Iterator[Path] | tuple[Path, ...], manifest: str) -> list[Path]:
    """Return the distinct candidate directories that hold the given manifest file."""
    found: list[Path] = []
    for candidate in candidates:
        if (candidate / manifest).is_file() and candidate not in found:
            found.append(candidate)
    return found


def _node_package(name: str) -> Path:
    """Return a globally installed node package directory, skipping the test when absent."""
    dirs = _existing_with(tuple(root / name for root in NODE_MODULE_ROOTS), "package.json")
    if not dirs:
        pytest.skip(f"no global node package {name!r} on this machine")
    return dirs[0]


def test_detect_primary_on_this_repository_finds_python() -> None:
    if not (REPO_ROOT / "pyproject.toml").is_file():
        pytest.skip("repository pyproject.toml not found")
    primary = detect_primary(REPO_ROOT)
    assert primary is not None
    assert primary.toolchain == "python"
    assert primary.directory == "."
    assert primary.package_manager in {"pip", "uv", "poetry", "pdm", "hatch"}
    assert primary.test


def test_detect_on_this_repository_skips_virtualenv() -> None:
    if not (REPO_ROOT / ".venv").is_dir():
        pytest.skip("no .venv in the repository")
    results = detect(REPO_ROOT)
    assert (".", "python") in [(item.directory, item.toolchain) for item in results]
    assert not any(part.startswith(".") for item in results for part in Path(item.directory).parts)


def test_detect_installed_package_source_finds_python() -> None:
    sources = _existing_with(_installed_source_dirs(), "pyproject.toml")
    if not sources:
        pytest.skip("no installed distribution with a pyproject.toml source tree")
    for source in sources:
        primary = detect_primary(source)
        assert primary is not None, source
        assert primary.toolchain == "python"
        assert primary.confidence >= 0.8


def test_detect_python_package_bundled_in_npm_finds_python() -> None:
    candidates = tuple(root / "npm/node_modules/node-gyp/gyp" for root in NODE_MODULE_ROOTS)
    sources = _existing_with(candidates, "pyproject.toml")
    if not sources:
        pytest.skip("npm's bundled gyp-next sources are not on this machine")
    primary = detect_primary(sources[0])
    assert primary is not None
    assert (primary.toolchain, primary.package_manager) == ("python", "pip")
    assert primary.test == ("python -m pytest",)


def test_detect_global_npm_package_finds_node_and_skips_node_modules() -> None:
    npm_dir = _node_package("npm")
    primary = detect_primary(npm_dir)
    assert primary is not None
    assert primary.toolchain == "node"
    assert primary.test == (f"{primary.package_manager} test",)
    results = detect(npm_dir)
    assert all("node_modules" not in Path(item.directory).parts for item in results)
    assert all(item.toolchain == "node" for item in results)


def test_detect_corepack_package_manager_field_selects_yarn() -> None:
    corepack_dir = _node_package("corepack")
    data = json.loads((corepack_dir / "package.json").read_text(encoding="utf-8"))
    if not str(data.get("packageManager", "")).startswith("yarn@"):
        pytest.skip("corepack's package.json does not pin yarn")
    primary = detect_primary(corepack_dir)
    assert primary is not None
    assert primary.package_manager == "yarn"
    assert any(reason.startswith("packageManager field") for reason in primary.reasons)
