"""Scanning a repository tree with every adapter, for single projects and monorepos."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from workers.toolchain.base import Adapter, ToolchainDetection
from workers.toolchain.go import inspect_go
from workers.toolchain.java import inspect_java
from workers.toolchain.node import inspect_node
from workers.toolchain.python import inspect_python
from workers.toolchain.rust import inspect_rust

ADAPTERS: tuple[Adapter, ...] = (
    inspect_python,
    inspect_node,
    inspect_go,
    inspect_rust,
    inspect_java,
)

# Vendored, generated or tool-owned trees; dot-directories are skipped as well.
SKIPPED_DIRECTORIES: frozenset[str] = frozenset(
    {
        "node_modules",
        "bower_components",
        "venv",
        "target",
        "build",
        "dist",
        "__pycache__",
        "vendor",
        "site-packages",
    }
)

DEFAULT_MAX_DEPTH = 4


def is_skipped_directory(name: str) -> bool:
    """Whether a directory with this name is vendored, generated or hidden (never scanned)."""
    return name.startswith(".") or name in SKIPPED_DIRECTORIES


def iter_directories(root: Path, max_depth: int = DEFAULT_MAX_DEPTH) -> Iterator[tuple[Path, str]]:
    """Yield (path, path relative to root) for root and its scannable subdirectories, top-down."""
    pending: list[tuple[Path, str, int]] = [(root, ".", 0)]
    while pending:
        directory, relative, depth = pending.pop()
        yield directory, relative
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
        for name in reversed(names):
            child_relative = name if relative == "." else f"{relative}/{name}"
            pending.append((directory / name, child_relative, depth + 1))


def inspect_directory(directory: Path, relative: str = ".") -> list[ToolchainDetection]:
    """Run every adapter on one directory and return the positive detections."""
    found: list[ToolchainDetection] = []
    for adapter in ADAPTERS:
        try:
            result = adapter(directory, relative)
        except OSError:
            # An unreadable directory or manifest (e.g. permission denied) has no evidence.
            continue
        if result.detected:
            found.append(result)
    return found


def _sort_key(detection: ToolchainDetection) -> tuple[str, float, str]:
    """Order detections by directory, then highest confidence, then toolchain name."""
    return detection.directory, -detection.confidence, detection.toolchain


def _require_directory(path: Path) -> None:
    """Raise when path is missing or not a directory."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")


def detect(root: Path, max_depth: int = DEFAULT_MAX_DEPTH) -> list[ToolchainDetection]:
    """Detect every toolchain under root (down to max_depth levels), sorted by directory."""
    root = Path(root)
    _require_directory(root)
    if max_depth < 0:
        raise ValueError(f"max_depth must be >= 0, got {max_depth}")
    found: list[ToolchainDetection] = []
    for directory, relative in iter_directories(root, max_depth):
        found.extend(inspect_directory(directory, relative))
    return sorted(found, key=_sort_key)


def detect_primary(path: Path) -> ToolchainDetection | None:
    """Return the most confident toolchain of the directory itself, or None when there is none."""
    path = Path(path)
    _require_directory(path)
    found = sorted(inspect_directory(path, "."), key=_sort_key)
    return found[0] if found else None
