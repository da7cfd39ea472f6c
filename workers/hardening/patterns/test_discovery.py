"""missing_test_discovery: the test runner found no tests; name the project's tests explicitly."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Final

from workers.hardening.base import FailureContext, MitigationResult, RetryOverrides
from workers.hardening.patterns.common import (
    BasePattern,
    failing_command,
    output_lines,
    relative,
    split_words,
    walk_directories,
)

_NO_TESTS: Final = (
    re.compile(r"collected 0 items(?! /)"),  # "collected 0 items / 1 error" is a collection error
    re.compile(r"\bno tests ran\b", re.IGNORECASE),
    re.compile(r"^Ran 0 tests\b"),
    re.compile(r"^No tests found\b"),
    re.compile(r"\bno test files\b"),
)
# Real test failures mean the runner did find tests somewhere.
_FAILURES: Final = re.compile(r"\b[1-9]\d* (?:failed|errors?)\b|^--- FAIL|^FAIL\b")
# A command's arguments up to a separator or redirection (`2>&1` included).
_SEGMENT = r"(?P<args>(?:[^;&|)<>\s]|[ \t](?!\d*[<>]))*)"
_END = r"(?![\w.-])"
RUNNERS: Final = (
    (
        "unittest",
        re.compile(r"(?P<runner>(?:\S*/)?python[\d.]*\s+-m\s+unittest)" + _END + _SEGMENT),
    ),
    ("pytest", re.compile(r"(?P<runner>(?:\S*/)?python[\d.]*\s+-m\s+pytest)" + _END + _SEGMENT)),
    (
        "pytest",
        re.compile(r"(?<![\w./-])(?P<runner>(?:\S*/)?(?:py\.test|pytest))" + _END + _SEGMENT),
    ),
    ("go", re.compile(r"(?<![\w./-])(?P<runner>go\s+test)" + _END + _SEGMENT)),
    ("jest", re.compile(r"(?<![\w./-])(?P<runner>(?:npx\s+)?jest)" + _END + _SEGMENT)),
)
_PYTHON_TEST = re.compile(r"^(?:test_.*|.*_test)\.py$")
_TEST_FILES: Final = {
    "unittest": _PYTHON_TEST,
    "pytest": _PYTHON_TEST,
    "go": re.compile(r"_test\.go$"),
    "jest": re.compile(r"\.(?:test|spec)\.[cm]?[jt]sx?$"),
}
_OPTIONS_WITH_VALUE: Final = frozenset({"-k", "-m", "-p", "-c", "-o", "-n", "-W", "--rootdir"})
PYTEST_CONFIGS: Final = ("pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini")
TEST_DIRS: Final = frozenset({"tests", "test"})
_NOT_TESTS: Final = frozenset({"__init__.py", "conftest.py"})
MAX_FILE_TARGETS = 50  # beyond this many files, name their directories to keep the command short


def find_test_files(root: Path, kind: str) -> list[Path]:
    """Test files of a runner under root (Python: also any module of a tests/ dir), vendored ones skipped."""
    pattern = _TEST_FILES[kind]
    python = kind in ("pytest", "unittest")
    found: list[Path] = []
    for directory in walk_directories(root):
        in_tests_dir = python and bool(TEST_DIRS & set(directory.relative_to(root).parts))
        try:
            found.extend(
                p
                for p in directory.iterdir()
                if p.is_file()
                and (
                    pattern.search(p.name)
                    or (in_tests_dir and p.suffix == ".py" and p.name not in _NOT_TESTS)
                )
            )
        except OSError:
            continue
    return sorted(found)


def targets_for(cwd: Path, files: list[Path], kind: str) -> list[str]:
    """What to name on the command line: `tests`/`test` directories, else the files themselves."""
    if kind == "pytest" and len(files) <= MAX_FILE_TARGETS and _custom_python_files(cwd):
        return [relative(cwd, f) for f in files]  # directories would be filtered by python_files
    targets: set[str] = set()
    for file in files:
        parts = Path(relative(cwd, file)).parts
        tests_dir = next((i for i, part in enumerate(parts[:-1]) if part in TEST_DIRS), None)
        if tests_dir is not None:
            targets.add("/".join(parts[: tests_dir + 1]))
        elif kind == "unittest":  # discovery starts from directories only
            targets.add("/".join(parts[:-1]) or ".")
        else:
            targets.add("/".join(parts))
    return sorted(targets)


def _custom_python_files(cwd: Path) -> bool:
    """Whether pytest's configuration in cwd changes python_files (then only file arguments help)."""
    for name in PYTEST_CONFIGS:
        try:
            if "python_files" in (cwd / name).read_text(encoding="utf-8", errors="replace"):
                return True
        except OSError:
            continue
    return False


