"""System benchmark: dispatch overhead, throughput, API rate, memory and checkout time.

Everything is measured on this machine in one run, against references measured in the same run:

1. Dispatch: a run of one `true` phase, POST /runs then a long-polled GET /runs/{id}/status,
   executed by a real `autopack worker --concurrency 1`; against the floor of a bare Celery
   no-op round trip (own worker process, Redis result backend) + `git worktree add` + `true` +
   `git worktree remove` on the same mirror.
2. Throughput: a batch of runs submitted at once, on 1 worker x 1, 2 workers x 1, 1 worker x 2.
3. API: POST /runs (start: false, so no worker runs anything) and GET /runs/{id} under 32
   concurrent connections; against a bare FastAPI + SQLAlchemy app (bench/system_baseline.py).
4. Memory: VmRSS (and PSS) of the idle API and worker process trees.
5. Workspace: `Workspaces.checkout` of a 2,000-file repository vs bare `git worktree add`.
6. Profile: an instrumented worker (bench/system_probe.py) times each step of the hot path.

    .venv/bin/python -m bench.system [--quick] [--write-results]

Creates its own database (autopack_bench_sys_<random>), uses Redis DB 13 (flushed at start and
end) and its own queues, starts and always stops its processes, only talks over loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import pstats
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from bench.system_floor import NOOP_TASK, make_app
from bench.system_util import (
    CpuMeter,
    PidSource,
    Proc,
    Procs,
    TreeMemory,
    free_port,
    git,
    log,
    make_repo,
    median,
    percentile,
    pid_cpu_s,
    tree_memory,
    tree_pids,
    trees,
    wait_http,
    wait_log,
)
from shared import auth, repos
from shared.db import make_engine, make_session_factory, transaction
from shared.migrations import upgrade
from shared.settings import Settings
from workers.gitcmd import GIT_ENV
from workers.workspace import Workspaces

PG_ADMIN = os.environ.get("AUTOPACK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("AUTOPACK_BENCH_SYS_REDIS", "redis://127.0.0.1:6379/13")
RESULTS = Path(__file__).with_name("results-system.md")
BEGIN, END = "<!-- BEGIN GENERATED (bench.system) -->", "<!-- END GENERATED (bench.system) -->"
POLL_S = 0.020
LONG_POLL_S = 10.0
TO_FINISHED = "client sent -> finished_at (no polling)"
HELPER_THREAD = "(helper thread)"  # probe spans that run beside the executor's main thread
API_CONCURRENCY = 32
PG_GROUP = "PostgreSQL (bench DB backends + exited backends)"
SELF = "load generator (this process)"
TERMINAL = ("succeeded", "failed", "timed_out", "cancelled")
REPOS = ("tiny", "tiny-t1", "tiny-t2", "tiny-t3", "tiny-t4", "tiny-prof", "tiny-cprof")
RUN_BODY: dict[str, Any] = {
    "repo": "tiny",
    "goal": "measure the dispatch overhead of a run",
    "phases": [{"id": "noop", "run": "true"}],
}


# The pause before each run of the idle-worker dispatch measurement.
IDLE_GAP_S = 0.2


@dataclass(frozen=True)
class Sizes:
    """How much each section measures (--quick halves most of it)."""

    warmup: int
    dispatch: int
    dispatch_idle: int
    batch: int
    api_requests: int
    api_warmup: int
    checkouts: int
    probe_runs: int
    cprofile_runs: int


# Our runs and the floor's alternate in blocks of this many (back to back within a block).
DISPATCH_BLOCK = 10

FULL = Sizes(
    warmup=5,
    dispatch=200,
    dispatch_idle=30,
    batch=100,
    api_requests=2000,
    api_warmup=200,
    checkouts=20,
    probe_runs=20,
    cprofile_runs=12,
)
QUICK = Sizes(
    warmup=3,
    dispatch=60,
    dispatch_idle=15,
    batch=40,
    api_requests=800,
    api_warmup=100,
    checkouts=10,
    probe_runs=10,
    cprofile_runs=0,
)


@dataclass
class Ctx:
    """What every section shares."""

    sizes: Sizes
    tmp: Path
    db_url: str
    settings: Settings
    procs: Procs
    key: str = ""
    api: Proc | None = None
    api_url: str = ""
    results: dict[str, Any] = field(default_factory=dict)
    redis_pid: int = 0
    postmaster_pid: int = 0
    quiet_budget_s: float = 0.0

    @property
    def libpq(self) -> str:
        return self.db_url.replace("postgresql+psycopg://", "postgresql://", 1)

    @property
    def db_name(self) -> str:
        return self.db_url.rsplit("/", 1)[1]

    def pg_backends(self) -> list[int]:
        """The postmaster (its reaped-children CPU holds every exited backend's, of any
        database) and the live backends connected to the benchmark's database."""
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.db_name,)
            ).fetchall()
        return ([self.postmaster_pid] if self.postmaster_pid else []) + [int(r[0]) for r in rows]

    def pg_sessions(self) -> int:
        """Sessions (connections) ever opened to the benchmark's database."""
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            row = conn.execute(
                "SELECT sessions FROM pg_stat_database WHERE datname = %s", (self.db_name,)
            ).fetchone()
        return int(row[0]) if row else 0

    def meter(self, groups: dict[str, PidSource], own_children: bool = False) -> CpuMeter:
        """A CPU meter over groups plus this database's backends, Redis and this process
        (with the git and bash children it reaped when own_children; never while it stops
        services, whose CPU it would reap too)."""
        everything: dict[str, PidSource] = {
            **groups,
            PG_GROUP: self.pg_backends,
            "Redis server": lambda: [self.redis_pid] if self.redis_pid else [],
            SELF: lambda: [os.getpid()],
        }
        return CpuMeter(everything, frozenset() if own_children else frozenset({SELF}))

    def services(self) -> list[int]:
        """Every live process of every service the benchmark started."""
        return trees(*(p.pid for p in self.procs.started))


# --- services -----------------------------------------------------------------------------------


