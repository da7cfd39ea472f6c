"""The bundled hardening example over HTTP: a mitigated dependency failure and a Doctor-fixed failure."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared import repos
from shared.db import transaction
from shared.models import ErrorLog, LlmUsageEvent, Phase6Metric
from shared.settings import Settings
from tests.conftest import wait_until
from tests.fakes.llm_server import FakeLLMServer
from tests.services import Service, start_api, start_worker, wait_for_status

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hardening"


@pytest.fixture
def doctor_stack(
    settings: Settings, tmp_path: Path
) -> Iterator[tuple[str, FakeLLMServer, Service]]:
    """An API and a worker on their own queue, the worker's Doctor pointed at a local fake provider."""
    queue = f"hardening-{uuid.uuid4().hex[:8]}"
    own = settings.model_copy(update={"queue": queue})
    with FakeLLMServer("openai", expect_key="sk-local-test") as llm:
        llm_env = {
            "AUTOPACK_LLM_PROVIDER": "openai",
            "AUTOPACK_LLM_BASE_URL": llm.base_url,
            "AUTOPACK_LLM_API_KEY": "sk-local-test",
            "AUTOPACK_DOCTOR_MODEL_CHEAP": "local-doctor",
        }
        worker = start_worker(own, tmp_path / "worker.log", concurrency=1, queue=queue, env=llm_env)
        api, url = start_api(own, tmp_path / "api.log")
        try:
            yield url, llm, api
        finally:
            api.stop()
            worker.stop()
            assert "sk-local-test" not in worker.output() and "sk-local-test" not in api.output()


def test_bundled_example_mitigates_dependency_and_doctor_fixes_release(
    doctor_stack: tuple[str, FakeLLMServer, Service], api_key: str, sessions: sessionmaker[Session]
) -> None:
    url, llm, api = doctor_stack
    name = f"hardening-{uuid.uuid4().hex[:6]}"
    with transaction(sessions) as session:
        repos.add(session, name, str(EXAMPLE / "project"))
    spec = yaml.safe_load((EXAMPLE / "run-doctor.yaml").read_text())
    spec["repo"] = name
    llm.enqueue(
        '{"action": "retry_with_command", "command": "echo 2.0 > VERSION && grep -qx 2.0 VERSION", "reason": "bump VERSION to 2.0"}',
        prompt_tokens=640,
        completion_tokens=38,
    )

    with httpx.Client(base_url=url, headers={"X-API-Key": api_key}, timeout=30) as client:
        run_id = client.post("/runs", json=spec).json()["id"]
        assert (
            wait_for_status(client, run_id, {"succeeded", "failed"}, timeout=180)["status"]
            == "succeeded"
        )
        run = client.get(f"/runs/{run_id}").json()
        timeline = client.get(f"/runs/{run_id}/events").json()
        traced = client.get(f"/runs/{run_id}/status", headers={"X-Request-ID": "trace-me-42"})
    assert traced.headers["x-request-id"] == "trace-me-42"
    wait_until(
        lambda: '"request_id": "trace-me-42"' in api.output(),
        timeout=10,
        what="the API's access line with the request id",
    )

    phases = {p["phase_id"]: p for p in run["phases"]}
    check = [
        (a["status"], a["mitigation"], a["failure_class"]) for a in phases["check"]["attempts"]
    ]
    assert check == [("failed", "python_missing_dep", "dependency"), ("succeeded", None, None)]
    release = [(a["status"], a["mitigation"]) for a in phases["release"]["attempts"]]
    assert release == [("failed", "doctor:retry_with_command"), ("succeeded", None)]

    with sessions() as session:
        metrics = {
            m.phase_id: m
            for m in session.scalars(select(Phase6Metric).where(Phase6Metric.run_id == run_id))
        }
        usage = list(session.scalars(select(LlmUsageEvent).where(LlmUsageEvent.run_id == run_id)))
        errors = list(
            session.scalars(select(ErrorLog).where(ErrorLog.run_id == run_id).order_by(ErrorLog.id))
        )
    dep = metrics["check"]
    assert dep.failure_pattern_detected == "python_missing_dep" and dep.mitigation_fixed is True
    assert dep.doctor_call_skipped and not dep.doctor_called and dep.doctor_tokens_avoided_estimate
    assert dep.estimate_source in {"fallback", "global"}
    assert (
        metrics["release"].doctor_called
        and metrics["release"].doctor_action == "retry_with_command"
    )
    assert [(u.model, u.total_tokens, u.phase_id) for u in usage] == [
        ("local-doctor", 678, "release")
    ]
    assert [(e.phase_id, e.hardening_caught) for e in errors] == [
        ("check", True),
        ("release", False),
    ]
    assert len(llm.requests) == 1

    kinds = [(e["kind"], e["phase_id"], e["attempt"]) for e in timeline]
    assert kinds[0][0] == "run.created" and kinds[-1][0] == "run.finished"
    assert [e["at"] for e in timeline] == sorted(e["at"] for e in timeline)
    mitigation = kinds.index(("mitigation", "check", 1))
    assert (
        kinds.index(("attempt.started", "check", 1))
        < mitigation
        < kinds.index(("attempt.started", "check", 2))
    )
    assert timeline[mitigation]["detail"]["pattern"] == "python_missing_dep"
    doctor = kinds.index(("doctor.call", "release", 1))
    assert (
        timeline[doctor]["detail"]["action"] == "retry_with_command"
        and timeline[doctor]["detail"]["total_tokens"] == 678
    )
    assert run["intention_context_chars"] > 0
