"""transient_network: an install or fetch hit a passing network error; retry later with backoff."""

from __future__ import annotations

import random
import re
from typing import Final

from workers.hardening.base import FailureContext, MitigationResult, RetryOverrides
from workers.hardening.patterns.common import BasePattern, failing_command, output_lines

_TRANSIENT: Final = re.compile(
    r"Connection reset|ConnectionResetError|\bECONNRESET\b|socket hang up"
    r"|Connection refused|ConnectionRefusedError|\bECONNREFUSED\b"
    r"|Failed to connect to|Couldn't connect to server|Failed to establish a new connection"
    r"|Temporary failure in name resolution|Could not resolve host|\bEAI_AGAIN\b"
    r"|\bETIMEDOUT\b|Read timed out|(?i:connection timed out)|TLS handshake timeout"
    r"|Network is unreachable|RemoteDisconnected|IncompleteRead"
    r"|\b(?:502 Bad Gateway|503 Service Unavailable|504 Gateway Time-?out)\b"
    r"|The requested URL returned error: 50[234]"
)
# Commands whose job is to download: only their network errors are worth waiting out.
_FETCH: Final = re.compile(
    r"(?<![\w-])(?:pip3?|uv|poetry|pdm|pipenv|conda|npm|npx|yarn|pnpm|bun|cargo|go|mvn|gradlew?"
    r"|bundle|gem|composer|apt(?:-get)?|apk|curl|wget|git)(?![\w-])"
    r"|\bpython[\d.]*\s+-m\s+pip\b|/(?:pip3?|mvnw|gradlew)(?![\w-])"
)
_FETCH_VERBS: Final = re.compile(
    r"\b(?:install|ci|add|sync|update|upgrade|download|fetch|clone|pull|get|restore|resolve"
    r"|dependency|build|lock|vendor)\b|(?<![\w-])(?:curl|wget)(?![\w-])"
)

BASE_DELAY_S = 2.0
FACTOR = 2.0
MAX_DELAY_S = 30.0
JITTER = 0.2
MAX_RETRIES = 3


def backoff_delay(retries_so_far: int, rng: random.Random) -> float:
    """Exponential backoff (2 s, 4 s, 8 s …) with ±20 % jitter against thundering herds, never above 30 s."""
    delay = min(BASE_DELAY_S * FACTOR ** max(retries_so_far, 0), MAX_DELAY_S)
    return round(min(delay * rng.uniform(1 - JITTER, 1 + JITTER), MAX_DELAY_S), 1)


def is_fetch(command: str) -> bool:
    """Whether a command downloads something (package installs, git fetches, curl/wget)."""
    return bool(_FETCH.search(command) and _FETCH_VERBS.search(command))


class TransientNetwork(BasePattern):
    """Schedules up to three delayed retries of an install or fetch that failed on the network."""

    pattern_id = "transient_network"
    name = "Transient network failure"
    priority = 50
    max_applications = MAX_RETRIES

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def _detect(self, ctx: FailureContext) -> bool:
        if ctx.previous_patterns.count(self.pattern_id) >= MAX_RETRIES:
            return False
        if not is_fetch(failing_command(ctx)):
            return False
        return any(_TRANSIENT.search(line) for line in output_lines(ctx))

    def _mitigate(self, ctx: FailureContext) -> MitigationResult:
        retries = ctx.previous_patterns.count(self.pattern_id)
        delay = backoff_delay(retries, self.rng)
        error = next(
            (line for line in reversed(output_lines(ctx)) if _TRANSIENT.search(line)), "error"
        )
        return MitigationResult(
            actions_taken=[
                f"network error during `{failing_command(ctx)}` ({error[:200]}); "
                f"will retry after {delay:g} s (retry {retries + 1} of {MAX_RETRIES})"
            ],
            changed=True,
            retry=RetryOverrides(delay_s=delay),
        )
