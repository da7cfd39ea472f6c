"""Tests for the Python adapter across pip, uv, poetry, pdm and hatch fixture projects."""

from pathlib import Path
from textwrap import dedent

from workers.toolchain import ToolchainDetection, inspect_python


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(content).lstrip(), encoding="utf-8")
    return root


def _inspect(root: Path, files: dict[str, str]) -> ToolchainDetection:
    return inspect_python(_write(root, files), ".")


SETUPTOOLS_PYPROJECT = """
    [build-system]
    requires = ["setuptools>=69", "wheel"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "billing"
    version = "1.4.0"
    requires-python = ">=3.11"
    dependencies = ["fastapi>=0.110", "uvicorn[standard]>=0.29", "sqlalchemy>=2"]

    [project.optional-dependencies]
    dev = ["pytest>=8", "ruff"]

    [tool.pytest.ini_options]
    testpaths = ["tests"]
"""

UV_PYPROJECT = """
    [project]
    name = "ingest"
    version = "0.3.0"
    requires-python = ">=3.12"
    dependencies = ["httpx>=0.27", "pydantic>=2"]

    [dependency-groups]
    dev = ["pytest>=8.2", "mypy"]

    [build-system]
    requires = ["hatchling"]
    build-backend = "hatchling.build"
"""

UV_LOCK = """
    version = 1
    requires-python = ">=3.12"

    [[package]]
    name = "httpx"
    version = "0.27.0"
    source = { registry = "https://pypi.org/simple" }
"""

POETRY_PYPROJECT = """
    [tool.poetry]
    name = "reports"
    version = "2.0.1"
    description = "Nightly report generation"
    authors = ["Data Team <data@example.com>"]

    [tool.poetry.dependencies]
    python = "^3.11"
    pandas = "^2.2"

    [tool.poetry.group.dev.dependencies]
    pytest = "^8.0"

    [build-system]
    requires = ["poetry-core>=1.0.0"]
    build-backend = "poetry.core.masonry.api"
"""

PDM_PYPROJECT = """
    [project]
    name = "scheduler"
    version = "0.1.0"
    dependencies = ["croniter>=2"]
    requires-python = ">=3.11"

    [build-system]
    requires = ["pdm-backend"]
    build-backend = "pdm.backend"

    [tool.pdm.dev-dependencies]
    test = ["pytest>=8"]
"""

HATCH_PYPROJECT = """
    [build-system]
    requires = ["hatchling"]
    build-backend = "hatchling.build"

    [project]
    name = "geo"
    dynamic = ["version"]
    dependencies = ["shapely>=2"]

    [tool.hatch.version]
    path = "src/geo/__about__.py"

    [tool.hatch.envs.default]
    dependencies = ["pytest", "coverage[toml]"]
"""


def test_inspect_requirements_only_uses_pip_into_active_env(tmp_path: Path) -> None:
    result = _inspect(
        tmp_path,
        {
            "requirements.txt": """
                # web stack
                flask==3.0.3
                gunicorn>=22  # production server
                -r requirements-extra.txt
                pytest==8.2.0
            """,
            "app.py": "from flask import Flask\napp = Flask(__name__)\n",
        },
    )
    assert result.detected
    assert result.package_manager == "pip"
    assert result.install == ("python -m pip install -r requirements.txt",)
    assert result.build == ()
    assert result.test == ("python -m pytest",)
    assert result.confidence < 0.8


def test_inspect_setuptools_pyproject_installs_editable_with_dev_extra(tmp_path: Path) -> None:
    result = _inspect(tmp_path, {"pyproject.toml": SETUPTOOLS_PYPROJECT})
    assert result.package_manager == "pip"
    assert result.install == ('python -m pip install -e ".[dev]"',)
    assert result.build == ("python -m pip wheel --no-deps --wheel-dir dist .",)
    assert result.test == ("python -m pytest",)
    assert "[tool.pytest.ini_options] table in pyproject.toml" in result.reasons
    assert result.confidence >= 0.8


def test_inspect_uvicorn_dependency_does_not_imply_uv(tmp_path: Path) -> None:
    result = _inspect(
        tmp_path,
        {
            "pyproject.toml": """
                [build-system]
                requires = ["setuptools>=69"]
                build-backend = "setuptools.build_meta"

                [project]
                name = "api"
                version = "0.1.0"
                dependencies = ["uvicorn[standard]>=0.30", "uvloop>=0.19", "fastapi"]
            """,
            "requirements.txt": "uvicorn==0.30.1\nuvloop==0.19.0\n",
        },
    )
    assert result.package_manager == "pip"
    assert not any(command.startswith("uv ") for command in result.install + result.test)
    assert not any("uv.lock" in reason or "[tool.uv]" in reason for reason in result.reasons)


