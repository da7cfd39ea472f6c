"""Toolchain detection: which build tools a repository uses and the commands to run them."""

from workers.toolchain.base import (
    TOOLCHAIN_GO,
    TOOLCHAIN_JAVA,
    TOOLCHAIN_NODE,
    TOOLCHAIN_PYTHON,
    TOOLCHAIN_RUST,
    Adapter,
    ToolchainDetection,
)
from workers.toolchain.detect import (
    ADAPTERS,
    SKIPPED_DIRECTORIES,
    detect,
    detect_primary,
    inspect_directory,
    is_skipped_directory,
)
from workers.toolchain.go import inspect_go
from workers.toolchain.java import inspect_java
from workers.toolchain.node import inspect_node
from workers.toolchain.python import inspect_python
from workers.toolchain.rust import inspect_rust

__all__ = [
    "ADAPTERS",
    "SKIPPED_DIRECTORIES",
    "TOOLCHAIN_GO",
    "TOOLCHAIN_JAVA",
    "TOOLCHAIN_NODE",
    "TOOLCHAIN_PYTHON",
    "TOOLCHAIN_RUST",
    "Adapter",
    "ToolchainDetection",
    "detect",
    "detect_primary",
    "inspect_directory",
    "inspect_go",
    "inspect_java",
    "inspect_node",
    "inspect_python",
    "inspect_rust",
    "is_skipped_directory",
]
