"""Tests for error normalization, error-line extraction, error types and pattern ids."""

from __future__ import annotations

import hashlib
import random
import re
import time

import pytest

from shared.failures import (
    classify_error_type,
    compute_signature,
    confidence_for_count,
    extract_error_lines,
    normalize_error_message,
    split_output_lines,
    strip_ansi,
    suggest_pattern_id,
)

# --- normalize_error_message -----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            'File "/tmp/pytest-of-root/pytest-3/x/y.py", line 42, in foo',
            'File "<path>", <line>, in foo',
        ),
        (r"C:\a\b.py:12: error: bad", "<path>:<line>: error: bad"),
        ("./src/app.py:42:7: E501 line too long", "<path>:<line>: E501 line too long"),
        ("src/app.py:3: in <module>", "<path>:<line>: in <module>"),
        ("at handler (/app/src/server.js:10:5)", "at handler (<path>:<line>)"),
        ("src/index.ts(12,5): error TS2304", "<path><line>: error TS2304"),
        ("~/proj/setup.cfg and ../lib/x", "<path> and <path>"),
        ("conftest.py:7: in fixture", "<path>:<line>: in fixture"),
        ("<Foo object at 0x7f3a9c0d1e20>", "<Foo object at <addr>>"),
        (
            "ModuleNotFoundError: No module named 'foo'",
            "ModuleNotFoundError: No module named '<name>'",
        ),
        ('NameError: name "bar_baz" is not defined', "NameError: name '<name>' is not defined"),
        ("Error: Cannot find module '@babel/core'", "Error: Cannot find module '<name>'"),
        ("wrote tmpab12cd_x9 and pytest-123", "wrote <tmp> and <tmp>"),
        ("run 123e4567-e89b-12d3-a456-426614174000 done", "run <tmp> done"),
        ("HEAD is now at 3f2a9c1d0e fix", "HEAD is now at <hash> fix"),
        ("blob " + "a1" * 20, "blob <hash>"),
        ("=== 3 failed, 2 passed in 0.53s ===", "=== <n> failed, <n> passed in <n>s ==="),
        ("Ran 12 tests in 0.004s", "Ran <n> tests in <n>s"),
        ("FAILED (failures=2, errors=1)", "FAILED (failures=<n>, errors=<n>)"),
        ("Tests:       1 failed, 3 total", "Tests: <n> failed, <n> total"),
        ("bash: line 1:  48213 Killed   python big", "bash: <line>: <n> Killed python big"),
        ("2024-05-01T10:00:00.123Z worker 10:42:07 started", "<time> worker <time> started"),
        ("clone https://github.com/org/repo.git failed", "clone <url> failed"),
        ("  many\t\tspaces \n and\nlines  ", "many spaces and lines"),
        ("\x1b[31mERROR\x1b[0m: red", "ERROR: red"),
    ],
)
def test_normalize_replaces_incidental_details(raw: str, expected: str) -> None:
    assert normalize_error_message(raw) == expected


@pytest.mark.parametrize(
    "text",
    [
        "and/or application/json a / b 1/2 src/utils",
        "assert 1 == 2",
        "deadbeef defaced facade",
        "TypeError: unsupported operand type(s) for +: 'int' and 'str'",
        "exit code 127",
    ],
)
def test_normalize_keeps_meaningful_text(text: str) -> None:
    normalized = normalize_error_message(text)
    for word in re.findall(r"[A-Za-z]{4,}", text):
        if word not in {"int", "str"}:
            assert word in normalized


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (
            'File "/tmp/pytest-of-root/pytest-3/test_a0/app.py", line 42, in run',
            'File "/tmp/pytest-of-ci/pytest-17/test_b3/app.py", line 7, in run',
        ),
        (
            "/tmp/tmpab12cd/src/app.py:12:5: F401 'os' imported but unused",
            "/tmp/tmpzz99yy/src/app.py:90:1: F401 'sys' imported but unused",
        ),
        (
            r"C:\Users\a\proj\x.py:3: DeprecationWarning",
            "/home/b/proj/x.py:300: DeprecationWarning",
        ),
        (
            "ValueError: bad value at <Node object at 0x7f00aa11>",
            "ValueError: bad value at <Node object at 0x55d1c2e3ff00>",
        ),
        ("=== 1 failed, 10 passed in 1.02s ===", "=== 4 failed, 7 passed in 12.5s ==="),
        (
            "ModuleNotFoundError: No module named 'numpy'",
            "ModuleNotFoundError: No module named 'yaml'",
        ),
    ],
)
def test_normalize_equates_messages_differing_only_in_incidentals(first: str, second: str) -> None:
    assert normalize_error_message(first) == normalize_error_message(second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("ModuleNotFoundError: No module named 'x'", "ImportError: cannot import name 'x'"),
        ("KeyError: 'id'", "AttributeError: 'id'"),
        ("/tmp/a/x.py:1: AssertionError", "/tmp/a/x.py:1: TypeError"),
        ("bash: foo: command not found", "bash: foo: Permission denied"),
        ("FAILED t.py::test_add - assert 1 == 2", "FAILED t.py::test_sub - assert 1 == 2"),
    ],
)
def test_normalize_keeps_different_errors_different(first: str, second: str) -> None:
    assert normalize_error_message(first) != normalize_error_message(second)


