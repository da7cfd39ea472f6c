"""`autopack parallel`: many runs with bounded concurrency, against the real API + worker and locally."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.parallel_runner import backoff_delays
from shared.settings import Settings
from tests.services import Service, service_env

PARALLEL = ("import typer; from cli.parallel import parallel_command; typer.run(parallel_command)",)


def parallel(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """`autopack parallel ARGS` as a real subprocess."""
    return subprocess.run(
        [sys.executable, "-c", *PARALLEL, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_run(folder: Path, name: str, repo: str, command: str, **extra: str) -> Path:
    """A run file with one shell phase."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    lines = [f"repo: {repo}", f"goal: {name}", *(f"{k}: {v}" for k, v in extra.items())]
    lines += ["phases:", f"  - {{id: only, run: {command!r}}}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def report_rows(text: str) -> dict[str, dict[str, str]]:
    """The Runs table of a Markdown report, by run id."""
    lines = text.split("## Runs", 1)[1].split("## Totals", 1)[0].strip().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        for line in lines[2:]
    ]
    return {row["run id"]: row for row in rows}


def report_totals(text: str) -> dict[str, int]:
    """The totals-by-status table of a report."""
    lines = text.split("## Totals by status", 1)[1].strip().splitlines()[2:]
    totals = {}
    for line in lines:
        if not line.startswith("|"):
            break
        status, count = (c.strip() for c in line.strip("|").split("|"))
        totals[status] = int(count)
    return totals


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.fixture
def embedded_env(tmp_path: Path) -> dict[str, str]:
    """No services: the embedded SQLite default in a fresh data directory."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AUTOPACK_") and k not in {"DATABASE_URL", "BROKER_URL"}
    }
    env.update({"AUTOPACK_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"})
    return env


@pytest.fixture
def api_env(settings: Settings, api_url: str, api_key: str) -> dict[str, str]:
    """The environment of a client of the session's real API."""
    return {
        **service_env(settings),
        "AUTOPACK_API_URL": api_url,
        "AUTOPACK_API_KEY": api_key,
        "COLUMNS": "200",
    }


def test_backoff_schedule_grows_to_the_cap_with_bounded_jitter() -> None:
    flat = list(itertools.islice(backoff_delays(jitter=0.0), 14))
    assert flat[:3] == [0.5, 0.75, 1.125]
    assert all(a < b for a, b in itertools.pairwise(flat[:9]))
    assert flat[8:] == [10.0] * 6
    jittered = list(itertools.islice(backoff_delays(rng=random.Random(7)), 300))
    ratios = [d / b for d, b in zip(jittered, [*flat, *[10.0] * 286], strict=True)]
    assert all(0.8 <= r <= 1.2 for r in ratios)
    assert min(ratios) < 0.85 and max(ratios) > 1.15  # the jitter really spreads the polls
    assert max(jittered) <= 12.0


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ((), ("give run files",)),
        (("missing.yaml",), ("does not exist",)),
        (("empty",), ("no *.yaml",)),
        (("runs", "--repo", "x=."), ("--repo only applies with --local",)),
        (("runs", "--report", "nowhere/r.md"), ("does not exist",)),
        (("runs", "--id", "run-a", "--id", "run-a"), ("given twice",)),
        (("runs", "--local"), ("a.yaml", "repository 'demo' is not registered", "--repo demo=")),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    embedded_env: dict[str, str], tmp_path: Path, args: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    (tmp_path / "empty").mkdir()
    write_run(tmp_path / "runs", "a.yaml", "demo", "true")
    result = parallel(*args, env=embedded_env, cwd=tmp_path)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "parallel-report.md").exists()


