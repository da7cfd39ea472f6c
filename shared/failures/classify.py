"""Classification of a failed phase into a failure class with a stable signature."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from shared.failures.normalize import (
    classify_error_type,
    compute_signature,
    extract_error_lines,
    normalize_error_message,
    split_output_lines,
)

__all__ = ["FailureClass", "FailureInfo", "classify_failure"]

MAX_MESSAGE_CHARS: Final = 500
MAX_SAMPLE_CHARS: Final = 2000
# Lines kept after the chosen line in the sample, so follow-up context (e.g. a
# "Require stack:" or pip hint) stays visible.
_SAMPLE_LINES_AFTER: Final = 10
_SAMPLE_MAX_LEADING_CUT: Final = 200
_SIGKILL: Final = 9


class FailureClass(StrEnum):
    """Coarse cause of a phase failure, used to decide retries and reporting."""

    DEPENDENCY = "dependency"
    ENVIRONMENT = "environment"
    TEST = "test"
    SCOPE = "scope"
    TIMEOUT = "timeout"
    INFRASTRUCTURE = "infrastructure"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class FailureInfo:
    """Result of classifying one failed phase execution."""

    failure_class: FailureClass
    error_type: str
    message: str
    normalized_message: str
    signature: str
    sample: str


def _patterns(*sources: str) -> tuple[re.Pattern[str], ...]:
    """Compile line patterns, listed from most to least telling for choosing the message."""
    return tuple(re.compile(source) for source in sources)


_DEPENDENCY: Final = _patterns(
    r"No module named\b",
    r"(?:^|\W)Error: Cannot find module '(?![./])",
    r"Module not found: Error: Can't resolve '(?![./])|ERR_MODULE_NOT_FOUND|Cannot find package '",
    r"No matching distribution found|Could not find a version that satisfies the requirement",
    r"ResolutionImpossible|have conflicting dependencies|Failed building wheel for|"
    r"Failed to build installable wheels",
    r"^npm (?:ERR!|error) code (?:E404|ERESOLVE|ETARGET)\b|No matching version found for|"
    r"Couldn't find package",
    r"no required module provides package|cannot find package|missing go\.sum entry",
    r"no matching package named|failed to select a version for",
    r"error while loading shared libraries",
)
_ENVIRONMENT: Final = _patterns(
    r"command not found|: not found$|is not recognized as an internal or external command",
    r"Permission denied|\bEACCES\b|Operation not permitted",
    r"(?i:\benv(?:ironment)?(?: |_)?var(?:iable)?s?\b.{0,120}?\b(?:not set|missing|required|"
    r"undefined|unset|empty))|(?i:\b(?:missing|required|undefined|unset)\b.{0,40}?"
    r"\benv(?:ironment)?(?: |_)?var)|: unbound variable$",
    r"fatal: not a git repository|file or directory not found:|can't open file|"
    r"go\.mod file not found|cannot find main module|could not find `Cargo\.toml`",
    r"No such file or directory|\bENOENT\b",
)
# A KeyError on an upper-case name is a missing env var only when os.environ is involved.
_ENV_KEY_ERROR: Final = re.compile(r"KeyError: '[A-Z][A-Z0-9_]{2,}'")
_ENVIRON_ACCESS: Final = re.compile(r"\benviron\b")
_NETWORK: Final = _patterns(
    r"Connection refused|ConnectionRefusedError|\bECONNREFUSED\b",
    r"Temporary failure in name resolution|Name or service not known|Could not resolve host|"
    r"\bENOTFOUND\b|\bEAI_AGAIN\b|nodename nor servname",
    r"ConnectionResetError|Connection reset by peer|\bECONNRESET\b",
    r"\bETIMEDOUT\b|(?i:connection timed out)|Network is unreachable|"
    r"Failed to establish a new connection|Max retries exceeded|RemoteDisconnected|"
    r"Could not connect to|TLS handshake timeout",
)
_INFRASTRUCTURE: Final = (
    *_NETWORK,
    *_patterns(
        r"index\.lock': File exists",
        r"Another git process seems to be running",
        r"No space left on device|\bENOSPC\b|Disk quota exceeded",
        r"Cannot allocate memory|(?i:out of memory)|\bMemoryError\b|^Killed$|\bKilled\s+\S",
    ),
)
_TEST: Final = _patterns(
    r"^(?:FAILED|ERROR)\s+\S+::\S+",
    r"^--- FAIL:",
    r"^(?:FAIL|ERROR): \w+ \(",
    r"^●\s+\S",
    r"^test \S+ \.\.\. FAILED$",
    r"^(?:E\s+)?(?:\w+\.)*AssertionError\b|^E\s+assert\b|\bAssertionError\b",
    r"^(?:ERROR|FAILED)\s+\S+\.py\b|errors? during collection",
    r"^Tests:\s+\d+ failed|test result: FAILED|(?<!\d)\d+ (?:failed|failing)\b",
    r"^FAILED \(|^FAIL\b",
)


@dataclass(frozen=True)
class _Match:
    """A line that triggered a rule, with its position in the output."""

    index: int
    line: str


@dataclass(frozen=True)
class _Output:
    """Output split once: raw lines for the sample, stripped non-empty lines for matching."""

    raw: str
    lines: list[str]
    # newest first, because rules prefer the last occurrence of a line
    candidates: list[_Match]

    @classmethod
    def parse(cls, output: str) -> _Output:
        """Split command output into the views the rules need."""
        lines = split_output_lines(output)
        # indentation varies by tool (jest indents, pytest does not), so match stripped
        candidates = [_Match(i, line.strip()) for i, line in enumerate(lines) if line.strip()]
        candidates.reverse()
        return cls(raw=output, lines=lines, candidates=candidates)

    def find(self, patterns: Sequence[re.Pattern[str]]) -> _Match | None:
        """Return the last line matching the highest-priority pattern that matches at all."""
        for pattern in patterns:
            for candidate in self.candidates:
                if pattern.search(candidate.line):
                    return candidate
        return None

    def find_env_key_error(self) -> _Match | None:
        """Find `KeyError: 'SOME_VAR'` raised while reading os.environ."""
        if not any(_ENVIRON_ACCESS.search(candidate.line) for candidate in self.candidates):
            return None
        return self.find((_ENV_KEY_ERROR,))

    def best_error_line(self) -> _Match | None:
        """Return the most informative error line when no rule picked one."""
        picked = extract_error_lines(self.raw, max_lines=1)
        if not picked:
            return None
        for candidate in self.candidates:
            if candidate.line == picked[0]:
                return candidate
        return None


def _truncate(text: str, limit: int) -> str:
    """Cut text to at most `limit` characters, marking the cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _sample(lines: Sequence[str], match: _Match | None) -> str:
    """Return up to MAX_SAMPLE_CHARS of output ending shortly after the chosen line."""
    end = len(lines) if match is None else min(len(lines), match.index + 1 + _SAMPLE_LINES_AFTER)
    text = "\n".join(lines[:end]).strip("\n")
    if len(text) <= MAX_SAMPLE_CHARS:
        return text
    tail = text[-MAX_SAMPLE_CHARS:]
    # start on a line boundary unless that would throw away a large part of the window
    newline = tail.find("\n", 0, _SAMPLE_MAX_LEADING_CUT)
    return tail[newline + 1 :] if newline >= 0 else tail


