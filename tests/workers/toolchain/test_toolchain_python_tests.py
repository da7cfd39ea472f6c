"""Tests for how the Python adapter chooses between pytest and unittest."""

from pathlib import Path
from textwrap import dedent

import pytest

from workers.toolchain import ToolchainDetection, inspect_python


def _inspect(root: Path, files: dict[str, str]) -> ToolchainDetection:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(content).lstrip(), encoding="utf-8")
    return inspect_python(root, ".")


SETUP_PY = "from setuptools import setup\nsetup()\n"


def test_inspect_without_pytest_signals_uses_unittest(tmp_path: Path) -> None:
    result = _inspect(
        tmp_path,
        {
            "setup.py": "from setuptools import setup\nsetup(name='legacy', version='1.0')\n",
            "legacy/__init__.py": "",
            "test_legacy.py": "import unittest\n\nclass T(unittest.TestCase):\n    pass\n",
        },
    )
    assert result.package_manager == "pip"
    assert result.install == ("python -m pip install -e .",)
    assert result.test == ("python -m unittest discover",)


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({"pytest.ini": "[pytest]\naddopts = -q\n"}, "pytest.ini present"),
        ({"conftest.py": "import pytest\n"}, "conftest.py present"),
        ({"tests/test_app.py": "def test_ok():\n    assert True\n"}, "tests/ directory present"),
        ({"tox.ini": "[tox]\nenvlist = py311\n\n[pytest]\nxfail_strict = true\n"}, None),
        ({"setup.cfg": "[metadata]\nname = x\n\n[tool:pytest]\naddopts = -ra\n"}, None),
    ],
)
def test_inspect_pytest_configuration_selects_pytest(
    tmp_path: Path, files: dict[str, str], reason: str | None
) -> None:
    result = _inspect(tmp_path, {"setup.py": SETUP_PY, **files})
    assert result.test == ("python -m pytest",)
    assert result.install[-1] == "python -m pip install pytest"
    if reason:
        assert reason in result.reasons


def test_inspect_pytest_declared_via_requirements_skips_extra_install(tmp_path: Path) -> None:
    result = _inspect(
        tmp_path,
        {
            "requirements.txt": "requests==2.32.3\n",
            "requirements-dev.txt": "pytest-cov==5.0.0\n",
        },
    )
    assert result.test == ("python -m pytest",)
    assert result.install == (
        "python -m pip install -r requirements.txt",
        "python -m pip install -r requirements-dev.txt",
    )


def test_inspect_uv_project_without_pytest_uses_unittest_in_env(tmp_path: Path) -> None:
    pyproject = """
        [project]
        name = "worker"
        version = "0.1.0"
        dependencies = ["uvicorn>=0.30"]
    """
    result = _inspect(tmp_path, {"pyproject.toml": pyproject, "uv.lock": "version = 1\n"})
    assert result.package_manager == "uv"
    assert result.test == ("uv run python -m unittest discover",)
    assert "pytest neither declared nor configured; using unittest" in result.reasons


def test_inspect_pytest_in_dependency_group_selects_pytest(tmp_path: Path) -> None:
    pyproject = """
        [project]
        name = "worker"
        version = "0.1.0"

        [dependency-groups]
        test = ["pytest>=8", {include-group = "lint"}]
        lint = ["ruff"]
    """
    result = _inspect(tmp_path, {"pyproject.toml": pyproject, "uv.lock": "version = 1\n"})
    assert result.test == ("uv run pytest",)
    assert "pytest declared as a dependency" in result.reasons
