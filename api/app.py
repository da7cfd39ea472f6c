"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors
from api.dispatch import CeleryDispatcher
from api.keycache import KeyCache
from api.middleware import LimitBodyMiddleware, RequestIdMiddleware
from api.notify import RunNotifications
from api.routes import admin, dashboard, experiments, health, observability, runs
from shared.db import make_engine, make_session_factory
from shared.migrations import ensure_migrated
from shared.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app bound to settings; the engine is built at start-up, not at import."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(
            settings, pool_size=settings.api_db_pool_size, max_overflow=settings.api_db_pool_size
        )
        ensure_migrated(engine, settings)
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessions = make_session_factory(engine)
        app.state.dispatcher = CeleryDispatcher(settings)
        app.state.metrics_registry = observability.make_registry(settings, app.state.sessions)
        app.state.keys = KeyCache(settings.api_key_cache_s)
        app.state.notifications = RunNotifications(
            settings.effective_database_url,
            fallback_poll_s=settings.long_poll_recheck_s,
            keys=app.state.keys,
        )
        await app.state.notifications.start()
        yield
        await app.state.notifications.stop()
        engine.dispose()

    app = FastAPI(
        title="Autopack",
        version="0.1.0",
        description="Submit runs of phases against registered git repositories; follow them to the end.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(runs.router)
    app.include_router(dashboard.router)
    app.include_router(experiments.router)
    app.include_router(observability.router)
    app.add_middleware(LimitBodyMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app
