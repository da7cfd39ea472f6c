"""Local path requirements declare the distribution their directory builds."""

from __future__ import annotations

from pathlib import Path

from workers.hardening.patterns.common import requirements_names


def test_local_directory_requirement_declares_its_project_name(tmp_path: Path) -> None:
    (tmp_path / "vendor" / "greeting").mkdir(parents=True)
    (tmp_path / "vendor" / "greeting" / "pyproject.toml").write_text(
        '[project]\nname = "Greeting_Lib"\n'
    )
    (tmp_path / "libs" / "plain").mkdir(parents=True)
    (tmp_path / "requirements.txt").write_text(
        "./vendor/greeting\n-e ./libs/plain\nrequests>=2\nhttps://example.invalid/x.tar.gz\n"
    )
    assert requirements_names(tmp_path / "requirements.txt") == {
        "greeting-lib",
        "plain",
        "requests",
    }
