"""The built-in failure patterns, in the order the registry tries them."""

from __future__ import annotations

from workers.hardening.base import FailurePattern
from workers.hardening.patterns.git_lock import StaleGitIndexLock
from workers.hardening.patterns.network import TransientNetwork
from workers.hardening.patterns.node_deps import NodeMissingDependency
from workers.hardening.patterns.permissions import PermissionErrorPattern
from workers.hardening.patterns.python_deps import PythonMissingDependency
from workers.hardening.patterns.scope import ScopeMismatch
from workers.hardening.patterns.test_discovery import MissingTestDiscovery
from workers.hardening.patterns.working_dir import WrongWorkingDir

# Scope first (its revert must precede any retry); specific infrastructure causes before
# dependency installs, so an install failing on the network is retried instead of "fixed".
BUILTIN_PATTERNS: tuple[FailurePattern, ...] = tuple(
    sorted(
        (
            ScopeMismatch(),
            StaleGitIndexLock(),
            PermissionErrorPattern(),
            WrongWorkingDir(),
            TransientNetwork(),
            PythonMissingDependency(),
            NodeMissingDependency(),
            MissingTestDiscovery(),
        ),
        key=lambda pattern: pattern.priority,
    )
)

__all__ = [
    "BUILTIN_PATTERNS",
    "MissingTestDiscovery",
    "NodeMissingDependency",
    "PermissionErrorPattern",
    "PythonMissingDependency",
    "ScopeMismatch",
    "StaleGitIndexLock",
    "TransientNetwork",
    "WrongWorkingDir",
]
