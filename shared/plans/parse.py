"""Split a free-text or markdown plan into steps, with their commands and path references."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Literal


def words(text: str) -> frozenset[str]:
    """The whitespace-separated words of text as a set."""
    return frozenset(text.split())


SHELL_LANGUAGES = words("bash sh shell console zsh shell-session") | {""}
# Programs whose name in backticks means "run this", even without arguments.
KNOWN_PROGRAMS = words(
    "make just python python3 pip pip3 pytest tox nox ruff mypy black isort flake8 pylint uv "
    "poetry pdm hatch pre-commit alembic npm npx pnpm yarn node bun deno tsc eslint prettier "
    "jest vitest go cargo rustc rustup mvn gradle ./gradlew ./mvnw java javac git docker "
    "docker-compose bash sh echo cp mv rm mkdir touch cat sed awk grep ls cd curl cmake gcc "
    "terraform kubectl helm"
)
EXTENSIONS = words(
    "py pyi pyx ipynb js jsx ts tsx mjs cjs vue svelte json jsonc yaml yml toml ini cfg conf "
    "md mdx rst txt html htm css scss sass less go mod sum rs java kt kts scala gradle xml "
    "properties c h cc cpp hpp cs rb php swift sh bash zsh ps1 sql graphql proto lock csv tsv "
    "env tf hcl lua pl dart ex exs hs"
)
BARE_FILES = words(
    "Makefile Dockerfile LICENSE README CHANGELOG Procfile Jenkinsfile Gemfile Rakefile "
    "Vagrantfile CODEOWNERS justfile"
)
# Product names that look like `.js` files in prose ("Node.js") but are not paths.
_FRAMEWORKS = words("node vue next nuxt react express d3 three chart ember backbone")

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*)$")
_ITEM = re.compile(r"^(\s*)([-*+]|\d{1,3}[.)]|step\s+\d{1,3}\s*[:.)-]?)\s+(.*)$", re.I)
_STEP_PREFIX = re.compile(r"^(?:step\s+\d{1,3}\s*[:.)-]?|\d{1,3}\s*[:.)-])\s+", re.I)
_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
_LABEL = re.compile(r"^\W*(deliverables|outputs?)\W*(?::\s*(.*))?$", re.I)
_INLINE_NUMBER = re.compile(r"(?<!\S)(?:(\d{1,2})[.)]|step\s+(\d{1,2})\s*[:.)])\s+", re.I)
_TICKS = re.compile(r"`([^`]+)`")
# Bounded repeats: unbounded ones make a line of 20,000 '[' take seconds (quadratic).
_LINK = re.compile(r"\[([^\]]{0,300})\]\([^)\s]{0,500}\)")
_EMPHASIS = re.compile(r"(\*\*|__|~~)")
_PATH_CHARS = re.compile(r"^[\w.\-/*?~]+$")
_DELIVERABLE = re.compile(
    r"\b(?:produce|create|write|generate|output|emit)s?\b"
    r"(?:\s+(?:an?|the|new|file|files|called|named))*\s+(\S+)",
    re.I,
)

Origin = Literal["item", "heading", "paragraph"]


@dataclass(frozen=True)
class Step:
    """One step of a plan, reduced to what normalization needs."""

    number: int
    title: str
    prose: str
    section: str
    commands: tuple[str, ...]
    paths: tuple[str, ...]
    ignored_blocks: tuple[str, ...]


@dataclass(frozen=True)
class ParsedPlan:
    """The steps of a plan and the deliverables it names."""

    steps: tuple[Step, ...]
    deliverables: tuple[str, ...]


@dataclass
class _Draft:
    origin: Origin
    section: str
    # Text lines and (language, body) fenced blocks, in order of appearance.
    parts: list[str | tuple[str, str]] = field(default_factory=list)


def clean_markdown(text: str) -> str:
    """Drop links' targets and emphasis markers, and collapse whitespace."""
    return " ".join(_EMPHASIS.sub("", _LINK.sub(r"\1", text)).split())


