"""Validation of the run spec: every error names its field path."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shared.runs.spec import RunCreate


def base(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"repo": "demo", "goal": "g", "phases": [{"id": "a", "run": "true"}]}
    spec.update(overrides)
    return spec


def error_locs(data: dict[str, Any]) -> list[tuple[Any, ...]]:
    with pytest.raises(ValidationError) as caught:
        RunCreate.model_validate(data)
    return [tuple(e["loc"]) for e in caught.value.errors()]


def test_validate_accepts_minimal_spec_with_defaults() -> None:
    spec = RunCreate.model_validate(base())
    assert spec.ref == "main"
    assert spec.phases[0].run == ["true"]
    assert spec.phases[0].max_attempts == 1


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        (base(phases=[]), ("phases",)),
        (base(bogus=1), ("bogus",)),
        (base(phases=[{"id": "a", "run": "x", "colour": "red"}]), ("phases", 0, "colour")),
        (base(phases=[{"id": "a", "run": "x", "cwd": "../out"}]), ("phases", 0, "cwd")),
        (base(phases=[{"id": "a", "run": "x", "cwd": "/etc"}]), ("phases", 0, "cwd")),
        (
            base(phases=[{"id": "a", "run": "x", "scope": ["src/**", "../**"]}]),
            ("phases", 0, "scope"),
        ),
        (
            base(phases=[{"id": "a", "run": "x", "env": {"BAD-NAME": "1"}}]),
            ("phases", 0, "env", "BAD-NAME", "[key]"),
        ),
        (base(ref="-upload-pack=evil"), ("ref",)),
        (base(ref="main..other"), ("ref",)),
        (base(repo="https://evil.example/x.git"), ("repo",)),
        (base(repo="../../etc"), ("repo",)),
        (base(run_id="has space"), ("run_id",)),
        (base(phases=[{"id": "a", "run": []}]), ("phases", 0, "run")),
        (base(phases=[{"id": "a", "run": "x", "timeout_s": 0}]), ("phases", 0, "timeout_s")),
    ],
)
def test_validate_rejects_bad_field_with_its_path(
    data: dict[str, Any], loc: tuple[Any, ...]
) -> None:
    assert loc in error_locs(data)


def test_validate_rejects_duplicate_phase_ids() -> None:
    with pytest.raises(ValidationError, match="duplicate phase id 'a'"):
        RunCreate.model_validate(base(phases=[{"id": "a", "run": "x"}, {"id": "a", "run": "y"}]))


def test_spec_hash_ignores_run_id_and_start_but_not_content() -> None:
    one = RunCreate.model_validate(base(run_id="r1"))
    same = RunCreate.model_validate(base(run_id="r2", start=False))
    other = RunCreate.model_validate(base(goal="different"))
    assert one.spec_hash() == same.spec_hash()
    assert one.spec_hash() != other.spec_hash()


def test_spec_hash_of_a_spec_without_later_fields_is_what_earlier_versions_stored() -> None:
    # Computed by the release before budgets.max_disk_mb existed: resubmitting after an upgrade
    # must find the same run (same hash), not answer 409.
    data = base(goal="hash stability", budgets={"max_duration_s": 60})
    spec = RunCreate.model_validate(data)
    assert spec.spec_hash() == "6f6ccf43f771f4586e8bc560f7c8c1067fbbb53b6c7c99b791f6c2c092dcc8b1"
    limited = RunCreate.model_validate(
        {**data, "budgets": {"max_duration_s": 60, "max_disk_mb": 5}}
    )
    assert limited.spec_hash() != spec.spec_hash()