def service_env(ctx: Ctx, **overrides: str) -> dict[str, str]:
    """The environment of an API or worker process (inherited AUTOPACK_* settings dropped)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AUTOPACK_") and k not in ("DATABASE_URL", "BROKER_URL")
    }
    s = ctx.settings
    env.update(
        {
            "DATABASE_URL": ctx.db_url,
            "BROKER_URL": s.broker_url,
            "AUTOPACK_QUEUE": s.queue,
            "AUTOPACK_DATA_DIR": str(s.data_dir),
            "AUTOPACK_LEASE_TTL_S": str(s.lease_ttl_s),
            "AUTOPACK_HEARTBEAT_INTERVAL_S": str(s.heartbeat_interval_s),
            "AUTOPACK_SWEEP_INTERVAL_S": str(s.sweep_interval_s),
            "AUTOPACK_KILL_GRACE_S": str(s.kill_grace_s),
            "AUTOPACK_LOG_JSON": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


def start_api(ctx: Ctx) -> None:
    port = free_port()
    ctx.api = ctx.procs.start(
        "api", [sys.executable, "-m", "cli", "api", "--port", str(port)], service_env(ctx)
    )
    ctx.api_url = f"http://127.0.0.1:{port}"
    wait_http(ctx.api, f"{ctx.api_url}/healthz")
    log(f"API pid {ctx.api.pid} on {ctx.api_url}")


def start_worker(ctx: Ctx, name: str, concurrency: int, module: str = "cli", **env: str) -> Proc:
    argv = [sys.executable, "-m", module, "worker", "--concurrency", str(concurrency)]
    argv += ["--hostname", f"{name}-{uuid.uuid4().hex[:6]}@%h"]
    proc = ctx.procs.start(name, argv, service_env(ctx, **env))
    wait_log(proc, " ready.")
    log(f"worker {name} (concurrency {concurrency}) pid {proc.pid} ready")
    return proc


def idle_memory(proc: Proc, settle_s: float = 1.5) -> TreeMemory:
    time.sleep(settle_s)
    return tree_memory(proc.pid)


@contextmanager
def bench_database() -> Iterator[str]:
    name = f"autopack_bench_sys_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    log(f"created database {name}")
    try:
        yield f"postgresql+psycopg://{PG_ADMIN.split('://', 1)[1].rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        log(f"dropped database {name}")


DISTURBED_CORES = 0.25


def _disturbed(ctx: Ctx, section: str, other: float, attempt: int) -> bool:
    """Whether to measure a section again: other load above the threshold on the first try,
    with quiet budget left. Every retry is recorded and reported."""
    if other < DISTURBED_CORES:
        return False
    again = attempt == 0 and ctx.quiet_budget_s > 0
    ctx.results.setdefault("disturbed", []).append((section, other, again))
    log(f"{section}: {other:.2f} cores of other load meanwhile" + ("; again" if again else ""))
    return again


def wait_quiet(ctx: Ctx, section: str, threshold: float = DISTURBED_CORES) -> None:
    """Before a section, wait (within the run's quiet budget) until the CPU used outside our
    processes, PostgreSQL and Redis stays under threshold cores for 1 s (other users' jobs)."""
    waited, other = 0.0, math.nan
    for _ in range(600):  # bounded; the budget normally ends it much earlier
        meter = ctx.meter({"our services": ctx.services})
        meter.start()
        time.sleep(1.0)
        cores = meter.stop()
        other, waited = cores["everything else"], waited + cores["wall_s"]
        if other < threshold or ctx.quiet_budget_s <= 0:
            break
        ctx.quiet_budget_s -= cores["wall_s"]
    if other >= threshold:
        log(f"{section}: other load {other:.2f} cores; quiet budget spent, measuring anyway")
    ctx.results.setdefault("quiet", []).append((section, other, waited))


# --- 1. dispatch --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One run submitted over HTTP and polled until terminal."""

    run_id: str
    total_s: float
    post_s: float
    sent_at: float  # epoch
    seen_at: float  # epoch
    polls: int


def run_body(repo: str) -> dict[str, Any]:
    """A run of one `true` phase on a registered copy of the tiny repository."""
    return {**RUN_BODY, "repo": repo}


def submit_and_wait(client: httpx.Client, repo: str, timeout_s: float = 60) -> Sample:
    sent_at, t0 = time.time(), time.perf_counter()
    response = client.post("/runs", json=run_body(repo))
    if response.status_code != 202:
        raise RuntimeError(f"POST /runs: {response.status_code} {response.text[:500]}")
    t_post = time.perf_counter()
    run_id = str(response.json()["id"])
    polls = 0
    while True:  # bounded by timeout_s; each request is a long poll the server answers at the end
        polls += 1
        status = client.get(f"/runs/{run_id}/status", params={"wait_s": LONG_POLL_S}).json()
        if status["terminal"]:
            break
        if time.perf_counter() - t0 > timeout_s:
            raise RuntimeError(f"run {run_id} not terminal after {timeout_s}s: {status}")
    t1 = time.perf_counter()
    if status["status"] != "succeeded":
        raise RuntimeError(f"run {run_id} ended {status['status']}: {status['failure_reason']}")
    return Sample(run_id, t1 - t0, t_post - t0, sent_at, time.time(), polls)


def floor_once(app: Any, queue: str, mirror: Path, commit: str, path: Path) -> dict[str, float]:
    """Celery no-op round trip, then worktree add, `true`, worktree remove on the mirror."""
    t0 = time.perf_counter()
    result = app.send_task(NOOP_TASK, queue=queue)
    if result.get(timeout=10) != "ok":
        raise RuntimeError("floor task returned something else")
    t1 = time.perf_counter()
    git(["worktree", "add", "-q", "--detach", str(path), commit], git_dir=mirror)
    t2 = time.perf_counter()
    subprocess.run(["/bin/bash", "-c", "true"], cwd=path, check=True)
    t3 = time.perf_counter()
    git(["worktree", "remove", "--force", str(path)], git_dir=mirror)
    t4 = time.perf_counter()
    result.forget()
    return {"celery": t1 - t0, "add": t2 - t1, "true": t3 - t2, "remove": t4 - t3, "total": t4 - t0}


def db_timeline(ctx: Ctx, samples: list[Sample]) -> dict[str, list[float]]:
    """Per-run segments (ms) from the DB columns and the client's clock (same host)."""
    by_id = {s.run_id: s for s in samples}
    with psycopg.connect(ctx.libpq) as conn:
        rows = conn.execute(
            """
            SELECT r.id, r.created_at, r.enqueued_at, r.started_at, r.finished_at,
                   min(a.started_at), max(a.finished_at)
            FROM runs AS r JOIN attempts AS a ON a.run_id = r.id
            WHERE r.id = ANY(%s) GROUP BY r.id
            """,
            (list(by_id),),
        ).fetchall()
    segments: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        segments.setdefault(name, []).append(seconds * 1000)

    for run_id, created, enqueued, started, finished, a_start, a_end in rows:
        s = by_id[run_id]
        add(
            "client sent -> run row created (HTTP, auth, validation)",
            created.timestamp() - s.sent_at,
        )
        add(
            "created -> enqueued_at (rest of INSERT txn, send_task)",
            (enqueued - created).total_seconds(),
        )
        add(
            "enqueued -> started_at (broker, Celery, lease, begin_run)",
            (started - enqueued).total_seconds(),
        )
        add(
            "started -> first attempt (mirror fetch, worktree add, ledger)",
            (a_start - started).total_seconds(),
        )
        add("attempt (bash -c true, record_process)", (a_end - a_start).total_seconds())
        add(
            "attempt end -> finished_at (drift, checkpoint, final writes)",
            (finished - a_end).total_seconds(),
        )
        add("finished_at -> client sees terminal (long poll)", s.seen_at - finished.timestamp())
        add(TO_FINISHED, finished.timestamp() - s.sent_at)
    return segments


def measure_dispatch(ctx: Ctx, worker: Proc) -> None:
    sizes = ctx.sizes
    floor_queue = f"bench-sys-floor-{uuid.uuid4().hex[:6]}"
    floor_env = {
        **os.environ,
        "BENCH_FLOOR_BROKER": REDIS_URL,
        "BENCH_FLOOR_QUEUE": floor_queue,
        "PYTHONUNBUFFERED": "1",
    }
    floor_argv = [sys.executable, "-m", "celery", "-A", "bench.system_floor", "worker"]
    floor_argv += [
        "--concurrency",
        "1",
        "--pool",
        "prefork",
        "-Q",
        floor_queue,
        "--loglevel",
        "INFO",
    ]
    floor_argv += ["--without-gossip", "--without-mingle", "-n", f"floor-{uuid.uuid4().hex[:6]}@%h"]
    floor = ctx.procs.start("floor-worker", floor_argv, floor_env)
    wait_log(floor, " ready.")
    log(f"floor Celery worker pid {floor.pid} ready")
    app = make_app(REDIS_URL, floor_queue)
    mirror = ctx.settings.data_dir / "mirrors" / "tiny.git"
    wt_root = ctx.tmp / "floor-worktrees"
    wt_root.mkdir()
    ours: list[Sample] = []
    floors: list[dict[str, float]] = []
    with httpx.Client(base_url=ctx.api_url, headers={"X-API-Key": ctx.key}, timeout=30) as client:
        for _ in range(sizes.warmup):
            submit_and_wait(client, "tiny")
        commit = git(["rev-parse", "refs/remotes/origin/main"], git_dir=mirror).strip()
        for i in range(sizes.warmup):
            floor_once(app, floor_queue, mirror, commit, wt_root / f"warm-{i}")
        log("dispatch: warm-up done")
        block = DISPATCH_BLOCK
        meter = ctx.meter({"our services": ctx.services}, own_children=True)
        meter.start()
        for start in range(0, sizes.dispatch, block):  # interleaved blocks: drift hits both
            for _ in range(min(block, sizes.dispatch - start)):
                ours.append(submit_and_wait(client, "tiny"))
            for j in range(min(block, sizes.dispatch - start)):
                floors.append(
                    floor_once(app, floor_queue, mirror, commit, wt_root / f"f{start + j}")
                )
        # The same, each run (and each floor) submitted IDLE_GAP_S after the previous one ended:
        # back to back, a run can arrive while the worker still tidies up after the last one.
        idle: list[Sample] = []
        idle_floors: list[dict[str, float]] = []
        for k in range(sizes.dispatch_idle):
            time.sleep(IDLE_GAP_S)  # the scenario (an idle worker), not synchronization
            idle.append(submit_and_wait(client, "tiny"))
            time.sleep(IDLE_GAP_S)
            idle_floors.append(floor_once(app, floor_queue, mirror, commit, wt_root / f"i{k}"))
        ctx.results["noise"] = {"dispatch": meter.stop()}
        ctx.results["floor_worker_memory"] = idle_memory(floor)
        # The idle API and worker after this warm-up (the worker's pool child has executed runs).
        ctx.results["api_memory_idle"] = tree_memory(ctx.api.pid) if ctx.api else None
        ctx.results["worker_memory_idle_c1"] = tree_memory(worker.pid)
    ctx.procs.stop(floor)
    app.close()
    totals = [s.total_s * 1000 for s in ours]
    timeline = db_timeline(ctx, ours)
    floor_totals = [f["total"] * 1000 for f in floors]
    # Each block of our runs against the floor's block right after it: the machine's drift
    # between blocks cancels out of these ratios.
    block_ratios = [
        median(totals[i : i + block]) / median(floor_totals[i : i + block])
        for i in range(0, min(len(totals), len(floor_totals)), block)
    ]
    ctx.results["dispatch"] = {
        "n": len(ours),
        "ours_p50": median(totals),
        "ours_p95": percentile(totals, 95),
        "ours_min": min(totals),
        "post_p50": median([s.post_s * 1000 for s in ours]),
        "polls_p50": median([float(s.polls) for s in ours]),
        "floor_n": len(floors),
        "block_ratio_p50": median(block_ratios),
        "block_ratio_range": [min(block_ratios), max(block_ratios)],
        "blocks": len(block_ratios),
        "floor_p50": median(floor_totals),
        "floor_p95": percentile(floor_totals, 95),
        "floor_parts": {
            k: median([f[k] * 1000 for f in floors]) for k in ("celery", "add", "true", "remove")
        },
        "timeline": {k: median(v) for k, v in timeline.items() if k != TO_FINISHED},
        "idle_n": len(idle),
        "idle_p50": median([s.total_s * 1000 for s in idle]),
        "idle_p95": percentile([s.total_s * 1000 for s in idle], 95),
        "idle_floor_p50": median([f["total"] * 1000 for f in idle_floors]),
        "idle_floor_p95": percentile([f["total"] * 1000 for f in idle_floors], 95),
        "to_finished_p50": median(timeline[TO_FINISHED]),
        "to_finished_p95": percentile(timeline[TO_FINISHED], 95),
    }
    d = ctx.results["dispatch"]
    log(
        f"dispatch: ours p50 {d['ours_p50']:.1f} ms p95 {d['ours_p95']:.1f} ms; floor p50 {d['floor_p50']:.1f} ms; "
        f"to an idle worker: ours p50 {d['idle_p50']:.1f} ms, floor p50 {d['idle_floor_p50']:.1f} ms"
    )


# --- 2. throughput ------------------------------------------------------------------------------


async def _post_batch(ctx: Ctx, n: int, repo: str) -> list[str]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(
        base_url=ctx.api_url, headers={"X-API-Key": ctx.key}, timeout=60, limits=limits
    ) as client:
        responses = await asyncio.gather(
            *(client.post("/runs", json=run_body(repo)) for _ in range(n))
        )
    for r in responses:
        if r.status_code != 202:
            raise RuntimeError(f"POST /runs: {r.status_code} {r.text[:300]}")
    return [str(r.json()["id"]) for r in responses]


def wait_terminal(ctx: Ctx, ids: list[str], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(ctx.libpq, autocommit=True) as conn:
        while True:  # bounded by timeout_s
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = ANY(%s)),"
                " count(*) FILTER (WHERE status = 'succeeded') FROM runs WHERE id = ANY(%s)",
                (list(TERMINAL), ids),
            ).fetchone()
            assert row is not None
            if row[0] == len(ids):
                if row[1] != len(ids):
                    raise RuntimeError(f"only {row[1]} of {len(ids)} runs succeeded")
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(ids) - row[0]} runs not terminal after {timeout_s}s")
            time.sleep(POLL_S)


