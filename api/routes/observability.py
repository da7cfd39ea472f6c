"""Operator routes: Prometheus metrics and the worker list."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from api.deps import CallerDep, KeysDep, SessionsDep, SettingsDep, require_key
from shared import workers_registry
from shared.broker import queue_depths
from shared.metrics.prometheus import AutopackCollector
from shared.settings import Settings
from shared.workers_registry import WorkerRead

router = APIRouter(tags=["operations"])


async def _metrics_guard(
    request: Request, settings: SettingsDep, sessions: SessionsDep, keys: KeysDep
) -> None:
    """Ask for a key only when AUTOPACK_METRICS_REQUIRE_KEY is set."""
    if settings.metrics_require_key:
        await require_key(
            sessions,
            settings,
            keys,
            request.headers.get("x-api-key"),
            request.headers.get("authorization"),
        )


@router.get("/metrics", response_class=Response, dependencies=[Depends(_metrics_guard)])
def metrics(request: Request) -> Response:
    """Prometheus exposition: queue depth, runs, attempts, phase durations, mitigations, LLM use, workers."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/workers", response_model=list[WorkerRead])
def list_workers(
    sessions: SessionsDep,
    settings: SettingsDep,
    _caller: CallerDep,
    include_stopped: Annotated[bool, Query()] = False,
) -> list[WorkerRead]:
    """Registered workers with alive / stale / stalled status."""
    with sessions() as session:
        return workers_registry.list_workers(
            session, settings.heartbeat_interval_s, include_stopped
        )


def make_registry(settings: Settings, sessions: sessionmaker[Session]) -> CollectorRegistry:
    """A registry holding only Autopack's collector (no process metrics of this one replica)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        AutopackCollector(
            sessions, settings, lambda queues: queue_depths(settings.broker_url, queues)
        )
    )
    return registry
