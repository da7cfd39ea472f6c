"""Secret values printed by a phase never reach stored output, the log file or the run view."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from shared import repos
from shared.db import transaction
from shared.runs import repository, service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from workers.executor import RunExecutor

TOKEN = "s3cr3t-deploy-token-0451"
PROVIDER_KEY = "sk-provider-key-9876"
TOKEN_HASH = hashlib.sha256(TOKEN.encode()).hexdigest()[:16]


def test_secret_printed_by_phase_is_masked_everywhere(
    sessions: sessionmaker[Session], settings: Settings, make_repo: Callable[..., Path]
) -> None:
    worker_settings = settings.model_copy(
        update={
            "secrets": {"DEPLOY_TOKEN": SecretStr(TOKEN)},
            "llm_api_key": SecretStr(PROVIDER_KEY),
        }
    )
    name = f"sec-{uuid.uuid4().hex[:8]}"
    spec = RunCreate.model_validate(
        {
            "repo": name,
            "goal": "deploy",
            "phases": [
                {
                    "id": "deploy",
                    "run": [
                        'echo "token=$DEPLOY_TOKEN"',
                        "cat provider.conf",
                        f'test "$(printf %s "$DEPLOY_TOKEN" | sha256sum | cut -c1-16)" = {TOKEN_HASH}',
                    ],
                    "secret_env": ["DEPLOY_TOKEN"],
                },
                {
                    "id": "leak",
                    "run": 'echo "$DEPLOY_TOKEN" > leaked.txt; exit 1',
                },  # not given the secret
            ],
        }
    )
    with transaction(sessions) as session:
        repos.add(session, name, str(make_repo({"provider.conf": f"key {PROVIDER_KEY}\n"})))
        run_id = service.submit(session, worker_settings, spec).run.id
    RunExecutor(worker_settings, sessions, "w").execute(run_id)

    with sessions() as session:
        run = repository.get_run_detail(session, run_id)
        attempt = run.phases[0].attempts[0]
        log = repository.get_attempt_log(session, attempt)
        view = json.dumps(service.run_read(run).model_dump(mode="json"))
    assert attempt.status == "succeeded"  # the phase really had the secret
    assert "token=***" in (attempt.output_tail or "") and "key ***" in (attempt.output_tail or "")
    assert log is not None
    stored = {
        "output tail": attempt.output_tail or "",
        "stored log": log.content,
        "log file": Path(attempt.log_path or "").read_text(),
        "run view": view,
        "run spec": json.dumps(run.spec),
    }
    leaks = {
        where: text[max(text.find(TOKEN), 0) - 200 :][:300]
        for where, text in stored.items()
        if TOKEN in text or PROVIDER_KEY in text
    }
    assert leaks == {}


def test_phase_asking_for_unknown_secret_fails_clearly(
    sessions: sessionmaker[Session], settings: Settings, make_repo: Callable[..., Path]
) -> None:
    name = f"sec-{uuid.uuid4().hex[:8]}"
    with transaction(sessions) as session:
        repos.add(session, name, str(make_repo()))
        run_id = service.submit(
            session,
            settings,
            RunCreate.model_validate(
                {
                    "repo": name,
                    "goal": "g",
                    "phases": [{"id": "p", "run": "true", "secret_env": ["NOPE"]}],
                }
            ),
        ).run.id
    RunExecutor(settings, sessions, "w").execute(run_id)
    with sessions() as session:
        run = repository.get_run_detail(session, run_id)
    assert run.status == "failed" and "secret(s) NOPE are not configured on this worker" in (
        run.failure_reason or ""
    )
