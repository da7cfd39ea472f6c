"""Helpers of `bench.system`: service processes, process-tree memory and CPU, statistics, git."""

from __future__ import annotations

import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from workers.gitcmd import GIT_ENV

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    """A timestamped progress line on stderr (stdout carries the Markdown)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, interval: float) -> None:
    """Poll predicate until true; RuntimeError after timeout_s (bounded loop)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval)


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Proc:
    """A service process started by the benchmark, in its own session (process group)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL after 20 s."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
        # Children that outlived their parent (a pool process) must not survive the benchmark.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


@dataclass
class Procs:
    """Every process the benchmark started; stop_all() in a finally block."""

    folder: Path
    started: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        log_path = self.folder / f"{name}.log"
        with log_path.open("wb") as handle:
            process = subprocess.Popen(
                argv,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        proc = Proc(name, process, log_path)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.started)):
            try:
                proc.stop()
            except Exception as error:
                log(f"could not stop {proc.name} (pid {proc.pid}): {error}")
        self.started.clear()


def wait_http(proc: Proc, url: str, timeout_s: float = 45) -> None:
    """Until GET url answers 200; the process must stay alive."""

    def up() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited: {proc.output()[-3000:]}")
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, timeout_s, f"{proc.name} to answer {url}", 0.1)


def wait_log(proc: Proc, marker: str, timeout_s: float = 60) -> None:
    """Until the process's log contains marker (Celery prints ' ready.')."""

    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited: {proc.output()[-3000:]}")
        return marker in proc.output()

    wait_for(ready, timeout_s, f"{proc.name} to log {marker!r}", 0.1)


# --- /proc: memory and CPU of a process tree ----------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: fields start after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def tree_pids(root: int) -> list[int]:
    """root and all its descendants."""
    children = _children_map()
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _status_kib(pid: int, key: str, file: str = "status") -> int:
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class TreeMemory:
    """VmRSS and PSS summed over a process tree, in MiB."""

    processes: int
    rss_mib: float
    pss_mib: float


def tree_memory(root: int) -> TreeMemory:
    pids = tree_pids(root)
    rss = sum(_status_kib(pid, "VmRSS") for pid in pids)
    pss = sum(_status_kib(pid, "Pss", "smaps_rollup") for pid in pids)
    return TreeMemory(len(pids), rss / 1024, pss / 1024)


def pid_cpu_s(pid: int, reaped_children: bool = True) -> float:
    """CPU seconds of a process (user + system), plus its reaped children's (git, bash)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command name: state is field 3 of stat(5), so utime (14) is index 11.
    fields = stat[stat.rfind(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def tree_cpu_s(root: int) -> float:
    """CPU seconds of a live process tree, reaped children included."""
    return sum(pid_cpu_s(pid) for pid in tree_pids(root))


def machine_cpu_s() -> tuple[float, float]:
    """Busy and steal CPU seconds of the whole machine since boot (from /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


PidSource = Callable[[], list[int]]


@dataclass
class CpuMeter:
    """CPU used by named groups of processes and by the whole machine over an interval.

    Each group is a function returning its pids (whole trees are expanded by the caller);
    a pid that appears during the interval counts all its CPU, one that exits is lost.
    """

    groups: dict[str, PidSource]
    # Groups whose reaped children must not count (the benchmark process reaps the services).
    without_children: frozenset[str] = frozenset()
    _start: dict[str, dict[int, float]] = field(default_factory=dict)
    _machine: tuple[float, float] = (0.0, 0.0)
    _t0: float = 0.0

    def start(self) -> None:
        self._start = {name: self._read(name, source) for name, source in self.groups.items()}
        self._machine = machine_cpu_s()
        self._t0 = time.perf_counter()

    def _read(self, name: str, source: PidSource) -> dict[int, float]:
        children = name not in self.without_children
        return {pid: pid_cpu_s(pid, children) for pid in source()}

    def stop(self) -> dict[str, float]:
        """Cores used per group, 'machine', 'steal' and 'everything else' over the interval."""
        wall = time.perf_counter() - self._t0
        busy, steal = machine_cpu_s()
        used: dict[str, float] = {}
        for name, source in self.groups.items():
            before = self._start.get(name, {})
            now = self._read(name, source)
            used[name] = sum(max(v - before.get(pid, 0.0), 0.0) for pid, v in now.items()) / wall
        used["machine busy"] = (busy - self._machine[0]) / wall
        used["steal"] = (steal - self._machine[1]) / wall
        used["everything else"] = max(used["machine busy"] - sum(used[n] for n in self.groups), 0.0)
        used["wall_s"] = wall
        return used


def trees(*roots: int) -> list[int]:
    """The pids of several process trees."""
    return [pid for root in roots for pid in tree_pids(root)]


# --- git ----------------------------------------------------------------------------------------


def git(args: list[str], cwd: Path | None = None, git_dir: Path | None = None) -> str:
    """Run git the way workers.gitcmd does (same environment), raising on failure."""
    command = ["git"] + ([f"--git-dir={git_dir}"] if git_dir else []) + args
    env = {
        **os.environ,
        **GIT_ENV,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
    }
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()[-1000:]}")
    return done.stdout


def make_repo(path: Path, files: dict[str, str]) -> str:
    """A git repository with files committed on main; returns the commit."""
    path.mkdir(parents=True)
    git(["init", "-q", "-b", "main"], cwd=path)
    for rel, content in files.items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    git(["add", "-A"], cwd=path)
    git(["commit", "-q", "-m", "initial"], cwd=path)
    return git(["rev-parse", "HEAD"], cwd=path).strip()
