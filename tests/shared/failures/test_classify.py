"""Tests for failure classification, using both realistic and really produced outputs."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal as signal_module
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shared.failures import (
    FailureClass,
    FailureInfo,
    classify_failure,
    compute_signature,
    normalize_error_message,
)


def _classify(
    output: str,
    *,
    exit_code: int | None = 1,
    timed_out: bool = False,
    signal: int | None = None,
    scope_violations: tuple[str, ...] = (),
) -> FailureInfo:
    """Classify with the defaults of an ordinary non-zero exit."""
    return classify_failure(
        exit_code=exit_code,
        timed_out=timed_out,
        signal=signal,
        output_tail=output,
        scope_violations=scope_violations,
    )


def _run(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run a command and return its exit code and combined stdout/stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["GIT_CEILING_DIRECTORIES"] = str(cwd.parent)
    completed = subprocess.run(
        args,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        check=False,
    )
    return completed.returncode, completed.stdout


def _classify_run(args: list[str], cwd: Path) -> FailureInfo:
    """Run a command that must fail and classify what it really printed."""
    code, output = _run(args, cwd)
    assert code != 0, output
    return _classify(output, exit_code=code)


# --- realistic outputs, one or more per class ------------------------------------------

_PYTEST_FAILURE = """\
============================= test session starts ==============================
platform linux -- Python 3.11.7, pytest-8.3.2, pluggy-1.5.0
rootdir: /tmp/pytest-of-root/pytest-12/test_run0/repo
collected 3 items

tests/test_calc.py ..F                                                   [100%]

=================================== FAILURES ===================================
_________________________________ test_divide __________________________________

    def test_divide():
>       assert divide(1, 2) == 0.4
E       assert 0.5 == 0.4
E        +  where 0.5 = divide(1, 2)

tests/test_calc.py:12: AssertionError
=========================== short test summary info ============================
FAILED tests/test_calc.py::test_divide - assert 0.5 == 0.4
========================= 1 failed, 2 passed in 0.04s ==========================
"""

_JEST_FAILURE = """\
 FAIL  src/sum.test.js
  ● sum \u203a adds 1 + 2 to equal 3

    expect(received).toBe(expected) // Object.is equality

    Expected: 3
    Received: 4

      at Object.toBe (src/sum.test.js:4:17)

Tests:       1 failed, 1 passed, 2 total
Snapshots:   0 total
Time:        0.512 s
"""

_GO_FAILURE = """\
=== RUN   TestAdd
    calc_test.go:9: Add(1, 2) = 4; want 3
--- FAIL: TestAdd (0.00s)
FAIL
FAIL\texample.com/calc\t0.003s
"""

_CARGO_FAILURE = """\
running 2 tests
test tests::it_works ... ok
test tests::it_fails ... FAILED

failures:

---- tests::it_fails stdout ----
thread 'tests::it_fails' panicked at src/lib.rs:10:9:
assertion `left == right` failed
  left: 4
 right: 5

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s
"""

_NPM_MISSING_MODULE = """\
node:internal/modules/cjs/loader:1210
  throw err;
  ^

Error: Cannot find module 'express'
Require stack:
- /srv/app/server.js
    at Module._resolveFilename (node:internal/modules/cjs/loader:1207:15)
    at Object.<anonymous> (/srv/app/server.js:1:17) {
  code: 'MODULE_NOT_FOUND',
  requireStack: [ '/srv/app/server.js' ]
}