def measure_batch(
    ctx: Ctx, label: str, workers: list[Proc], slots: int, repo: str
) -> dict[str, Any]:
    # Warm-up: every pool process executes at least one run before the batch.
    wait_terminal(ctx, asyncio.run(_post_batch(ctx, 2 * slots, repo)))
    time.sleep(0.5)
    n = ctx.sizes.batch
    assert ctx.api is not None
    api_pid = ctx.api.pid
    for attempt in range(2):  # measured again once when other users' load got in the way
        wait_quiet(ctx, f"throughput {label}")
        meter = ctx.meter(
            {
                "API process": lambda: trees(api_pid),
                "worker processes (incl. git, bash)": lambda: trees(*(w.pid for w in workers)),
            }
        )
        meter.start()
        t0 = time.perf_counter()
        ids = asyncio.run(_post_batch(ctx, n, repo))
        t_submitted = time.perf_counter()
        wait_terminal(ctx, ids)
        wall = time.perf_counter() - t0
        cpu = meter.stop()
        if not _disturbed(ctx, f"throughput {label}", cpu["everything else"], attempt):
            break
        time.sleep(0.5)
    with psycopg.connect(ctx.libpq) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(finished_at) - min(created_at)),"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at))"
            " FROM runs WHERE id = ANY(%s)",
            (ids,),
        ).fetchone()
    assert row is not None
    result = {
        "slots": float(slots),
        "n": float(n),
        "wall_s": wall,
        "submit_s": t_submitted - t0,
        "rps": n / wall,
        "db_span_s": float(row[0]),
        "run_p50_ms": float(row[1]) * 1000,
        "cpu": cpu,
    }
    log(
        f"throughput {label}: {n} runs in {wall:.2f}s = {result['rps']:.2f} runs/s; "
        f"machine busy {cpu['machine busy']:.2f} cores, everything else {cpu['everything else']:.2f}"
    )
    time.sleep(0.5)  # let the last worktree removals finish
    return result


def measure_throughput(ctx: Ctx, worker_a: Proc) -> None:
    out: dict[str, dict[str, Any]] = {}
    out["1 worker x concurrency 1"] = measure_batch(ctx, "1x1", [worker_a], 1, "tiny-t1")
    worker_b = start_worker(ctx, "worker-b", 1)
    out["2 workers x concurrency 1"] = measure_batch(ctx, "2x1", [worker_a, worker_b], 2, "tiny-t2")
    ctx.procs.stop(worker_a)
    ctx.procs.stop(worker_b)
    worker_c = start_worker(ctx, "worker-c", 2)
    ctx.results["worker_memory_fresh_c2"] = idle_memory(worker_c)
    out["1 worker x concurrency 2"] = measure_batch(ctx, "1x2", [worker_c], 2, "tiny-t3")
    ctx.results["worker_memory_idle_c2"] = idle_memory(worker_c)
    ctx.procs.stop(worker_c)
    # The single-slot reference again, on a fresh worker, to show how much it moves in one run.
    worker_d = start_worker(ctx, "worker-d", 1)
    out["1 worker x concurrency 1, again"] = measure_batch(
        ctx, "1x1 again", [worker_d], 1, "tiny-t4"
    )
    ctx.procs.stop(worker_d)
    ctx.results["throughput"] = out


# --- profile ------------------------------------------------------------------------------------