def _split_inline_numbering(line: str) -> list[str]:
    """'1. a  2. b' becomes ['1. a', '2. b']; text without a 1, 2, ... chain stays whole."""
    masked = _TICKS.sub(lambda m: "x" * len(m.group(0)), line)
    chain: list[re.Match[str]] = []
    for match in _INLINE_NUMBER.finditer(masked):
        number = int(match.group(1) or match.group(2))
        if chain and number == int(chain[-1].group(1) or chain[-1].group(2)) + 1:
            chain.append(match)
        elif not chain or len(chain) < 2:
            chain = [match]
    if len(chain) < 2:
        return [line]
    indent = line[: len(line) - len(line.lstrip())]
    starts = [m.start() for m in chain] + [len(line)]
    pieces = [line[: starts[0]].strip()] if line[: starts[0]].strip() else []
    pieces += [line[a:b].strip() for a, b in itertools.pairwise(starts)]
    return [indent + piece for piece in pieces]


def looks_like_command(span: str) -> bool:
    """Whether a backticked span reads as a shell command rather than a name or a path."""
    text = span.strip()
    if text.startswith("$ "):
        return True
    tokens = text.split()
    if not tokens or not re.match(r"^[\w./-]+$", tokens[0]):
        return False
    if tokens[0] in KNOWN_PROGRAMS or tokens[0].startswith("./"):
        return True
    return len(tokens) > 1 and any(t.startswith("-") for t in tokens[1:])


def as_path(token: str, *, prose: bool) -> str | None:
    """The token as a path reference, or None; unsafe paths are returned for the caller to drop."""
    token = token.strip("\"'()[]{}<>,;:!?")
    for marker in ("**", "__", "*", "_"):
        # Emphasis around a path ("**src/app.py**"), not a glob or a dunder name.
        if len(token) > 2 * len(marker) and token.startswith(marker) and token.endswith(marker):
            token = token[len(marker) : -len(marker)]
    token = token.rstrip(".") if not token.endswith("..") else token
    if not token or "://" in token or "@" in token or not _PATH_CHARS.match(token):
        return None
    last = token.rstrip("/").rsplit("/", 1)[-1]
    stem, _, ext = last.rpartition(".")
    framework = prose and ext.lower() == "js" and stem.lower() in _FRAMEWORKS
    named = last in BARE_FILES or (bool(stem) and ext.lower() in EXTENSIONS and not framework)
    if "/" not in token:
        return token if named or last.startswith(".env") else None
    if token.startswith(("/", "~", ".")) or token.endswith("/") or "*" in token:
        return token
    return token if named or not prose else None


def _fence_commands(language: str, body: str) -> list[str] | None:
    """The commands of a shell block, prompts stripped; None for other languages."""
    if language.lower() not in SHELL_LANGUAGES:
        return None
    lines = body.replace("\\\n", " ").splitlines()
    prompted = [line for line in lines if line.lstrip().startswith("$ ")]
    # With prompts present the other lines are output, not commands.
    chosen = [line.lstrip()[2:] for line in prompted] if prompted else lines
    return [" ".join(c.split()) for c in chosen if c.strip() and not c.lstrip().startswith("#")]


def _finish(draft: _Draft, number: int) -> Step:
    """Turn a draft into a step: commands in order of appearance, prose and path references."""
    commands: list[str] = []
    ignored: list[str] = []
    prose: list[str] = []
    paths: list[str] = []
    for part in draft.parts:
        if isinstance(part, tuple):
            found = _fence_commands(*part)
            commands += found or []
            ignored += [part[0]] if found is None else []
            continue
        for position, piece in enumerate(_split_ticks(part)):
            span = position % 2 == 1
            if span and looks_like_command(piece):
                commands.append(piece.strip().removeprefix("$ ").strip())
                continue
            prose.append(piece)
            tokens = [piece] if span else piece.split()
            paths += [p for t in tokens if (p := as_path(t, prose=not span)) is not None]
    first = next((p for p in draft.parts if isinstance(p, str)), "")
    return Step(
        number=number,
        title=clean_markdown(first) or (commands[0] if commands else ""),
        prose=clean_markdown(" ".join(prose)),
        section=draft.section,
        commands=tuple(commands),
        paths=tuple(dict.fromkeys(paths)),
        ignored_blocks=tuple(ignored),
    )


def _split_ticks(line: str) -> list[str]:
    """Alternating plain text and backticked span contents, starting with plain text."""
    return _TICKS.split(line)


