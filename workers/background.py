"""One write at a time on a helper thread, joined before the next."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable


class InBackground:
    """Makes writes one after another on a helper thread, so a running command does not wait.

    The ledger records each command's process group this way: the write overlaps the command,
    and what follows it up to the ledger's next write, instead of delaying them. wait() joins the
    write in progress and raises its error, if any (a lost lease also stops the command sooner,
    through the heartbeat).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, call: Callable[[], object]) -> None:
        """Start call() once the previous one is done (raising that one's error instead)."""
        self.wait()
        context = contextvars.copy_context()  # the caller's log context (run, phase, attempt)
        self._thread = threading.Thread(
            target=self._run, args=(context, call), name=self.name, daemon=True
        )
        self._thread.start()

    def _run(self, context: contextvars.Context, call: Callable[[], object]) -> None:
        try:
            context.run(call)
        except BaseException as error:  # handed to the thread that waits
            self._error = error

    def wait(self, *, quiet: bool = False) -> None:
        """Join the write in progress; raise its error unless quiet."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None and not quiet:
            raise error
