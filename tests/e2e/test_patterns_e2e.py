"""autopack patterns over failures of runs executed by the real API and worker."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from tests.services import Service, service_env, wait_for_status

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_patterns_groups_failures_of_real_runs(
    client: httpx.Client, worker: Service, register_repo: Callable[..., str], settings: Settings
) -> None:
    repo = register_repo()
    run_ids = []
    for i in range(3):
        phase = {
            "id": "missing",
            "run": f"cd /tmp/autopack-no-such-dir-{i} && make",
            "max_attempts": 2,
        }
        run_ids.append(
            client.post(
                "/runs",
                json={
                    "repo": repo,
                    "goal": f"fail {i}",
                    "labels": {"patterns": "e2e"},
                    "phases": [phase],
                },
            ).json()["id"]
        )
    for run_id in run_ids:
        assert wait_for_status(client, run_id, {"failed", "succeeded"})["status"] == "failed"
    groups = []
    for run_id in run_ids:
        result = subprocess.run(
            [sys.executable, "-m", "cli", "patterns", "--run", run_id, "--json", "-"],
            env=service_env(settings),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        groups.append(json.loads(result.stdout))
    signatures = {
        g["signature"]
        for found in groups
        for g in (found if isinstance(found, list) else found["groups"])
    }
    assert len(signatures) == 1  # one failure, whatever the directory name: one group
    whole = subprocess.run(
        [sys.executable, "-m", "cli", "patterns", "--min-count", "6", "--json", "-"],
        env=service_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    group = next(g for g in json.loads(whole.stdout)["groups"] if g["signature"] in signatures)
    assert (
        group["count"] >= 6
        and set(run_ids) <= set(group["run_ids"])
        and group["confidence"] == "high"
    )