_IDEMPOTENCE_SAMPLES = [
    'File "/tmp/x/y.py", line 4, in <module>',
    "a:1:2:3:4: b",
    "/a/b:c/d.py:12",
    "x.py:1:2:3 and y.ts(4,5)",
    "'foo' \"bar\" 'it''s' \"'\"",
    "0xdeadbeef 0x 0x0x12 00000 123456 1.5s 2 failed",
    "tmpabcdefgh/tmp/pytest-of-root/pytest-1 <path> <line> <n> '<name>'",
    "line\n42 line 7line 8 Line 9",
    "https://x.y/z?q='a'&b=\"c\" ftp://h:21/",
    "10:42:07.5:3 2024-01-02 03:04:05",
    "abc1234-abc1234 abc1234.py",
]


@pytest.mark.parametrize("text", _IDEMPOTENCE_SAMPLES)
def test_normalize_is_idempotent_on_tricky_inputs(text: str) -> None:
    once = normalize_error_message(text)
    assert normalize_error_message(once) == once


def test_normalize_is_idempotent_on_random_token_soup() -> None:
    tokens = [
        "/", "./", "../", "~/", "a", "B", "x.py", "src", ":", "12", "3", ".", ",", "'", '"',
        " ", "\t", "\n", "line", "0x", "7f", "tmp", "abc123def", "-", "_", "pytest", "(", ")",
        "<", ">", "s", "failed", "=", "@", "C:\\", "\\", "http://", "e4", "2024-01-01",
    ]  # fmt: skip
    rng = random.Random(1234)
    for _ in range(2000):
        text = "".join(rng.choice(tokens) for _ in range(rng.randint(1, 30)))
        once = normalize_error_message(text)
        assert normalize_error_message(once) == once, text


def test_normalize_is_deterministic() -> None:
    text = "E   FileNotFoundError: [Errno 2] No such file or directory: '/tmp/tmpq1w2e3r4/cfg.yaml'"
    assert len({normalize_error_message(text) for _ in range(5)}) == 1


_ADVERSARIAL_200KB = {
    "word": "a" * 200_000,
    "slashes": "/" * 200_000,
    "path_segments": "a/" * 100_000,
    "dotted": "a." * 100_000,
    "digits": "1" * 200_000,
    "colons": ":1" * 100_000,
    "hex": "ab12" * 50_000,
    "quotes": "'a" * 100_000,
    "mixed": "x.py:12: 'foo' /tmp/a/b 0xff 1.5s " * 6_000,
    "spaces": " \t" * 100_000,
}


@pytest.mark.parametrize("name", sorted(_ADVERSARIAL_200KB))
def test_normalize_handles_200kb_input_quickly(name: str) -> None:
    text = _ADVERSARIAL_200KB[name]
    assert len(text) >= 180_000
    started = time.perf_counter()
    result = normalize_error_message(text)
    elapsed = time.perf_counter() - started
    assert isinstance(result, str)
    assert elapsed < 2.0, f"{name} took {elapsed:.2f}s"


def test_strip_ansi_removes_colour_codes() -> None:
    assert strip_ansi("\x1b[1;31mFAILED\x1b[0m x") == "FAILED x"


def test_split_output_lines_strips_ansi_and_trailing_space() -> None:
    assert split_output_lines("a  \r\n\x1b[32mb\x1b[0m\n\nc") == ["a", "b", "", "c"]


