"""Tests for rendering the bounded intention context handed to LLM roles."""

from __future__ import annotations

import random

import pytest

from shared.intention.context import (
    ELLIPSIS,
    IntentionAnchor,
    IntentionContext,
    render_intention_context,
)

FULL_ANCHOR = IntentionAnchor(
    outcomes=("All tests green on 3.12", "No deprecation warnings"),
    non_goals=("Rewrite the docs",),
    constraints=("No new dependencies", "Keep the public API"),
)


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def _assert_within(result: IntentionContext, max_chars: int) -> None:
    assert result.chars == len(result.text)
    assert len(result.text) <= max_chars
    assert _utf8_len(result.text) <= max_chars


def test_render_goal_only_without_anchor() -> None:
    result = render_intention_context("Make the test suite pass", None)
    assert result == IntentionContext(
        text="Goal:\n- Make the test suite pass",
        chars=len("Goal:\n- Make the test suite pass"),
        source="goal",
        truncated=False,
    )


def test_render_full_anchor_in_section_order() -> None:
    result = render_intention_context("Make the test suite pass", FULL_ANCHOR)
    assert result.text == (
        "Goal:\n- Make the test suite pass\n\n"
        "Outcomes:\n- All tests green on 3.12\n- No deprecation warnings\n\n"
        "Non-goals:\n- Rewrite the docs\n\n"
        "Constraints:\n- No new dependencies\n- Keep the public API"
    )
    assert result.source == "goal+anchor"
    assert not result.truncated


def test_render_empty_sections_omitted() -> None:
    anchor = IntentionAnchor.from_mapping({"outcomes": [], "non_goals": None, "constraints": ["x"]})
    result = render_intention_context("Goal", anchor)
    assert result.text == "Goal:\n- Goal\n\nConstraints:\n- x"


def test_render_empty_anchor_reports_goal_source() -> None:
    result = render_intention_context("Goal", IntentionAnchor.from_mapping({}))
    assert result.source == "goal"
    assert result.text == "Goal:\n- Goal"


def test_render_whitespace_normalized() -> None:
    anchor = IntentionAnchor(outcomes=("  two\n\tlines  ", "", "   "))
    result = render_intention_context("  spaced \r\n goal ", anchor)
    assert result.text == "Goal:\n- spaced goal\n\nOutcomes:\n- two lines"


def test_render_is_deterministic() -> None:
    first = render_intention_context("Goal", FULL_ANCHOR, max_chars=80)
    again = render_intention_context("Goal", FULL_ANCHOR, max_chars=80)
    assert first == again


def test_anchor_equal_after_canonicalization() -> None:
    a = IntentionAnchor.from_mapping({"outcomes": ["a  b", "c", "a b"]})
    b = IntentionAnchor(outcomes=("a b", "c"))
    assert a == b
    assert hash(a) == hash(b)


def test_render_too_many_items_adds_more_line() -> None:
    anchor = IntentionAnchor(outcomes=tuple(f"outcome {i}" for i in range(11)))
    result = render_intention_context("Goal", anchor, max_items=3)
    assert result.text == (
        "Goal:\n- Goal\n\nOutcomes:\n- outcome 0\n- outcome 1\n- outcome 2\n- (+8 more)"
    )
    assert result.truncated


def test_render_long_item_cut_with_ellipsis() -> None:
    anchor = IntentionAnchor(constraints=("word " * 100,))
    result = render_intention_context("Goal", anchor, max_item_chars=40)
    item = result.text.split("\n- ")[-1]
    assert item.endswith(ELLIPSIS)
    assert len(item) <= 40
    assert result.truncated


def test_render_cuts_outcomes_before_non_goals_before_constraints() -> None:
    anchor = IntentionAnchor(
        outcomes=tuple(f"outcome number {i}" for i in range(5)),
        non_goals=tuple(f"non-goal number {i}" for i in range(5)),
        constraints=tuple(f"constraint number {i}" for i in range(5)),
    )
    full = render_intention_context("Goal", anchor).text
    budget = len(full) - 40
    result = render_intention_context("Goal", anchor, max_chars=budget)
    _assert_within(result, budget)
    assert all(f"constraint number {i}" in result.text for i in range(5))
    assert all(f"non-goal number {i}" in result.text for i in range(5))
    assert "outcome number 4" not in result.text
    assert "- (+" in result.text.split("Non-goals:")[0]
    assert result.truncated


