"""Run one shell command in its own process group, with a deadline and a stop signal."""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from workers.disk import DiskLimit

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.1


@dataclass(frozen=True)
class CommandResult:
    """How a command ended: exit code, or the signal that ended it, and why we stopped it."""

    exit_code: int | None
    signal: int | None
    timed_out: bool
    stopped: str | None  # why we stopped it early (cancel, lease lost, disk limit), if we did
    disk_exceeded: bool = False  # the worktree grew beyond the run's disk limit

    @property
    def ok(self) -> bool:
        """Whether the command exited 0 on its own."""
        return self.exit_code == 0 and not self.timed_out and self.stopped is None


def _signal_group(pgid: int, sig: int) -> bool:
    """Send sig to the whole group; False once the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def terminate_group(
    process: subprocess.Popen[bytes], grace_s: float, *, interrupt_first: bool = False
) -> list[str]:
    """(SIGINT,) SIGTERM, then SIGKILL the whole group, waiting grace_s between; returns the signals sent."""
    pgid = process.pid
    sent = []
    for sig in ([signal.SIGINT] if interrupt_first else []) + [signal.SIGTERM]:
        if not _signal_group(pgid, sig):
            break
        sent.append(signal.Signals(sig).name)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if process.poll() is not None and not _group_alive(pgid):
                break
            time.sleep(POLL_INTERVAL_S)
        if process.poll() is not None and not _group_alive(pgid):
            break
    else:
        if _signal_group(pgid, signal.SIGKILL):
            sent.append("SIGKILL")
    process.wait()
    return sent


def run_command(
    command: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    log: IO[bytes],
    timeout_s: float,
    should_stop: Callable[[], str | None],
    grace_s: float,
    on_spawn: Callable[[int], None] | None = None,
    limits: Mapping[str, int] | None = None,
    disk_limit: DiskLimit | None = None,
) -> CommandResult:
    """Run command with bash in a new session; output goes straight to the log file.

    With disk_limit, the worktree is measured while the command runs and once after it ended; a
    worktree over the limit stops the group (SIGTERM, then SIGKILL) and marks the result disk_exceeded.
    """
    log.write(f"$ {command}\n".encode())
    log.flush()
    argv = ["/bin/bash", "-c", command]
    if limits:
        prlimit = shutil.which("prlimit")
        if prlimit is None:
            raise RuntimeError(
                "resource limits are configured but `prlimit` (util-linux) is not installed"
            )
        argv = [
            prlimit,
            *(f"--{name}={value}" for name, value in sorted(limits.items())),
            "--",
            *argv,
        ]
    with _inheritable_default_signals():
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        if on_spawn is not None:
            on_spawn(process.pid)
        return _supervise(process, log, timeout_s, should_stop, grace_s, disk_limit)
    except BaseException:
        # Interrupted (Ctrl-C, lease lost while recording): never leave the group running.
        terminate_group(process, grace_s)
        raise


@contextmanager
def _inheritable_default_signals() -> Iterator[None]:
    """Un-ignore SIGINT/SIGQUIT while spawning, so a phase can trap them.

    Celery's pool processes ignore SIGINT, an ignored signal stays ignored across exec, and a
    non-interactive shell cannot trap a signal that was ignored when it started. Only the main
    thread may change dispositions — where Celery and `autopack run` execute phases.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ignored = [
        sig for sig in (signal.SIGINT, signal.SIGQUIT) if signal.getsignal(sig) == signal.SIG_IGN
    ]
    for sig in ignored:
        signal.signal(sig, signal.SIG_DFL)
    try:
        yield
    finally:
        for sig in ignored:
            signal.signal(sig, signal.SIG_IGN)


def kill_group(pgid: int) -> bool:
    """SIGKILL a whole process group left by a dead worker; False when it was already gone."""
    return _signal_group(pgid, signal.SIGKILL)


class _ExitWatch:
    """Waits for a process to exit, waking the moment it does.

    Popen.wait(timeout) polls with sleeps that grow to 50 ms, so a command lasting a millisecond
    or two was noticed a few milliseconds late. A pidfd (Linux 5.3+) becomes readable at exit;
    without one, Popen.wait's polling is used.
    """

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self._poller: select.poll | None = None
        self._fd: int | None = None
        try:
            self._fd = os.pidfd_open(process.pid)
        except (AttributeError, OSError):  # an old kernel, or the pid was already reaped
            return
        self._poller = select.poll()
        self._poller.register(self._fd, select.POLLIN)

    def wait(self, timeout_s: float) -> bool:
        """Whether the process exited within timeout_s (it is reaped then)."""
        if self._poller is None:
            try:
                self.process.wait(timeout=timeout_s)
                return True
            except subprocess.TimeoutExpired:
                return False
        self._poller.poll(timeout_s * 1000)
        return self.process.poll() is not None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = self._poller = None


def _supervise(
    process: subprocess.Popen[bytes],
    log: IO[bytes],
    timeout_s: float,
    should_stop: Callable[[], str | None],
    grace_s: float,
    disk_limit: DiskLimit | None = None,
) -> CommandResult:
    """Wait for the command, enforcing the deadline, the stop signal and the disk limit."""
    deadline = time.monotonic() + timeout_s
    timed_out = False
    stopped: str | None = None
    disk_exceeded = False
    exit_watch = _ExitWatch(process)
    try:
        while True:
            if exit_watch.wait(POLL_INTERVAL_S):
                break
            if time.monotonic() >= deadline:
                timed_out = True
            else:
                stopped = should_stop()
            if not timed_out and not stopped and disk_limit is not None:
                stopped = disk_limit.poll()
                disk_exceeded = stopped is not None
            if timed_out or stopped:
                reason = "timeout" if timed_out else stopped
                logger.info("stopping process group %s (%s)", process.pid, reason)
                # A cancelled command gets SIGINT first, like Ctrl-C, so it can clean up.
                signals_sent = terminate_group(
                    process, grace_s, interrupt_first=stopped == "cancel requested"
                )
                log.write(
                    f"\n[autopack] sent {', '.join(signals_sent) or 'nothing (already gone)'} to the process group\n".encode()
                )
                break
    finally:
        exit_watch.close()
    # Background children that outlived the command would leak into the next one.
    _signal_group(process.pid, signal.SIGKILL)
    code = process.returncode
    if not timed_out and not stopped and disk_limit is not None:
        # A fast command may fill the worktree between two measurements.
        stopped = disk_limit.check()
        disk_exceeded = stopped is not None
    if timed_out:
        log.write(f"\n[autopack] command timed out after {timeout_s:.0f}s\n".encode())
    elif disk_exceeded:
        log.write(f"\n[autopack] {stopped}\n".encode())
    elif stopped:
        log.write(f"\n[autopack] command stopped: {stopped}\n".encode())
    log.flush()
    if code is not None and code < 0:
        return CommandResult(None, -code, timed_out, stopped, disk_exceeded)
    return CommandResult(code, None, timed_out, stopped, disk_exceeded)
