"""python_missing_dep against real venvs: declared modules get installed offline, others never."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared.failures import FailureClass, classify_failure
from tests.fakes.wheels import build_wheel
from workers.hardening.base import FailureContext, HardeningPolicy
from workers.hardening.patterns.common import Declared, find_declaration
from workers.hardening.patterns.python_deps import (
    PythonMissingDependency,
    candidate_names,
    install_commands,
)
from workers.hardening.testing import (
    SubprocessShell,
    init_repo,
    make_context,
    phase_env,
    retry_phase,
)
from workers.toolchain.python_signals import requirement_name

PATTERN = PythonMissingDependency()
IMPORT = ".venv/bin/python -c 'import tinydep; print(\"value\", tinydep.VALUE)'"


@pytest.fixture(scope="module")
def template_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real venv per module; tests copy it, so installs never leak between tests."""
    venv = tmp_path_factory.mktemp("template") / "venv"
    # sys.executable is itself a venv interpreter; venv builds from its base Python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    return venv


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheels"), "tinydep", "1.0", "VALUE = 42\n")


def offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A phase environment where pip can only see local files."""
    return phase_env(tmp_path / "home", PIP_CONFIG_FILE="/dev/null", PIP_NO_INDEX="1", **extra)


def repo_with_venv(tmp_path: Path, template: Path, files: dict[str, str]) -> Path:
    repo = init_repo(tmp_path / "repo", files)
    shutil.copytree(template, repo / ".venv", symlinks=True)
    return repo


def installed(venv: Path) -> bool:
    return any((venv / "lib").glob("python3*/site-packages/tinydep"))


def mitigate_and_retry(ctx: FailureContext, tmp_path: Path) -> str:
    assert ctx.exit_code == 1 and ctx.failure.failure_class == FailureClass.DEPENDENCY
    assert PATTERN.detect(ctx)
    result = PATTERN.mitigate(ctx)
    assert result.changed, result.suggestions
    retry = retry_phase(ctx, result, tmp_path / "retry.log")
    assert retry.ok and "value 42" in retry.output
    return result.actions_taken[0]


def test_install_declared_requirement_when_venv_lacks_it(
    tmp_path: Path, template_venv: Path, wheel: Path
) -> None:
    files = {"requirements.txt": "wheels/tinydep-1.0-py3-none-any.whl\n"}
    repo = repo_with_venv(tmp_path, template_venv, files)
    (repo / "wheels").mkdir()
    shutil.copy(wheel, repo / "wheels")
    ctx = make_context(
        IMPORT, worktree=repo, env=offline_env(tmp_path), log_path=tmp_path / "a.log"
    )

    action = mitigate_and_retry(ctx, tmp_path)

    assert "declared in requirements.txt" in action and "-m pip install" in action
    log = (tmp_path / "a.log").read_text()
    assert f"[autopack] mitigation $ {repo}/.venv/bin/python -m pip install" in log


def test_install_through_include_when_phase_runs_in_subdirectory(
    tmp_path: Path, template_venv: Path, wheel: Path
) -> None:
    files = {
        "requirements.txt": "-r requirements/base.txt\n",
        "requirements/base.txt": "# pinned\nwheels/tinydep-1.0-py3-none-any.whl  # local\n",
        "app/check.py": "import tinydep\nprint('value', tinydep.VALUE)\n",
    }
    repo = repo_with_venv(tmp_path, template_venv, files)
    (repo / "wheels").mkdir()
    shutil.copy(wheel, repo / "wheels")
    ctx = make_context(
        "../.venv/bin/python check.py", worktree=repo, cwd=repo / "app", env=offline_env(tmp_path)
    )

    action = mitigate_and_retry(ctx, tmp_path)

    assert "declared in requirements.txt" in action


def test_install_pyproject_dependencies_into_virtual_env_of_phase(
    tmp_path: Path, template_venv: Path, wheel: Path
) -> None:
    pyproject = (
        f'[project]\nname = "app"\nversion = "0.1"\ndependencies = ["tinydep @ {wheel.as_uri()}"]\n'
    )
    repo = repo_with_venv(tmp_path, template_venv, {"pyproject.toml": pyproject})
    venv = repo / ".venv"
    env = offline_env(tmp_path, VIRTUAL_ENV=str(venv))
    env["PATH"] = f"{venv}/bin:{env['PATH']}"
    ctx = make_context(
        "python -c 'import tinydep; print(\"value\", tinydep.VALUE)'", worktree=repo, env=env
    )

    action = mitigate_and_retry(ctx, tmp_path)

    assert "declared in pyproject.toml" in action and installed(venv)


def test_install_packaged_project_falls_back_to_declared_requirements(
    tmp_path: Path, template_venv: Path, wheel: Path
) -> None:
    pyproject = (
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "app"\nversion = "0.1"\n'
        f'[project.optional-dependencies]\ntest = ["tinydep @ {wheel.as_uri()}"]\n'
        "[tool.setuptools]\npy-modules = []\n"
    )
    repo = repo_with_venv(tmp_path, template_venv, {"pyproject.toml": pyproject})
    ctx = make_context(
        IMPORT, worktree=repo, env=offline_env(tmp_path), log_path=tmp_path / "a.log"
    )

    action = mitigate_and_retry(ctx, tmp_path)

    assert "-m pip install --disable-pip-version-check --no-input -e '.[test]'" in (
        (tmp_path / "a.log").read_text()
    )
    # offline, the build backend may be missing: then the declared requirements go in directly
    assert "-e '.[test]'" in action or f"'tinydep @ {wheel.as_uri()}'" in action


def test_suggest_only_when_module_is_not_declared(
    tmp_path: Path, template_venv: Path, wheel: Path
) -> None:
    repo = repo_with_venv(tmp_path, template_venv, {"requirements.txt": "requests>=2\n"})
    env = offline_env(tmp_path, PIP_FIND_LINKS=str(wheel.parent))
    ctx = make_context(IMPORT, worktree=repo, env=env, log_path=tmp_path / "a.log")

    assert PATTERN.detect(ctx)
    result = PATTERN.mitigate(ctx)

    assert not result.changed and result.retry is None
    assert (
        "module 'tinydep' is not declared by the project (supply-chain safety)"
        in (result.suggestions[0])
    )
    assert not installed(repo / ".venv")
    assert "[autopack] mitigation" not in (tmp_path / "a.log").read_text()


def test_install_undeclared_module_when_policy_allows(
    tmp_path: Path, template_venv: Path, wheel: Path
) -> None:
    repo = repo_with_venv(tmp_path, template_venv, {"README.md": "no manifests\n"})
    env = offline_env(tmp_path, PIP_FIND_LINKS=str(wheel.parent))
    policy = HardeningPolicy(allow_undeclared_installs=True)
    ctx = make_context(IMPORT, worktree=repo, env=env, policy=policy)

    action = mitigate_and_retry(ctx, tmp_path)

    assert "not declared; installing tinydep as the policy allows" in action


def test_report_install_error_when_declared_install_fails(
    tmp_path: Path, template_venv: Path
) -> None:
    files = {"requirements.txt": "wheels/tinydep-1.0-py3-none-any.whl\n"}  # the wheel is absent
    repo = repo_with_venv(tmp_path, template_venv, files)
    ctx = make_context(IMPORT, worktree=repo, env=offline_env(tmp_path))

    result = PATTERN.mitigate(ctx)

    assert not result.changed
    assert (
        "failed:" in result.suggestions[0]
        and "tinydep-1.0-py3-none-any.whl" in (result.suggestions[0])
    )


def test_detect_nothing_when_output_has_no_import_error(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"a.txt": "x\n"})
    ctx = make_context("echo 'plain failure' >&2; exit 3", worktree=repo, env=phase_env(tmp_path))

    assert not PATTERN.detect(ctx)


@pytest.mark.parametrize(
    ("module", "declared"),
    [
        ("yaml", "PyYAML>=6"),
        ("PIL.Image", "pillow"),
        ("sklearn.linear_model", "scikit-learn==1.5"),
        ("google.protobuf", "protobuf<6"),
        ("dateutil", "python_dateutil"),
        ("my_pkg", "My.Pkg"),
    ],
)
def test_match_declaration_when_import_name_differs(module: str, declared: str) -> None:
    assert requirement_name(declared) in candidate_names(module)


def test_find_declaration_when_poetry_group_or_setup_cfg_declares(tmp_path: Path) -> None:
    poetry = tmp_path / "poetry"
    poetry.mkdir()
    (poetry / "pyproject.toml").write_text(
        '[tool.poetry]\nname = "p"\n[tool.poetry.dependencies]\npython = "^3.11"\n'
        '[tool.poetry.group.test.dependencies]\nPyYAML = "^6"\n'
    )
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "setup.cfg").write_text(
        "[metadata]\nname = legacy\n[options]\ninstall_requires =\n    attrs>=23\n    requests\n"
    )

    found = find_declaration(context_at(poetry), candidate_names("yaml"))
    assert found is not None and (found.extra, found.group) == ("test", True)
    assert install_commands(found, "python3", None) == ["poetry install --with test"]
    found = find_declaration(context_at(legacy), candidate_names("attr"))
    assert found is not None and found.source == "setup.cfg" and found.packaged
    assert find_declaration(context_at(legacy), candidate_names("numpy")) is None


def test_choose_uv_commands_when_project_is_locked_by_uv(tmp_path: Path) -> None:
    (tmp_path / "uv.lock").write_text("version = 1\n")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "u"\ndependencies = ["attrs"]\n')
    venv = tmp_path / ".venv"

    assert install_commands(Declared(tmp_path, "pyproject.toml"), "py", venv) == [
        f"UV_PROJECT_ENVIRONMENT={venv} uv sync"
    ]
    assert install_commands(Declared(tmp_path, "requirements.txt"), "py", venv) == [
        "uv pip install --python py -r requirements.txt"
    ]


def context_at(directory: Path) -> FailureContext:
    """A context whose phase ran in directory; declaration lookups read only cwd and worktree."""

    return FailureContext(
        run_id="r",
        phase_id="p",
        attempt=1,
        worktree=directory,
        cwd=directory,
        commands=("true",),
        exit_code=1,
        signal=None,
        timed_out=False,
        output="",
        failure=classify_failure(exit_code=1, timed_out=False, signal=None, output_tail=""),
        scope=(),
        outside_scope=(),
        env={},
        shell=SubprocessShell({}, directory, directory / "log"),
    )