def _build(
    failure_class: FailureClass,
    message: str,
    lines: Sequence[str],
    match: _Match | None,
    error_type: str | None = None,
) -> FailureInfo:
    """Assemble a FailureInfo whose signature is namespaced by its failure class."""
    message = _truncate(message.strip(), MAX_MESSAGE_CHARS)
    normalized = normalize_error_message(message)
    return FailureInfo(
        failure_class=failure_class,
        error_type=error_type or classify_error_type(message),
        message=message,
        normalized_message=normalized,
        signature=compute_signature(f"{failure_class.value}:{normalized}"),
        sample=_sample(lines, match),
    )


def _from_match(failure_class: FailureClass, lines: Sequence[str], match: _Match) -> FailureInfo:
    """Build a FailureInfo around the line that triggered a rule."""
    return _build(failure_class, match.line, lines, match)


def classify_failure(
    *,
    exit_code: int | None,
    timed_out: bool,
    signal: int | None,
    output_tail: str,
    scope_violations: Sequence[str] = (),
) -> FailureInfo:
    """Classify a failed phase from its exit status, output tail and scope check."""
    output = _Output.parse(output_tail)
    lines = output.lines

    if timed_out:
        last = output.best_error_line()
        message = f"timed out; last output: {last.line}" if last else "timed out"
        return _build(FailureClass.TIMEOUT, message, lines, last, error_type="timeout")

    if scope_violations:
        files = ", ".join(sorted(set(scope_violations)))
        message = f"scope violation: {len(scope_violations)} files outside scope: {files}"
        return _build(FailureClass.SCOPE, message, lines, None, error_type="scope_violation")

    dependency = output.find(_DEPENDENCY)
    if dependency is not None:
        # pip/npm report "no matching distribution" when the registry was unreachable,
        # which is an infrastructure problem rather than a wrong requirement
        network = output.find(_NETWORK)
        if network is not None:
            return _from_match(FailureClass.INFRASTRUCTURE, lines, network)
        return _from_match(FailureClass.DEPENDENCY, lines, dependency)

    environment = output.find(_ENVIRONMENT) or output.find_env_key_error()
    if environment is not None:
        return _from_match(FailureClass.ENVIRONMENT, lines, environment)
    if exit_code in (126, 127):
        reason = "command not found" if exit_code == 127 else "command not executable"
        return _build(FailureClass.ENVIRONMENT, f"{reason} (exit code {exit_code})", lines, None)

    infrastructure = output.find(_INFRASTRUCTURE)
    if infrastructure is not None:
        return _from_match(FailureClass.INFRASTRUCTURE, lines, infrastructure)
    if signal == _SIGKILL or exit_code in (128 + _SIGKILL, -_SIGKILL):
        # a synthetic message keeps every OOM kill under one signature regardless of
        # whatever the process happened to print last
        return _build(
            FailureClass.INFRASTRUCTURE,
            "killed by SIGKILL without timeout (likely out of memory)",
            lines,
            None,
            error_type="killed",
        )

    test = output.find(_TEST)
    if test is not None:
        return _from_match(FailureClass.TEST, lines, test)

    best = output.best_error_line()
    if best is not None:
        return _from_match(FailureClass.UNKNOWN, lines, best)
    default = f"exit code {exit_code}" if exit_code is not None else "no exit code"
    return _build(FailureClass.UNKNOWN, default, lines, None)
