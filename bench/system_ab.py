"""Interleaved A/B of the dispatch latency of two checkouts, run by run, against one floor.

On a machine whose speed drifts by 2x within minutes, two `bench.system` runs one after the other
compare the machine as much as the code. This starts both checkouts' API and worker side by side
(each on its own database and queue, same Redis, same origin repository) and alternates their
runs: A, B, floor; B, A, floor; ... (or blocks of `--block` runs), so drift hits both alike.

    .venv/bin/python -m bench.system_ab /path/to/checkout-a /path/to/checkout-b [--runs 150]

Each checkout is a worktree of this repository (`git worktree add /tmp/a <commit>`); its code runs
with this interpreter (PYTHONPATH set to the checkout), so both need only this venv. Prints JSON:
medians of A, B and the floor (the same Celery no-op + `git worktree add` + `true` + `git worktree
remove` as `bench.system`), both ratios to the floor, and B/A as the median of per-pair ratios.
Alternating runs make every run follow another stack's run, as an idle worker would: ratios to the
floor come out higher than `bench.system`'s back-to-back figure. Compare B with A, not across tools.

Work a stack does after a run's end (tidying up its worktree) is on the next run's path only when
runs come back to back; alternated, it overlaps the other stack's run and is charged to that one.
Measure such a change with `--block 10` (nine runs in ten follow their own stack's run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from bench.system import PG_ADMIN, REDIS_URL, floor_once, submit_and_wait
from bench.system_floor import make_app
from bench.system_util import free_port, git, make_repo

# Run inside each checkout: migrate its database, register the repository, print a new key.
SETUP = """
import sys
from shared import auth, repos
from shared.db import make_engine, make_session_factory, transaction
from shared.migrations import upgrade
from shared.settings import Settings
settings = Settings(database_url=sys.argv[1])
upgrade(settings)
engine = make_engine(settings)
with transaction(make_session_factory(engine)) as session:
    repos.add(session, "tiny", sys.argv[2])
    print(auth.create_key(session, "bench-ab")[1])
engine.dispose()
"""


@dataclass
class Stack:
    """One checkout's API and worker."""

    checkout: Path
    url: str
    key: str
    processes: list[subprocess.Popen[bytes]]
    logs: list[Path]


