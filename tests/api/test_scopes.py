"""API key scopes: read, submit and admin, enforced by the real API process."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared import auth
from shared.db import transaction

pytestmark = pytest.mark.e2e


@pytest.fixture
def key_with(sessions: sessionmaker[Session]) -> Callable[..., dict[str, str]]:
    def make(*scopes: str) -> dict[str, str]:
        with transaction(sessions) as session:
            return {"X-API-Key": auth.create_key(session, f"scoped-{'-'.join(scopes)}", scopes)[1]}

    return make


def test_read_key_can_read_but_not_submit(
    api_url: str, key_with: Callable[..., dict[str, str]]
) -> None:
    headers = key_with("read")
    assert httpx.get(f"{api_url}/runs", headers=headers).status_code == 200
    response = httpx.post(
        f"{api_url}/runs",
        headers=headers,
        json={"repo": "x", "goal": "g", "phases": [{"id": "a", "run": "true"}]},
    )
    assert response.status_code == 403 and "'submit' scope" in response.json()["detail"]
    assert httpx.post(f"{api_url}/runs/x/cancel", headers=headers).status_code == 403


def test_submit_key_cannot_administer(
    api_url: str, key_with: Callable[..., dict[str, str]]
) -> None:
    headers = key_with("submit")
    assert httpx.get(f"{api_url}/runs", headers=headers).status_code == 403  # no read scope
    assert (
        httpx.post(
            f"{api_url}/repositories", headers=headers, json={"name": "r", "url": "/tmp"}
        ).status_code
        == 403
    )
    assert httpx.post(f"{api_url}/keys", headers=headers, json={"name": "k"}).status_code == 403


def test_admin_registers_repository_and_manages_keys(
    api_url: str, key_with: Callable[..., dict[str, str]], make_repo: Callable[..., Path]
) -> None:
    admin = key_with("admin", "read", "submit")
    name = f"adm-{uuid.uuid4().hex[:8]}"
    created = httpx.post(
        f"{api_url}/repositories", headers=admin, json={"name": name, "url": str(make_repo())}
    )
    assert created.status_code == 201 and created.json()["name"] == name
    assert (
        httpx.post(
            f"{api_url}/repositories", headers=admin, json={"name": name, "url": "/tmp"}
        ).status_code
        == 409
    )
    assert (
        httpx.post(
            f"{api_url}/repositories", headers=admin, json={"name": "bad", "url": "--upload-pack=x"}
        ).status_code
        == 422
    )
    assert name in {r["name"] for r in httpx.get(f"{api_url}/repositories", headers=admin).json()}

    new = httpx.post(
        f"{api_url}/keys", headers=admin, json={"name": "ci", "scopes": ["submit", "read"]}
    ).json()
    assert new["scopes"] == ["read", "submit"] and new["key"].startswith("ap_")
    listed = httpx.get(f"{api_url}/keys", headers=admin).json()
    assert all("key" not in row for row in listed) and new["id"] in {row["id"] for row in listed}
    ci = {"X-API-Key": new["key"]}
    run = httpx.post(
        f"{api_url}/runs",
        headers=ci,
        json={"repo": name, "goal": "g", "start": False, "phases": [{"id": "a", "run": "true"}]},
    )
    assert run.status_code == 202
    assert (
        httpx.post(
            f"{api_url}/keys", headers=admin, json={"name": "x", "scopes": ["root"]}
        ).status_code
        == 422
    )
    assert (
        httpx.delete(f"{api_url}/keys/{new['id']}", headers=admin).json()["revoked_at"] is not None
    )
    assert httpx.get(f"{api_url}/runs", headers=ci).status_code == 401
    assert httpx.delete(f"{api_url}/repositories/{name}", headers=admin).status_code == 204
