"""Worker liveness records: registration, heartbeats, and the alive/stale/stalled view."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import WorkerRecord, utcnow

WorkerStatus = Literal["alive", "stale", "stalled", "stopped"]
STALE_AFTER_BEATS = 3


class WorkerRead(BaseModel):
    """A worker as operators see it."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: datetime
    last_seen_at: datetime
    active_runs: list[str]
    received_total: int
    last_received_at: datetime | None
    stalled_since: datetime | None
    status: WorkerStatus = "alive"


def register(
    session: Session, *, node: str, host: str, pid: int, queues: list[str], concurrency: int
) -> None:
    """Insert or reset the record of a starting worker."""
    now = utcnow()
    row = session.get(WorkerRecord, node)
    if row is None:
        row = WorkerRecord(id=node)
        session.add(row)
    row.host, row.pid, row.queues, row.concurrency = host, pid, queues, concurrency
    row.started_at = row.last_seen_at = now
    row.active_runs, row.received_total = [], 0
    row.last_received_at = row.stalled_since = row.stopped_at = None
    session.flush()


def beat(
    session: Session,
    *,
    node: str,
    active_runs: list[str],
    received_total: int,
    last_received_at: datetime | None,
    stalled_since: datetime | None,
) -> None:
    """Record that the worker is up, what it runs and what it consumed."""
    row = session.get(WorkerRecord, node)
    if row is None:
        return
    row.last_seen_at = utcnow()
    row.active_runs, row.received_total = active_runs, received_total
    row.last_received_at, row.stalled_since = last_received_at, stalled_since
    session.flush()


def stopped(session: Session, node: str) -> None:
    """Record a clean shutdown."""
    row = session.get(WorkerRecord, node)
    if row is not None:
        row.stopped_at = utcnow()
        row.active_runs = []
        session.flush()


def status_of(
    row: WorkerRecord, heartbeat_interval_s: float, now: datetime | None = None
) -> WorkerStatus:
    """stopped, stalled, stale (no heartbeat for three intervals) or alive."""
    now = now or utcnow()
    if row.stopped_at is not None:
        return "stopped"
    if now - row.last_seen_at > timedelta(seconds=heartbeat_interval_s * STALE_AFTER_BEATS):
        return "stale"
    if row.stalled_since is not None:
        return "stalled"
    return "alive"


def list_workers(
    session: Session, heartbeat_interval_s: float, include_stopped: bool = False
) -> list[WorkerRead]:
    """Every registered worker with its status, most recently seen first."""
    rows = session.scalars(select(WorkerRecord).order_by(WorkerRecord.last_seen_at.desc()))
    found = []
    for row in rows:
        read = WorkerRead.model_validate(row)
        read.status = status_of(row, heartbeat_interval_s)
        if include_stopped or read.status != "stopped":
            found.append(read)
    return found
