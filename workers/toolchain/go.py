"""Go adapter: modules described by go.mod."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workers.toolchain.base import (
    MALFORMED_CONFIDENCE,
    TOOLCHAIN_GO,
    ToolchainDetection,
    clamp_confidence,
    not_detected,
    read_text,
)


@dataclass(frozen=True, slots=True)
class GoMod:
    """The directives of a go.mod that matter for detection."""

    module: str | None
    go_version: str | None


def parse_go_mod(text: str) -> GoMod:
    """Read the module path and go version directives from go.mod text."""
    module: str | None = None
    go_version: str | None = None
    for raw in text.splitlines():
        line = raw.split("//", 1)[0].strip()
        keyword, _, rest = line.partition(" ")
        value = rest.strip().strip('"')
        if keyword == "module" and value:
            module = value
        elif keyword == "go" and value:
            go_version = value
    return GoMod(module=module, go_version=go_version)


def inspect_go(directory: Path, relative: str = ".") -> ToolchainDetection:
    """Detect a Go module in directory and propose the commands to set up and test it."""
    path = directory / "go.mod"
    if not path.is_file():
        return not_detected(TOOLCHAIN_GO, relative)
    reasons: list[str] = []
    text = read_text(path)
    gomod = parse_go_mod(text) if text is not None else GoMod(None, None)
    if text is None:
        confidence = MALFORMED_CONFIDENCE
        reasons.append("go.mod could not be read as UTF-8 text")
    elif gomod.module is None:
        confidence = MALFORMED_CONFIDENCE
        reasons.append("go.mod could not be parsed: no module directive")
    else:
        confidence = 0.9
        reasons.append(f"go.mod declares module {gomod.module}")
    if gomod.go_version:
        reasons.append(f"go.mod requires go {gomod.go_version}")
    if (directory / "go.sum").is_file():
        confidence += 0.05
        reasons.append("go.sum present")
    if (directory / "go.work").is_file():
        reasons.append("go.work workspace file present")

    install: tuple[str, ...] = ("go mod download",)
    if (directory / "vendor" / "modules.txt").is_file():
        install = ()
        reasons.append("vendor/modules.txt present; builds use vendored modules")
    return ToolchainDetection(
        toolchain=TOOLCHAIN_GO,
        directory=relative,
        detected=True,
        confidence=clamp_confidence(confidence),
        reasons=tuple(reasons),
        package_manager="go",
        install=install,
        build=("go build ./...",),
        test=("go test ./...",),
        smoke=("go version",),
    )
