"""Disk usage of worktrees: a cheap measurement, and the per-run disk limit enforced while phases run."""

from __future__ import annotations

import math
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.settings import Settings

MB = 1024 * 1024
# On a big tree, measuring may take at most about 1/WALK_SHARE of the wall time.
WALK_SHARE = 20


def tree_size(root: Path) -> int:
    """Bytes a directory tree occupies on disk (like `du`): blocks, not following symlinks.

    Hard links are counted once; entries that vanish during the walk are skipped.
    """
    total = 0
    seen: set[tuple[int, int]] = set()
    pending = [str(root)]
    while pending:
        folder = pending.pop()
        try:
            entries = os.scandir(folder)
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    pending.append(entry.path)
                elif info.st_nlink > 1:
                    key = (info.st_dev, info.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += _usage(info)
    return total


def _usage(info: os.stat_result) -> int:
    blocks = getattr(info, "st_blocks", None)
    return blocks * 512 if blocks is not None else info.st_size


def effective_limit_mb(settings: Settings, budgets: Mapping[str, Any] | None) -> int | None:
    """The run's max_disk_mb capped by AUTOPACK_RUN_DISK_LIMIT_MB, or whichever is set."""
    limits = [
        limit
        for limit in ((budgets or {}).get("max_disk_mb"), settings.run_disk_limit_mb)
        if limit is not None
    ]
    return min(int(limit) for limit in limits) if limits else None


def describe_excess(limit_mb: int, measured_bytes: int) -> str:
    """The failure reason of a worktree over its limit."""
    return (
        f"worktree exceeded the disk limit of {limit_mb} MB "
        f"(measured {math.ceil(measured_bytes / MB)} MB)"
    )


class DiskLimit:
    """Watches one worktree against a size limit, measuring at most every interval_s.

    A walk that takes long (a big tree) spaces the next one out, so measuring stays a small share
    of the time; check() measures now regardless (after a command ends).
    """

    def __init__(self, path: Path, limit_mb: int, interval_s: float = 1.0) -> None:
        self.path, self.limit_mb, self.interval_s = path, limit_mb, interval_s
        self._next_at = 0.0

    def poll(self) -> str | None:
        """The reason when the worktree is over the limit, measuring only when one is due."""
        if time.monotonic() < self._next_at:
            return None
        return self.check()

    def check(self) -> str | None:
        """Measure now; the reason when the worktree is over the limit."""
        started = time.monotonic()
        size = tree_size(self.path)
        spent = time.monotonic() - started
        self._next_at = time.monotonic() + max(self.interval_s, spent * WALK_SHARE)
        if size > self.limit_mb * MB:
            return describe_excess(self.limit_mb, size)
        return None