# --- extract_error_lines ---------------------------------------------------------------

_PYTHON_TRACEBACK = """\
Collecting things
Traceback (most recent call last):
  File "/srv/app/main.py", line 3, in <module>
    import yaml_nonexistent
ModuleNotFoundError: No module named 'yaml_nonexistent'
"""

_PYTEST_OUTPUT = """\
============================= test session starts ==============================
collected 2 items

tests/test_math.py .F                                                    [100%]

=================================== FAILURES ===================================
__________________________________ test_add ___________________________________

    def test_add():
>       assert add(1, 1) == 3
E       assert 2 == 3
E        +  where 2 = add(1, 1)

tests/test_math.py:5: AssertionError
=========================== short test summary info ============================
FAILED tests/test_math.py::test_add - assert 2 == 3
========================= 1 failed, 1 passed in 0.03s ==========================
"""

_NPM_OUTPUT = """\
npm ERR! code E404
npm ERR! 404 Not Found - GET https://registry.npmjs.org/left-padz - Not found
npm ERR! 404
npm ERR! 404  'left-padz@*' is not in this registry.

npm ERR! A complete log of this run can be found in:
npm ERR!     /root/.npm/_logs/2024-05-01T10_00_00_000Z-debug-0.log
"""


def test_extract_picks_exception_line_from_traceback() -> None:
    lines = extract_error_lines(_PYTHON_TRACEBACK)
    assert lines[-1] == "ModuleNotFoundError: No module named 'yaml_nonexistent'"
    assert "Collecting things" not in lines


def test_extract_prefers_pytest_summary_and_e_lines() -> None:
    lines = extract_error_lines(_PYTEST_OUTPUT)
    assert "FAILED tests/test_math.py::test_add - assert 2 == 3" in lines
    assert "E       assert 2 == 3" in lines
    assert not any(line.startswith("collected") for line in lines)


def test_extract_skips_npm_log_noise() -> None:
    lines = extract_error_lines(_NPM_OUTPUT)
    assert "npm ERR! code E404" in lines
    assert not any("complete log" in line or "_logs/" in line for line in lines)


@pytest.mark.parametrize(
    "line",
    [
        "fatal: not a git repository (or any of the parent directories): .git",
        "bash: foo_xyz: command not found",
        "bash: ./run.sh: Permission denied",
        "cat: /etc/nope: No such file or directory",
        "Error: Cannot find module 'express'",
        "error: could not compile `app` due to previous error",
        "Exception: boom",
    ],
)
def test_extract_finds_common_error_lines(line: str) -> None:
    output = f"starting\nstep one ok\n{line}\nall done\n"
    assert extract_error_lines(output) == [line]


def test_extract_prefers_last_occurrences_and_dedupes() -> None:
    output = "\n".join(f"ValueError: bad {i}" for i in range(10)) + "\nValueError: bad 3\n"
    lines = extract_error_lines(output, max_lines=3)
    assert lines == ["ValueError: bad 8", "ValueError: bad 9", "ValueError: bad 3"]


def test_extract_ranks_strong_lines_over_weak_lines() -> None:
    output = "KeyError: 'x'\n" + "E   context line\n" * 10
    assert extract_error_lines(output, max_lines=2)[0] == "KeyError: 'x'"


def test_extract_falls_back_to_last_non_empty_lines() -> None:
    output = "one\ntwo\n\nthree\n\n\nfour\n   \n"
    assert extract_error_lines(output, max_lines=3) == ["two", "three", "four"]


def test_extract_returns_nothing_for_empty_output_or_zero_limit() -> None:
    assert extract_error_lines("") == []
    assert extract_error_lines("ValueError: x", max_lines=0) == []


def test_extract_handles_200kb_output_quickly() -> None:
    output = ("progress line with some words 12%\n" * 5_000) + "E   " + "x" * 20_000 + "\n"
    output += "RuntimeError: finally\n"
    started = time.perf_counter()
    lines = extract_error_lines(output)
    assert time.perf_counter() - started < 2.0
    assert lines[-1] == "RuntimeError: finally"


# --- compute_signature -----------------------------------------------------------------


def test_compute_signature_is_full_sha256_hex() -> None:
    signature = compute_signature("abc")
    assert signature == hashlib.sha256(b"abc").hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", signature)


