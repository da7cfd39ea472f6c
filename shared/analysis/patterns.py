"""Pattern expansion: group the failures no hardening pattern caught by a re-normalized signature."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final

from sqlalchemy import false, select
from sqlalchemy.orm import Session

from shared.failures import (
    compute_signature,
    confidence_for_count,
    normalize_error_message,
    suggest_pattern_id,
)
from shared.models import ErrorLog

__all__ = ["PatternGroup", "PatternSample", "analyze_uncaught", "group_signature"]

# Rows fetched per round trip while streaming; the per-row work is a regex pass, so larger
# batches buy little and would only hold more messages in memory at once.
STREAM_BATCH: Final = 500
# Bound on the ids in one `IN (...)` when fetching the representative samples.
_SAMPLE_BATCH: Final = 500


@lru_cache(maxsize=4096)
def _normalized(message: str) -> str:
    """normalize_error_message, cached because retries repeat the very same message."""
    return normalize_error_message(message)


def group_signature(failure_class: str, normalized_message: str) -> str:
    """The grouping key: a failure class plus a normalized message, hashed like classify_failure does."""
    return compute_signature(f"{failure_class}:{normalized_message}")


@dataclass(frozen=True)
class PatternSample:
    """One representative occurrence of a group: its message and the output excerpt around it."""

    run_id: str
    phase_id: str
    attempt: int
    message: str
    excerpt: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return {
            "run_id": self.run_id,
            "phase_id": self.phase_id,
            "attempt": self.attempt,
            "message": self.message,
            "excerpt": self.excerpt,
        }


@dataclass(frozen=True)
class PatternGroup:
    """Uncaught failures sharing one re-normalized signature: a candidate for a new failure pattern."""

    signature: str
    error_type: str
    failure_class: str
    count: int
    confidence: str
    run_ids: tuple[str, ...]
    phase_ids: tuple[str, ...]
    first_seen: datetime
    last_seen: datetime
    sample: PatternSample
    normalized_message: str
    suggested_pattern_id: str
    # the signatures stored on the rows, which differ when normalization has improved since
    stored_signatures: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (timestamps as ISO 8601, sequences as lists)."""
        return {
            "signature": self.signature,
            "stored_signatures": list(self.stored_signatures),
            "error_type": self.error_type,
            "failure_class": self.failure_class,
            "count": self.count,
            "confidence": self.confidence,
            "run_ids": list(self.run_ids),
            "phase_ids": list(self.phase_ids),
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "normalized_message": self.normalized_message,
            "suggested_pattern_id": self.suggested_pattern_id,
            "sample": self.sample.to_dict(),
        }


@dataclass
class _Accumulator:
    """What one group keeps while rows stream by: counters and sets, never the rows themselves."""

    normalized: str
    failure_class: str
    first_seen: datetime
    last_seen: datetime
    latest_id: int
    latest_run_id: str
    latest_phase_id: str
    latest_attempt: int
    latest_message: str
    latest_error_type: str
    count: int = 0
    error_types: Counter[str] = field(default_factory=Counter)
    run_ids: set[str] = field(default_factory=set)
    phase_ids: set[str] = field(default_factory=set)
    stored_signatures: set[str] = field(default_factory=set)

    def error_type(self) -> str:
        """The most frequent error type; ties go to the latest occurrence's."""
        return max(
            self.error_types,
            key=lambda name: (self.error_types[name], name == self.latest_error_type, name),
        )

    def freeze(self, signature: str, excerpt: str) -> PatternGroup:
        """The finished, immutable group."""
        error_type = self.error_type()
        return PatternGroup(
            signature=signature,
            error_type=error_type,
            failure_class=self.failure_class,
            count=self.count,
            confidence=confidence_for_count(self.count),
            run_ids=tuple(sorted(self.run_ids)),
            phase_ids=tuple(sorted(self.phase_ids)),
            first_seen=self.first_seen,
            last_seen=self.last_seen,
            sample=PatternSample(
                run_id=self.latest_run_id,
                phase_id=self.latest_phase_id,
                attempt=self.latest_attempt,
                message=self.latest_message,
                excerpt=excerpt,
            ),
            normalized_message=self.normalized,
            suggested_pattern_id=suggest_pattern_id(error_type, self.normalized),
            stored_signatures=tuple(sorted(self.stored_signatures)),
        )