Node.js v20.11.0
"""

_PIP_NETWORK = """\
WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) \
after connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection \
object at 0x7f1c2a3b4c50>: Failed to establish a new connection: [Errno -3] Temporary failure \
in name resolution')': /simple/requests/
ERROR: Could not find a version that satisfies the requirement requests (from versions: none)
ERROR: No matching distribution found for requests
"""


@pytest.mark.parametrize(
    ("output", "exit_code", "expected_class", "expected_line"),
    [
        (
            "Traceback (most recent call last):\n"
            '  File "/srv/app/main.py", line 1, in <module>\n'
            "    import numpy\n"
            "ModuleNotFoundError: No module named 'numpy'\n",
            1,
            FailureClass.DEPENDENCY,
            "ModuleNotFoundError: No module named 'numpy'",
        ),
        (_NPM_MISSING_MODULE, 1, FailureClass.DEPENDENCY, "Error: Cannot find module 'express'"),
        (
            "ERROR: Could not find a version that satisfies the requirement fastapi==99.0 "
            "(from versions: 0.110.0, 0.111.0)\nERROR: No matching distribution found for "
            "fastapi==99.0\n",
            1,
            FailureClass.DEPENDENCY,
            "ERROR: No matching distribution found for fastapi==99.0",
        ),
        (
            "npm ERR! code E404\nnpm ERR! 404 Not Found - GET https://registry.npmjs.org/lodashx\n",
            1,
            FailureClass.DEPENDENCY,
            "npm ERR! code E404",
        ),
        (
            "./node_modules/.bin/tsc: error while loading shared libraries: libfoo.so.1: "
            "cannot open shared object file: No such file or directory\n",
            127,
            FailureClass.DEPENDENCY,
            None,
        ),
        (
            "bash: line 1: poetry: command not found\n",
            127,
            FailureClass.ENVIRONMENT,
            "bash: line 1: poetry: command not found",
        ),
        ("/bin/sh: 1: make: not found\n", 127, FailureClass.ENVIRONMENT, None),
        (
            "bash: ./scripts/build.sh: Permission denied\n",
            126,
            FailureClass.ENVIRONMENT,
            "bash: ./scripts/build.sh: Permission denied",
        ),
        (
            "python3: can't open file '/srv/repo/manage.py': [Errno 2] No such file or directory\n",
            2,
            FailureClass.ENVIRONMENT,
            None,
        ),
        (
            "Traceback (most recent call last):\n"
            '  File "/srv/app/settings.py", line 4, in <module>\n'
            '    DATABASE_URL = os.environ["DATABASE_URL"]\n'
            '  File "<frozen os>", line 679, in __getitem__\n'
            "KeyError: 'DATABASE_URL'\n",
            1,
            FailureClass.ENVIRONMENT,
            "KeyError: 'DATABASE_URL'",
        ),
        ("Error: environment variable API_TOKEN is not set\n", 1, FailureClass.ENVIRONMENT, None),
        ("deploy.sh: line 3: REGION: unbound variable\n", 1, FailureClass.ENVIRONMENT, None),
        (
            "fatal: not a git repository (or any of the parent directories): .git\n",
            128,
            FailureClass.ENVIRONMENT,
            None,
        ),
        ("ERROR: file or directory not found: tests/unit\n", 4, FailureClass.ENVIRONMENT, None),
        (
            "fatal: unable to access 'https://github.com/org/repo.git/': "
            "Could not resolve host: github.com\n",
            128,
            FailureClass.INFRASTRUCTURE,
            None,
        ),
        (
            "psycopg.OperationalError: connection failed: connection to server at "
            '"127.0.0.1", port 5432 failed: Connection refused\n',
            1,
            FailureClass.INFRASTRUCTURE,
            None,
        ),
        (
            "ConnectionResetError: [Errno 104] Connection reset by peer\n",
            1,
            FailureClass.INFRASTRUCTURE,
            None,
        ),
        (
            "npm ERR! code ECONNRESET\nnpm ERR! errno ECONNRESET\n",
            1,
            FailureClass.INFRASTRUCTURE,
            None,
        ),
        ("npm ERR! code ETIMEDOUT\n", 1, FailureClass.INFRASTRUCTURE, None),
        (
            "fatal: Unable to create '/srv/repo/.git/index.lock': File exists.\n\n"
            "Another git process seems to be running in this repository\n",
            128,
            FailureClass.INFRASTRUCTURE,
            "fatal: Unable to create '/srv/repo/.git/index.lock': File exists.",
        ),
        (
            "OSError: [Errno 28] No space left on device: '/tmp/build/out.bin'\n",
            1,
            FailureClass.INFRASTRUCTURE,
            None,
        ),
        (
            "FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory\n",
            134,
            FailureClass.INFRASTRUCTURE,
            None,
        ),
        (_PIP_NETWORK, 1, FailureClass.INFRASTRUCTURE, None),
        (
            _PYTEST_FAILURE,
            1,
            FailureClass.TEST,
            "FAILED tests/test_calc.py::test_divide - assert 0.5 == 0.4",
        ),
        (_JEST_FAILURE, 1, FailureClass.TEST, "● sum \u203a adds 1 + 2 to equal 3"),
        (_GO_FAILURE, 1, FailureClass.TEST, "--- FAIL: TestAdd (0.00s)"),
        (_CARGO_FAILURE, 101, FailureClass.TEST, "test tests::it_fails ... FAILED"),
        (
            "Traceback (most recent call last):\n"
            '  File "/srv/app/check.py", line 3, in <module>\n'
            "    assert total == 3\n"
            "AssertionError\n",
            1,
            FailureClass.TEST,
            "AssertionError",
        ),
        (
            'error: could not compile `app` (bin "app") due to 1 previous error\n',
            101,
            FailureClass.UNKNOWN,
            None,
        ),
        ("something went sideways\n", 3, FailureClass.UNKNOWN, "something went sideways"),
    ],
)
def test_classify_failure_recognises_realistic_output(
    output: str,
    exit_code: int,
    expected_class: FailureClass,
    expected_line: str | None,
) -> None:
    info = _classify(output, exit_code=exit_code)
    assert info.failure_class is expected_class, info
    if expected_line is not None:
        assert info.message == expected_line


# --- rule ordering ---------------------------------------------------------------------


def test_classify_failure_prefers_timeout_over_everything() -> None:
    info = _classify(
        "ModuleNotFoundError: No module named 'x'\nCollecting...",
        timed_out=True,
        signal=signal_module.SIGKILL,
        exit_code=None,
        scope_violations=("secrets.txt",),
    )
    assert info.failure_class is FailureClass.TIMEOUT
    assert info.error_type == "timeout"
    assert info.message.startswith("timed out")


def test_classify_failure_timeout_without_output_uses_fixed_message() -> None:
    info = _classify("", timed_out=True, exit_code=None)
    assert info.message == "timed out"
    assert info.sample == ""


def test_classify_failure_prefers_scope_over_output_rules() -> None:
    info = _classify(
        "ModuleNotFoundError: No module named 'x'",
        scope_violations=("infra/prod.tf", "infra/prod.tf", ".github/workflows/ci.yml"),
    )
    assert info.failure_class is FailureClass.SCOPE
    assert ".github/workflows/ci.yml, infra/prod.tf" in info.message


def test_classify_failure_prefers_dependency_over_test() -> None:
    output = (
        _PYTEST_FAILURE + "FAILED tests/test_io.py::test_load - ModuleNotFoundError: "
        "No module named 'yaml'\n"
    )
    assert _classify(output).failure_class is FailureClass.DEPENDENCY


def test_classify_failure_treats_exit_127_without_output_as_environment() -> None:
    info = _classify("", exit_code=127)
    assert info.failure_class is FailureClass.ENVIRONMENT
    assert info.message == "command not found (exit code 127)"


@pytest.mark.parametrize(
    ("exit_code", "signal"),
    [(137, None), (-9, None), (None, signal_module.SIGKILL)],
)
def test_classify_failure_treats_sigkill_without_timeout_as_infrastructure(
    exit_code: int | None, signal: int | None
) -> None:
    info = _classify("compiling module 431 of 2000\n", exit_code=exit_code, signal=signal)
    assert info.failure_class is FailureClass.INFRASTRUCTURE
    assert "SIGKILL" in info.message


def test_classify_failure_uses_exit_code_when_output_is_empty() -> None:
    info = _classify("", exit_code=2)
    assert info.failure_class is FailureClass.UNKNOWN
    assert info.message == "exit code 2"
    assert info.error_type == "unknown"


# --- signatures, truncation and the record ---------------------------------------------


def test_classify_failure_signature_is_class_prefixed_hash_of_normalized_message() -> None:
    info = _classify("bash: line 1: poetry: command not found\n", exit_code=127)
    assert info.normalized_message == normalize_error_message(info.message)
    assert info.signature == compute_signature(f"environment:{info.normalized_message}")
    assert info.signature != compute_signature(info.normalized_message)


def test_classify_failure_signatures_differ_across_classes_for_same_line() -> None:
    line = "AssertionError"
    as_test = _classify(line)
    as_timeout = _classify(line, timed_out=True)
    as_unknown = _classify("AssertionErrorish thing")
    assert as_test.failure_class is FailureClass.TEST
    assert len({as_test.signature, as_timeout.signature, as_unknown.signature}) == 3


def test_classify_failure_signature_ignores_paths_and_line_numbers() -> None:
    first = _classify(
        'File "/tmp/pytest-of-a/pytest-1/r0/app.py", line 3\n'
        "FileNotFoundError: [Errno 2] No such file or directory: '/tmp/tmpab12cd34/config.yaml'"
    )
    second = _classify(
        'File "/home/ci/work/app.py", line 90\n'
        "FileNotFoundError: [Errno 2] No such file or directory: '/tmp/tmpzz98yy76/config.yaml'"
    )
    assert first.failure_class is FailureClass.ENVIRONMENT
    assert first.message != second.message
    assert first.signature == second.signature


def test_classify_failure_signature_is_stable_across_calls() -> None:
    signatures = {_classify(_PYTEST_FAILURE).signature for _ in range(3)}
    assert len(signatures) == 1


def test_classify_failure_truncates_message_and_sample() -> None:
    long_line = "ValueError: " + "x" * 5_000
    output = "noise line\n" * 3_000 + long_line + "\n" + "trailing\n" * 3
    info = _classify(output)
    assert len(info.message) <= 500
    assert info.message.endswith("...")
    assert len(info.sample) <= 2000
    assert info.sample.endswith("trailing")


def test_classify_failure_sample_ends_shortly_after_chosen_line() -> None:
    output = "ModuleNotFoundError: No module named 'x'\n" + "".join(
        f"later line {i}\n" for i in range(50)
    )
    info = _classify(output)
    assert info.sample.startswith("ModuleNotFoundError")
    assert "later line 9" in info.sample
    assert "later line 10" not in info.sample


def test_classify_failure_result_is_frozen() -> None:
    info = _classify("boom")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.message = "changed"  # type: ignore[misc]


def test_classify_failure_handles_200kb_output() -> None:
    output = ("collecting ... step ok /tmp/a/b.py:1\n" * 6_000) + "E   AssertionError: boom\n"
    assert len(output) > 200_000
    info = _classify(output)
    assert info.failure_class is FailureClass.TEST


def test_failures_package_imports_no_web_or_queue_frameworks() -> None:
    code = (
        "import sys, shared.failures; "
        "bad = [m for m in ('fastapi', 'celery', 'starlette') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- outputs produced by really running failing commands -------------------------------


def test_classify_real_python_missing_module_as_dependency(tmp_path: Path) -> None:
    info = _classify_run([sys.executable, "-c", "import nonexistent_mod_xyz"], tmp_path)
    assert info.failure_class is FailureClass.DEPENDENCY
    assert info.error_type == "import_error"
    assert info.normalized_message == "ModuleNotFoundError: No module named '<name>'"


def test_classify_real_pip_unresolvable_requirement_as_dependency(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "pip", "install", "--no-index", "--disable-pip-version-check"]
    info = _classify_run([*args, "nonexistent-pkg-xyz-autopack"], tmp_path)
    assert info.failure_class is FailureClass.DEPENDENCY


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_classify_real_node_missing_module_as_dependency(tmp_path: Path) -> None:
    info = _classify_run(["node", "-e", "require('nonexistent_mod_xyz')"], tmp_path)
    assert info.failure_class is FailureClass.DEPENDENCY
    assert info.error_type == "module_not_found_node"


def test_classify_real_missing_command_as_environment(tmp_path: Path) -> None:
    code, output = _run(["bash", "-c", "nosuchcommand_xyz"], tmp_path)
    info = _classify(output, exit_code=code)
    assert code == 127
    assert info.failure_class is FailureClass.ENVIRONMENT
    assert info.error_type == "command_not_found"


def test_classify_real_non_executable_script_as_environment(tmp_path: Path) -> None:
    script = tmp_path / "build.sh"
    script.write_text("echo hi\n")
    script.chmod(0o644)
    info = _classify_run(["bash", "-c", str(script)], tmp_path)
    assert info.failure_class is FailureClass.ENVIRONMENT
    assert info.error_type == "permission_error"


def test_classify_real_missing_script_as_environment(tmp_path: Path) -> None:
    info = _classify_run([sys.executable, str(tmp_path / "missing.py")], tmp_path)
    assert info.failure_class is FailureClass.ENVIRONMENT


def test_classify_real_git_outside_repository_as_environment(tmp_path: Path) -> None:
    info = _classify_run(["git", "status"], tmp_path)
    assert info.failure_class is FailureClass.ENVIRONMENT
    assert info.error_type == "git_error"


def test_classify_real_git_index_lock_as_infrastructure(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    code, output = _run(["git", "init", "-q"], repo)
    assert code == 0, output
    (repo / ".git" / "index.lock").touch()
    (repo / "file.txt").write_text("x\n")
    info = _classify_run(["git", "add", "file.txt"], repo)
    assert info.failure_class is FailureClass.INFRASTRUCTURE
    assert info.error_type == "git_error"


def test_classify_real_connection_refused_as_infrastructure(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # the port was free a moment ago and nothing listens on it now
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5)"
    info = _classify_run([sys.executable, "-c", code], tmp_path)
    assert info.failure_class is FailureClass.INFRASTRUCTURE
    assert info.error_type == "network_error"


def test_classify_real_sigkill_as_infrastructure(tmp_path: Path) -> None:
    code, output = _run([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"], tmp_path)
    assert code == -signal_module.SIGKILL
    info = _classify(output, exit_code=code, signal=-code)
    assert info.failure_class is FailureClass.INFRASTRUCTURE


def test_classify_real_syntax_error_as_unknown(tmp_path: Path) -> None:
    info = _classify_run([sys.executable, "-c", "def broken(:\n    pass"], tmp_path)
    assert info.failure_class is FailureClass.UNKNOWN
    assert info.error_type == "syntax_error"


def _write_failing_test(directory: Path, name: str, expected: int) -> Path:
    """Create a tiny test module whose assertion fails unless `expected` is 2."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(
        textwrap.dedent(
            f"""
            def add(a, b):
                return a + b


            def test_add():
                assert add(1, 1) == {expected}
            """
        )
    )
    return path


