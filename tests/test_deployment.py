"""The compose file and Dockerfile, checked structurally (no Docker engine runs on the build machines)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from cli.main import app
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
AUTOPACK_SERVICES = [
    name for name, svc in SERVICES.items() if svc.get("image") == "autopack:latest"
]


def autopack_commands() -> Any:
    """The real command tree of `autopack` (Typer's own click objects)."""
    return typer.main.get_command(app)


def settings_env_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        names.add(f"AUTOPACK_{name.upper()}")
        alias = field.validation_alias
        if alias is not None:
            names.update(str(choice) for choice in getattr(alias, "choices", [alias]))
    return names


def test_autopack_services_run_real_subcommands_with_valid_options() -> None:
    assert set(AUTOPACK_SERVICES) == {"migrate", "api", "worker", "flower"}
    group = autopack_commands()
    for name in AUTOPACK_SERVICES:
        argv = SERVICES[name]["command"]
        command = group.commands.get(argv[0])
        assert command is not None, f"{name}: autopack has no subcommand {argv[0]!r}"
        if getattr(command, "commands", None):
            argv = argv[1:]
            command = command.commands.get(argv[0])
            assert command is not None, f"{name}: no subcommand {argv[0]!r}"
        # Parsing the arguments with the real command proves the options exist (nothing runs).
        command.make_context(argv[0], list(argv[1:]), resilient_parsing=False)


def test_dockerfile_entrypoint_is_autopack_and_image_has_git() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["autopack"]' in dockerfile
    assert re.search(r"apt-get install .*\bgit\b", dockerfile)
    for package in ("api", "workers", "shared", "cli", "migrations"):
        assert f"COPY {package} ./{package}" in dockerfile


@pytest.mark.parametrize(
    ("service", "probe"),
    [
        ("postgres", "pg_isready"),
        ("redis", "redis-cli"),
        ("api", "/readyz"),
        ("worker", "inspect ping"),
        ("flower", "/healthcheck"),
    ],
)
def test_every_long_running_service_has_its_healthcheck(service: str, probe: str) -> None:
    assert probe in " ".join(SERVICES[service]["healthcheck"]["test"])


def test_environment_names_are_settings_and_secrets_are_required() -> None:
    known = settings_env_names()
    for name in AUTOPACK_SERVICES:
        for variable in SERVICES[name]["environment"]:
            assert variable in known, f"{name}: {variable} is not a setting"
    raw = (ROOT / "docker-compose.yml").read_text()
    for secret in ("POSTGRES_PASSWORD", "AUTOPACK_API_KEY", "FLOWER_BASIC_AUTH"):
        assert re.search(rf"\$\{{{secret}:\?[^}}]+\}}", raw), (
            f"{secret} must be required with ${{{secret}:?…}}"
        )


def test_order_and_volumes() -> None:
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        assert (
            SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        )
    assert {"pgdata", "worker-data"} <= set(COMPOSE["volumes"])
    assert "worker-data:/data" in SERVICES["worker"]["volumes"]
