"""Error-message normalization, error-line extraction and signatures for grouping failures."""

from __future__ import annotations

import hashlib
import re
from typing import Final

__all__ = [
    "classify_error_type",
    "compute_signature",
    "confidence_for_count",
    "extract_error_lines",
    "normalize_error_message",
    "split_output_lines",
    "strip_ansi",
    "suggest_pattern_id",
]

# Every pattern below is written so that a match can only start at a token boundary
# (negative lookbehinds) and every repetition is either bounded or separated by a
# mandatory delimiter; that keeps each pass roughly linear on 100 KB+ command output.
# Lookbehinds also reject `>` and lookaheads `<`, so a placeholder inserted next to
# some text never turns that text into a new match: that makes normalizing twice a no-op.

_ANSI: Final = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]{0,512}(?:\x07|\x1b\\)")
_WHITESPACE: Final = re.compile(r"\s+")

_ISO_TIME: Final = re.compile(
    r"(?<![\w.>])\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?"
    r"(?:Z|[+-]\d{2}:?\d{2})?(?![\w.<])"
)
_CLOCK_TIME: Final = re.compile(r"(?<![\w.:>])\d{1,2}:\d{2}:\d{2}(?:[.,]\d{1,9})?(?![\w:<])")
_URL: Final = re.compile(r"(?<![\w.+>-])[A-Za-z][A-Za-z0-9+.-]{0,15}://[^\s'\"<>]+")
_WIN_PATH: Final = re.compile(r"(?<![\w>])[A-Za-z]:[\\/][^\s'\"<>|:*?]*")
# `/abs/x`, `./rel/x`, `../rel/x`, `~/x`; `:` ends the path so `:42:7` stays separate.
_ANCHORED_PATH: Final = re.compile(
    r"(?<![\w.~/<>@+$-])(?:~|\.{1,2})?/[\w.@+~-][^\s'\"`<>:;,()\[\]{}|]*"
)
# `src/app.py`: needs a slash and an extension, so `and/or` or `application/json` survive.
_RELATIVE_PATH: Final = re.compile(
    r"(?<![\w.~/<>@+$-])(?:[\w@+-][\w.@+-]*/)+[\w.@+-]*\.[A-Za-z][A-Za-z0-9]{0,9}(?![\w/<-]|\.[\w<])"
)
_SOURCE_EXTENSIONS: Final = (
    "py|pyi|pyx|js|jsx|mjs|cjs|ts|tsx|go|rs|c|h|cc|cpp|hpp|java|kt|rb|php|cs|swift|sh|"
    "json|ya?ml|toml|cfg|ini|txt|md|html|css|scss|vue|svelte|lock|sql|log"
)
_BARE_FILE: Final = re.compile(
    r"(?<![\w.~/<>@+$-])[\w@+-][\w.@+-]*\.(?:" + _SOURCE_EXTENSIONS + r")(?![\w/<-]|\.[\w<])"
)
_UUID: Final = re.compile(
    r"(?<![\w>-])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"(?![\w<-])"
)
_HEX_ADDR: Final = re.compile(r"(?<![\w>])0[xX][0-9a-fA-F]+(?![\w<])")
_TMP_NAME: Final = re.compile(
    r"(?<![\w>-])(?:tmp[A-Za-z0-9][A-Za-z0-9_]{5,}|pytest-of-[\w-]+|pytest-\d+)(?![\w<-])"
)
# Needs a digit and a letter so ordinary hex-looking words ("deadbeef", "defaced") survive.
_HASH: Final = re.compile(
    r"(?<![\w>-])(?:(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,}|[0-9A-Fa-f]{32,})"
    r"(?![\w<-])"
)
_LINE_WORD: Final = re.compile(r"(?<![\w>])[Ll]ine\s?\d+(?![\w<])")
# `<path>:42:7` anywhere, or `:42:` before another colon (`file:12: error`); the
# lookahead form leaves the trailing colon in place so a second pass finds nothing.
_LINE_COLON: Final = re.compile(r"(?<=<path>):\d+(?::\d+)?|:\d+(?::\d+)?(?=:)")
_LINE_PAREN: Final = re.compile(r"(?<=<path>)\(\d+(?:,\s?\d+)?\)")
_DURATION: Final = re.compile(
    r"(?<![\w.>])\d+(?:\.\d+)?(?=\s?(?:ms|s|secs?|seconds?|mins?|minutes?|m|h|hrs?|hours?)(?![\w<]))"
)
_COUNT: Final = re.compile(
    r"(?<![\w.>])\d+(?=\s(?:failed|passed|errors?|warnings?|skipped|xfailed|xpassed|deselected|"
    r"selected|tests?|items?|total|suites?|snapshots?|failing|passing|pending|ignored|measured|"
    r"filtered|files?|retries|attempts?|times|packages?)(?![\w<]))"
)
_KV_COUNT: Final = re.compile(r"(?<![\w>])((?:failures|errors|skipped|expected failures)=)\d+")
_LONG_NUMBER: Final = re.compile(r"(?<![\w.>])\d{5,}(?![\w.<])")
_QUOTED_NAME: Final = re.compile(r"""(?<![\w'">])(['"])[A-Za-z_@$][\w.@/$:-]{0,200}\1(?![\w'"<])""")

