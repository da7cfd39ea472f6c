"""Prometheus metrics computed from PostgreSQL and the broker at scrape time.

Workers run on many hosts and the API may run several replicas, so process-local counters would each
tell a part; the database is the record, and every scrape of any replica reports the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker

from shared import workers_registry
from shared.metrics import rollups
from shared.models import Attempt, LlmUsageHourly, Phase, Run, WorkerRecord, utcnow
from shared.runs.states import RunStatus
from shared.settings import Settings

DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)


def _seconds_between(session: Session, start: Any, end: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


class AutopackCollector(Collector):
    """Yields Autopack's metrics on every scrape."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        depths: Callable[[list[str]], dict[str, int]],
    ) -> None:
        self.sessions, self.settings, self.depths = sessions, settings, depths

    def collect(self) -> Iterator[Any]:
        with self.sessions() as session:
            yield from self._queues(session)
            yield from self._runs(session)
            yield from self._attempts(session)
            yield from self._phase_durations(session)
            yield from self._mitigations(session)
            yield from self._llm(session)
            yield from self._workers(session)

    def _queues(self, session: Session) -> Iterator[Any]:
        queues = {self.settings.queue}
        for row in session.scalars(
            select(WorkerRecord.queues).where(WorkerRecord.stopped_at.is_(None))
        ):
            queues.update(row or [])
        depth = GaugeMetricFamily(
            "autopack_queue_depth", "Messages waiting in the broker, per queue.", labels=["queue"]
        )
        up = GaugeMetricFamily("autopack_broker_up", "1 when the broker answered this scrape.")
        try:
            for queue, count in sorted(self.depths(sorted(queues)).items()):
                depth.add_metric([queue], count)
            up.add_metric([], 1)
        except Exception:
            up.add_metric([], 0)
        yield depth
        yield up
        oldest = session.scalar(
            select(func.min(Run.created_at)).where(Run.status == RunStatus.QUEUED)
        )
        age = GaugeMetricFamily(
            "autopack_oldest_queued_run_age_seconds",
            "Age of the oldest run still queued (0 when none).",
        )
        age.add_metric([], max((utcnow() - oldest).total_seconds(), 0.0) if oldest else 0.0)
        yield age

    def _runs(self, session: Session) -> Iterator[Any]:
        counts = dict(
            session.execute(select(Run.status, func.count()).group_by(Run.status)).tuples().all()
        )
        gauge = GaugeMetricFamily("autopack_runs", "Runs by status.", labels=["status"])
        for status in RunStatus:
            gauge.add_metric([status.value], int(counts.get(status.value, 0)))
        yield gauge

    def _attempts(self, session: Session) -> Iterator[Any]:
        counter = CounterMetricFamily(
            "autopack_attempts", "Phase attempts by status.", labels=["status"]
        )
        for status, count in session.execute(
            select(Attempt.status, func.count()).group_by(Attempt.status)
        ).tuples():
            counter.add_metric([str(status)], int(count))
        yield counter

    def _phase_durations(self, session: Session) -> Iterator[Any]:
        seconds = _seconds_between(session, Phase.started_at, Phase.finished_at)
        columns = [
            func.coalesce(func.sum(case((seconds <= bound, 1), else_=0)), 0)
            for bound in DURATION_BUCKETS
        ]
        row = session.execute(
            select(*columns, func.count(), func.coalesce(func.sum(seconds), 0.0)).where(
                Phase.finished_at.is_not(None), Phase.started_at.is_not(None)
            )
        ).one()
        *buckets, count, total = row
        histogram = HistogramMetricFamily(
            "autopack_phase_duration_seconds", "Wall time of finished phases."
        )
        histogram.add_metric(
            [],
            [(str(b), float(c)) for b, c in zip(DURATION_BUCKETS, buckets, strict=True)]
            + [("+Inf", float(count))],
            float(total),
        )
        yield histogram

    def _mitigations(self, session: Session) -> Iterator[Any]:
        counter = CounterMetricFamily(
            "autopack_mitigations",
            "Failure-pattern mitigations by pattern and outcome.",
            labels=["pattern", "outcome"],
        )
        per_pattern: dict[str, list[int]] = {}
        for group in rollups.phase6_rolled(session):  # all hours: counters since the beginning
            if group.pattern:
                counts = per_pattern.setdefault(group.pattern, [0, 0, 0])
                counts[0] += group.fixed
                counts[1] += group.decided - group.fixed
                counts[2] += group.n - group.decided
        for pattern, counts in sorted(per_pattern.items()):
            for outcome, count in zip(("fixed", "not_fixed", "pending"), counts, strict=True):
                if count:
                    counter.add_metric([pattern, outcome], count)
        yield counter

    def _llm(self, session: Session) -> Iterator[Any]:
        calls = CounterMetricFamily(
            "autopack_doctor_calls", "Doctor calls by action.", labels=["action"]
        )
        h = LlmUsageHourly
        rows = session.execute(
            select(h.action, func.sum(h.calls))
            .where(h.is_doctor_call.is_(True))
            .group_by(h.action)
            .order_by(h.action)
        ).tuples()
        for action, count in rows:
            calls.add_metric([action or "none"], int(count))
        yield calls
        tokens = CounterMetricFamily(
            "autopack_llm_tokens", "LLM tokens spent by role and model.", labels=["role", "model"]
        )
        totals = session.execute(
            select(h.role, h.model, func.sum(h.total_tokens))
            .group_by(h.role, h.model)
            .order_by(h.role, h.model)
        ).tuples()
        for role, model, total in totals:
            tokens.add_metric([str(role), str(model)], int(total))
        yield tokens

    def _workers(self, session: Session) -> Iterator[Any]:
        gauge = GaugeMetricFamily(
            "autopack_workers", "Registered workers by status.", labels=["status"]
        )
        counts = {"alive": 0, "stale": 0, "stalled": 0}
        for worker in workers_registry.list_workers(session, self.settings.heartbeat_interval_s):
            counts[worker.status] = counts.get(worker.status, 0) + 1
        for status, count in counts.items():
            gauge.add_metric([status], count)
        yield gauge