def _deliverables_from(line: str) -> list[str]:
    """Paths a deliverables line names, or the cleaned line when it names none."""
    parts = _split_ticks(line)
    found = [p for t in parts[1::2] if (p := as_path(t, prose=False))]
    found += [p for t in parts[0::2] for w in t.split() if (p := as_path(w, prose=True))]
    return found or [clean_markdown(line)] * bool(clean_markdown(line))


class _Splitter:
    """Line-by-line state: the current draft, its list indent, and whether deliverables are open."""

    def __init__(self) -> None:
        self.drafts: list[_Draft] = []
        self.deliverables: list[str] = []
        self.current: _Draft | None = None
        self.section, self.indent = "", 0
        self.in_deliverables = self.label_mode = self.blank = False

    def open(self, origin: Origin, parts: list[str | tuple[str, str]]) -> _Draft:
        self.current = _Draft(origin, self.section, parts)
        self.drafts.append(self.current)
        return self.current

    def fence(self, language: str, body: list[str]) -> None:
        if not self.in_deliverables:
            draft = self.current or self.open("paragraph", [])
            draft.parts.append((language, "\n".join(body)))

    def heading_line(self, text: str) -> None:
        title = _STEP_PREFIX.sub("", clean_markdown(text.rstrip().rstrip("#")))
        self.in_deliverables, self.label_mode = bool(_LABEL.match(title)), False
        self.section, self.current = title, None
        if title and not self.in_deliverables:
            self.open("heading", [title])

    def text_line(self, piece: str) -> None:
        item = _ITEM.match(piece)
        indent = len(piece) - len(piece.lstrip())
        label = None if item or indent else _LABEL.match(piece)
        # A blank line or a numbered item ends the list under a "Deliverables:" label.
        label_ends = self.label_mode and (self.blank or bool(item and item.group(2) not in "-*+"))
        if label and not self.in_deliverables:
            self.in_deliverables, self.label_mode, self.current = True, True, None
            self.deliverables += _deliverables_from(label.group(2) or "")
        elif self.in_deliverables and not label_ends:
            self.deliverables += _deliverables_from(item.group(3) if item else piece)
        elif item and self.current and self.current.origin == "item" and indent > self.indent:
            self.current.parts.append(item.group(3))
        elif item:
            self.in_deliverables, self.indent = False, indent
            self.open("item", [_STEP_PREFIX.sub("", item.group(3))])
        elif self.current and (
            not self.blank
            or self.current.origin == "heading"
            or (self.current.origin == "item" and indent > self.indent)
        ):
            self.current.parts.append(piece.strip())
        else:
            self.in_deliverables = False
            self.open("paragraph", [piece.strip()])


def parse_plan(text: str) -> ParsedPlan:
    """Split text into steps: list items, headings with their text, or plain paragraphs."""
    state = _Splitter()
    raw = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4).split("\n")
    index = 0
    while index < len(raw):
        line, index = raw[index], index + 1
        fence, heading = _FENCE.match(line), _HEADING.match(line)
        if fence:
            body: list[str] = []
            while index < len(raw) and not raw[index].strip().startswith(fence.group(1)):
                body.append(raw[index])
                index += 1
            state.fence(fence.group(2), body)
            index += 1
        elif not line.strip() or _RULE.match(line):
            state.blank = True
            continue
        elif heading:
            state.heading_line(heading.group(2))
        else:
            for piece in _split_inline_numbering(line):
                state.text_line(piece)
        state.blank = False
    return _assemble(state.drafts, state.deliverables)


def _assemble(drafts: list[_Draft], deliverables: list[str]) -> ParsedPlan:
    """Keep the steps: list items when there are any (other text is context), else all drafts."""
    has_items = any(d.origin == "item" for d in drafts)
    steps: list[Step] = []
    for draft in drafts:
        step = _finish(draft, len(steps) + 1)
        for match in _DELIVERABLE.finditer(step.prose):
            if (path := as_path(match.group(1), prose=True)) is not None:
                deliverables.append(path)
        if step.commands or draft.origin == "item" or not has_items:
            steps.append(step)
    return ParsedPlan(tuple(steps), tuple(dict.fromkeys(deliverables)))