def _load_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measure_profile(ctx: Ctx) -> None:
    out_path = ctx.tmp / "probe.jsonl"
    probe = start_worker(
        ctx, "worker-probe", 1, module="bench.system_probe", BENCH_PROBE_OUT=str(out_path)
    )
    samples: list[Sample] = []
    with httpx.Client(base_url=ctx.api_url, headers={"X-API-Key": ctx.key}, timeout=30) as client:
        for _ in range(ctx.sizes.warmup):
            submit_and_wait(client, "tiny-prof")
        out_path.unlink(missing_ok=True)
        for _ in range(ctx.sizes.probe_runs):
            samples.append(submit_and_wait(client, "tiny-prof"))
    time.sleep(0.5)
    ctx.procs.stop(probe)
    records = {r["run_id"]: r for r in _load_jsonl(out_path)}
    with psycopg.connect(ctx.libpq) as conn:
        rows = conn.execute(
            "SELECT id, extract(epoch FROM enqueued_at), extract(epoch FROM finished_at)"
            " FROM runs WHERE id = ANY(%s)",
            ([s.run_id for s in samples],),
        ).fetchall()
    db = {r[0]: (float(r[1]), float(r[2])) for r in rows}
    steps: dict[str, list[float]] = {}
    order: dict[str, float] = {}
    parent_of: dict[str, str] = {}
    git_calls: dict[str, list[float]] = {}
    per_run: dict[str, list[float]] = {}

    def add(bucket: dict[str, list[float]], name: str, ms: float) -> None:
        bucket.setdefault(name, []).append(ms)

    for sample in samples:
        rec = records.get(sample.run_id)
        if rec is None:
            continue
        spans = [(str(n), float(a), float(b)) for n, a, b in rec["spans"]]
        execute = next(s for s in spans if s[0] == "execute")
        x0 = execute[1]
        enqueued, finished = db[sample.run_id]
        add(per_run, "client: POST /runs round trip", sample.post_s * 1000)
        add(
            per_run,
            "enqueued_at -> task prerun (broker + Celery)",
            (rec["prerun"] - enqueued) * 1000,
        )
        add(per_run, "prerun -> execute()", (x0 - rec["prerun"]) * 1000)
        add(per_run, "execute() total", (execute[2] - x0) * 1000)
        add(per_run, "execute start -> finished_at committed", (finished - x0) * 1000)
        add(per_run, "execute() -> postrun", (rec["postrun"] - execute[2]) * 1000)
        add(per_run, "finished_at -> client sees terminal", (sample.seen_at - finished) * 1000)
        add(per_run, "SQL statements (count)", float(rec["sql_n"]))
        add(per_run, "SQL execute time", float(rec["sql_s"]) * 1000)
        add(per_run, "git processes (count)", float(len(rec["git"])))
        add(per_run, "git processes (time)", sum(b - a for _, a, b in rec["git"]) * 1000)
        seen: dict[str, float] = {}
        outside = execute[2] - x0
        for name, a, b in spans:
            if name == "execute":
                continue
            # A helper thread's span overlaps the main thread's steps: it encloses none of them,
            # is enclosed by none, and is not part of the main thread's time.
            helper = HELPER_THREAD in name
            enclosing = [
                (d - c, other)
                for other, c, d in spans
                if other not in ("execute", name)
                and HELPER_THREAD not in other
                and not helper
                and c <= a
                and b <= d
                and (d - c) > (b - a)
            ]
            if enclosing:
                parent = min(enclosing)[1]
                parent_of[f"{name} (in {parent})"] = parent
                name = f"{name} (in {parent})"
            elif not helper:
                outside -= b - a
            seen[name] = seen.get(name, 0.0) + (b - a) * 1000
            order[name] = min(order.get(name, a - x0), a - x0)
        for name, ms in seen.items():
            add(steps, name, ms)
        add(per_run, "execute(): time outside instrumented steps", outside * 1000)
        by_cmd: dict[str, float] = {}
        for cmd, a, b in rec["git"]:
            by_cmd[cmd] = by_cmd.get(cmd, 0.0) + (b - a) * 1000
        for cmd, ms in by_cmd.items():
            add(git_calls, cmd, ms)
    n = len([s for s in samples if s.run_id in records])
    ctx.results["profile"] = {
        "n": n,
        "per_run": {k: median(v) for k, v in per_run.items()},
        "steps": [
            (name, median(steps[name]), name in parent_of, len(steps[name]))
            for name in sorted(steps, key=lambda k: order[k])
        ],
        "git": sorted(((k, median(v), len(v)) for k, v in git_calls.items()), key=lambda x: -x[1]),
    }
    log(f"profile: {n} instrumented runs")
    if ctx.sizes.cprofile_runs:
        measure_cprofile(ctx)


