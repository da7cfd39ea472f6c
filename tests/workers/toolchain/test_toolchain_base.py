"""Tests for the detection result type and the manifest-reading helpers."""

import dataclasses
import json
from pathlib import Path

import pytest

from workers.toolchain import ToolchainDetection
from workers.toolchain.base import clamp_confidence, read_json_object, read_toml, table


def _detection(**overrides: object) -> ToolchainDetection:
    values: dict[str, object] = {
        "toolchain": "python",
        "directory": ".",
        "detected": True,
        "confidence": 0.9,
        "reasons": ("pyproject.toml declares a Python project",),
        "package_manager": "uv",
        "install": ("uv sync",),
        "build": ("uv build",),
        "test": ("uv run pytest",),
        "smoke": ("uv --version",),
    }
    values.update(overrides)
    return ToolchainDetection(**values)  # type: ignore[arg-type]


def test_to_dict_roundtrips_through_json() -> None:
    detection = _detection()
    data = json.loads(json.dumps(detection.to_dict()))
    assert data == {
        "toolchain": "python",
        "directory": ".",
        "detected": True,
        "confidence": 0.9,
        "reasons": ["pyproject.toml declares a Python project"],
        "package_manager": "uv",
        "install": ["uv sync"],
        "build": ["uv build"],
        "test": ["uv run pytest"],
        "smoke": ["uv --version"],
    }


def test_assign_field_when_frozen_raises() -> None:
    detection = _detection()
    with pytest.raises(dataclasses.FrozenInstanceError):
        detection.confidence = 0.1  # type: ignore[misc]


@pytest.mark.parametrize("confidence", [-0.01, 1.01])
def test_create_detection_with_out_of_range_confidence_raises(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        _detection(confidence=confidence)


def test_clamp_confidence_limits_and_rounds() -> None:
    assert clamp_confidence(1.2) == 1.0
    assert clamp_confidence(-3) == 0.0
    assert clamp_confidence(0.8 + 0.15 + 0.05) == 1.0
    assert clamp_confidence(0.333333) == 0.33


def test_read_toml_with_syntax_error_reports_one_line(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text('[project\nname = "x"\n', encoding="utf-8")
    parsed = read_toml(path)
    assert not parsed.ok
    assert parsed.error
    assert "\n" not in parsed.error
    assert parsed.data == {}


def test_read_toml_with_invalid_utf8_reports_error(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_bytes(b'[project]\nname = "\xff\xfe"\n')
    assert not read_toml(path).ok


def test_read_json_object_with_array_top_level_reports_error(tmp_path: Path) -> None:
    path = tmp_path / "package.json"
    path.write_text('["not", "an", "object"]', encoding="utf-8")
    parsed = read_json_object(path)
    assert parsed.error == "top level is a JSON list, not an object"


def test_read_json_object_with_missing_file_reports_error(tmp_path: Path) -> None:
    assert not read_json_object(tmp_path / "package.json").ok


def test_table_with_non_table_level_returns_empty() -> None:
    data: dict[str, object] = {"tool": {"poetry": "not a table"}, "project": {"name": "x"}}
    assert table(data, "tool", "poetry") == {}
    assert table(data, "tool", "poetry", "dependencies") == {}
    assert table(data, "project") == {"name": "x"}