def _wait(what: str, ready: Any, deadline: float) -> None:
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench.system_ab: {what} did not start in time")
        time.sleep(0.1)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _start(checkout: Path, label: str, db_url: str, origin: Path, tmp: Path) -> Stack:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AUTOPACK_") and k not in ("DATABASE_URL", "BROKER_URL")
    }
    env["PYTHONPATH"] = str(checkout)
    setup = subprocess.run(
        [sys.executable, "-c", SETUP, db_url, str(origin)],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = setup.stdout.strip().splitlines()[-1]
    env.update(
        DATABASE_URL=db_url,
        BROKER_URL=REDIS_URL,
        AUTOPACK_QUEUE=f"bench-ab-{label}-{uuid.uuid4().hex[:6]}",
        AUTOPACK_DATA_DIR=str(tmp / f"data-{label}"),
        AUTOPACK_LOG_JSON="true",
        PYTHONUNBUFFERED="1",
    )
    port = free_port()
    commands = {
        "api": [sys.executable, "-m", "cli", "api", "--port", str(port)],
        "worker": [
            *(sys.executable, "-m", "cli", "worker", "--concurrency", "1"),
            *("--hostname", f"bench-ab-{label}-{uuid.uuid4().hex[:4]}@%h"),
        ],
    }
    processes, logs = [], []
    for name, argv in commands.items():
        log = tmp / f"{name}-{label}.log"
        with log.open("wb") as out:
            processes.append(
                subprocess.Popen(
                    argv,
                    cwd=checkout,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        logs.append(log)
    return Stack(checkout, f"http://127.0.0.1:{port}", key, processes, logs)


@contextmanager
def _databases(count: int) -> Iterator[list[str]]:
    names = [f"autopack_bench_ab_{i}_{uuid.uuid4().hex[:8]}" for i in range(count)]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0]
    try:
        yield [f"postgresql+psycopg://{base}/{name}" for name in names]
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


def compare(checkouts: list[Path], runs: int, block: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="autopack-bench-ab-"))
    broker = redis.Redis.from_url(REDIS_URL)
    broker.flushdb()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with _databases(2) as urls:
            origin = tmp / "origin-tiny"
            make_repo(origin, {"README.md": "# tiny\n", "app.py": "print('hi')\n"})
            stacks = []
            for label, checkout, url in zip("ab", checkouts, urls, strict=True):
                stack = _start(checkout, label, url, origin, tmp)
                processes += stack.processes
                stacks.append(stack)
            floor_queue = f"bench-ab-floor-{uuid.uuid4().hex[:6]}"
            floor_log = tmp / "floor.log"
            floor_env = {
                **os.environ,
                "BENCH_FLOOR_BROKER": REDIS_URL,
                "BENCH_FLOOR_QUEUE": floor_queue,
                "PYTHONUNBUFFERED": "1",
            }
            with floor_log.open("wb") as out:
                processes.append(
                    subprocess.Popen(
                        [
                            *(sys.executable, "-m", "celery", "-A", "bench.system_floor"),
                            *("worker", "--concurrency", "1", "--pool", "prefork"),
                            *("-Q", floor_queue, "--loglevel", "INFO"),
                            *("--without-gossip", "--without-mingle"),
                            *("-n", f"bench-ab-floor-{uuid.uuid4().hex[:6]}@%h"),
                        ],
                        env=floor_env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            deadline = time.monotonic() + 90
            for stack in stacks:
                _wait(f"the API of {stack.checkout}", lambda s=stack: _answers(s.url), deadline)
                _wait(
                    f"the worker of {stack.checkout}",
                    lambda s=stack: " ready." in s.logs[1].read_text(errors="replace"),
                    deadline,
                )
            _wait("the floor worker", lambda: " ready." in floor_log.read_text(), deadline)
            app = make_app(REDIS_URL, floor_queue)
            clients = [
                httpx.Client(base_url=s.url, headers={"X-API-Key": s.key}, timeout=30)
                for s in stacks
            ]
            for client in clients:
                for _ in range(5):
                    submit_and_wait(client, "tiny")
            mirror = tmp / "data-a" / "mirrors" / "tiny.git"
            commit = git(["rev-parse", "refs/remotes/origin/main"], git_dir=mirror).strip()
            worktrees = tmp / "floor-worktrees"
            worktrees.mkdir()
            for i in range(3):
                floor_once(app, floor_queue, mirror, commit, worktrees / f"warm-{i}")
            totals: dict[str, list[float]] = {"a": [], "b": [], "floor": []}
            block_medians: dict[str, list[float]] = {"a": [], "b": []}
            for k in range(max(1, runs // block)):
                for i in (0, 1) if k % 2 == 0 else (1, 0):
                    label = "ab"[i]
                    got = [submit_and_wait(clients[i], "tiny").total_s * 1000 for _ in range(block)]
                    totals[label] += got
                    block_medians[label].append(statistics.median(got))
                for j in range(block):
                    floor = floor_once(app, floor_queue, mirror, commit, worktrees / f"{k}-{j}")
                    totals["floor"].append(floor["total"] * 1000)
            for client in clients:
                client.close()
            app.close()
    finally:
        _stop(processes)
        with suppress(Exception):
            broker.flushdb()
            broker.close()
        shutil.rmtree(tmp, ignore_errors=True)
    median = {label: statistics.median(values) for label, values in totals.items()}
    pairs = [b / a for a, b in zip(block_medians["a"], block_medians["b"], strict=True)]
    return {
        "a": str(checkouts[0]),
        "b": str(checkouts[1]),
        "runs_each": len(totals["a"]),
        "block": block,
        "a_p50_ms": round(median["a"], 2),
        "b_p50_ms": round(median["b"], 2),
        "floor_p50_ms": round(median["floor"], 2),
        "a_over_floor": round(median["a"] / median["floor"], 3),
        "b_over_floor": round(median["b"] / median["floor"], 3),
        "b_over_a_median_of_pairs": round(statistics.median(pairs), 3),
        "b_over_a_of_medians": round(median["b"] / median["a"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("a", type=Path, help="checkout A (a git worktree of this repository)")
    parser.add_argument("b", type=Path, help="checkout B")
    parser.add_argument("--runs", type=int, default=150, help="runs of each (default 150)")
    parser.add_argument("--block", type=int, default=1, help="runs in a row per turn (default 1)")
    args = parser.parse_args()
    for checkout in (args.a, args.b):
        if not (checkout / "cli").is_dir() or not (checkout / "workers").is_dir():
            parser.error(f"{checkout} is not a checkout of Autopack")
    if args.runs < 1 or args.block < 1:
        parser.error("--runs and --block must be at least 1")
    print(json.dumps(compare([args.a.resolve(), args.b.resolve()], args.runs, args.block)))


if __name__ == "__main__":
    main()