def measure_cprofile(ctx: Ctx) -> None:
    stats_path = ctx.tmp / "executor.pstats"
    probe = start_worker(
        ctx,
        "worker-cprofile",
        1,
        module="bench.system_probe",
        BENCH_PROBE_OUT=str(ctx.tmp / "probe-cprofile.jsonl"),
        BENCH_PROBE_CPROFILE=str(stats_path),
    )
    with httpx.Client(base_url=ctx.api_url, headers={"X-API-Key": ctx.key}, timeout=30) as client:
        for _ in range(ctx.sizes.cprofile_runs):
            submit_and_wait(client, "tiny-cprof")
    time.sleep(0.5)
    ctx.procs.stop(probe)
    if not stats_path.exists():
        return
    stats = pstats.Stats(str(stats_path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in raw.items():
        short = filename.split("site-packages/")[-1].replace(str(Path.cwd()) + "/", "")
        rows.append((f"{short}:{line}({func})", ncalls, tottime, cumtime))
    runs = ctx.sizes.cprofile_runs
    top = sorted(rows, key=lambda r: -r[2])[:14]
    ctx.results["cprofile"] = {
        "runs": runs,
        "top": [
            (name, calls / runs, tot * 1000 / runs, cum * 1000 / runs)
            for name, calls, tot, cum in top
        ],
    }


# --- 3. API -------------------------------------------------------------------------------------

SERVER = "server process"


@dataclass
class Load:
    """Requests from a fixed number of connections, possibly measured in several rounds."""

    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    pg_sessions: int = 0

    def extend(self, other: Load) -> None:
        self.latencies_ms += other.latencies_ms
        self.wall_s += other.wall_s
        self.pg_sessions += other.pg_sessions
        self.ids += other.ids
        for name, seconds in other.cpu_s.items():
            self.cpu_s[name] = self.cpu_s.get(name, 0.0) + seconds

    def summary(self) -> dict[str, Any]:
        n = len(self.latencies_ms)
        return {
            "n": float(n),
            "rps": n / self.wall_s,
            "p50": median(self.latencies_ms),
            "p99": percentile(self.latencies_ms, 99),
            "server_cpu_ms_per_req": self.cpu_s.get(SERVER, 0.0) * 1000 / n,
            "pg_sessions_per_1000": self.pg_sessions * 1000 / n,
            "cores": {
                **{name: seconds / self.wall_s for name, seconds in self.cpu_s.items()},
                "wall_s": self.wall_s,
            },
        }


Request = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


async def _load(
    base: str,
    headers: dict[str, str],
    n: int,
    request: Request,
    expect: int,
    meter: CpuMeter,
    id_key: str | None,
) -> Load:
    limits = httpx.Limits(
        max_connections=API_CONCURRENCY, max_keepalive_connections=API_CONCURRENCY
    )
    latencies: list[float] = []
    ids: list[str] = []
    async with httpx.AsyncClient(
        base_url=base, headers=headers, timeout=60, limits=limits
    ) as client:

        async def connection(numbers: Iterator[int], record: bool) -> None:
            for i in numbers:  # the shared iterator bounds the total
                t0 = time.perf_counter()
                response = await request(client, i)
                if record:
                    latencies.append((time.perf_counter() - t0) * 1000)
                if response.status_code != expect:
                    raise RuntimeError(
                        f"{response.request.url}: {response.status_code} {response.text[:300]}"
                    )
                if record and id_key is not None:
                    ids.append(str(response.json()[id_key]))

        # Open every connection first (one request each), so connects are not measured.
        opening = iter(range(API_CONCURRENCY))
        await asyncio.gather(*(connection(opening, False) for _ in range(API_CONCURRENCY)))
        numbers = iter(range(n))
        meter.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(connection(numbers, True) for _ in range(API_CONCURRENCY)))
        wall = time.perf_counter() - t0
        cores = meter.stop()
    cpu_s = {k: v * wall for k, v in cores.items() if k != "wall_s"}
    return Load(latencies, wall, cpu_s, ids)


def run_load(
    ctx: Ctx,
    base: str,
    headers: dict[str, str],
    n: int,
    request: Request,
    expect: int,
    server_pid: int,
    id_key: str | None = None,
) -> Load:
    meter = ctx.meter({SERVER: lambda: trees(server_pid)})
    sessions = ctx.pg_sessions()
    load = asyncio.run(_load(base, headers, n, request, expect, meter, id_key))
    time.sleep(1.1)  # PostgreSQL flushes session counters at most once a second
    load.pg_sessions = ctx.pg_sessions() - sessions
    return load


def clean_load(ctx: Ctx, section: str, measure: Callable[[], Load]) -> Load:
    """A load measured after a quiet check, and once more if other load got in the way."""
    load = Load()
    for attempt in range(2):
        wait_quiet(ctx, section)
        load = measure()
        other = load.cpu_s.get("everything else", 0.0) / load.wall_s
        if not _disturbed(ctx, section, other, attempt):
            break
    return load


def measure_api(ctx: Ctx) -> None:
    assert ctx.api is not None
    api_pid = ctx.api.pid
    sizes = ctx.sizes
    body = {**RUN_BODY, "goal": "API load", "start": False, "labels": {"bench": "api"}}
    ours_headers = {"X-API-Key": ctx.key}

    def ours_post(client: httpx.AsyncClient, _i: int) -> Awaitable[httpx.Response]:
        return client.post("/runs", json=body)

    port = free_port()
    env = {**os.environ, "BENCH_BASELINE_DATABASE_URL": ctx.db_url, "PYTHONUNBUFFERED": "1"}
    base_proc = ctx.procs.start(
        "baseline-api", [sys.executable, "-m", "bench.system_baseline", "--port", str(port)], env
    )
    base_url = f"http://127.0.0.1:{port}"
    wait_http(base_proc, f"{base_url}/healthz")
    log(f"baseline API pid {base_proc.pid} on {base_url}")
    item = {
        "name": "API load",
        "payload": {"repo": "tiny", "phases": [{"id": "noop", "run": "true"}]},
    }

    def base_post(client: httpx.AsyncClient, _i: int) -> Awaitable[httpx.Response]:
        return client.post("/items", json=item)

    # Warm-up both servers (pools, code paths), then alternate rounds so drift hits both.
    run_load(ctx, ctx.api_url, ours_headers, sizes.api_warmup, ours_post, 202, api_pid)
    run_load(ctx, base_url, {}, sizes.api_warmup, base_post, 201, base_proc.pid)
    rounds, n = 2, sizes.api_requests
    ours_p, base_p, ours_g, base_g = Load(), Load(), Load(), Load()
    for k in range(rounds):
        ours_p.extend(
            clean_load(
                ctx,
                f"API ours POST round {k + 1}",
                lambda: run_load(
                    ctx, ctx.api_url, ours_headers, n // rounds, ours_post, 202, api_pid, "id"
                ),
            )
        )
        base_p.extend(
            clean_load(
                ctx,
                f"API baseline POST round {k + 1}",
                lambda: run_load(
                    ctx, base_url, {}, n // rounds, base_post, 201, base_proc.pid, "id"
                ),
            )
        )
    log(
        f"API POST: ours {ours_p.summary()['rps']:.0f} req/s, "
        f"baseline {base_p.summary()['rps']:.0f} req/s"
    )
    run_ids, item_ids = ours_p.ids, base_p.ids

    def ours_get(client: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
        return client.get(f"/runs/{run_ids[i % len(run_ids)]}")

    def base_get(client: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
        return client.get(f"/items/{item_ids[i % len(item_ids)]}")

    for k in range(rounds):
        ours_g.extend(
            clean_load(
                ctx,
                f"API ours GET round {k + 1}",
                lambda: run_load(
                    ctx, ctx.api_url, ours_headers, n // rounds, ours_get, 200, api_pid
                ),
            )
        )
        base_g.extend(
            clean_load(
                ctx,
                f"API baseline GET round {k + 1}",
                lambda: run_load(ctx, base_url, {}, n // rounds, base_get, 200, base_proc.pid),
            )
        )
    log(
        f"API GET: ours {ours_g.summary()['rps']:.0f} req/s, "
        f"baseline {base_g.summary()['rps']:.0f} req/s"
    )
    ctx.results["api_profile"] = profile_api(ctx, ours_post)
    ctx.results["api_memory_after_load"] = idle_memory(ctx.api)
    ctx.results["baseline_memory_after_load"] = tree_memory(base_proc.pid)
    ctx.procs.stop(base_proc)
    ctx.results["api"] = {
        "ours_post": ours_p.summary(),
        "base_post": base_p.summary(),
        "ours_get": ours_g.summary(),
        "base_get": base_g.summary(),
    }


# Frames whose inclusive share of the API's GIL-held samples is reported (function, file suffix).
API_FRAMES = (
    ("FastAPI app, all requests (ASGI stack)", "FastAPI.__call__", "fastapi/applications.py"),
    ("threadpool: sync endpoint threads", "WorkerThread.run", "anyio/_backends/_asyncio.py"),
    ("`submit_run` handler", "submit_run", "api/routes/runs.py"),
    ("- key check (SELECT, own session; a remembered key needs none)", "_verify", "api/deps.py"),
    ("- `service.submit` (INSERT run + phase, SAVEPOINT)", "submit", "shared/runs/service.py"),
    ("  - `repos.resolve` (repository SELECT)", "resolve", "shared/repos.py"),
    ("  - `Session.flush` (the INSERTs)", "Session.flush", "sqlalchemy/orm/session.py"),
    (
        "- `get_run_detail` (re-read run + phases + attempts)",
        "get_run_detail",
        "shared/runs/repository.py",
    ),
    ("- `run_read` (ORM -> pydantic)", "run_read", "shared/runs/service.py"),
    (
        "pool checkout pre-ping (`SELECT 1`)",
        "DefaultDialect._do_ping_w_event",
        "sqlalchemy/engine/default.py",
    ),
    ("`Session.commit`", "SessionTransaction.commit", "sqlalchemy/orm/session.py"),
    ("response validation + serialization", "serialize_response", "fastapi/routing.py"),
    ("access log line", "StreamHandler.emit", "logging/__init__.py"),
)


def _py_spy() -> str | None:
    found = shutil.which("py-spy")
    local = Path(sys.executable).parent / "py-spy"
    return found or (str(local) if local.exists() else None)


def profile_api(ctx: Ctx, request: Request, seconds: float = 5.0) -> dict[str, Any] | None:
    """py-spy (GIL holders only) on the API during an extra POST /runs load; None without py-spy."""
    spy = _py_spy()
    if spy is None or ctx.api is None:
        log(
            "py-spy not found (make bench installs it: pip install -e '.[bench]'): API profile skipped"
        )
        return None
    out = ctx.tmp / "api-post.pyspy"
    argv = [spy, "record", "--pid", str(ctx.api.pid), "--duration", str(int(seconds))]
    argv += ["--rate", "250", "--gil", "--nonblocking", "--format", "raw", "--output", str(out)]
    recorder = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        headers = {"X-API-Key": ctx.key}
        started = time.monotonic()
        while recorder.poll() is None and time.monotonic() - started < seconds + 10:
            run_load(ctx, ctx.api_url, headers, 200, request, 202, ctx.api.pid)
        recorder.wait(timeout=30)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    if not out.exists():
        return None
    total = 0
    inclusive: dict[str, int] = {}
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        frames = stack.split(";")
        for label, func, suffix in API_FRAMES:
            if any(f.startswith(func + " (") and suffix in f for f in frames):
                inclusive[label] = inclusive.get(label, 0) + int(count)
    if not total:
        return None
    return {
        "samples": total,
        "seconds": seconds,
        "shares": [(label, inclusive.get(label, 0) / total) for label, _f, _s in API_FRAMES],
    }


# --- 5. workspace -------------------------------------------------------------------------------


def big_files(count: int) -> dict[str, str]:
    rnd = random.Random(20240601)
    words = ["alpha", "beta", "gamma", "delta", "value", "result", "item", "count", "name", "data"]
    files = {}
    for i in range(count):
        lines = [f'"""Module {i} of the generated benchmark repository."""', ""]
        for j in range(rnd.randint(10, 60)):
            a, b = rnd.choice(words), rnd.choice(words)
            lines.append(f"def {a}_{j}({b}: int) -> int:\n    return {b} * {rnd.randint(1, 999)}\n")
        files[f"pkg{i // 50:03d}/mod_{i:04d}.py"] = "\n".join(lines) + "\n"
    return files


def measure_workspace(ctx: Ctx) -> None:
    origin = ctx.tmp / "origin-big"
    t0 = time.perf_counter()
    files = big_files(2000)
    make_repo(origin, files)
    size_mib = sum(len(c) for c in files.values()) / 2**20
    log(f"workspace: generated 2,000 files ({size_mib:.1f} MiB) in {time.perf_counter() - t0:.1f}s")
    settings = Settings(data_dir=ctx.tmp / "ws-data", database_url=ctx.db_url)
    ws = Workspaces(settings)
    t0 = time.perf_counter()
    mirror = ws.sync_mirror("big", str(origin))
    sync_s = time.perf_counter() - t0
    commit = ws.resolve_ref("big", "main")
    bare_root = ctx.tmp / "bare-worktrees"
    bare_root.mkdir()
    ours: list[float] = []
    bare: list[float] = []
    prune: list[float] = []
    removes: list[float] = []
    reps = ctx.sizes.checkouts
    meter = ctx.meter({"our services": ctx.services}, own_children=True)
    meter.start()
    for i in range(-2, reps):  # two warm-up rounds
        order = ("ours", "bare") if i % 2 == 0 else ("bare", "ours")
        for which in order:
            if which == "ours":
                t0 = time.perf_counter()
                ws.checkout("big", f"ws-{i + 2}", commit)
                elapsed = time.perf_counter() - t0
                t1 = time.perf_counter()
                ws.remove("big", f"ws-{i + 2}")
                if i >= 0:
                    ours.append(elapsed * 1000)
                    removes.append((time.perf_counter() - t1) * 1000)
            else:
                path = bare_root / f"b{i + 2}"
                t0 = time.perf_counter()
                git(["worktree", "add", "-q", "--detach", str(path), commit], git_dir=mirror)
                elapsed = time.perf_counter() - t0
                git(["worktree", "remove", "--force", str(path)], git_dir=mirror)
                if i >= 0:
                    bare.append(elapsed * 1000)
        t0 = time.perf_counter()
        git(["worktree", "prune"], git_dir=mirror)
        if i >= 0:
            prune.append((time.perf_counter() - t0) * 1000)
    ctx.results["noise"]["workspace"] = meter.stop()
    ctx.results["workspace"] = {
        "n": reps,
        "files": 2000,
        "size_mib": size_mib,
        "sync_s": sync_s,
        "ours_p50": median(ours),
        "ours_p95": percentile(ours, 95),
        "bare_p50": median(bare),
        "bare_p95": percentile(bare, 95),
        "prune_p50": median(prune),
        "remove_p50": median(removes),
    }
    w = ctx.results["workspace"]
    log(f"workspace: ours {w['ours_p50']:.1f} ms, bare {w['bare_p50']:.1f} ms")


# --- run branches in the mirror ------------------------------------------------------------------


def _fetch_ms(mirror: Path, reps: int) -> float:
    """Median time of the fetch `Workspaces.sync_mirror` runs for every run."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        git(["fetch", "--prune", "--tags", "--force", "-q", "origin"], git_dir=mirror)
        times.append((time.perf_counter() - t0) * 1000)
    return median(times)


def measure_ref_growth(ctx: Ctx) -> None:
    """Each run leaves its branch autopack/run/<id> in the mirror as a loose ref; the per-run
    fetch reads them all. Time that fetch on a mirror with 0, 1,000 and 5,000 run branches,
    then after `git pack-refs --all`."""
    settings = Settings(data_dir=ctx.tmp / "refs-data", database_url=ctx.db_url)
    ws = Workspaces(settings)
    mirror = ws.sync_mirror("refs", str(ctx.tmp / "origin-tiny"))
    commit = ws.resolve_ref("refs", "main")
    reps = 10
    rows: list[tuple[int, str, float]] = []
    have = 0
    for target in (0, 1000, 5000):
        lines = "".join(
            f"create refs/heads/autopack/run/bench-{i} {commit}\n" for i in range(have, target)
        )
        if lines:
            subprocess.run(
                ["git", f"--git-dir={mirror}", "update-ref", "--stdin"],
                input=lines,
                text=True,
                check=True,
                env={**os.environ, **GIT_ENV},
            )
        have = target
        rows.append((target, "loose", _fetch_ms(mirror, reps)))
    git(["pack-refs", "--all"], git_dir=mirror)
    rows.append((have, "packed (`git pack-refs --all`)", _fetch_ms(mirror, reps)))
    ctx.results["ref_growth"] = {"reps": reps, "rows": rows}
    log("ref growth: " + ", ".join(f"{n} {kind.split()[0]} {ms:.1f} ms" for n, kind, ms in rows))


# --- background and references ------------------------------------------------------------------


def _all_cpu() -> dict[int, float]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found[int(entry)] = pid_cpu_s(int(entry), reaped_children=False)
    return found


def _cmdline(pid: int) -> str:
    try:
        raw = (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return "?"
    return raw.strip()[:90] or "?"


def background(seconds: float = 3.0) -> dict[str, Any]:
    """What the machine does without us: busy cores and the busiest processes over a few seconds."""
    meter = CpuMeter({})
    before = _all_cpu()
    meter.start()
    time.sleep(seconds)
    cores = meter.stop()
    after = _all_cpu()
    mine = set(tree_pids(os.getpid()))
    busiest = sorted(
        (
            (after[pid] - before.get(pid, after[pid]), pid)
            for pid in after
            if pid not in mine and pid in before
        ),
        reverse=True,
    )[:4]
    return {
        "busy": cores["machine busy"],
        "steal": cores["steal"],
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "top": [(_cmdline(pid), used / seconds) for used, pid in busiest if used > 0.05 * seconds],
    }


def postmaster_pid(ctx: Ctx) -> int:
    """The parent of this connection's backend."""
    with psycopg.connect(ctx.libpq) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        # Read while the connection is open: its backend exits with it.
        stat = Path(f"/proc/{row[0]}/stat").read_text()
    return int(stat[stat.rfind(")") + 2 :].split()[1])


def pg_reference(ctx: Ctx, n: int = 60) -> dict[str, float]:
    """PostgreSQL round trips on this machine: SELECT 1, and INSERT + COMMIT (a WAL flush)."""
    selects, commits = [], []
    with psycopg.connect(ctx.libpq) as conn:
        conn.execute("CREATE TABLE bench_commit_probe (id bigserial PRIMARY KEY, v int)")
        conn.commit()
        for i in range(n):
            t0 = time.perf_counter()
            conn.execute("INSERT INTO bench_commit_probe (v) VALUES (%s)", (i,))
            conn.commit()
            commits.append((time.perf_counter() - t0) * 1000)
        conn.execute("DROP TABLE bench_commit_probe")
        conn.commit()
    with psycopg.connect(ctx.libpq, autocommit=True) as conn:
        for _ in range(n):
            t0 = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            selects.append((time.perf_counter() - t0) * 1000)
    return {"select_ms": median(selects), "commit_ms": median(commits)}


# --- machine and report -------------------------------------------------------------------------


def machine(ctx: Ctx) -> dict[str, str]:
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    with psycopg.connect(ctx.libpq) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        pg_settings = ", ".join(
            f"{name} {conn.execute(f'SHOW {name}').fetchone()[0]}"  # type: ignore[index]
            for name in ("fsync", "synchronous_commit", "shared_buffers", "max_connections")
        )
    client = redis.Redis.from_url(REDIS_URL)
    server: dict[str, Any] = client.info("server")  # type: ignore[assignment]
    redis_version = str(server.get("redis_version"))
    ctx.redis_pid = int(server.get("process_id") or 0)
    client.close()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": f"{os.cpu_count()} (nproc {len(os.sched_getaffinity(0))}), {cpu}",
        "ram": f"{mem_kib / 2**20:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": (str(row[0]) if row else "?") + f" ({pg_settings})",
        "redis": redis_version,
        "git": git(["--version"]).strip().removeprefix("git version "),
    }


def _f(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def _background_line(when: str, bg: dict[str, Any]) -> str:
    top = "; ".join(f"`{cmd}` {cores:.2f}" for cmd, cores in bg["top"]) or "none above 5 %"
    return (
        f"{when}, with none of our processes running, the machine was busy {bg['busy']:.2f} cores "
        f"(steal {bg['steal']:.2f}) over 3 s, load average {' '.join(bg['loadavg'])}; busiest "
        f"other processes (cores): {top}."
    )


def _mem(m: TreeMemory | None) -> str:
    if m is None:
        return "n/a"
    return f"{_f(m.rss_mib)} MiB RSS ({m.processes} proc., PSS {_f(m.pss_mib)} MiB)"


def render(ctx: Ctx, info: dict[str, str], command: str, elapsed_s: float) -> str:
    r = ctx.results
    d, tp, api, ws = r["dispatch"], r["throughput"], r["api"], r["workspace"]
    singles = [t["rps"] for label, t in tp.items() if label.startswith("1 worker x concurrency 1")]
    one = sum(singles) / len(singles)
    lines = [
        f"Measured {info['date']} with `{command}` ({_f(elapsed_s, 0)} s).",
        "",
        f"Machine: {info['cpus']}; {info['ram']} RAM; Linux {info['kernel']}; Python {info['python']}; "
        f"PostgreSQL {info['postgresql']}; Redis {info['redis']}; git {info['git']}. "
        "Load generator, API, workers, PostgreSQL and Redis all share these cores.",
        "",
        _background_line("Before the benchmark", r["background_start"]),
        _background_line("After it", r["background_end"]),
        "During the dispatch section the machine was busy "
        f"{r['noise']['dispatch']['machine busy']:.2f} cores, of which "
        f"{r['noise']['dispatch']['everything else']:.2f} outside our processes, PostgreSQL and "
        f"Redis; during the workspace section {r['noise']['workspace']['machine busy']:.2f} and "
        f"{r['noise']['workspace']['everything else']:.2f} (the other sections: CPU tables below).",
        "Quiet check before each section (cores used outside our processes, PostgreSQL and "
        "Redis over the last 1 s; seconds spent checking or waiting): "
        + "; ".join(f"{name} {other:.2f} ({waited:.0f} s)" for name, other, waited in r["quiet"])
        + ". "
        + (
            "Measurements disturbed by other load (cores; measured again?): "
            + "; ".join(
                f"{name} {other:.2f} ({'yes' if again else 'no, kept'})"
                for name, other, again in r["disturbed"]
            )
            + "."
            if r.get("disturbed")
            else "No measurement had more than "
            f"{DISTURBED_CORES} cores of other load (a disturbed one is measured once more)."
        ),
        "",
        f"PostgreSQL round trips from Python (psycopg, loopback): `SELECT 1` "
        f"{_f(r['pg']['select_ms'], 2)} ms, `INSERT` + `COMMIT` {_f(r['pg']['commit_ms'], 2)} ms (medians).",
        "",
        "| measure | ours | reference (same run) | ratio | target |",
        "|---|---|---|---|---|",
        f"| dispatch latency p50, 1 `true` phase (n={d['n']}) | {_f(d['ours_p50'])} ms | floor {_f(d['floor_p50'])} ms | "
        f"{d['ours_p50'] / d['floor_p50']:.2f}x | <= 1.5x |",
        f"| dispatch latency p95 | {_f(d['ours_p95'])} ms | floor {_f(d['floor_p95'])} ms | "
        f"{d['ours_p95'] / d['floor_p95']:.2f}x | |",
        f"| dispatch p50 per block of {DISPATCH_BLOCK} runs / the floor's next block (median of "
        f"{d['blocks']} blocks; lowest, highest) | | | {d['block_ratio_p50']:.2f}x "
        f"({d['block_ratio_range'][0]:.2f}x, {d['block_ratio_range'][1]:.2f}x) | |",
        f"| dispatch latency p50 / p95, each run sent {IDLE_GAP_S:.1f} s after the last ended "
        f"(n={d['idle_n']}) | {_f(d['idle_p50'])} / {_f(d['idle_p95'])} ms | floor, same gaps, "
        f"{_f(d['idle_floor_p50'])} / {_f(d['idle_floor_p95'])} ms | "
        f"{d['idle_p50'] / d['idle_floor_p50']:.2f}x / {d['idle_p95'] / d['idle_floor_p95']:.2f}x | |",
        f"| dispatch, sent -> `finished_at` committed (no polling), p50 / p95 | "
        f"{_f(d['to_finished_p50'])} / {_f(d['to_finished_p95'])} ms | floor {_f(d['floor_p50'])} / "
        f"{_f(d['floor_p95'])} ms | {d['to_finished_p50'] / d['floor_p50']:.2f}x / "
        f"{d['to_finished_p95'] / d['floor_p95']:.2f}x | |",
    ]
    for label, t in tp.items():
        lines.append(
            f"| throughput, {label} (batch of {int(t['n'])}) | {_f(t['rps'], 2)} runs/s | "
            f"1 worker x 1, mean of {len(singles)}: {_f(one, 2)} runs/s | {t['rps'] / one:.2f}x | |"
        )
    op, bp, og, bg = api["ours_post"], api["base_post"], api["ours_get"], api["base_get"]
    lines += [
        f"| `POST /runs` (start: false), {API_CONCURRENCY} connections, n={int(op['n'])} | {_f(op['rps'], 0)} req/s | "
        f"bare FastAPI INSERT {_f(bp['rps'], 0)} req/s | {op['rps'] / bp['rps']:.2f}x | >= 0.5x |",
        f"| `POST /runs` p99 | {_f(op['p99'])} ms | {_f(bp['p99'])} ms | {op['p99'] / bp['p99']:.2f}x | |",
        f"| `POST /runs` server CPU per request | {_f(op['server_cpu_ms_per_req'], 2)} ms | "
        f"{_f(bp['server_cpu_ms_per_req'], 2)} ms | {op['server_cpu_ms_per_req'] / bp['server_cpu_ms_per_req']:.1f}x | |",
        f"| `GET /runs/{{id}}`, {API_CONCURRENCY} connections | {_f(og['rps'], 0)} req/s | "
        f"bare FastAPI SELECT {_f(bg['rps'], 0)} req/s | {og['rps'] / bg['rps']:.2f}x | |",
        f"| `GET /runs/{{id}}` p99 | {_f(og['p99'])} ms | {_f(bg['p99'])} ms | {og['p99'] / bg['p99']:.2f}x | |",
        f"| `GET /runs/{{id}}` server CPU per request | {_f(og['server_cpu_ms_per_req'], 2)} ms | "
        f"{_f(bg['server_cpu_ms_per_req'], 2)} ms | {og['server_cpu_ms_per_req'] / bg['server_cpu_ms_per_req']:.1f}x | |",
        f"| idle API process (after warm-up) | {_mem(r.get('api_memory_idle'))} | | | |",
        f"| idle worker, concurrency 1 (main + pool child) | {_mem(r.get('worker_memory_idle_c1'))} | "
        f"bare Celery worker: {_mem(r.get('floor_worker_memory'))} | | |",
        f"| idle worker, concurrency 2 (after its batch) | {_mem(r.get('worker_memory_idle_c2'))} | | | |",
        f"| checkout of {ws['files']:,} files ({_f(ws['size_mib'])} MiB), median of {ws['n']} | {_f(ws['ours_p50'])} ms | "
        f"bare `git worktree add` {_f(ws['bare_p50'])} ms | {ws['ours_p50'] / ws['bare_p50']:.2f}x | |",
        "",
        "### Dispatch: the floor's parts (medians, ms)",
        "",
        "| Celery no-op send -> result | `git worktree add --detach` | `bash -c true` | `git worktree remove` |",
        "|---|---|---|---|",
        "| "
        + " | ".join(_f(d["floor_parts"][k]) for k in ("celery", "add", "true", "remove"))
        + " |",
        "",
        f"Ours: POST /runs answered in {_f(d['post_p50'])} ms (median); the client polled the status "
        f"{d['polls_p50']:.0f} times per run (median); fastest run {_f(d['ours_min'])} ms.",
        "",
        "### Dispatch: where a run's time goes (DB timestamps of the uninstrumented runs, medians)",
        "",
        "| segment | ms |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_f(v)} |" for k, v in d["timeline"].items()]
    prof = r.get("profile")
    if prof:
        lines += [
            "",
            f"### Profile: instrumented worker (bench/system_probe.py), {prof['n']} runs, medians",
            "",
            "| path | ms |",
            "|---|---|",
        ]
        lines += [
            f"| {k} | {_f(v, 0) if '(count)' in k else _f(v)} |" for k, v in prof["per_run"].items()
        ]
        lines += ["", "| step inside execute(), in order (nested steps indented) | ms per run |"]
        lines += ["|---|---|"]
        lines += [
            f"| {'&nbsp;&nbsp;&nbsp;' if nested else ''}{name} | {_f(ms, 2)} |"
            for name, ms, nested, _n in prof["steps"]
        ]
        lines += ["", "| git command (per run) | ms |", "|---|---|"]
        lines += [f"| `git {cmd}` | {_f(ms, 2)} |" for cmd, ms, _n in prof["git"]]
    cp = r.get("cprofile")
    if cp:
        lines += [
            "",
            f"### cProfile of RunExecutor.execute ({cp['runs']} runs; per run; top self time)",
            "",
            "| function | calls | self ms | cumulative ms |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{name}` | {calls:.0f} | {_f(tot, 2)} | {_f(cum, 2)} |"
            for name, calls, tot, cum in cp["top"]
        ]
    growth = r.get("ref_growth")
    if growth:
        lines += [
            "",
            "### Mirror fetch vs run branches left in the mirror",
            "",
            f"`git fetch --prune --tags --force -q origin` (what `sync_mirror` runs for every run) on a "
            f"mirror of the tiny repository, median of {growth['reps']}:",
            "",
            "| run branches in the mirror | refs stored | fetch ms |",
            "|---|---|---|",
        ]
        lines += [f"| {n:,} | {kind} | {_f(ms)} |" for n, kind, ms in growth["rows"]]
    lines += [
        "",
        "### Throughput details",
        "",
        "| configuration | runs | wall s | submit s | runs/s | first created -> last finished s | run p50 (started -> finished) ms |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {label} | {int(t['n'])} | {_f(t['wall_s'], 2)} | {_f(t['submit_s'], 2)} | {_f(t['rps'], 2)} | "
        f"{_f(t['db_span_s'], 2)} | {_f(t['run_p50_ms'])} |"
        for label, t in tp.items()
    ]
    lines += [
        "",
        "CPU during each batch, in cores busy (CPU ms per run); the machine has "
        f"{os.cpu_count()} cores:",
        "",
    ]
    lines += _cpu_table([(label, t["cpu"], t["n"]) for label, t in tp.items()], "run")
    lines += [
        "",
        f"### API details ({API_CONCURRENCY} connections, asyncio + httpx.AsyncClient, same machine)",
        "",
        "| server | requests | req/s | p50 ms | p99 ms | server CPU ms/req | new PostgreSQL connections per 1,000 req |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = (
        ("ours `POST /runs` (start: false)", "ours_post"),
        ("baseline `POST /items` (INSERT)", "base_post"),
        ("ours `GET /runs/{id}`", "ours_get"),
        ("baseline `GET /items/{id}` (SELECT)", "base_get"),
    )
    for label, key in labels:
        s = api[key]
        lines.append(
            f"| {label} | {int(s['n'])} | {_f(s['rps'], 0)} | {_f(s['p50'])} | {_f(s['p99'])} | "
            f"{_f(s['server_cpu_ms_per_req'], 2)} | {_f(s['pg_sessions_per_1000'], 0)} |"
        )
    lines += ["", "CPU during each load, in cores busy (CPU ms per request):", ""]
    lines += _cpu_table([(label, api[key]["cores"], api[key]["n"]) for label, key in labels], "req")
    prof_api = r.get("api_profile")
    if prof_api:
        lines += [
            "",
            f"Where the API's Python time goes under `POST /runs` load (py-spy `--gil`, "
            f"{prof_api['samples']} samples in {prof_api['seconds']:.0f} s, share of samples in which "
            "the frame is on the GIL holder's stack; nested rows are part of the row above):",
            "",
            "| frame | share |",
            "|---|---|",
        ]
        lines += [
            f"| {label.replace('  -', '&nbsp;&nbsp;&nbsp;&nbsp;-')} | {share * 100:.1f} % |"
            for label, share in prof_api["shares"]
        ]
    lines += [
        "",
        f"API after the load: {_mem(r.get('api_memory_after_load'))}; baseline after the load: "
        f"{_mem(r.get('baseline_memory_after_load'))}. Fresh worker with concurrency 2 (before any run): "
        f"{_mem(r.get('worker_memory_fresh_c2'))}.",
        "",
        f"Workspace: {ws['files']:,} files; first `sync_mirror` (clone) {_f(ws['sync_s'], 2)} s; "
        f"ours p95 {_f(ws['ours_p95'])} ms, bare p95 {_f(ws['bare_p95'])} ms; `git worktree prune` alone "
        f"{_f(ws['prune_p50'])} ms; `Workspaces.remove` {_f(ws['remove_p50'])} ms.",
    ]
    return "\n".join(lines) + "\n"


def _cpu_table(rows: list[tuple[str, dict[str, float], float]], unit: str) -> list[str]:
    """Cores busy per process group (and CPU ms per unit of work) for each measured interval."""
    names: list[str] = []
    for _label, cores, _n in rows:
        names += [k for k in cores if k not in names and k != "wall_s"]
    lines = [
        "| interval | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for label, cores, n in rows:
        wall = cores["wall_s"]
        cells = []
        for name in names:
            value = cores.get(name, 0.0)
            cells.append(f"{value:.2f} ({value * wall * 1000 / n:.1f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def write_results(markdown: str) -> None:
    block = f"{BEGIN}\n{markdown}{END}\n"
    if RESULTS.exists():
        text = RESULTS.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            tail = rest.split(END, 1)[1].lstrip("\n")
            RESULTS.write_text(head + block + ("\n" + tail if tail else ""))
            return
        RESULTS.write_text(text.rstrip("\n") + "\n\n" + block)
        return
    RESULTS.write_text("# System benchmark\n\n" + block)


# --- main ---------------------------------------------------------------------------------------


SECTIONS = ("dispatch", "throughput", "profile", "api", "workspace")


def run_sections(ctx: Ctx, worker: Proc, sections: list[str]) -> None:
    """Measure only the named sections and print their raw results as JSON (no report)."""
    for name in sections:
        if name == "dispatch":
            wait_quiet(ctx, "dispatch")
            measure_dispatch(ctx, worker)
        elif name == "throughput":
            measure_throughput(ctx, worker)
        elif name == "profile":
            wait_quiet(ctx, "profile")
            measure_profile(ctx)
        elif name == "api":
            measure_api(ctx)
        elif name == "workspace":
            measure_workspace(ctx)
    print(json.dumps(ctx.results, indent=1, default=str))


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    command = ".venv/bin/python -m bench.system" + (" --quick" if args.quick else "")
    r = redis.Redis.from_url(REDIS_URL)
    r.flushdb()
    tmp = Path(tempfile.mkdtemp(prefix="autopack-bench-sys-"))
    procs = Procs(tmp)
    markdown = ""
    try:
        with bench_database() as db_url:
            try:
                settings = Settings(
                    database_url=db_url,
                    broker_url=REDIS_URL,
                    queue=f"bench-sys-{uuid.uuid4().hex[:8]}",
                    data_dir=tmp / "data",
                    log_json=True,
                )
                ctx = Ctx(sizes, tmp, db_url, settings, procs)
                ctx.quiet_budget_s = 40.0 if args.quick else 120.0
                upgrade(settings)
                engine = make_engine(settings)
                sessions = make_session_factory(engine)
                make_repo(tmp / "origin-tiny", {"README.md": "# tiny\n", "app.py": "print('hi')\n"})
                with transaction(sessions) as session:
                    for name in REPOS:  # one mirror per section: run branches pile up per mirror
                        repos.add(session, name, str(tmp / "origin-tiny"))
                    ctx.key = auth.create_key(session, "bench-system")[1]
                engine.dispose()
                info = machine(ctx)
                ctx.postmaster_pid = postmaster_pid(ctx)
                ctx.results["background_start"] = background()
                ctx.results["pg"] = pg_reference(ctx)
                start_api(ctx)
                worker_a = start_worker(ctx, "worker-a", 1)
                if args.sections:  # a partial run for iterating on one part: raw figures only
                    run_sections(ctx, worker_a, args.sections)
                    return 0
                wait_quiet(ctx, "dispatch")
                measure_dispatch(ctx, worker_a)
                measure_throughput(ctx, worker_a)
                wait_quiet(ctx, "profile")
                measure_profile(ctx)
                measure_api(ctx)
                wait_quiet(ctx, "workspace")
                measure_workspace(ctx)
                measure_ref_growth(ctx)
                procs.stop_all()
                ctx.results["background_end"] = background()
                markdown = render(ctx, info, command, time.perf_counter() - started)
            except BaseException:
                for proc in procs.started:
                    log(f"--- last lines of {proc.name} ({proc.log_path}) ---")
                    log(proc.output()[-2500:])
                raise
            finally:
                procs.stop_all()  # before the database is dropped
    finally:
        procs.stop_all()
        with suppress(Exception):
            r.flushdb()
            r.close()
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(markdown)
    if args.write_results:
        write_results(markdown)
        log(f"wrote {RESULTS}")
    log(f"done in {time.perf_counter() - started:.0f}s")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller samples (about 3 minutes)")
    parser.add_argument(
        "--write-results",
        action="store_true",
        help=f"replace the generated block of {RESULTS.name}",
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep logs and worktrees")
    parser.add_argument(
        "--sections",
        type=lambda text: [part for part in text.split(",") if part],
        default=[],
        help=f"only these, comma-separated ({', '.join(SECTIONS)}); prints raw JSON, no report",
    )
    args = parser.parse_args()
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")

    def terminate(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, terminate)
    sys.exit(run(args))


if __name__ == "__main__":
    main()