def test_local_mode_executes_runs_here(
    embedded_env: dict[str, str], tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    origin = make_repo({"README.md": "# local\n"})
    runs = tmp_path / "runs"
    for n in range(3):
        write_run(runs, f"r{n}.yaml", "loc", f"echo {n} > out-{n}.txt && sleep 0.5")
    result = parallel(
        str(runs),
        "--local",
        "--repo",
        f"loc={origin}",
        "--concurrency",
        "2",
        env=embedded_env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = (tmp_path / "parallel-report.md").read_text()
    rows = report_rows(text)
    assert sorted(row["source"] for row in rows.values()) == [
        str(runs / f"r{n}.yaml") for n in range(3)
    ]
    assert {row["status"] for row in rows.values()} == {"succeeded"}
    assert report_totals(text) == {"succeeded": 3}
    mirror = Path(embedded_env["AUTOPACK_DATA_DIR"]) / "mirrors" / "loc.git"
    for run_id, row in rows.items():
        assert row["attempts"] == "1"
        tree = subprocess.run(
            ["git", f"--git-dir={mirror}", "ls-tree", "--name-only", row["result commit"]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert any(name.startswith("out-") for name in tree), (run_id, tree)
    assert "3 runs: 3 succeeded" in result.stdout


def test_local_timeout_cancels_what_still_executes(
    embedded_env: dict[str, str], tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    origin = make_repo({"README.md": "# local\n"})
    slow = write_run(tmp_path, "slow.yaml", "loc", "sleep 60")
    quick = write_run(tmp_path, "quick.yaml", "loc", "true")
    env = {**embedded_env, "AUTOPACK_HEARTBEAT_INTERVAL_S": "0.5", "AUTOPACK_KILL_GRACE_S": "1"}
    began = time.monotonic()
    result = parallel(
        str(slow),
        str(quick),
        "--local",
        "--repo",
        f"loc={origin}",
        "--concurrency",
        "1",
        "--timeout",
        "2",
        "--report",
        "-",
        env=env,
        cwd=tmp_path,
    )
    assert time.monotonic() - began < 30
    assert result.returncode == 1, result.stdout + result.stderr
    by_source = {row["source"]: row for row in report_rows(result.stdout).values()}
    assert by_source[str(slow)]["status"] == "timeout (still running)"
    assert "cancelled here at --timeout" in by_source[str(slow)]["reason"]
    assert by_source[str(quick)]["status"] == "timeout (still waiting)"
    assert by_source[str(quick)]["run id"] == "-"
    assert report_totals(result.stdout) == {"timeout": 2}


@pytest.mark.e2e
def test_six_runs_two_at_a_time_all_succeed(
    api_env: dict[str, str],
    client: httpx.Client,
    worker: Service,
    register_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    repo = register_repo()
    runs = tmp_path / "runs"
    for n in range(6):
        write_run(runs, f"r{n}.yaml", repo, f"echo {n} > out-{n}.txt")
    report = tmp_path / "report.md"
    result = parallel(
        str(runs), "--concurrency", "2", "--report", str(report), env=api_env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = report.read_text()
    rows = report_rows(text)
    assert len(rows) == 6 and {row["status"] for row in rows.values()} == {"succeeded"}
    assert report_totals(text) == {"succeeded": 6} and "Wall time: " in text
    runs_read = {run_id: client.get(f"/runs/{run_id}").json() for run_id in rows}
    for run_id, run in runs_read.items():
        assert run["status"] == "succeeded" and run["repo"] == repo
        assert rows[run_id]["result commit"] == run["result_commit"] and run["result_commit"]
    # At most two in flight: when a run was created, at most one other was created and not finished.
    spans = [
        (datetime.fromisoformat(r["created_at"]), datetime.fromisoformat(r["finished_at"]))
        for r in runs_read.values()
    ]
    for created, _ in spans:
        overlapping = [s for s in spans if s[0] < created < s[1]]
        assert len(overlapping) <= 1, spans


@pytest.mark.e2e
def test_a_failing_run_makes_exit_1_and_shows_in_the_report(
    api_env: dict[str, str], worker: Service, register_repo: Callable[..., str], tmp_path: Path
) -> None:
    repo = register_repo()
    good = [write_run(tmp_path, f"ok{n}.yaml", repo, f"echo {n} > ok.txt") for n in range(2)]
    bad = write_run(tmp_path, "bad.yaml", repo, "echo broken >&2; exit 3")
    result = parallel(
        str(good[0]),
        str(bad),
        str(good[1]),
        "--concurrency",
        "2",
        "--report",
        "-",
        env=api_env,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    by_source = {row["source"]: row for row in report_rows(result.stdout).values()}
    assert by_source[str(bad)]["status"] == "failed"
    assert "exit code 3" in by_source[str(bad)]["reason"]
    assert [by_source[str(p)]["status"] for p in good] == ["succeeded", "succeeded"]
    assert report_totals(result.stdout) == {"failed": 1, "succeeded": 2}


@pytest.mark.e2e
def test_id_of_a_created_run_is_started_and_followed(
    api_env: dict[str, str],
    client: httpx.Client,
    worker: Service,
    register_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    repo = register_repo()
    created = client.post(
        "/runs",
        json={
            "repo": repo,
            "goal": "later",
            "start": False,
            "phases": [{"id": "a", "run": "true"}],
        },
    ).json()
    assert created["status"] == "created"
    other = write_run(tmp_path, "other.yaml", repo, "true")
    result = parallel(
        "--id", created["id"], str(other), "--report", "r.md", env=api_env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = report_rows((tmp_path / "r.md").read_text())
    assert rows[created["id"]]["source"] == "--id"
    assert rows[created["id"]]["status"] == "succeeded" and rows[created["id"]]["attempts"] == "1"
    assert client.get(f"/runs/{created['id']}/status").json()["status"] == "succeeded"
    assert len(rows) == 2


@pytest.mark.e2e
def test_timeout_reports_runs_still_going_and_exits_1(
    api_env: dict[str, str],
    client: httpx.Client,
    worker: Service,
    register_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    slow = write_run(tmp_path, "slow.yaml", register_repo(), "sleep 20")
    began = time.monotonic()
    result = parallel(str(slow), "--timeout", "2", "--report", "r.md", env=api_env, cwd=tmp_path)
    assert time.monotonic() - began < 15
    assert result.returncode == 1, result.stdout + result.stderr
    text = (tmp_path / "r.md").read_text()
    (run_id, row), *_ = report_rows(text).items()
    assert row["status"].startswith("timeout (still ")
    assert report_totals(text) == {"timeout": 1}
    client.post(f"/runs/{run_id}/cancel")  # free the worker; the run would otherwise go on


@pytest.mark.e2e
def test_bad_file_exits_2_and_submits_nothing(
    api_env: dict[str, str], client: httpx.Client, register_repo: Callable[..., str], tmp_path: Path
) -> None:
    repo = register_repo()
    runs = tmp_path / "runs"
    write_run(runs, "a.yaml", repo, "true")
    (runs / "b.yaml").write_text(
        f"repo: {repo}\ngoal: g\nphases: [{{id: a, run: x, cwd: ../up}}]\n"
    )
    write_run(runs, "c.yaml", repo, "true")
    result = parallel(str(runs), env=api_env, cwd=tmp_path)
    assert_one_line_error(result, "b.yaml", "phases[0].cwd")
    assert client.get("/runs", params={"repo": repo}).json()["items"] == []
    assert not (tmp_path / "parallel-report.md").exists()


@pytest.mark.e2e
def test_run_the_server_rejects_is_reported_and_exits_2(
    api_env: dict[str, str], worker: Service, register_repo: Callable[..., str], tmp_path: Path
) -> None:
    good = write_run(tmp_path, "good.yaml", register_repo(), "true")
    unknown = write_run(tmp_path, "unknown.yaml", "no-such-repo", "true")
    result = parallel(str(good), str(unknown), "--report", "r.md", env=api_env, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    by_source = {
        row["source"]: row for row in report_rows((tmp_path / "r.md").read_text()).values()
    }
    assert by_source[str(good)]["status"] == "succeeded"
    assert by_source[str(unknown)]["status"] == "rejected"
    assert "not registered" in by_source[str(unknown)]["reason"]
    assert by_source[str(unknown)]["run id"] == "-"


class FlakyProxy:
    """A real HTTP proxy in front of the API that loses answers and connections on purpose."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _fault(self, method: str, path: str) -> str | None:
        with self.lock:
            if method == "POST" and path == "/runs":
                self.counts["post"] += 1
                return "lose-answer" if self.counts["post"] % 2 else None
            if path.endswith("/status"):
                self.counts["status"] += 1
                return {1: "503", 3: "drop"}.get(self.counts["status"] % 4)
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                return None

            def _proxy(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                fault = proxy._fault(self.command, self.path.split("?")[0])
                if fault:
                    with proxy.lock:
                        proxy.counts[fault] += 1
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault == "503":
                    self._answer(503, b"unavailable", "text/plain")
                    return
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() in {"x-api-key", "content-type"}
                }
                upstream = httpx.request(
                    self.command,
                    proxy.upstream + self.path,
                    headers=headers,
                    content=body,
                    timeout=30,
                )
                if fault == "lose-answer":  # the API did the work; the client never hears of it
                    self._answer(502, b"bad gateway", "text/plain")
                    return
                self._answer(
                    upstream.status_code, upstream.content, upstream.headers["content-type"]
                )

            def _answer(self, status: int, content: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = _proxy
            do_POST = _proxy

        return Handler

    def __enter__(self) -> FlakyProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky_proxy(api_url: str) -> Iterator[FlakyProxy]:
    """The flaky proxy in front of the session's API."""
    with FlakyProxy(api_url) as proxy:
        yield proxy


@pytest.mark.e2e
def test_transient_errors_are_retried_without_duplicates(
    api_env: dict[str, str],
    client: httpx.Client,
    worker: Service,
    register_repo: Callable[..., str],
    flaky_proxy: FlakyProxy,
    tmp_path: Path,
) -> None:
    repo = register_repo()
    files = [str(write_run(tmp_path, f"r{n}.yaml", repo, f"echo {n} > n.txt")) for n in range(2)]
    env = {**api_env, "AUTOPACK_API_URL": flaky_proxy.url}
    result = parallel(*files, "--report", "r.md", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert flaky_proxy.counts["lose-answer"] >= 1
    assert flaky_proxy.counts["503"] >= 1 and flaky_proxy.counts["drop"] >= 1
    rows = report_rows((tmp_path / "r.md").read_text())
    assert {row["status"] for row in rows.values()} == {"succeeded"}
    # A POST whose answer was lost and retried did not create a second run.
    stored = client.get("/runs", params={"repo": repo}).json()["items"]
    assert sorted(r["id"] for r in stored) == sorted(rows)
