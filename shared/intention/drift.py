"""Goal-drift scoring: how closely a phase's change matches the run's goal and outcomes.

The default backend is lexical (TF-IDF cosine) so scoring needs no model, network or GPU.
A semantic backend can be plugged in through the same ``SimilarityBackend`` protocol, e.g.
``EmbeddingBackend(my_embedder)`` where ``my_embedder.embed(texts)`` returns one vector per
text; this module never downloads or loads a model itself.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Final, Literal, Protocol, runtime_checkable

from shared.intention.background import BACKGROUND_CORPUS
from shared.intention.text import normalize_whitespace, tokenize

__all__ = [
    "DEFAULT_THRESHOLD",
    "DriftCheck",
    "DriftMode",
    "Embedder",
    "EmbeddingBackend",
    "LexicalBackend",
    "SimilarityBackend",
    "backend_name",
    "check_drift",
    "default_backend",
    "describe_phase_change",
    "goal_reference",
]

DriftMode = Literal["advisory", "blocking"]
_MODES: Final = frozenset({"advisory", "blocking"})

DEFAULT_THRESHOLD: Final = 0.1

# Bounds on the candidate text so a phase touching thousands of files or producing a huge
# diff costs the same as a normal one and cannot drown the description in path tokens.
_MAX_PATHS: Final = 200
_MAX_COMMANDS: Final = 50
_MAX_DIFF_SUMMARY_CHARS: Final = 8000


@runtime_checkable
class SimilarityBackend(Protocol):
    """Scores how similar a candidate text is to a reference text, in [0, 1]."""

    def score(self, reference: str, candidate: str) -> float:
        """Return similarity in [0, 1]; 0 when either text has nothing to compare."""
        ...


class Embedder(Protocol):
    """Turns texts into dense vectors; the hook for a semantic (embedding) drift backend."""

    def embed(self, texts: Sequence[str]) -> Sequence[Sequence[float]]:
        """Return one vector per text, in order, all of the same dimension."""
        ...


def backend_name(backend: SimilarityBackend) -> str:
    """Return a backend's ``name`` attribute, or its class name when it has none."""
    name = getattr(backend, "name", None)
    return name if isinstance(name, str) and name else type(backend).__name__


class LexicalBackend:
    """TF-IDF cosine similarity over stemmed tokens, with IDF fitted on a background corpus.

    Why TF-IDF cosine rather than BM25: cosine of non-negative vectors is naturally bounded
    in [0, 1] and symmetric, which a threshold needs; BM25 scores are unbounded, depend on
    query length and would need an ad-hoc normalization. IDF over just the two compared texts
    is degenerate (every shared term has the same df), so document frequencies come from
    ``background`` plus the two texts, with smoothed idf = ln((1 + N) / (1 + df)) + 1 and
    sublinear tf = 1 + ln(tf). The "+ 1" keeps terms common to every document weakly positive.
    """

    name: Final = "lexical-tfidf"

    def __init__(self, background: Sequence[str] = BACKGROUND_CORPUS) -> None:
        """Precompute background document frequencies; the instance is read-only afterwards."""
        df: Counter[str] = Counter()
        for document in background:
            df.update(set(tokenize(document)))
        self._background_df = df
        self._background_size = len(background)

    def idf(self, term: str, *, in_reference: bool, in_candidate: bool) -> float:
        """Return the smoothed idf of *term* over the background plus the two documents."""
        documents = self._background_size + 2
        df = self._background_df[term] + int(in_reference) + int(in_candidate)
        return math.log((1 + documents) / (1 + df)) + 1.0

    def score(self, reference: str, candidate: str) -> float:
        """Return the TF-IDF cosine similarity of the two texts, in [0, 1]."""
        reference_tf = Counter(tokenize(reference))
        candidate_tf = Counter(tokenize(candidate))
        if not reference_tf or not candidate_tf:
            return 0.0
        idf = {
            term: self.idf(
                term, in_reference=term in reference_tf, in_candidate=term in candidate_tf
            )
            for term in sorted(reference_tf.keys() | candidate_tf.keys())
        }
        reference_vec = _weights(reference_tf, idf)
        candidate_vec = _weights(candidate_tf, idf)
        # Sorted iteration keeps float summation order, hence the score, identical run to run.
        dot = sum(
            reference_vec[t] * candidate_vec[t]
            for t in sorted(reference_vec.keys() & candidate_vec.keys())
        )
        norm = _norm(reference_vec) * _norm(candidate_vec)
        return _clamp_unit(dot / norm) if norm > 0 else 0.0


