"""An instrumented `autopack worker` for the profile pass of `bench.system`.

Wraps the executor's steps, every git call and every SQL statement with wall-clock timers
(monkeypatching in this process only; no project file changes), then starts the real worker:

    BENCH_PROBE_OUT=/tmp/spans.jsonl python -m bench.system_probe worker --concurrency 1

Each executed task appends one JSON line: the run id, Celery's prerun/postrun times, the step
spans `[name, start, end]` (epoch seconds), git calls, and SQL statement count and time.
With BENCH_PROBE_CPROFILE=PATH, RunExecutor.execute also runs under cProfile and the
accumulated stats are dumped to PATH after every task.
"""

from __future__ import annotations

import cProfile
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from celery import signals
from sqlalchemy import Engine, event

from workers import changes, executor, phases, workspace
from workers.executor import RunExecutor
from workers.heartbeat import Heartbeat
from workers.ledger import Ledger
from workers.workspace import Workspaces

OUT = os.environ.get("BENCH_PROBE_OUT", "probe.jsonl")
CPROFILE_OUT = os.environ.get("BENCH_PROBE_CPROFILE")

_state: dict[str, Any] = {"spans": [], "git": [], "sql_n": 0, "sql_s": 0.0}
_profile = cProfile.Profile() if CPROFILE_OUT else None


def _wrap(owner: Any, attr: str, name: str) -> None:
    original: Callable[..., Any] = getattr(owner, attr)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            _state["spans"].append([name, start, time.time()])

    setattr(owner, attr, timed)


def _wrap_git(module: Any) -> None:
    original: Callable[..., str] = module.git

    @functools.wraps(original)
    def timed_git(args: Any, *rest: Any, **kwargs: Any) -> str:
        start = time.time()
        try:
            return original(args, *rest, **kwargs)
        finally:
            _state["git"].append([" ".join(list(args)[:2]), start, time.time()])

    module.git = timed_git


def _wrap_execute() -> None:
    original = RunExecutor.execute

    @functools.wraps(original)
    def execute(self: RunExecutor, run_id: str) -> str | None:
        start = time.time()
        try:
            if _profile is not None:
                _profile.enable()
            try:
                return original(self, run_id)
            finally:
                if _profile is not None:
                    _profile.disable()
        finally:
            _state["spans"].append(["execute", start, time.time()])

    RunExecutor.execute = execute  # type: ignore[method-assign]


def install() -> None:
    """Instrument the executor's steps, git and SQL."""
    _wrap_execute()
    _wrap(RunExecutor, "_claim", "claim: queue wait, admission, lease, start, read (1 txn)")
    _wrap(Heartbeat, "__enter__", "heartbeat start")
    _wrap(Heartbeat, "__exit__", "heartbeat stop")
    _wrap(Workspaces, "sync_mirror", "mirror fetch (sync_mirror)")
    _wrap(Workspaces, "resolve_ref", "resolve_ref")
    _wrap(Ledger, "set_base", "ledger.set_base")
    _wrap(Workspaces, "checkout", "worktree (spare moved, or worktree add)")
    _wrap(Ledger, "start_attempt", "ledger.start_attempt")
    _wrap(RunExecutor, "_log_path", "attempt log file")
    _wrap(phases.ShellPhaseRunner, "run", "phase command (bash -c true)")
    _wrap(Ledger, "_record_pgid", "ledger.record_process (helper thread)")
    _wrap(executor, "redact_file", "redact log")
    _wrap(RunExecutor, "_outcome", "attempt outcome")
    _wrap(Ledger, "finish_attempt", "ledger.finish_attempt")
    _wrap(executor, "tree_status", "changed paths (git status)")
    _wrap(RunExecutor, "_check_drift", "drift check")
    _wrap(Workspaces, "commit_checkpoint", "checkpoint commit")
    _wrap(Ledger, "phase_succeeded", "ledger.phase_succeeded")
    _wrap(Workspaces, "head", "head (rev-parse)")
    _wrap(Workspaces, "diffstat", "diffstat")
    _wrap(Ledger, "finish_run", "ledger.finish_run")
    _wrap(Workspaces, "remove", "worktree remove")
    _wrap(Workspaces, "recycle", "worktree kept as the spare (after finish)")
    _wrap(Workspaces, "prepare_spare", "spare checkout for the next run (after finish)")
    _wrap_git(workspace)
    _wrap_git(changes)

    @event.listens_for(Engine, "before_cursor_execute")
    def _before(conn: Any, _cursor: Any, _stmt: str, _params: Any, _ctx: Any, _many: bool) -> None:
        conn.info["bench_t0"] = time.perf_counter()

    @event.listens_for(Engine, "after_cursor_execute")
    def _after(conn: Any, _cursor: Any, _stmt: str, _params: Any, _ctx: Any, _many: bool) -> None:
        started = conn.info.pop("bench_t0", None)
        _state["sql_n"] += 1
        if started is not None:
            _state["sql_s"] += time.perf_counter() - started

    def prerun(args: Any = None, **_: Any) -> None:
        _state.update(spans=[], git=[], sql_n=0, sql_s=0.0, prerun=time.time())

    def postrun(args: Any = None, **_: Any) -> None:
        record = {
            "run_id": str(args[0]) if args else None,
            "pid": os.getpid(),
            "prerun": _state.get("prerun"),
            "postrun": time.time(),
            "spans": _state["spans"],
            "git": _state["git"],
            "sql_n": _state["sql_n"],
            "sql_s": _state["sql_s"],
        }
        with open(OUT, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if _profile is not None and CPROFILE_OUT:
            _profile.dump_stats(CPROFILE_OUT)

    signals.task_prerun.connect(prerun, weak=False)
    signals.task_postrun.connect(postrun, weak=False)


def main() -> None:
    install()
    from cli.main import main as cli_main

    sys.argv = ["autopack", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