def _has_positional(words: list[str]) -> bool:
    """Whether the runner's arguments already name tests (a word that is neither option nor value)."""
    return any(
        not word.startswith("-") and (i == 0 or words[i - 1] not in _OPTIONS_WITH_VALUE)
        for i, word in enumerate(words)
    )


def _unittest_runs(runner: str, words: list[str], cwd: Path, targets: list[str]) -> str | None:
    """`discover -s <dir>` per target, keeping options; None when the command names tests."""
    options = words[1:] if words[:1] == ["discover"] else words
    if _has_positional(options) or {"-s", "--start-directory"} & set(options):
        return None
    runs = []
    for target in targets:
        directory = cwd / target
        top = " -t ." if target != "." and (directory / "__init__.py").is_file() else ""
        # unittest's default pattern is test*.py; *_test.py files need their own
        default = any(p.name.startswith("test") for p in directory.glob("*.py"))
        pattern = "" if default else " -p '*_test.py'"
        extra = "".join(f" {shlex.quote(o)}" for o in options)
        runs.append(f"{runner} discover -s {shlex.quote(target)}{top}{pattern}{extra}")
    return runs[0] if len(runs) == 1 else "( " + " && ".join(runs) + " )"


def rewrite(command: str, kind: str, cwd: Path, targets: list[str]) -> str | None:
    """The test command naming targets explicitly; None when it already names what to run."""
    match = next((m for k, p in RUNNERS if k == kind and (m := p.search(command))), None)
    if match is None:
        return None
    runner, args = match.group("runner"), match.group("args")
    words = split_words(args)
    quoted = " ".join(shlex.quote(t) for t in targets)
    replacement: str | None
    if kind == "unittest":
        replacement = _unittest_runs(runner, words, cwd, targets)
    elif _has_positional(words):
        replacement = None
    elif kind == "go":
        replacement = f"{runner}{args.rstrip()} ./..."
    elif kind == "jest":
        roots = " ".join(f"--roots {shlex.quote(t)}" for t in targets)
        replacement = f"{runner}{args.rstrip()} {roots}"
    else:
        replacement = f"{runner}{args.rstrip()} {quoted}"
    if replacement is None:
        return None
    trailing = args[len(args.rstrip()) :]  # keep the spacing before `&&` and friends
    return command[: match.start()] + replacement + trailing + command[match.end() :]


class MissingTestDiscovery(BasePattern):
    """Rewrites a test command that discovered nothing so that it names the project's tests."""

    pattern_id = "missing_test_discovery"
    name = "Test runner found no tests"
    priority = 80

    def _detect(self, ctx: FailureContext) -> bool:
        lines = output_lines(ctx)
        if any(_FAILURES.search(line) for line in lines):
            return False
        return any(p.search(line) for line in lines for p in _NO_TESTS)

    def _mitigate(self, ctx: FailureContext) -> MitigationResult:
        failing = failing_command(ctx)
        kind = next((k for k, p in RUNNERS if p.search(failing)), None)
        if kind is None:
            return MitigationResult(suggestions=["name the test files or directories explicitly"])
        files = find_test_files(ctx.cwd, kind)
        if not files:
            elsewhere = find_test_files(ctx.worktree, kind)
            if not elsewhere:
                return MitigationResult(give_up_reason="the project has no tests")
            where = sorted({relative(ctx.worktree, f.parent) for f in elsewhere})[:5]
            return MitigationResult(
                suggestions=[f"tests exist outside the phase's directory: {', '.join(where)}"]
            )
        targets = targets_for(ctx.cwd, files, kind)
        rewritten = rewrite(failing, kind, ctx.cwd, targets)
        if rewritten is None or rewritten == failing:
            return MitigationResult(
                suggestions=[
                    f"the command names its tests already; tests are in {', '.join(targets)}"
                ]
            )
        commands = tuple(rewritten if c == failing else c for c in ctx.commands)
        return MitigationResult(
            actions_taken=[f"rewrote `{failing}` to `{rewritten}`"],
            changed=True,
            retry=RetryOverrides(commands=commands),
        )