class EmbeddingBackend:
    """Cosine similarity of embeddings from a caller-supplied ``Embedder`` (negatives → 0)."""

    def __init__(self, embedder: Embedder, *, name: str = "embedding") -> None:
        """Wrap *embedder*; loading or downloading its model is the caller's business."""
        self._embedder = embedder
        self.name = name

    def score(self, reference: str, candidate: str) -> float:
        """Return the clamped cosine of the two texts' embeddings, 0 for blank input."""
        if not reference.strip() or not candidate.strip():
            return 0.0
        vectors = self._embedder.embed([reference, candidate])
        if len(vectors) != 2 or len(vectors[0]) != len(vectors[1]):
            raise ValueError("embedder must return two vectors of equal dimension")
        a, b = vectors
        norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
        if norm == 0:
            return 0.0
        # Opposite directions are as unrelated as orthogonal ones for drift purposes.
        return _clamp_unit(sum(x * y for x, y in zip(a, b, strict=True)) / norm)


@cache
def default_backend() -> LexicalBackend:
    """Return the shared default lexical backend (built once; safe to share across threads)."""
    return LexicalBackend()


def goal_reference(goal: str, outcomes: Sequence[str]) -> str:
    """Build the reference text a change is compared against: the goal plus its outcomes."""
    lines = [normalize_whitespace(goal), *(normalize_whitespace(o) for o in outcomes)]
    return "\n".join(line for line in lines if line)


def describe_phase_change(
    *,
    description: str,
    commands: Sequence[str],
    changed_paths: Sequence[str],
    diff_summary: str,
) -> str:
    """Build the candidate text describing what a phase did, for comparison with the goal."""
    # No section labels: words like "changed files" would appear in every candidate and
    # create spurious overlap with goals that mention files or commands.
    paths = sorted({p.strip() for p in changed_paths if p.strip()})
    lines = [
        normalize_whitespace(description),
        *(normalize_whitespace(c) for c in commands[:_MAX_COMMANDS]),
        *paths[:_MAX_PATHS],
        normalize_whitespace(diff_summary[:_MAX_DIFF_SUMMARY_CHARS]),
    ]
    return "\n".join(line for line in lines if line)


@dataclass(frozen=True, slots=True)
class DriftCheck:
    """Outcome of one drift check; in blocking mode ``drifted`` means the phase must fail."""

    score: float
    threshold: float
    mode: str
    drifted: bool
    backend: str

    @property
    def should_fail(self) -> bool:
        """Whether the phase must be failed (drifted under a blocking policy)."""
        return self.drifted and self.mode == "blocking"


def check_drift(
    goal: str,
    outcomes: Sequence[str],
    change_text: str,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    mode: DriftMode = "advisory",
    backend: SimilarityBackend | None = None,
) -> DriftCheck:
    """Score *change_text* against the goal and outcomes and decide whether it drifted.

    A change drifts when its score is below *threshold*. When either side is blank there is
    nothing to measure, so the score is 0 but the change is not reported as drifted: blocking
    a phase on missing input would punish the caller's bug, not the phase.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be 'advisory' or 'blocking', got {mode!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be within [0, 1], got {threshold!r}")
    chosen = default_backend() if backend is None else backend
    reference = goal_reference(goal, outcomes)
    candidate = normalize_whitespace(change_text)
    if not reference or not candidate:
        return DriftCheck(0.0, threshold, mode, False, backend_name(chosen))
    raw = chosen.score(reference, candidate)
    if math.isnan(raw):
        raise ValueError(f"backend {backend_name(chosen)!r} returned NaN")
    score = _clamp_unit(raw)
    return DriftCheck(score, threshold, mode, score < threshold, backend_name(chosen))


def _weights(tf: Counter[str], idf: dict[str, float]) -> dict[str, float]:
    return {term: (1.0 + math.log(count)) * idf[term] for term, count in tf.items()}


def _norm(vector: dict[str, float]) -> float:
    return math.sqrt(sum(w * w for _, w in sorted(vector.items())))


def _clamp_unit(value: float) -> float:
    return min(1.0, max(0.0, value))
