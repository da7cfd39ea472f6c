"""Tests for goal-drift scoring: tokenization, the lexical backend and the drift decision."""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from shared.intention.drift import (
    DriftCheck,
    EmbeddingBackend,
    LexicalBackend,
    SimilarityBackend,
    check_drift,
    describe_phase_change,
    goal_reference,
)
from shared.intention.text import split_identifier, stem, tokenize


@dataclass(frozen=True)
class Change:
    """One phase's change, in the shape a worker reports it."""

    description: str
    paths: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    diff: str = ""

    def text(self) -> str:
        return describe_phase_change(
            description=self.description,
            commands=self.commands,
            changed_paths=self.paths,
            diff_summary=self.diff,
        )


@dataclass(frozen=True)
class Case:
    """A goal with one change that serves it and one that does not."""

    goal: str
    outcomes: tuple[str, ...]
    on: Change
    off: Change


CASES: tuple[Case, ...] = (
    Case(
        "Make the test suite pass on Python 3.12",
        ("All tests green on CPython 3.12", "No deprecation warnings in test output"),
        Change(
            "Fix deprecated datetime.utcnow in tests",
            ("tests/test_dates.py",),
            ("pytest -q tests/test_dates.py",),
            "replace datetime.utcnow() with datetime.now(UTC)",
        ),
        Change("Rewrite README marketing copy, add logo.png", ("README.md", "docs/logo.png")),
    ),
    Case(
        "Add OAuth2 login with Google to the web app",
        ("Users can sign in with a Google account", "Sessions store the OAuth refresh token"),
        Change(
            "Implement Google OAuth2 callback handler and session token storage",
            ("src/auth/oauth_google.py", "src/auth/session.py"),
            diff="add exchange_code_for_token; store refresh_token in session",
        ),
        Change(
            "Optimize image thumbnail generation with Pillow",
            ("src/media/thumbnails.py",),
        ),
    ),
    Case(
        "Reduce Docker image size for the API service",
        ("Image under 200 MB", "Use a multi-stage build"),
        Change(
            "Switch Dockerfile to a multi-stage build with a slim base image",
            ("Dockerfile", ".dockerignore"),
            ("docker build -t api .",),
            "FROM python:3.11-slim AS runtime; copy wheels from builder stage",
        ),
        Change("Add pagination to the orders list endpoint", ("api/routes/orders.py",)),
    ),
    Case(
        "Migrate the database layer from raw SQL to SQLAlchemy ORM",
        ("Repositories use SQLAlchemy sessions", "No raw cursor.execute calls remain"),
        Change(
            "Replace cursor.execute queries in the user repository with ORM session queries",
            ("app/db/user_repository.py", "app/db/models.py"),
        ),
        Change(
            "Update CSS colors and fonts for the landing page",
            ("static/css/landing.css",),
        ),
    ),
    Case(
        "Fix memory leak in the websocket connection handler",
        ("Closed connections release their buffers", "Memory stays flat in a soak test"),
        Change(
            "Release websocket buffers on disconnect and drop the connection from the registry",
            ("server/ws/handler.py",),
            diff="on_close: del self.connections[conn_id]; buffer.clear()",
        ),
        Change(
            "Translate error messages into Spanish and German",
            ("locale/es/messages.po", "locale/de/messages.po"),
        ),
    ),
    Case(
        "Add CSV export to the monthly sales report",
        ("Report page has a Download CSV button", "Export includes totals per region"),
        Change(
            "Add CSV writer for sales report rows with per-region totals and a download button",
            ("reports/sales/export_csv.py", "templates/reports/sales.html"),
        ),
        Change(
            "Upgrade Kubernetes ingress controller and TLS certificates",
            ("deploy/k8s/ingress.yaml",),
        ),
    ),
    Case(
        "Speed up the CI pipeline",
        ("Pipeline finishes in under 10 minutes", "Dependencies are cached between runs"),
        Change(
            "Cache pip downloads and run pytest in parallel with xdist in the CI workflow",
            (".github/workflows/ci.yml",),
        ),
        Change(
            "Add dark mode toggle to the settings page",
            ("frontend/src/components/SettingsPage.tsx",),
        ),
    ),
    Case(
        "Add rate limiting to the public REST API",
        (
            "Clients exceeding 100 requests per minute get HTTP 429",
            "Limits are configurable per API key",
        ),
        Change(
            "Add token bucket rate limiter middleware returning 429, limits per API key",
            ("api/middleware/rate_limit.py", "api/settings.py"),
        ),
        Change(
            "Refactor PDF invoice rendering to use WeasyPrint templates",
            ("billing/invoices/pdf.py",),
        ),
    ),
    Case(
        "Document the plugin system for third-party developers",
        ("Guide explains the plugin lifecycle hooks", "Example plugin in docs/examples"),
        Change(
            "Write plugin developer guide describing lifecycle hooks, with an example plugin",
            ("docs/plugins/guide.md", "docs/examples/hello_plugin/plugin.py"),
        ),
        Change("Fix race condition in the job scheduler lock", ("scheduler/locks.py",)),
    ),
    Case(
        "Support PostgreSQL 16 in the test matrix",
        ("CI runs integration tests against PostgreSQL 16",),
        Change(
            "Add postgres:16 service to the CI matrix for integration tests",
            (".github/workflows/integration.yml",),
        ),
        Change("Redesign the mobile navigation menu", ("mobile/src/nav/Menu.kt",)),
    ),
    Case(
        "Add retry with exponential backoff to the payment gateway client",
        (
            "Transient 5xx errors are retried up to 3 times",
            "Idempotency keys prevent double charges",
        ),
        Change(
            "Wrap payment gateway calls in a retry loop with exponential backoff",
            ("payments/gateway_client.py",),
            diff="send Idempotency-Key header on every charge request",
        ),
        Change(
            "Bump eslint and prettier versions, reformat frontend code",
            ("package.json", "frontend/.eslintrc.js"),
            ("npm install",),
        ),
    ),
    Case(
        "Internationalize the checkout flow",
        ("All checkout strings are translatable", "Prices formatted per locale"),
        Change(
            "Wrap checkout page strings in gettext and format prices with the user's locale",
            ("shop/checkout/views.py", "shop/locale/fr/LC_MESSAGES/django.po"),
        ),
        Change(
            "Add Prometheus metrics for the database connection pool",
            ("shop/db/pool.py",),
        ),
    ),
    Case(
        "Remove the deprecated v1 API endpoints",
        ("/api/v1 routes deleted", "Clients get 410 Gone with a pointer to v2"),
        Change(
            "Delete v1 route handlers and return 410 Gone for /api/v1 paths, pointing to v2",
            ("api/routes/v1/users.py", "api/routes/v1/orders.py", "api/app.py"),
        ),
        Change(
            "Tune garbage collection settings for the batch worker JVM",
            ("batch/jvm.options",),
        ),
    ),
    Case(
        "Harden file upload validation",
        ("Reject files over 10 MB", "Only PNG, JPEG and PDF MIME types accepted"),
        Change(
            "Check upload size limit and MIME type allow-list before saving files",
            ("web/uploads/validators.py",),
        ),
        Change(
            "Write onboarding tutorial video script for new hires",
            ("handbook/onboarding.md",),
        ),
    ),
    # Near misses: the off-goal change shares generic vocabulary ("tests", "update", "fix",
    # "docs") with the goal; only IDF weighting keeps it below the on-goal change.
    Case(
        "Fix flaky tests in the payment module",
        ("Payment tests pass 100 runs in a row",),
        Change(
            "Freeze the clock and seed the random generator in payment refund tests",
            ("tests/payments/test_refunds.py",),
            ("pytest --count 100 tests/payments",),
        ),
        Change("Add tests for the CSV parser", ("tests/test_csv_parser.py",), ("pytest",)),
    ),
    Case(
        "Update the API documentation for the v2 endpoints",
        ("Every v2 endpoint has a request and response example",),
        Change(
            "Document request and response examples for the v2 orders and users endpoints",
            ("docs/api/v2/orders.md", "docs/api/v2/users.md"),
        ),
        Change(
            "Update dependencies and fix the docs build",
            ("requirements.txt", "docs/conf.py", "Makefile"),
            ("pip install -r requirements.txt", "make docs"),
        ),
    ),
)


