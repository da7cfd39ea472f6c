"""Tests for the Rust adapter on Cargo.toml fixture crates and workspaces."""

from pathlib import Path

from workers.toolchain import inspect_rust

CARGO_TOML = """[package]
name = "ledger-cli"
version = "0.4.1"
edition = "2021"

[dependencies]
serde = { version = "1", features = ["derive"] }
clap = "4.5"

[dev-dependencies]
assert_cmd = "2"
"""
WORKSPACE_TOML = """[workspace]
resolver = "2"
members = ["crates/*", "tools/xtask"]
"""


def test_inspect_cargo_package_proposes_cargo_commands(tmp_path: Path) -> None:
    (tmp_path / "Cargo.toml").write_text(CARGO_TOML, encoding="utf-8")
    (tmp_path / "Cargo.lock").write_text("version = 3\n", encoding="utf-8")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.rs").write_text("fn main() {}\n", encoding="utf-8")
    result = inspect_rust(tmp_path, ".")
    assert result.detected
    assert result.package_manager == "cargo"
    assert result.install == ("cargo fetch",)
    assert result.build == ("cargo build",)
    assert result.test == ("cargo test",)
    assert result.confidence == 0.95
    assert "Cargo.toml declares package 'ledger-cli'" in result.reasons


def test_inspect_cargo_workspace_is_detected(tmp_path: Path) -> None:
    (tmp_path / "Cargo.toml").write_text(WORKSPACE_TOML, encoding="utf-8")
    result = inspect_rust(tmp_path, ".")
    assert result.confidence == 0.9
    assert "Cargo.toml declares a workspace with 2 member pattern(s)" in result.reasons


def test_inspect_malformed_cargo_toml_lowers_confidence(tmp_path: Path) -> None:
    (tmp_path / "Cargo.toml").write_text('[package\nname = "x"\n', encoding="utf-8")
    (tmp_path / "Cargo.lock").write_text("version = 3\n", encoding="utf-8")
    result = inspect_rust(tmp_path, ".")
    assert result.detected
    assert result.confidence <= 0.5
    assert any(reason.startswith("Cargo.toml could not be parsed") for reason in result.reasons)


def test_inspect_directory_without_cargo_toml_not_detected(tmp_path: Path) -> None:
    assert not inspect_rust(tmp_path, ".").detected