def test_inspect_uv_lock_selects_uv_sync(tmp_path: Path) -> None:
    result = _inspect(tmp_path, {"pyproject.toml": UV_PYPROJECT, "uv.lock": UV_LOCK})
    assert result.package_manager == "uv"
    assert result.install == ("uv sync",)
    assert result.build == ("uv build",)
    assert result.test == ("uv run pytest",)
    assert "uv.lock lockfile present" in result.reasons
    assert result.confidence >= 0.95


def test_inspect_tool_uv_table_without_lock_selects_uv(tmp_path: Path) -> None:
    pyproject = """
        [project]
        name = "cli-tool"
        version = "0.1.0"
        dependencies = []

        [tool.uv]
        dev-dependencies = ["pytest>=8"]
        package = false
    """
    result = _inspect(tmp_path, {"pyproject.toml": pyproject})
    assert result.package_manager == "uv"
    assert "[tool.uv] table in pyproject.toml" in result.reasons
    assert result.build == ()
    assert result.test == ("uv run pytest",)


def test_inspect_poetry_project_uses_poetry_commands(tmp_path: Path) -> None:
    result = _inspect(
        tmp_path,
        {"pyproject.toml": POETRY_PYPROJECT, "poetry.lock": "# generated by poetry\n"},
    )
    assert result.package_manager == "poetry"
    assert result.install == ("poetry install",)
    assert result.build == ("poetry build",)
    assert result.test == ("poetry run pytest",)
    assert "pytest declared as a dependency" in result.reasons


def test_inspect_poetry_table_without_lock_selects_poetry(tmp_path: Path) -> None:
    result = _inspect(tmp_path, {"pyproject.toml": POETRY_PYPROJECT})
    assert result.package_manager == "poetry"
    assert "[tool.poetry] table in pyproject.toml" in result.reasons
    assert result.confidence < 0.95


def test_inspect_pdm_project_uses_pdm_commands(tmp_path: Path) -> None:
    result = _inspect(tmp_path, {"pyproject.toml": PDM_PYPROJECT, "pdm.lock": "# pdm lock\n"})
    assert result.package_manager == "pdm"
    assert result.install == ("pdm install",)
    assert result.build == ("pdm build",)
    assert result.test == ("pdm run pytest",)


def test_inspect_hatch_project_uses_hatch_commands(tmp_path: Path) -> None:
    result = _inspect(
        tmp_path,
        {"pyproject.toml": HATCH_PYPROJECT, "src/geo/__about__.py": '__version__ = "1.0"\n'},
    )
    assert result.package_manager == "hatch"
    assert result.install == ("hatch env create",)
    assert result.build == ("hatch build",)
    assert result.test == ("hatch test",)


def test_inspect_hatchling_backend_only_selects_hatch(tmp_path: Path) -> None:
    pyproject = """
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"

        [project]
        name = "tiny"
        version = "0.0.1"
    """
    result = _inspect(tmp_path, {"pyproject.toml": pyproject})
    assert result.package_manager == "hatch"
    assert "build-backend 'hatchling.build' in pyproject.toml" in result.reasons
    assert result.test == ("hatch run python -m unittest discover",)


def test_inspect_lockfile_outranks_backend_signal(tmp_path: Path) -> None:
    result = _inspect(tmp_path, {"pyproject.toml": UV_PYPROJECT, "uv.lock": UV_LOCK})
    assert result.package_manager == "uv"
    assert "conflicting package manager signals (hatch); using uv" in result.reasons


def test_inspect_malformed_pyproject_lowers_confidence(tmp_path: Path) -> None:
    result = _inspect(
        tmp_path,
        {"pyproject.toml": '[project]\nname = "broken\ndependencies = [\n', "uv.lock": UV_LOCK},
    )
    assert result.detected
    assert result.confidence <= 0.5
    assert result.package_manager == "uv"
    assert any(reason.startswith("pyproject.toml could not be parsed") for reason in result.reasons)


def test_inspect_tool_config_only_pyproject_is_low_confidence(tmp_path: Path) -> None:
    result = _inspect(tmp_path, {"pyproject.toml": "[tool.black]\nline-length = 100\n"})
    assert result.detected
    assert result.confidence == 0.5
    assert result.install == ()
    assert result.build == ()


def test_inspect_directory_without_python_manifests_not_detected(tmp_path: Path) -> None:
    result = _inspect(tmp_path, {"script.py": "print('hi')\n", "README.md": "# hi\n"})
    assert not result.detected
    assert result.confidence == 0.0
    assert result.toolchain == "python"