def _scores() -> tuple[list[float], list[float]]:
    backend = LexicalBackend()
    on: list[float] = []
    off: list[float] = []
    for case in CASES:
        reference = goal_reference(case.goal, case.outcomes)
        on.append(backend.score(reference, case.on.text()))
        off.append(backend.score(reference, case.off.text()))
    return on, off


def test_score_on_goal_change_above_paired_off_goal_change() -> None:
    on, off = _scores()
    for case, on_score, off_score in zip(CASES, on, off, strict=True):
        assert on_score > off_score, case.goal


def test_score_separation_exceeds_measured_margin() -> None:
    # Measured on these 16 cases with the built-in background corpus:
    #   min(on)=0.183  max(off)=0.145 (the "flaky payment tests" near miss)
    #   mean(on)=0.484 mean(off)=0.015 -> mean separation 0.469
    # The margin below leaves ~0.07 of slack for corpus or stop-list tweaks.
    on, off = _scores()
    print(
        f"min on={min(on):.3f} max off={max(off):.3f} "
        f"mean on={statistics.mean(on):.3f} mean off={statistics.mean(off):.3f}"
    )
    assert statistics.mean(on) - statistics.mean(off) > 0.4
    assert min(on) > max(off)


def test_check_drift_default_threshold_passes_every_on_goal_change() -> None:
    for case in CASES:
        result = check_drift(case.goal, case.outcomes, case.on.text())
        assert not result.drifted, (case.goal, result.score)


