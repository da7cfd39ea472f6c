"""Intention handling: bounded goal/anchor context for LLM roles and goal-drift scoring."""

from __future__ import annotations

from shared.intention.context import (
    IntentionAnchor,
    IntentionContext,
    render_intention_context,
)
from shared.intention.drift import (
    DEFAULT_THRESHOLD,
    DriftCheck,
    DriftMode,
    Embedder,
    EmbeddingBackend,
    LexicalBackend,
    SimilarityBackend,
    check_drift,
    default_backend,
    describe_phase_change,
    goal_reference,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "DriftCheck",
    "DriftMode",
    "Embedder",
    "EmbeddingBackend",
    "IntentionAnchor",
    "IntentionContext",
    "LexicalBackend",
    "SimilarityBackend",
    "check_drift",
    "default_backend",
    "describe_phase_change",
    "goal_reference",
    "render_intention_context",
]
