"""Java adapter: Maven (pom.xml) and Gradle (build.gradle[.kts]) builds, wrapped or not."""

from __future__ import annotations

import os
from pathlib import Path

from workers.toolchain.base import (
    MALFORMED_CONFIDENCE,
    TOOLCHAIN_JAVA,
    ToolchainDetection,
    clamp_confidence,
    existing,
    not_detected,
    read_text,
)

MAVEN = "maven"
GRADLE = "gradle"
GRADLE_FILES: tuple[str, ...] = (
    "build.gradle",
    "build.gradle.kts",
    "settings.gradle",
    "settings.gradle.kts",
)


def _wrapper(directory: Path, name: str, fallback: str, reasons: list[str]) -> str:
    """Return how to invoke a build tool: its wrapper script when present, else the global tool."""
    path = directory / name
    if not path.is_file():
        return fallback
    if os.access(path, os.X_OK):
        reasons.append(f"{name} wrapper present")
        return f"./{name}"
    reasons.append(f"{name} wrapper present but not executable; running it with sh")
    return f"sh ./{name}"


def _maven(directory: Path, relative: str, reasons: list[str]) -> ToolchainDetection:
    """Return the detection for a Maven build in directory."""
    text = read_text(directory / "pom.xml")
    if text is None or "<project" not in text:
        confidence = MALFORMED_CONFIDENCE
        reasons.append("pom.xml could not be parsed: no <project> element")
    else:
        confidence = 0.85
        reasons.append("pom.xml present")
    mvn = _wrapper(directory, "mvnw", "mvn", reasons)
    if mvn != "mvn":
        confidence += 0.05
    return ToolchainDetection(
        toolchain=TOOLCHAIN_JAVA,
        directory=relative,
        detected=True,
        confidence=clamp_confidence(confidence),
        reasons=tuple(reasons),
        package_manager=MAVEN,
        install=(f"{mvn} -B -q dependency:go-offline",),
        build=(f"{mvn} -B -DskipTests package",),
        test=(f"{mvn} -B test",),
        smoke=(f"{mvn} -v",),
    )


def _gradle(
    directory: Path, relative: str, files: list[str], reasons: list[str]
) -> ToolchainDetection:
    """Return the detection for a Gradle build in directory."""
    reasons.append(f"{', '.join(files)} present")
    confidence = 0.85 if any(name.startswith("build.") for name in files) else 0.75
    gradle = _wrapper(directory, "gradlew", "gradle", reasons)
    if gradle != "gradle":
        confidence += 0.05
    return ToolchainDetection(
        toolchain=TOOLCHAIN_JAVA,
        directory=relative,
        detected=True,
        confidence=clamp_confidence(confidence),
        reasons=tuple(reasons),
        package_manager=GRADLE,
        install=(f"{gradle} dependencies",),
        build=(f"{gradle} assemble",),
        test=(f"{gradle} test",),
        smoke=(f"{gradle} --version",),
    )


def inspect_java(directory: Path, relative: str = ".") -> ToolchainDetection:
    """Detect a Maven or Gradle build in directory and propose the commands to run it."""
    has_pom = (directory / "pom.xml").is_file()
    gradle_files = existing(directory, GRADLE_FILES)
    if not has_pom and not gradle_files:
        return not_detected(TOOLCHAIN_JAVA, relative)
    reasons: list[str] = []
    use_gradle = bool(gradle_files) and (
        not has_pom or ((directory / "gradlew").is_file() and not (directory / "mvnw").is_file())
    )
    if has_pom and gradle_files:
        chosen = "Gradle (gradlew wrapper present)" if use_gradle else "Maven"
        reasons.append(f"both pom.xml and Gradle build files present; using {chosen}")
    if use_gradle:
        return _gradle(directory, relative, gradle_files, reasons)
    return _maven(directory, relative, reasons)