def test_check_drift_default_threshold_flags_unrelated_changes() -> None:
    # The two near-miss cases share real vocabulary with their goals and may land either side.
    flagged = [
        check_drift(case.goal, case.outcomes, case.off.text()).drifted for case in CASES[:-2]
    ]
    assert all(flagged)


def test_stem_inflections_match() -> None:
    assert stem("tests") == stem("testing") == stem("tested") == stem("test")


def test_tokenize_inflections_overlap() -> None:
    assert tokenize("tests") == tokenize("testing") == tokenize("tested")


def test_split_identifier_camel_case() -> None:
    assert split_identifier("parseHTTPHeader") == ["parse", "HTTP", "Header"]
    assert split_identifier("getUserID") == ["get", "User", "ID"]
    assert split_identifier("lowercase") == ["lowercase"]


def test_tokenize_snake_case_and_paths() -> None:
    assert tokenize("src/auth/login.py") == ["src", "auth", "login"]
    assert tokenize("refresh_token") == ["refresh", "token"]
    assert tokenize("fetchUserProfile") == ["fetch", "user", "profil"]


def test_tokenize_noise_extension_only_at_path_end() -> None:
    # "py" is dropped as an extension, but a dotted attribute or a dot-directory is kept.
    assert tokenize("datetime.utcnow") == ["datetim", "utcnow"]
    assert tokenize(".github/workflows/ci.yml") == ["github", "workflow", "ci"]
    assert "png" in tokenize("logo.png")
    assert "lock" in tokenize("poetry.lock")


def test_tokenize_drops_stop_words_and_keeps_versions() -> None:
    assert tokenize("Make the test suite pass on Python 3.12") == [
        "make",
        "test",
        "suit",
        "pass",
        "python",
        "3.12",
    ]


def test_tokenize_handles_non_ascii_text() -> None:
    assert tokenize("Überprüfe ÄpfelBaum 日本語") == ["überprüf", "äpfel", "baum", "日本語"]


def test_score_identical_texts_is_one() -> None:
    text = "Add OAuth2 login with Google"
    assert LexicalBackend().score(text, text) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("reference", "candidate"),
    [
        ("", ""),
        ("", "fix tests"),
        ("fix tests", ""),
        ("the and of", "fix tests"),
        ("   \n\t", "fix tests"),
    ],
)
def test_score_empty_or_stop_word_input_is_zero(reference: str, candidate: str) -> None:
    assert LexicalBackend().score(reference, candidate) == 0.0


def test_score_stays_in_unit_range() -> None:
    backend = LexicalBackend()
    texts = [c.goal for c in CASES] + [c.on.text() for c in CASES] + [c.off.text() for c in CASES]
    for reference in texts:
        for candidate in texts:
            assert 0.0 <= backend.score(reference, candidate) <= 1.0


def test_score_is_deterministic_across_instances() -> None:
    case = CASES[0]
    reference = goal_reference(case.goal, case.outcomes)
    first = LexicalBackend().score(reference, case.on.text())
    assert all(LexicalBackend().score(reference, case.on.text()) == first for _ in range(5))


def test_score_is_symmetric() -> None:
    backend = LexicalBackend()
    a, b = CASES[1].goal, CASES[1].on.text()
    assert backend.score(a, b) == pytest.approx(backend.score(b, a))


def test_score_generic_shared_word_weighs_less_than_specific_one() -> None:
    # "fix" is everywhere in the background corpus; "websocket" is nowhere in it.
    backend = LexicalBackend()
    generic = backend.score("fix websocket leak", "fix typo")
    specific = backend.score("fix websocket leak", "websocket typo")
    assert specific > generic > 0.0