_SUBSTITUTIONS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (_ISO_TIME, "<time>"),
    (_CLOCK_TIME, "<time>"),
    (_URL, "<url>"),
    (_WIN_PATH, "<path>"),
    (_ANCHORED_PATH, "<path>"),
    (_RELATIVE_PATH, "<path>"),
    (_BARE_FILE, "<path>"),
    (_UUID, "<tmp>"),
    (_HEX_ADDR, "<addr>"),
    (_TMP_NAME, "<tmp>"),
    (_HASH, "<hash>"),
    (_LINE_WORD, "<line>"),
    (_LINE_COLON, ":<line>"),
    (_LINE_PAREN, "<line>"),
    (_DURATION, "<n>"),
    (_COUNT, "<n>"),
    (_KV_COUNT, r"\1<n>"),
    (_LONG_NUMBER, "<n>"),
    (_QUOTED_NAME, "'<name>'"),
)


def strip_ansi(text: str) -> str:
    """Remove terminal colour/cursor escape sequences from command output."""
    return _ANSI.sub("", text)


def split_output_lines(output: str) -> list[str]:
    """Split command output into ANSI-free, right-stripped lines (empty lines kept)."""
    return [line.rstrip() for line in strip_ansi(output).splitlines()]


def normalize_error_message(text: str) -> str:
    """Rewrite incidental details (paths, lines, addresses, temp names, counts) as placeholders."""
    result = _WHITESPACE.sub(" ", strip_ansi(text)).strip()
    for pattern, replacement in _SUBSTITUTIONS:
        result = pattern.sub(replacement, result)
    return result


def compute_signature(normalized: str) -> str:
    """Return the SHA-256 hex digest identifying a normalized error message."""
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


# --- error-line extraction -------------------------------------------------------------

_PYTEST_E_PREFIX: Final = re.compile(r"^E\s+")
_NOISE_LINE: Final = re.compile(
    r"^(?:npm (?:ERR!|error)\s*$|npm (?:ERR!|error) +(?:A complete log|\S*_logs/)"
    r"|Traceback \(most recent call last\)|Require stack:|During handling of the above)"
)
# Lines that usually *are* the error (last line of a traceback, summary lines, shell errors).
_STRONG_LINE: Final = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*\w*(?:Error|Exception)(?::|$)"
    r"|^(?:FAILED|ERROR)\s+\S+::"
    r"|^--- FAIL\b|^fatal:|^panic:"
    r"|^npm (?:ERR!|error) +(?:code|errno|\d{3}\b|missing|enoent|ERESOLVE|notarget)"
    r"|command not found|Permission denied|No such file or directory|Cannot find module"
    r"|No matching distribution|No space left on device|Connection refused"
)
# Lines that mention an error but are often context (pytest `E` lines, `error:` chatter).
_WEAK_LINE: Final = re.compile(
    r"^E\s+\S|(?i:\berror(?:\[\w+\])?:)|^ERROR\b|^npm (?:ERR!|error)\b|^FAIL\b|\bException\b"
)


def extract_error_lines(output: str, max_lines: int = 5) -> list[str]:
    """Pick the most informative error lines from mixed stdout/stderr, preferring late ones."""
    if max_lines <= 0:
        return []
    lines = [line.strip() for line in split_output_lines(output)]
    # index by text so a repeated line only counts once, at its last position
    ranked: dict[str, tuple[int, int]] = {}
    for index, line in enumerate(lines):
        if not line or _NOISE_LINE.search(line):
            continue
        body = _PYTEST_E_PREFIX.sub("", line)
        if _STRONG_LINE.search(body):
            ranked[line] = (0, index)
        elif _WEAK_LINE.search(line):
            ranked[line] = (1, index)
    if ranked:
        best = sorted(ranked.items(), key=lambda item: (item[1][0], -item[1][1]))[:max_lines]
        return [line for line, _ in sorted(best, key=lambda item: item[1][1])]
    fallback: list[str] = []
    for line in reversed(lines):
        if line and not _NOISE_LINE.search(line) and line not in fallback:
            fallback.append(line)
            if len(fallback) == max_lines:
                break
    fallback.reverse()
    return fallback


