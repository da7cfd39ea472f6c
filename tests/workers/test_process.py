"""Process control: timeouts kill the whole process group, even children that ignore SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.conftest import wait_until
from workers.process import _ExitWatch, run_command


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def run(
    tmp_path: Path, command: str, timeout: float = 10, stop: str | None = None
) -> tuple[object, str]:
    log_path = tmp_path / "out.log"
    with log_path.open("wb") as log:
        result = run_command(
            command,
            cwd=tmp_path,
            env={"PATH": os.environ["PATH"]},
            log=log,
            timeout_s=timeout,
            should_stop=lambda: stop,
            grace_s=0.5,
        )
    return result, log_path.read_text()


def test_run_command_captures_output_and_exit_code(tmp_path: Path) -> None:
    result, output = run(tmp_path, "echo out; echo err >&2; exit 7")
    assert result.exit_code == 7 and not result.ok  # type: ignore[attr-defined]
    assert "out" in output and "err" in output


def test_run_command_timeout_kills_group_including_term_ignoring_child(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    command = f"(trap '' TERM; sleep 300) & echo $! >> {pids}; sleep 300 & echo $! >> {pids}; wait"
    result, output = run(tmp_path, command, timeout=1.5)
    assert result.timed_out  # type: ignore[attr-defined]
    assert "timed out" in output
    children = [int(p) for p in pids.read_text().split()]
    assert len(children) == 2
    wait_until(lambda: not any(alive(p) for p in children), timeout=10, what="process group to die")


def test_run_command_stop_signal_ends_command(tmp_path: Path) -> None:
    result, output = run(tmp_path, "sleep 300", stop="cancel requested")
    assert result.stopped == "cancel requested"  # type: ignore[attr-defined]
    assert "stopped: cancel requested" in output


def test_run_command_kills_background_leftovers_after_exit(tmp_path: Path) -> None:
    pid_file = tmp_path / "bg"
    result, _ = run(tmp_path, f"sleep 300 & echo $! > {pid_file}; exit 0")
    assert result.ok  # type: ignore[attr-defined]
    wait_until(
        lambda: not alive(int(pid_file.read_text())), timeout=10, what="background child to die"
    )


def test_exit_watch_wakes_at_exit_and_reaps() -> None:
    process = subprocess.Popen(["sleep", "30"], start_new_session=True)
    watch = _ExitWatch(process)
    try:
        assert watch._fd is not None  # Linux: a pidfd, not Popen.wait's sleep loop
        assert watch.wait(0.01) is False and process.returncode is None
        process.terminate()
        assert watch.wait(30) is True
        assert process.returncode == -signal.SIGTERM
    finally:
        watch.close()
        if process.returncode is None:
            process.kill()
            process.wait()