def test_compute_signature_matches_for_equivalent_messages() -> None:
    first = normalize_error_message("/tmp/tmpaaaaaa1/x.py:3: KeyError: 'a'")
    second = normalize_error_message("/tmp/tmpbbbbbb2/x.py:99: KeyError: 'b'")
    assert compute_signature(first) == compute_signature(second)
    assert compute_signature(first) != compute_signature(first + "!")


# --- classify_error_type ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ModuleNotFoundError: No module named 'x'", "import_error"),
        ("ImportError: cannot import name 'y' from 'z'", "import_error"),
        ('  File "x.py", line 1\nSyntaxError: invalid syntax', "syntax_error"),
        ("TypeError: 'NoneType' object is not subscriptable", "type_error"),
        ("AttributeError: 'Foo' object has no attribute 'bar'", "attribute_error"),
        ("NameError: name 'x' is not defined", "name_error"),
        ("ReferenceError: foo is not defined", "name_error"),
        ("KeyError: 'missing'", "key_error"),
        ("ValueError: invalid literal for int()", "value_error"),
        ("AssertionError: expected 3", "assertion_error"),
        ("FAILED t.py::test_a - assert 1 == 2", "assertion_error"),
        ("FileNotFoundError: [Errno 2] No such file or directory: 'a'", "file_not_found"),
        ("bash: ./x.sh: Permission denied", "permission_error"),
        ("subprocess.TimeoutExpired: Command timed out after 5 seconds", "timeout"),
        ("ConnectionRefusedError: [Errno 111] Connection refused", "network_error"),
        ("curl: (6) Could not resolve host: example.com", "network_error"),
        ("bash: foo_xyz: command not found", "command_not_found"),
        ("FAILED (failures=1)", "test_failure"),
        ("Tests:       2 failed, 5 total", "test_failure"),
        ("--- FAIL: TestAdd (0.00s)", "test_failure"),
        ("Error: Cannot find module 'express'", "module_not_found_node"),
        ("fatal: not a git repository (or any of the parent directories): .git", "git_error"),
        ("something odd happened", "unknown"),
        ("", "unknown"),
    ],
)
def test_classify_error_type_maps_keywords(text: str, expected: str) -> None:
    assert classify_error_type(text) == expected


# --- confidence_for_count --------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "expected"),
    [(1, "low"), (2, "low"), (3, "medium"), (4, "medium"), (5, "high"), (500, "high")],
)
def test_confidence_for_count_uses_thresholds(count: int, expected: str) -> None:
    assert confidence_for_count(count) == expected


@pytest.mark.parametrize("count", [0, -1])
def test_confidence_for_count_rejects_non_positive(count: int) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        confidence_for_count(count)


# --- suggest_pattern_id ----------------------------------------------------------------


def test_suggest_pattern_id_is_snake_case_and_descriptive() -> None:
    normalized = normalize_error_message("ModuleNotFoundError: No module named 'requests'")
    pattern_id = suggest_pattern_id("import_error", normalized)
    assert re.fullmatch(r"[a-z][a-z0-9_]*", pattern_id)
    assert pattern_id.startswith("import_error_no_module_named_")
    assert pattern_id.endswith(compute_signature(normalized)[:8])


def test_suggest_pattern_id_is_deterministic_and_distinguishes_messages() -> None:
    first = suggest_pattern_id("key_error", "KeyError: '<name>'")
    assert first == suggest_pattern_id("key_error", "KeyError: '<name>'")
    assert first != suggest_pattern_id("key_error", "KeyError: <n>")


@pytest.mark.parametrize(
    ("error_type", "prefix"), [("", "unknown_"), ("Weird Type!", "weird_type_")]
)
def test_suggest_pattern_id_sanitizes_error_type(error_type: str, prefix: str) -> None:
    pattern_id = suggest_pattern_id(error_type, "<path>:<line>: oops")
    assert pattern_id.startswith(prefix)
    assert re.fullmatch(r"[a-z][a-z0-9_]*", pattern_id)


def test_suggest_pattern_id_skips_exception_names_anywhere() -> None:
    pattern_id = suggest_pattern_id("key_error", "FAILED <path>::test_b - KeyError: '<name>'")
    assert pattern_id.startswith("key_error_failed_test_b_")
    assert "keyerror" not in pattern_id
