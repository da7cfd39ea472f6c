"""transient_network against a real local server that is down or resets, then recovers (127.0.0.1 only)."""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.hardening.patterns.network import MAX_DELAY_S, TransientNetwork, backoff_delay
from workers.hardening.testing import init_repo, make_context, phase_env, retry_phase

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl needed")


class LocalServer:
    """A port on 127.0.0.1 that refuses connections until served; it may reset the first ones."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        self.port = self.sock.getsockname()[1]
        self.thread: threading.Thread | None = None

    def serve(self, resets: int = 0) -> None:
        """Start accepting: reset the first `resets` connections, answer the others with 200."""
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._loop, args=(resets,), daemon=True)
        self.thread.start()

    def _loop(self, resets: int) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed by the test
            with conn:
                conn.recv(65536)  # the request is in: a reset now reaches curl mid-transfer
                if resets > 0:
                    resets -= 1
                    # linger 0 turns close() into a TCP reset
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    continue
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 8\r\n\r\npackage\n")

    def close(self) -> None:
        if self.thread is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        if self.thread is not None:
            self.thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[LocalServer]:
    local = LocalServer()
    try:
        yield local
    finally:
        local.close()


def fetch(port: int) -> str:
    return f"curl -fsS --max-time 10 -o pkg.tgz http://127.0.0.1:{port}/pkg.tgz && cat pkg.tgz"


def test_retry_with_backoff_when_registry_refuses_then_recovers(
    tmp_path: Path, server: LocalServer
) -> None:
    repo = init_repo(tmp_path / "repo", {".gitignore": "pkg.tgz\n"})
    pattern = TransientNetwork(random.Random(7))
    ctx = make_context(fetch(server.port), worktree=repo, env=phase_env(tmp_path / "home"))
    assert ctx.exit_code == 7 and pattern.detect(ctx), ctx.output

    result = pattern.mitigate(ctx)

    assert result.changed and result.retry is not None
    assert 1.6 <= result.retry.delay_s <= 2.4
    assert f"will retry after {result.retry.delay_s:g} s" in result.actions_taken[0]
    server.serve()
    retry = retry_phase(ctx, result, tmp_path / "retry.log")
    assert retry.ok and "package" in retry.output


def test_retry_when_connection_is_reset_once(tmp_path: Path, server: LocalServer) -> None:
    server.serve(resets=1)
    repo = init_repo(tmp_path / "repo", {".gitignore": "pkg.tgz\n"})
    pattern = TransientNetwork()
    ctx = make_context(fetch(server.port), worktree=repo, env=phase_env(tmp_path / "home"))
    assert "Connection reset" in ctx.output and pattern.detect(ctx)

    result = pattern.mitigate(ctx)

    assert result.retry is not None
    assert retry_phase(ctx, result, tmp_path / "retry.log").ok


def test_grow_delay_and_stop_detecting_after_three_retries(
    tmp_path: Path, server: LocalServer
) -> None:
    repo = init_repo(tmp_path / "repo", {"a": "x\n"})
    pattern = TransientNetwork(random.Random(3))
    delays = []
    for applied in range(3):
        ctx = make_context(
            fetch(server.port),
            worktree=repo,
            env=phase_env(tmp_path / "home"),
            previous_patterns=["python_missing_dep", *["transient_network"] * applied],
        )
        assert pattern.detect(ctx)
        retry = pattern.mitigate(ctx).retry
        assert retry is not None
        delays.append(retry.delay_s)
    ctx = make_context(
        fetch(server.port),
        worktree=repo,
        env=phase_env(tmp_path / "home"),
        previous_patterns=["transient_network"] * 3,
    )

    assert not pattern.detect(ctx)
    assert 1.6 <= delays[0] <= 2.4 and 3.2 <= delays[1] <= 4.8 and 6.4 <= delays[2] <= 9.6
    assert pattern.max_applications == 3


def test_detect_nothing_when_failing_command_is_not_a_fetch(
    tmp_path: Path, server: LocalServer
) -> None:
    repo = init_repo(tmp_path / "repo", {"a": "x\n"})
    probe = f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {server.port}))\""
    ctx = make_context(probe, worktree=repo, env=phase_env(tmp_path / "home"))

    assert "ConnectionRefusedError" in ctx.output
    assert not TransientNetwork().detect(ctx)


def test_cap_delay_with_jitter() -> None:
    rng = random.Random(11)
    delays = [backoff_delay(retries, rng) for retries in range(10) for _ in range(20)]

    assert max(delays) <= MAX_DELAY_S and min(delays) >= 1.6
    assert len({backoff_delay(0, rng) for _ in range(20)}) > 1  # jittered, not constant
