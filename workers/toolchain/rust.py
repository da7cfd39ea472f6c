"""Rust adapter: cargo packages and workspaces described by Cargo.toml."""

from __future__ import annotations

from pathlib import Path

from workers.toolchain.base import (
    MALFORMED_CONFIDENCE,
    TOOLCHAIN_RUST,
    ToolchainDetection,
    clamp_confidence,
    not_detected,
    read_toml,
    string_list,
    table,
)


def inspect_rust(directory: Path, relative: str = ".") -> ToolchainDetection:
    """Detect a cargo package or workspace in directory and propose its commands."""
    path = directory / "Cargo.toml"
    if not path.is_file():
        return not_detected(TOOLCHAIN_RUST, relative)
    reasons: list[str] = []
    parsed = read_toml(path)
    if not parsed.ok:
        confidence = MALFORMED_CONFIDENCE
        reasons.append(f"Cargo.toml could not be parsed: {parsed.error}")
    else:
        package = table(parsed.data, "package")
        workspace = table(parsed.data, "workspace")
        confidence = 0.9 if package or workspace else 0.6
        name = package.get("name")
        if isinstance(name, str):
            reasons.append(f"Cargo.toml declares package {name!r}")
        elif package:
            reasons.append("Cargo.toml declares a package")
        if workspace:
            members = string_list(workspace.get("members"))
            reasons.append(f"Cargo.toml declares a workspace with {len(members)} member pattern(s)")
        if not package and not workspace:
            reasons.append("Cargo.toml has neither [package] nor [workspace]")
    if (directory / "Cargo.lock").is_file():
        confidence += 0.05
        reasons.append("Cargo.lock present")
    for toolchain_file in ("rust-toolchain.toml", "rust-toolchain"):
        if (directory / toolchain_file).is_file():
            reasons.append(f"{toolchain_file} pins the toolchain")
    if not parsed.ok:
        confidence = min(confidence, MALFORMED_CONFIDENCE + 0.1)
    return ToolchainDetection(
        toolchain=TOOLCHAIN_RUST,
        directory=relative,
        detected=True,
        confidence=clamp_confidence(confidence),
        reasons=tuple(reasons),
        package_manager="cargo",
        install=("cargo fetch",),
        build=("cargo build",),
        test=("cargo test",),
        smoke=("cargo --version",),
    )