def test_render_tight_budget_keeps_constraints_last() -> None:
    anchor = IntentionAnchor(
        outcomes=("ship the feature",),
        non_goals=("touch billing",),
        constraints=("no new dependencies",),
    )
    result = render_intention_context("Goal", anchor, max_chars=60)
    assert result.text == "Goal:\n- Goal\n\nConstraints:\n- no new dependencies"
    assert result.truncated


def test_render_long_goal_leaves_room_for_constraints() -> None:
    goal = "refactor everything " * 200
    anchor = IntentionAnchor(constraints=("Keep the public API",))
    result = render_intention_context(goal, anchor, max_chars=400)
    _assert_within(result, 400)
    assert result.text.endswith("Constraints:\n- Keep the public API")
    assert ELLIPSIS in result.text
    assert result.truncated


def test_render_long_goal_without_anchor_uses_whole_budget() -> None:
    result = render_intention_context("x" * 5000, None, max_chars=100)
    # The 3-byte ellipsis makes the byte bound the binding one: 100 bytes, 98 characters.
    assert _utf8_len(result.text) == 100
    assert result.text.endswith(ELLIPSIS)
    assert result.source == "goal"


def test_render_budget_too_small_for_anchor_drops_it() -> None:
    result = render_intention_context(
        "Goal", IntentionAnchor(constraints=("c" * 80,)), max_chars=32
    )
    assert result.text == "Goal:\n- Goal"
    assert result.source == "goal"
    assert result.truncated


@pytest.mark.parametrize("max_chars", [32, 64, 200, 512, 2048])
def test_render_multibyte_text_within_char_and_byte_budget(max_chars: int) -> None:
    anchor = IntentionAnchor(
        outcomes=tuple(f"成果 {i}: テストが全て通る ✅" * 5 for i in range(10)),
        non_goals=("ドキュメントを書き直さない 📝" * 10,),
        constraints=("新しい依存関係を追加しない 🚫" * 3, "公開 API を維持する"),
    )
    result = render_intention_context(
        "目標: テストスイートを通す 🎯 " * 40, anchor, max_chars=max_chars
    )
    _assert_within(result, max_chars)
    assert result.text.startswith("Goal:\n- 目標")
    # Every character survived intact: the byte cut never splits a code point.
    assert "\ufffd" not in result.text
    assert result.truncated


def test_render_random_inputs_always_within_budget() -> None:
    rng = random.Random(1234)
    alphabet = "abc xyz éü 日本 😀\t\n"
    for _ in range(300):
        max_chars = rng.randint(32, 600)

        def item(rng: random.Random = rng) -> str:
            return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))

        anchor = IntentionAnchor(
            outcomes=tuple(item() for _ in range(rng.randint(0, 12))),
            non_goals=tuple(item() for _ in range(rng.randint(0, 12))),
            constraints=tuple(item() for _ in range(rng.randint(0, 12))),
        )
        goal = "g " + item()
        result = render_intention_context(
            goal,
            anchor,
            max_chars=max_chars,
            max_items=rng.randint(1, 10),
            max_item_chars=rng.randint(2, 250),
        )
        _assert_within(result, max_chars)
        assert result.text.startswith("Goal:\n- ")


def test_from_mapping_none_gives_empty_anchor() -> None:
    assert IntentionAnchor.from_mapping(None).is_empty


def test_from_mapping_ignores_unknown_keys() -> None:
    anchor = IntentionAnchor.from_mapping({"outcomes": ["a"], "priority": "high"})
    assert anchor == IntentionAnchor(outcomes=("a",))


@pytest.mark.parametrize(
    "data",
    [
        {"outcomes": "a single string"},
        {"constraints": [1, 2]},
        {"non_goals": {"a": 1}},
    ],
)
def test_from_mapping_wrong_types_raise(data: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        IntentionAnchor.from_mapping(data)


def test_from_mapping_non_mapping_raises() -> None:
    with pytest.raises(TypeError, match="mapping"):
        IntentionAnchor.from_mapping(["outcomes"])  # type: ignore[arg-type]


def test_render_blank_goal_raises() -> None:
    with pytest.raises(ValueError, match="goal"):
        render_intention_context(" \n ", FULL_ANCHOR)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_chars": 31}, "max_chars"),
        ({"max_items": 0}, "max_items"),
        ({"max_item_chars": 1}, "max_item_chars"),
    ],
)
def test_render_invalid_limits_raise(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_intention_context("Goal", None, **kwargs)
