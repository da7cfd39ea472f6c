"""Detection result type and file-reading helpers shared by the toolchain adapters."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

TOOLCHAIN_PYTHON = "python"
TOOLCHAIN_NODE = "node"
TOOLCHAIN_GO = "go"
TOOLCHAIN_RUST = "rust"
TOOLCHAIN_JAVA = "java"

# Confidence given to a toolchain whose main manifest exists but could not be parsed.
MALFORMED_CONFIDENCE = 0.4


@dataclass(frozen=True, slots=True)
class ToolchainDetection:
    """What one adapter concluded about one directory, with the commands to run there."""

    toolchain: str
    directory: str
    detected: bool
    confidence: float
    reasons: tuple[str, ...] = ()
    package_manager: str | None = None
    install: tuple[str, ...] = ()
    build: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    smoke: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Reject confidences outside 0..1 so callers can rely on the range."""
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence must be within 0..1, got {self.confidence}")

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable mapping of this detection."""
        return {
            "toolchain": self.toolchain,
            "directory": self.directory,
            "detected": self.detected,
            "confidence": self.confidence,
            "reasons": list(self.reasons),
            "package_manager": self.package_manager,
            "install": list(self.install),
            "build": list(self.build),
            "test": list(self.test),
            "smoke": list(self.smoke),
        }


Adapter = Callable[[Path, str], ToolchainDetection]
"""An adapter inspects one directory (given with its path relative to the scan root)."""


def not_detected(toolchain: str, directory: str) -> ToolchainDetection:
    """Return the negative result an adapter gives when its toolchain is absent."""
    return ToolchainDetection(
        toolchain=toolchain, directory=directory, detected=False, confidence=0.0
    )


def clamp_confidence(value: float) -> float:
    """Return value limited to 0..1 and rounded to two decimals."""
    return round(min(1.0, max(0.0, value)), 2)


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """Outcome of reading a structured manifest: its top-level table, or why it failed."""

    data: dict[str, object] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the file was read and parsed into a table."""
        return self.error is None


def _one_line(message: str) -> str:
    """Collapse an error message to a single line for use in a reason."""
    return " ".join(message.split())


def read_toml(path: Path) -> ParsedFile:
    """Parse a TOML file, reporting decoding or syntax problems instead of raising."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return ParsedFile(error=_one_line(str(exc)) or type(exc).__name__)
    return ParsedFile(data=data)


def read_json_object(path: Path) -> ParsedFile:
    """Parse a JSON file whose top level must be an object, reporting problems, not raising."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return ParsedFile(error=_one_line(str(exc)) or type(exc).__name__)
    if not isinstance(data, dict):
        return ParsedFile(error=f"top level is a JSON {type(data).__name__}, not an object")
    return ParsedFile(data=data)


def read_text(path: Path) -> str | None:
    """Return a text file's contents, or None when it cannot be read as UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def table(data: dict[str, object], *keys: str) -> dict[str, object]:
    """Walk nested tables by key, returning an empty table where a level is missing."""
    current: object = data
    for key in keys:
        if not isinstance(current, dict):
            return {}
        current = current.get(key)
    return current if isinstance(current, dict) else {}


def string_list(value: object) -> list[str]:
    """Return the strings of a list value, ignoring anything else."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, str)]


def existing(directory: Path, names: Iterable[str]) -> list[str]:
    """Return the names, in order, that exist as files in directory."""
    return [name for name in names if (directory / name).is_file()]
