"""Node adapter: npm, yarn (classic and berry) and pnpm projects described by package.json."""

from __future__ import annotations

from pathlib import Path

from workers.toolchain.base import (
    MALFORMED_CONFIDENCE,
    TOOLCHAIN_NODE,
    ToolchainDetection,
    clamp_confidence,
    not_detected,
    read_json_object,
    table,
)

NPM = "npm"
YARN = "yarn"
PNPM = "pnpm"
MANAGERS: tuple[str, ...] = (NPM, YARN, PNPM)

LOCKFILES: tuple[tuple[str, str], ...] = (
    ("pnpm-lock.yaml", PNPM),
    ("yarn.lock", YARN),
    ("package-lock.json", NPM),
    ("npm-shrinkwrap.json", NPM),
)
# `npm init` writes this test script; it always fails, so it is not a real test command.
NPM_PLACEHOLDER_TEST = 'echo "Error: no test specified" && exit 1'


def parse_package_manager_field(value: str) -> tuple[str, str]:
    """Split a corepack `packageManager` value like "pnpm@9.1.0+sha256.ab" into (name, version)."""
    name, _, version = value.strip().partition("@")
    return name.strip().lower(), version.split("+", 1)[0].strip()


def is_placeholder_test(script: str) -> bool:
    """Whether a test script is npm's generated placeholder that only reports an error."""
    normalized = " ".join(script.replace('\\"', '"').split())
    return normalized == NPM_PLACEHOLDER_TEST or "no test specified" in normalized


def _major(version: str) -> int | None:
    """Return the major number of a semver string, or None when it does not start with one."""
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _choose_manager(
    directory: Path, data: dict[str, object], reasons: list[str]
) -> tuple[str, str | None, list[str]]:
    """Return (manager, declared version, lockfiles present), explaining the choice in reasons."""
    lockfiles = [name for name, _ in LOCKFILES if (directory / name).is_file()]
    lock_managers = [manager for name, manager in LOCKFILES if name in lockfiles]
    reasons.extend(f"{name} lockfile present" for name in lockfiles)
    declared = data.get("packageManager")
    if isinstance(declared, str) and declared.strip():
        name, version = parse_package_manager_field(declared)
        if name in MANAGERS:
            pinned = f"{name}@{version}" if version else name
            reasons.append(f"packageManager field in package.json pins {pinned}")
            conflicting = sorted(set(lock_managers) - {name})
            if conflicting:
                reasons.append(
                    f"lockfiles suggest {', '.join(conflicting)}; packageManager field wins"
                )
            return name, version or None, lockfiles
        reasons.append(f"packageManager {name!r} is not supported; ignored")
    if lock_managers:
        manager = lock_managers[0]
        others = sorted(set(lock_managers) - {manager})
        if others:
            reasons.append(f"conflicting lockfiles ({', '.join(others)}); using {manager}")
        return manager, None, lockfiles
    reasons.append("no lockfile or packageManager field; using npm")
    return NPM, None, lockfiles


def _install_command(
    manager: str, version: str | None, directory: Path, lockfiles: list[str]
) -> str:
    """Return the install command, reproducing the lockfile exactly when one exists."""
    if manager == NPM:
        locked = "package-lock.json" in lockfiles or "npm-shrinkwrap.json" in lockfiles
        return "npm ci" if locked else "npm install"
    if manager == YARN:
        if "yarn.lock" not in lockfiles:
            return "yarn install"
        major = _major(version) if version else None
        berry = (major is not None and major >= 2) or (directory / ".yarnrc.yml").is_file()
        return "yarn install --immutable" if berry else "yarn install --frozen-lockfile"
    return "pnpm install --frozen-lockfile" if "pnpm-lock.yaml" in lockfiles else "pnpm install"


def inspect_node(directory: Path, relative: str = ".") -> ToolchainDetection:
    """Detect a Node project in directory and propose the commands to set up and test it."""
    path = directory / "package.json"
    if not path.is_file():
        return not_detected(TOOLCHAIN_NODE, relative)
    parsed = read_json_object(path)
    reasons: list[str] = []
    if parsed.ok:
        confidence = 0.85
        name = parsed.data.get("name")
        label = f" for {name!r}" if isinstance(name, str) and name else ""
        reasons.append(f"package.json present{label}")
        if "workspaces" in parsed.data:
            reasons.append("package.json declares workspaces")
    else:
        confidence = MALFORMED_CONFIDENCE
        reasons.append(f"package.json could not be parsed: {parsed.error}")

    manager, version, lockfiles = _choose_manager(directory, parsed.data, reasons)
    if lockfiles:
        confidence += 0.1
    if isinstance(parsed.data.get("packageManager"), str):
        confidence += 0.05
    if not parsed.ok:
        confidence = min(confidence, MALFORMED_CONFIDENCE + 0.1)

    scripts = table(parsed.data, "scripts")
    test_script = scripts.get("test")
    build_script = scripts.get("build")
    test: tuple[str, ...] = ()
    if isinstance(test_script, str) and test_script.strip():
        if is_placeholder_test(test_script):
            reasons.append("scripts.test is the npm placeholder; no test command")
        else:
            test = (f"{manager} test",)
            reasons.append("scripts.test defined")
    else:
        reasons.append("no scripts.test; no test command")
    build: tuple[str, ...] = ()
    if isinstance(build_script, str) and build_script.strip():
        build = (f"{manager} run build",)
        reasons.append("scripts.build defined")

    return ToolchainDetection(
        toolchain=TOOLCHAIN_NODE,
        directory=relative,
        detected=True,
        confidence=clamp_confidence(confidence),
        reasons=tuple(reasons),
        package_manager=manager,
        install=(_install_command(manager, version, directory, lockfiles),),
        build=build,
        test=test,
        smoke=("node --version", f"{manager} --version"),
    )
