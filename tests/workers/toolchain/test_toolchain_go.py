"""Tests for the Go adapter on go.mod fixture modules."""

from pathlib import Path

from workers.toolchain import inspect_go
from workers.toolchain.go import parse_go_mod

GO_MOD = """module github.com/example/ledger

go 1.22

toolchain go1.22.4

require (
\tgithub.com/google/uuid v1.6.0
\tgolang.org/x/sync v0.7.0 // indirect
)
"""
GO_SUM = "github.com/google/uuid v1.6.0 h1:NIvaJDMOsjHA8n1jAhLSgzrAzy1Hgr+hNrb57e+94F0=\n"


def test_inspect_go_module_proposes_go_commands(tmp_path: Path) -> None:
    (tmp_path / "go.mod").write_text(GO_MOD, encoding="utf-8")
    (tmp_path / "go.sum").write_text(GO_SUM, encoding="utf-8")
    (tmp_path / "main.go").write_text("package main\n\nfunc main() {}\n", encoding="utf-8")
    result = inspect_go(tmp_path, ".")
    assert result.detected
    assert result.package_manager == "go"
    assert result.install == ("go mod download",)
    assert result.build == ("go build ./...",)
    assert result.test == ("go test ./...",)
    assert result.confidence == 0.95
    assert "go.mod declares module github.com/example/ledger" in result.reasons
    assert "go.mod requires go 1.22" in result.reasons


def test_inspect_go_with_vendor_skips_download(tmp_path: Path) -> None:
    (tmp_path / "go.mod").write_text(GO_MOD, encoding="utf-8")
    (tmp_path / "vendor").mkdir()
    (tmp_path / "vendor" / "modules.txt").write_text("# github.com/google/uuid v1.6.0\n")
    result = inspect_go(tmp_path, ".")
    assert result.install == ()
    assert result.test == ("go test ./...",)


def test_inspect_go_mod_without_module_lowers_confidence(tmp_path: Path) -> None:
    (tmp_path / "go.mod").write_text("go 1.21\n\nrequire (\n", encoding="utf-8")
    result = inspect_go(tmp_path, ".")
    assert result.detected
    assert result.confidence == 0.4
    assert "go.mod could not be parsed: no module directive" in result.reasons


def test_inspect_directory_without_go_mod_not_detected(tmp_path: Path) -> None:
    (tmp_path / "main.go").write_text("package main\n", encoding="utf-8")
    assert not inspect_go(tmp_path, ".").detected


def test_parse_go_mod_reads_quoted_module_and_ignores_comments() -> None:
    gomod = parse_go_mod('// comment\nmodule "example.com/quoted" // trailing\ngo 1.21.0\n')
    assert gomod.module == "example.com/quoted"
    assert gomod.go_version == "1.21.0"