def _run_pytest(test_file: Path) -> FailureInfo:
    """Run pytest on one file in its own directory and classify the output."""
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file.name]
    return _classify_run(args, test_file.parent)


def test_classify_real_pytest_failure_as_test(tmp_path: Path) -> None:
    info = _run_pytest(_write_failing_test(tmp_path / "one", "test_sample.py", 3))
    assert info.failure_class is FailureClass.TEST
    assert info.message.startswith("FAILED test_sample.py::test_add")
    assert info.error_type == "assertion_error"
    assert "1 failed" in info.sample


def test_classify_real_pytest_failures_share_signature_across_dirs(tmp_path: Path) -> None:
    first = _run_pytest(_write_failing_test(tmp_path / "a" / "x", "test_first.py", 3))
    second = _run_pytest(_write_failing_test(tmp_path / "b", "test_second.py", 3))
    different = _run_pytest(_write_failing_test(tmp_path / "c", "test_third.py", 4))
    assert first.message != second.message
    assert first.signature == second.signature
    assert first.signature != different.signature


def test_classify_real_unittest_failure_as_test(tmp_path: Path) -> None:
    (tmp_path / "test_unit.py").write_text(
        textwrap.dedent(
            """
            import unittest


            class TestMath(unittest.TestCase):
                def test_add(self):
                    self.assertEqual(1 + 1, 3)
            """
        )
    )
    info = _classify_run([sys.executable, "-m", "unittest", "test_unit"], tmp_path)
    assert info.failure_class is FailureClass.TEST
    assert info.message.startswith("FAIL: test_add")