def test_describe_phase_change_sorts_and_dedupes_paths() -> None:
    text = describe_phase_change(
        description="  Fix   login  ",
        commands=["pytest -q"],
        changed_paths=["b.py", "a.py", "b.py", " "],
        diff_summary="",
    )
    assert text == "Fix login\npytest -q\na.py\nb.py"


def test_describe_phase_change_bounds_huge_input() -> None:
    text = describe_phase_change(
        description="bulk rename",
        commands=[],
        changed_paths=[f"pkg/module_{i:05d}.py" for i in range(10_000)],
        diff_summary="x " * 100_000,
    )
    assert len(text) < 30_000


def test_goal_reference_joins_goal_and_outcomes() -> None:
    assert goal_reference(" Ship  it ", ["", "fast", " tested "]) == "Ship it\nfast\ntested"


def test_check_drift_blocking_mode_fails_off_goal_change() -> None:
    case = CASES[0]
    result = check_drift(case.goal, case.outcomes, case.off.text(), mode="blocking")
    assert result == DriftCheck(
        score=result.score, threshold=0.1, mode="blocking", drifted=True, backend="lexical-tfidf"
    )
    assert result.should_fail


def test_check_drift_advisory_mode_never_fails_phase() -> None:
    case = CASES[0]
    result = check_drift(case.goal, case.outcomes, case.off.text())
    assert result.drifted
    assert result.mode == "advisory"
    assert not result.should_fail


def test_check_drift_empty_change_text_scores_zero_without_drift() -> None:
    result = check_drift("Make tests pass", [], "   ", mode="blocking")
    assert result.score == 0.0
    assert not result.drifted


def test_check_drift_blank_goal_scores_zero_without_drift() -> None:
    result = check_drift("", [], "fix tests", mode="blocking")
    assert result.score == 0.0
    assert not result.should_fail


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan")])
def test_check_drift_invalid_threshold_raises(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        check_drift("goal", [], "change", threshold=threshold)


def test_check_drift_invalid_mode_raises() -> None:
    with pytest.raises(ValueError, match="mode"):
        check_drift("goal", [], "change", mode="strict")  # type: ignore[arg-type]


class _FixedBackend:
    """A backend returning a preset raw score, to test clamping and validation."""

    def __init__(self, value: float) -> None:
        self.value = value

    def score(self, reference: str, candidate: str) -> float:
        return self.value


def test_check_drift_clamps_out_of_range_backend_score() -> None:
    assert check_drift("g", [], "c", backend=_FixedBackend(1.7)).score == 1.0
    low = check_drift("g", [], "c", backend=_FixedBackend(-0.3))
    assert low.score == 0.0
    assert low.backend == "_FixedBackend"


def test_check_drift_nan_backend_score_raises() -> None:
    with pytest.raises(ValueError, match="NaN"):
        check_drift("g", [], "c", backend=_FixedBackend(float("nan")))


class _KeywordEmbedder:
    """A toy embedder: one dimension per keyword, standing in for a real model."""

    keywords = ("auth", "docker", "docs")

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [[float(k in t.lower()) for k in self.keywords] for t in texts]


def test_embedding_backend_plugs_into_check_drift() -> None:
    backend = EmbeddingBackend(_KeywordEmbedder(), name="toy")
    assert isinstance(backend, SimilarityBackend)
    on = check_drift("Fix auth", [], "auth token refresh", backend=backend)
    off = check_drift("Fix auth", [], "docker image", backend=backend)
    assert (on.score, on.drifted, on.backend) == (1.0, False, "toy")
    assert (off.score, off.drifted) == (0.0, True)


def test_embedding_backend_zero_vector_scores_zero() -> None:
    backend = EmbeddingBackend(_KeywordEmbedder())
    assert backend.score("nothing here", "auth") == 0.0
    assert backend.score("", "auth") == 0.0


def test_score_concurrent_threads_match_serial_result() -> None:
    # Snowball stemmers keep per-call state; per-thread instances must keep results stable.
    backend = LexicalBackend()
    pairs = [(goal_reference(c.goal, c.outcomes), c.on.text()) for c in CASES]
    serial = [backend.score(r, c) for r, c in pairs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(5):
            assert list(pool.map(lambda p: backend.score(*p), pairs)) == serial


def test_import_does_not_load_fastapi_or_celery() -> None:
    code = (
        "import sys, shared.intention; "
        "bad = {'fastapi', 'celery', 'starlette'} & set(sys.modules); "
        "sys.exit(sorted(bad) or 0)"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
