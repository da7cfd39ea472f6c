"""The port through which a committed run reaches the workers."""

from __future__ import annotations

from typing import Protocol


class Dispatcher(Protocol):
    """Sends `runs.execute(run_id)` to whatever executes runs; called only after commit."""

    def enqueue_run(self, run_id: str, queue: str | None = None) -> None:
        """Ask for the run to be executed (on queue, default: the configured one)."""
        ...
