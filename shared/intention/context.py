"""Render a run's goal and intention anchor into a bounded text block for LLM roles.

Layout (sections with nothing to show are omitted)::

    Goal:
    - <goal>

    Outcomes:
    - <outcome>
    - (+N more)

    Non-goals:
    - <non-goal>

    Constraints:
    - <constraint>

Budget policy. The whole text is at most ``max_chars`` characters and at most ``max_chars``
UTF-8 bytes (the byte bound is the binding one for non-ASCII text; prompt budgets and storage
columns track bytes more closely than code points). When it does not fit, whole items are
dropped from the end of the lowest-priority section first, in this order:

1. outcomes — they elaborate the goal, which is always kept, so losing some costs detail;
2. non-goals — scope limits; losing one invites wasted work, rarely damage;
3. constraints — hard rules ("no new dependencies", "do not change the public API");
   omitting one makes a role take actions that must be undone, so they go last.

Dropped items are counted in the section's "(+N more)" line; a section whose items are all
gone keeps only that line, and is removed last. The goal is never dropped; a goal too long to
fit is shortened with an ellipsis, to what the anchor leaves free but never below half the
budget, so a very long goal cannot crowd out the guard rails (room the cut frees later goes
back to the goal).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from shared.intention.text import normalize_whitespace

__all__ = [
    "ELLIPSIS",
    "ContextSource",
    "IntentionAnchor",
    "IntentionContext",
    "render_intention_context",
]

ELLIPSIS: Final = "…"
_ANCHOR_KEYS: Final = ("outcomes", "non_goals", "constraints")
_GOAL_HEADING: Final = "Goal:\n- "
_SECTION_SEPARATOR: Final = "\n\n"
# Smallest budget that still leaves room for the goal heading and a few characters of goal.
_MIN_MAX_CHARS: Final = 32

ContextSource = Literal["goal+anchor", "goal"]


def _as_str_items(name: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    # A bare string is a sequence too; refusing it avoids rendering one bullet per character.
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise TypeError(f"{name} must be a list of strings, got {type(value).__name__}")
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"{name} items must be strings, got {type(item).__name__}")
    return tuple(value)


def _canonical_items(items: Iterable[str]) -> tuple[str, ...]:
    # Whitespace-normalize, drop blanks and repeats (first occurrence wins) so equivalent
    # anchors render identically and duplicates do not waste the budget.
    seen: dict[str, None] = {}
    for item in items:
        text = normalize_whitespace(item)
        if text:
            seen.setdefault(text, None)
    return tuple(seen)


@dataclass(frozen=True, slots=True)
class IntentionAnchor:
    """What a run should achieve, avoid and respect, beyond its one-line goal."""

    outcomes: tuple[str, ...] = ()
    non_goals: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Canonicalize items so that equal intentions compare and render equal."""
        for name in _ANCHOR_KEYS:
            value: object = getattr(self, name)
            object.__setattr__(self, name, _canonical_items(_as_str_items(name, value)))

    @classmethod
    def from_mapping(cls, data: Mapping[str, object] | None) -> IntentionAnchor:
        """Build an anchor from a JSON-like mapping; None or missing keys mean no items.

        Unknown keys are ignored so newer clients can send fields this version does not know.
        Each known value must be null or a list of strings.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise TypeError(f"intention anchor must be a mapping, got {type(data).__name__}")
        return cls(
            outcomes=_as_str_items("outcomes", data.get("outcomes")),
            non_goals=_as_str_items("non_goals", data.get("non_goals")),
            constraints=_as_str_items("constraints", data.get("constraints")),
        )

    @property
    def is_empty(self) -> bool:
        """Whether the anchor has no items at all."""
        return not (self.outcomes or self.non_goals or self.constraints)


@dataclass(frozen=True, slots=True)
class IntentionContext:
    """The rendered intention text handed to an LLM role, with how it was produced."""

    text: str
    chars: int
    source: ContextSource
    truncated: bool


@dataclass(slots=True)
class _Section:
    """Mutable rendering state of one anchor section while the budget is enforced."""

    title: str
    items: tuple[str, ...]
    total: int
    kept: int
    shown: bool = True

    def render(self) -> str:
        """Return the section as a markdown heading and bullet list."""
        lines = [f"{self.title}:", *(f"- {item}" for item in self.items[: self.kept])]
        if self.total > self.kept:
            lines.append(f"- (+{self.total - self.kept} more)")
        return "\n".join(lines)

    def shrink(self) -> bool:
        """Drop the last kept item, or hide the section once none is left; False if hidden."""
        if self.kept > 0:
            self.kept -= 1
            return True
        if self.shown:
            self.shown = False
            return True
        return False


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def _truncate(text: str, *, max_chars: int, max_bytes: int) -> str:
    """Shorten *text* to both limits, ending in an ellipsis, preferring a word boundary."""
    if len(text) <= max_chars and _utf8_len(text) <= max_bytes:
        return text
    cut = text[: max(max_chars - len(ELLIPSIS), 0)]
    byte_budget = max(max_bytes - _utf8_len(ELLIPSIS), 0)
    if _utf8_len(cut) > byte_budget:
        # Cutting the encoding may split a multibyte character; "ignore" drops the fragment.
        cut = cut.encode("utf-8")[:byte_budget].decode("utf-8", errors="ignore")
    space = cut.rfind(" ")
    if space >= len(cut) // 2:
        cut = cut[:space]
    return cut.rstrip() + ELLIPSIS


def _join(goal: str, sections: Iterable[_Section]) -> str:
    blocks = [_GOAL_HEADING + goal, *(s.render() for s in sections if s.shown)]
    return _SECTION_SEPARATOR.join(blocks)


def render_intention_context(
    goal: str,
    anchor: IntentionAnchor | None,
    *,
    max_chars: int = 2048,
    max_items: int = 8,
    max_item_chars: int = 200,
) -> IntentionContext:
    """Render the goal and anchor as bounded markdown; the same input gives the same text."""
    if max_chars < _MIN_MAX_CHARS:
        raise ValueError(f"max_chars must be at least {_MIN_MAX_CHARS}, got {max_chars}")
    if max_items < 1:
        raise ValueError(f"max_items must be at least 1, got {max_items}")
    if max_item_chars < len(ELLIPSIS) + 1:
        raise ValueError(f"max_item_chars must be at least 2, got {max_item_chars}")
    goal_text = normalize_whitespace(goal)
    if not goal_text:
        raise ValueError("goal must not be blank")
    anchor = anchor or IntentionAnchor()

    truncated = False
    sections: list[_Section] = []
    for title, all_items in (
        ("Outcomes", anchor.outcomes),
        ("Non-goals", anchor.non_goals),
        ("Constraints", anchor.constraints),
    ):
        if not all_items:
            continue
        head = all_items[:max_items]
        items = tuple(_truncate(i, max_chars=max_item_chars, max_bytes=max_chars) for i in head)
        truncated |= len(all_items) > max_items or items != head
        sections.append(_Section(title, items, total=len(all_items), kept=len(items)))

    # The goal may use whatever the full anchor leaves free, but never less than half the
    # budget; anything it leaves is reclaimed by the anchor cut below.
    anchor_bytes = sum(_utf8_len(s.render() + _SECTION_SEPARATOR) for s in sections)
    goal_budget = max(max_chars // 2, max_chars - anchor_bytes) - _utf8_len(_GOAL_HEADING)
    shortened_goal = _truncate(goal_text, max_chars=goal_budget, max_bytes=goal_budget)
    truncated |= shortened_goal != goal_text

    # Display order is also cut order: outcomes first, constraints last (see module docstring).
    # With every section hidden the goal alone fits, by construction of goal_budget.
    text = _join(shortened_goal, sections)
    for section in sections:
        while _utf8_len(text) > max_chars and section.shrink():
            truncated = True
            text = _join(shortened_goal, sections)
    # Room freed by the cut (e.g. a whole section hidden) goes back to a shortened goal.
    free_budget = max_chars - _utf8_len(_join("", sections))
    if shortened_goal != goal_text and free_budget > goal_budget:
        shortened_goal = _truncate(goal_text, max_chars=free_budget, max_bytes=free_budget)
        text = _join(shortened_goal, sections)

    source: ContextSource = "goal+anchor" if any(s.shown for s in sections) else "goal"
    return IntentionContext(text=text, chars=len(text), source=source, truncated=truncated)
