"""The failure-pattern registry: built-ins plus entry points, tried in priority order."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from workers.hardening.base import FailureContext, FailurePattern, MitigationResult

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "autopack.failure_patterns"


@dataclass(frozen=True)
class Applied:
    """A pattern that matched a failure and what its mitigation did."""

    pattern_id: str
    result: MitigationResult

    @property
    def acted(self) -> bool:
        """Whether the mitigation changed something or decided the outcome (retry overrides, give up)."""
        return (
            self.result.changed
            or self.result.retry is not None
            or self.result.give_up_reason is not None
        )


def max_applications(pattern: FailurePattern) -> int:
    """How often a pattern may act on one phase (patterns may say; default once)."""
    return int(getattr(pattern, "max_applications", 1))


class PatternRegistry:
    """An ordered set of patterns; detectors and mitigations that raise are logged and skipped."""

    def __init__(self, patterns: Iterable[FailurePattern]) -> None:
        unique: dict[str, FailurePattern] = {}
        for pattern in patterns:
            if pattern.pattern_id in unique:
                logger.warning(
                    "failure pattern %s registered twice; keeping the first", pattern.pattern_id
                )
                continue
            unique[pattern.pattern_id] = pattern
        self.patterns = sorted(unique.values(), key=lambda p: (p.priority, p.pattern_id))

    @classmethod
    def default(cls) -> PatternRegistry:
        """Built-in patterns plus those installed under the `autopack.failure_patterns` entry point."""
        from workers.hardening.patterns import BUILTIN_PATTERNS

        return cls([*BUILTIN_PATTERNS, *load_entry_point_patterns()])

    def ids(self) -> list[str]:
        """Pattern ids in the order they are tried."""
        return [p.pattern_id for p in self.patterns]

    def mitigate(
        self, ctx: FailureContext, disabled: Sequence[str] = ()
    ) -> tuple[Applied | None, list[str]]:
        """The first enabled pattern that detects the failure and acts; plus suggestions of those that did not act."""
        suggestions: list[str] = []
        for pattern in self.patterns:
            if pattern.pattern_id in disabled:
                continue
            if ctx.previous_patterns.count(pattern.pattern_id) >= max_applications(pattern):
                continue
            try:
                detected = pattern.detect(ctx)
            except Exception:
                logger.exception(
                    "detector of failure pattern %s raised; skipped", pattern.pattern_id
                )
                continue
            if not detected:
                continue
            try:
                result = pattern.mitigate(ctx)
            except Exception:
                logger.exception(
                    "mitigation of failure pattern %s raised; skipped", pattern.pattern_id
                )
                continue
            applied = Applied(pattern.pattern_id, result)
            if applied.acted:
                logger.info(
                    "failure pattern %s acted: %s",
                    pattern.pattern_id,
                    "; ".join(result.actions_taken) or "retry",
                )
                return applied, suggestions + result.suggestions
            suggestions.extend(f"{pattern.pattern_id}: {s}" for s in result.suggestions)
        return None, suggestions


def load_entry_point_patterns() -> list[FailurePattern]:
    """Patterns from installed plugins; a broken plugin is logged and skipped."""
    found: list[FailurePattern] = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded: Any = entry.load()
            candidates = loaded() if callable(loaded) and not _is_pattern(loaded) else loaded
            if _is_pattern(candidates):
                candidates = [candidates]
            for candidate in candidates:
                if not _is_pattern(candidate):
                    raise TypeError(f"{candidate!r} is not a failure pattern")
                found.append(candidate)
        except Exception:
            logger.exception("failure pattern plugin %s could not be loaded; skipped", entry.name)
    return found


def _is_pattern(value: object) -> bool:
    return all(
        hasattr(value, attr) for attr in ("pattern_id", "priority", "detect", "mitigate")
    ) and not isinstance(value, type)
