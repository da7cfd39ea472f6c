"""Tests for the Java adapter on Maven and Gradle fixture builds."""

import os
from pathlib import Path

import pytest

from workers.toolchain import inspect_java

POM_XML = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>com.example</groupId>
  <artifactId>orders</artifactId>
  <version>1.0.0-SNAPSHOT</version>
  <dependencies>
    <dependency>
      <groupId>org.junit.jupiter</groupId>
      <artifactId>junit-jupiter</artifactId>
      <version>5.10.2</version>
      <scope>test</scope>
    </dependency>
  </dependencies>
</project>
"""
BUILD_GRADLE_KTS = """plugins {
    java
    application
}

repositories { mavenCentral() }

dependencies {
    testImplementation("org.junit.jupiter:junit-jupiter:5.10.2")
}

tasks.test { useJUnitPlatform() }
"""
GRADLEW = '#!/bin/sh\nexec java -classpath "$APP_HOME/gradle/wrapper/gradle-wrapper.jar" "$@"\n'


def _wrapper(root: Path, name: str, executable: bool = True) -> None:
    path = root / name
    path.write_text(GRADLEW, encoding="utf-8")
    if executable:
        path.chmod(0o755)


def test_inspect_maven_project_proposes_mvn_commands(tmp_path: Path) -> None:
    (tmp_path / "pom.xml").write_text(POM_XML, encoding="utf-8")
    result = inspect_java(tmp_path, ".")
    assert result.detected
    assert result.package_manager == "maven"
    assert result.install == ("mvn -B -q dependency:go-offline",)
    assert result.test == ("mvn -B test",)
    assert result.build == ("mvn -B -DskipTests package",)


def test_inspect_maven_wrapper_is_preferred(tmp_path: Path) -> None:
    (tmp_path / "pom.xml").write_text(POM_XML, encoding="utf-8")
    _wrapper(tmp_path, "mvnw")
    result = inspect_java(tmp_path, ".")
    assert result.test == ("./mvnw -B test",)
    assert result.confidence == 0.9


def test_inspect_gradle_with_wrapper_uses_gradlew(tmp_path: Path) -> None:
    (tmp_path / "build.gradle.kts").write_text(BUILD_GRADLE_KTS, encoding="utf-8")
    (tmp_path / "settings.gradle.kts").write_text('rootProject.name = "orders"\n')
    _wrapper(tmp_path, "gradlew")
    result = inspect_java(tmp_path, ".")
    assert result.package_manager == "gradle"
    assert result.test == ("./gradlew test",)
    assert result.build == ("./gradlew assemble",)
    assert "gradlew wrapper present" in result.reasons


def test_inspect_gradle_without_wrapper_uses_gradle(tmp_path: Path) -> None:
    (tmp_path / "build.gradle").write_text("plugins { id 'java' }\n", encoding="utf-8")
    result = inspect_java(tmp_path, ".")
    assert result.package_manager == "gradle"
    assert result.test == ("gradle test",)
    assert result.install == ("gradle dependencies",)


def test_inspect_non_executable_gradlew_runs_with_sh(tmp_path: Path) -> None:
    (tmp_path / "build.gradle").write_text("plugins { id 'java' }\n", encoding="utf-8")
    _wrapper(tmp_path, "gradlew", executable=False)
    if os.access(tmp_path / "gradlew", os.X_OK):
        pytest.skip("filesystem reports every file as executable")
    result = inspect_java(tmp_path, ".")
    assert result.test == ("sh ./gradlew test",)


def test_inspect_pom_and_gradle_wrapper_prefers_gradle(tmp_path: Path) -> None:
    (tmp_path / "pom.xml").write_text(POM_XML, encoding="utf-8")
    (tmp_path / "build.gradle").write_text("plugins { id 'java' }\n", encoding="utf-8")
    _wrapper(tmp_path, "gradlew")
    result = inspect_java(tmp_path, ".")
    assert result.package_manager == "gradle"
    assert any(reason.startswith("both pom.xml and Gradle") for reason in result.reasons)


def test_inspect_pom_without_project_element_lowers_confidence(tmp_path: Path) -> None:
    (tmp_path / "pom.xml").write_text("this is not xml\n", encoding="utf-8")
    result = inspect_java(tmp_path, ".")
    assert result.detected
    assert result.confidence == 0.4


def test_inspect_directory_without_build_files_not_detected(tmp_path: Path) -> None:
    (tmp_path / "Main.java").write_text("class Main {}\n", encoding="utf-8")
    assert not inspect_java(tmp_path, ".").detected
