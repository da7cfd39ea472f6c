"""Phase scopes: globs of the paths a phase may change, matched like gitignore-style paths."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache


@lru_cache(maxsize=512)
def glob_to_regex(glob: str) -> re.Pattern[str]:
    """`**` spans directories, `*` and `?` stay within one; a trailing `/` means everything below."""
    if glob.endswith("/"):
        glob += "**"
    out, i = [], 0
    while i < len(glob):
        char = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        out.append({"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char)))
        i += 1
    return re.compile("".join(out) + r"\Z")


def in_scope(path: str, scope: Sequence[str]) -> bool:
    """Whether path matches a glob of scope; an empty scope allows everything."""
    if not scope:
        return True
    normalized = path.lstrip("./") if path.startswith("./") else path
    return any(glob_to_regex(glob).match(normalized) for glob in scope)


def outside_scope(paths: Iterable[str], scope: Sequence[str]) -> list[str]:
    """The paths scope does not allow, sorted."""
    return sorted(p for p in paths if not in_scope(p, scope))
