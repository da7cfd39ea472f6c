"""The HTTP contract of the API process: validation, auth, idempotency, listing, probes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared import auth
from shared.db import transaction
from shared.models import Run
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e


def spec(repo: str, **extra: Any) -> dict[str, Any]:
    return {
        "repo": repo,
        "goal": "g",
        "start": False,
        "phases": [{"id": "a", "run": "true"}],
        **extra,
    }


def count_runs(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Run)) or 0)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s: s.update(phases=[]), "phases"),
        (lambda s: s.update(unknown=1), "unknown"),
        (lambda s: s.update(phases=[{"id": "a", "run": "x"}, {"id": "a", "run": "y"}]), "body"),
        (lambda s: s["phases"][0].update(cwd="../../etc"), "phases[0].cwd"),
        (lambda s: s["phases"][0].update(scope=["src/../../x"]), "phases[0].scope"),
        (lambda s: s.update(ref="--upload-pack=touch /tmp/x"), "ref"),
        (lambda s: s.update(repo="no-such-repo"), "repo"),
        (lambda s: s.update(repo="/etc"), "repo"),
    ],
)
def test_submit_bad_input_is_422_with_field_and_writes_nothing(
    client: httpx.Client,
    register_repo: Callable[..., str],
    sessions: sessionmaker[Session],
    mutate: Callable[[dict[str, Any]], None],
    field: str,
) -> None:
    body = spec(register_repo())
    mutate(body)
    before = count_runs(sessions)
    response = client.post("/runs", json=body)
    assert response.status_code == 422, response.text
    assert field in {d["field"] for d in response.json()["detail"]}
    assert count_runs(sessions) == before


def test_submit_malformed_json_is_422(client: httpx.Client) -> None:
    response = client.post(
        "/runs", content=b'{"repo": "x", ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "json" in response.text.lower()


def test_submit_oversized_body_is_413(
    client: httpx.Client, register_repo: Callable[..., str], sessions: sessionmaker[Session]
) -> None:
    before = count_runs(sessions)
    body = spec(register_repo(), goal="g", labels={"pad": "x"})
    body["phases"] = [{"id": f"p{i}", "run": ["x" * 15_000]} for i in range(80)]
    response = client.post("/runs", json=body)
    assert response.status_code == 413
    assert count_runs(sessions) == before


@pytest.mark.parametrize(
    "headers", [{}, {"X-API-Key": "ap_wrong_key"}, {"Authorization": "Bearer nope"}]
)
def test_requests_without_valid_key_are_401(api_url: str, headers: dict[str, str]) -> None:
    for method, path in [
        ("GET", "/runs"),
        ("POST", "/runs"),
        ("GET", "/runs/x"),
        ("GET", "/runs/x/status"),
    ]:
        response = httpx.request(method, f"{api_url}{path}", headers=headers, json={})
        assert response.status_code == 401, (method, path)


def test_created_key_works_as_bearer_and_revoked_key_does_not(
    api_url: str, sessions: sessionmaker[Session]
) -> None:
    with transaction(sessions) as session:
        row, key = auth.create_key(session, "bearer-test")
    assert (
        httpx.get(f"{api_url}/runs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    )
    with transaction(sessions) as session:  # revoked elsewhere, as `autopack keys revoke` does
        auth.revoke(session, row.id)
    # The API hears of it within moments (api/keycache.py), well before a remembered key expires.
    wait_until(
        lambda: (
            httpx.get(f"{api_url}/runs", headers={"Authorization": f"Bearer {key}"}).status_code
            == 401
        ),
        timeout=5,
        interval=0.02,
        what="the revoked key to be refused",
    )


def test_health_needs_no_key_and_ready_checks_dependencies(api_url: str) -> None:
    assert httpx.get(f"{api_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api_url}/readyz")
    assert ready.status_code == 200 and ready.json() == {
        "status": "ready",
        "database": "ok",
        "broker": "ok",
    }


def test_resubmit_same_id_returns_existing_and_other_spec_conflicts(
    client: httpx.Client, register_repo: Callable[..., str]
) -> None:
    repo, run_id = register_repo(), f"idem-{uuid.uuid4().hex[:8]}"
    first = client.post("/runs", json=spec(repo, run_id=run_id))
    again = client.post("/runs", json=spec(repo, run_id=run_id))
    other = client.post("/runs", json=spec(repo, run_id=run_id, goal="something else"))
    assert (first.status_code, again.status_code, other.status_code) == (202, 200, 409)
    assert again.json()["id"] == first.json()["id"] == run_id


def test_list_runs_filters_by_label_and_paginates(
    client: httpx.Client, register_repo: Callable[..., str]
) -> None:
    repo, batch = register_repo(), uuid.uuid4().hex[:8]
    ids = [
        client.post("/runs", json=spec(repo, labels={"batch": batch})).json()["id"]
        for _ in range(3)
    ]
    page1 = client.get("/runs", params={"label": f"batch={batch}", "limit": 2}).json()
    page2 = client.get(
        "/runs", params={"label": f"batch={batch}", "limit": 2, "cursor": page1["next_cursor"]}
    ).json()
    assert [r["id"] for r in page1["items"] + page2["items"]] == list(reversed(ids))
    assert page2["next_cursor"] is None
    assert client.get("/runs", params={"repo": repo, "status": "succeeded"}).json()["items"] == []
    assert client.get("/runs", params={"label": "nolabel"}).status_code == 422
    assert client.get("/runs", params={"cursor": "garbage"}).status_code == 422


def test_unknown_run_is_404(client: httpx.Client) -> None:
    for path in ("/runs/nope", "/runs/nope/status", "/runs/nope/phases/a/attempts/1/log"):
        assert client.get(path).status_code == 404
    assert client.post("/runs/nope/execute").status_code == 404


def test_openapi_docs_are_served(api_url: str) -> None:
    assert httpx.get(f"{api_url}/docs").status_code == 200
    paths = httpx.get(f"{api_url}/openapi.json").json()["paths"]
    assert {"/runs", "/runs/{run_id}", "/runs/{run_id}/status", "/runs/{run_id}/execute"} <= set(
        paths
    )