# --- error types -----------------------------------------------------------------------

# Ordered most specific first: a line naming a Python exception wins over generic words.
_ERROR_TYPES: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    (
        "module_not_found_node",
        re.compile(r"Cannot find module|ERR_MODULE_NOT_FOUND|Can't resolve '|Cannot find package"),
    ),
    ("import_error", re.compile(r"ModuleNotFoundError|ImportError|No module named")),
    ("syntax_error", re.compile(r"SyntaxError|IndentationError|TabError|(?i:syntax error)")),
    ("type_error", re.compile(r"TypeError\b")),
    ("attribute_error", re.compile(r"AttributeError\b|has no attribute")),
    ("name_error", re.compile(r"\b(?:NameError|UnboundLocalError|ReferenceError)\b")),
    ("key_error", re.compile(r"\bKeyError\b")),
    ("value_error", re.compile(r"\bValueError\b")),
    (
        "assertion_error",
        re.compile(r"AssertionError|\bassert\b|\bexpect\(.{0,200}?\)\.(?:to|not)"),
    ),
    (
        "file_not_found",
        re.compile(r"FileNotFoundError|No such file or directory|\bENOENT\b|(?i:file not found)"),
    ),
    (
        "permission_error",
        re.compile(r"PermissionError|Permission denied|\bEACCES\b|Operation not permitted"),
    ),
    (
        "network_error",
        re.compile(
            r"Connection refused|Connection reset|ConnectionError|ConnectionRefusedError|"
            r"ConnectionResetError|Temporary failure in name resolution|Name or service not known|"
            r"Could not resolve host|Network is unreachable|\bE(?:TIMEDOUT|CONNRESET|CONNREFUSED|"
            r"NOTFOUND|AI_AGAIN)\b|Failed to establish a new connection|(?i:connection timed out)"
        ),
    ),
    (
        "timeout",
        re.compile(r"TimeoutError|TimeoutExpired|(?i:timed out|\btimeout\b|deadline exceeded)"),
    ),
    (
        "command_not_found",
        re.compile(r"command not found|: not found$|is not recognized as an internal", re.M),
    ),
    (
        "git_error",
        re.compile(
            r"^fatal:|index\.lock|not a git repository|^CONFLICT \(|error: pathspec|"
            r"Another git process",
            re.M,
        ),
    ),
    (
        "test_failure",
        re.compile(
            r"\bFAILED\b|^--- FAIL|^FAIL\b|(?<!\d)\d+ (?:failed|failing)\b|"
            r"test result: FAILED|Tests:\s{1,40}\d+ failed",
            re.M,
        ),
    ),
)


def classify_error_type(text: str) -> str:
    """Map an error message (or output) to a coarse keyword category such as `import_error`."""
    for name, pattern in _ERROR_TYPES:
        if pattern.search(text):
            return name
    return "unknown"


def confidence_for_count(n: int) -> str:
    """Translate how many times a signature was seen into a confidence label."""
    if n < 1:
        raise ValueError(f"occurrence count must be >= 1, got {n}")
    if n >= 5:
        return "high"
    if n >= 3:
        return "medium"
    return "low"


_PLACEHOLDER: Final = re.compile(r"<[a-z]+>")
_WORD: Final = re.compile(r"[A-Za-z]+")
_NON_SLUG: Final = re.compile(r"[^a-z0-9]+")
_STOP_WORDS: Final = frozenset({"a", "an", "the", "of", "to", "in", "for", "is", "on", "at", "e"})
_MAX_ID_WORDS: Final = 4


def suggest_pattern_id(error_type: str, normalized: str) -> str:
    """Derive a stable snake_case id (e.g. `import_error_no_module_named_1a2b3c4d`)."""
    prefix = _NON_SLUG.sub("_", error_type.lower()).strip("_") or "unknown"
    if not prefix[0].isalpha():
        prefix = f"e_{prefix}"
    taken = set(prefix.split("_"))
    words: list[str] = []
    for raw in _WORD.findall(_PLACEHOLDER.sub(" ", normalized)):
        word = raw.lower()
        # exception names are already summarised by error_type
        if word in _STOP_WORDS or word in taken or word.endswith(("error", "exception")):
            continue
        taken.add(word)
        words.append(word)
        if len(words) == _MAX_ID_WORDS:
            break
    digest = compute_signature(normalized)[:8]
    return "_".join([prefix, *words, digest])