def _aware(moment: datetime | None) -> datetime | None:
    """Treat a naive bound as UTC, the zone every stored timestamp is in."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def analyze_uncaught(
    session: Session,
    *,
    run_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    min_count: int = 1,
    limit: int | None = None,
) -> list[PatternGroup]:
    """Group uncaught failures (since inclusive, until exclusive), most frequent and most recent first."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    since, until = _aware(since), _aware(until)
    statement = select(
        ErrorLog.id,
        ErrorLog.run_id,
        ErrorLog.phase_id,
        ErrorLog.attempt,
        ErrorLog.error_type,
        ErrorLog.failure_class,
        ErrorLog.message,
        ErrorLog.signature,
        ErrorLog.created_at,
    ).where(ErrorLog.hardening_caught == false())
    if run_id is not None:
        statement = statement.where(ErrorLog.run_id == run_id)
    if since is not None:
        statement = statement.where(ErrorLog.created_at >= since)
    if until is not None:
        statement = statement.where(ErrorLog.created_at < until)
    # chronological order makes the last row seen the representative sample of its group
    statement = statement.order_by(ErrorLog.created_at, ErrorLog.id)

    groups: dict[str, _Accumulator] = {}
    result = session.execute(statement.execution_options(yield_per=STREAM_BATCH))
    try:
        for row in result:
            normalized = _normalized(row.message)
            signature = group_signature(row.failure_class, normalized)
            group = groups.get(signature)
            if group is None:
                group = groups[signature] = _Accumulator(
                    normalized=normalized,
                    failure_class=row.failure_class,
                    first_seen=row.created_at,
                    last_seen=row.created_at,
                    latest_id=row.id,
                    latest_run_id=row.run_id,
                    latest_phase_id=row.phase_id,
                    latest_attempt=row.attempt,
                    latest_message=row.message,
                    latest_error_type=row.error_type,
                )
            group.count += 1
            group.error_types[row.error_type] += 1
            group.run_ids.add(row.run_id)
            group.phase_ids.add(row.phase_id)
            group.stored_signatures.add(row.signature)
            group.first_seen = min(group.first_seen, row.created_at)
            if row.created_at >= group.last_seen:
                group.last_seen = row.created_at
                group.latest_id = row.id
                group.latest_run_id = row.run_id
                group.latest_phase_id = row.phase_id
                group.latest_attempt = row.attempt
                group.latest_message = row.message
                group.latest_error_type = row.error_type
    finally:
        result.close()

    ranked = sorted(
        ((signature, group) for signature, group in groups.items() if group.count >= min_count),
        key=lambda item: (-item[1].count, -item[1].last_seen.timestamp(), item[0]),
    )
    if limit is not None:
        ranked = ranked[:limit]
    # samples are up to 2 KB each, so only the chosen representatives are read
    excerpts = _samples(session, [group.latest_id for _, group in ranked])
    return [
        group.freeze(signature, excerpts.get(group.latest_id, "")) for signature, group in ranked
    ]


def _samples(session: Session, ids: Iterable[int]) -> dict[int, str]:
    """The `sample` column of the given error_logs rows, fetched in bounded batches."""
    wanted = list(ids)
    found: dict[int, str] = {}
    for start in range(0, len(wanted), _SAMPLE_BATCH):
        batch = wanted[start : start + _SAMPLE_BATCH]
        rows = session.execute(select(ErrorLog.id, ErrorLog.sample).where(ErrorLog.id.in_(batch)))
        found.update({row.id: row.sample for row in rows})
    return found
