"""Keeping secret values out of stored output: logs, attempt tails, the Doctor's context."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from shared.settings import Settings

MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary text


def secret_values(settings: Settings, names: Iterable[str] = ()) -> list[str]:
    """The values to mask: the named worker secrets, the provider key and the configured API keys."""
    values = [
        settings.secrets[name].get_secret_value() for name in names if name in settings.secrets
    ]
    if settings.llm_api_key:
        values.append(settings.llm_api_key.get_secret_value())
    values.extend(key.get_secret_value() for key in settings.api_keys)
    # Longest first, so a secret containing another is masked whole.
    return sorted({v for v in values if len(v) >= MIN_SECRET_LENGTH}, key=len, reverse=True)


def redact(text: str, values: Iterable[str]) -> str:
    """text with every secret value replaced by ***."""
    for value in values:
        text = text.replace(value, MASK)
    return text


def redact_file(path: Path, values: list[str]) -> None:
    """Rewrite a log file with secret values masked (no-op without values)."""
    if not values or not path.exists():
        return
    data = path.read_bytes()
    masked = data
    for value in values:
        masked = masked.replace(value.encode(), MASK.encode())
    if masked != data:
        path.write_bytes(masked)
