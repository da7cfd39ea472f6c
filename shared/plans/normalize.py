"""Deterministic plan normalization: plan text becomes validated phases, with confidence."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from shared.plans.parse import BARE_FILES, Step, parse_plan, words
from shared.runs.spec import PhaseSpec, check_relative_path
from shared.scope import in_scope

DEFAULT_MIN_CONFIDENCE = 0.5
COMMAND_CONFIDENCE, CONFIRMED_CONFIDENCE, UNCONFIRMED_CONFIDENCE = 1.0, 0.9, 0.6
VALIDATE_STEPS = ("install", "build", "test", "smoke")

_I = re.IGNORECASE
_CUES = {
    "install": re.compile(
        r"\b(?:re)?install\w*|\bdependenc(?:y|ies)\b|\bdeps\b|\bbootstrap\w*"
        r"|\bset ?up (?:the )?(?:project|environment|env|venv|virtualenv)\b",
        _I,
    ),
    "build": re.compile(r"\b(?:re)?build(?:s|ing)?\b(?!\s+(?:an?|new|some)\b)|\bcompil\w*", _I),
    "test": re.compile(r"\btest(?:s|ing)?\b|\bpytest\b", _I),
    "smoke": re.compile(r"\bsmoke\b|\bsanity[- ]check|\bhealth[- ]?check", _I),
}
# Detection has no lint step; build (compile, type-check) is the closest validate step.
_LINT = re.compile(r"\blint\w*|\btype[- ]?check\w*|\bformat(?:ting)? check", _I)
# Steps that start by asking for a change or for thought are not validation, unless they say "run".
_NOT_ACTION = re.compile(
    r"^(?:(?:then|first|next|finally|now|also|please|and)\W+)*"
    r"(?:write|add|create|implement|refactor|fix|update|rename|remove|delete|document|design"
    r"|think|consider|review|plan|research|investigate|draft|move|change|modify|edit|improve"
    r"|extend|migrate|port|rewrite|clean|discuss|decide|read)\b",
    _I,
)
_RUN = re.compile(r"\b(?:run|re-?run|execute|make sure|ensure|verify|check|confirm|pass)\b", _I)
_STOPWORDS = words(
    "the a an all any our my your its this that these those to of for and then first next "
    "finally please now also project repo repository codebase it them is are be "
    "with in on from into using via by at"
)
_ACTION_WORDS = frozenset({"test", "tests", "build", "install", "lint", "smoke"})


class ToolchainLike(Protocol):
    """What normalization reads from a toolchain detection (matches ToolchainDetection)."""

    @property
    def toolchain(self) -> str: ...
    @property
    def directory(self) -> str: ...
    @property
    def confidence(self) -> float: ...
    @property
    def install(self) -> Sequence[str]: ...
    @property
    def build(self) -> Sequence[str]: ...
    @property
    def test(self) -> Sequence[str]: ...
    @property
    def smoke(self) -> Sequence[str]: ...


# Sequence, not list: a detector returning list[ToolchainDetection] must type-check here.
DetectFn = Callable[[Path], Sequence[ToolchainLike]]


@dataclass(frozen=True)
class NormalizedPlan:
    """The phases a plan becomes, how sure normalization is, and why it decided so."""

    phases: list[dict[str, Any]]
    confidence: float
    warnings: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    deliverables: list[str] = field(default_factory=list)
    scope_size_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe deep copy of the result."""
        return asdict(self)


def _quote(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def slug(text: str, fallback: str) -> str:
    """The first significant words of text as a phase id ('run the tests' -> 'run-tests')."""
    text = re.sub(r"\bmake sure\b", " ", text.lower())
    words = [w for w in re.findall(r"[a-z0-9]+", text) if w not in _STOPWORDS]
    return "-".join(words[:3])[:40].strip("-") or fallback


def actions(prose: str) -> tuple[list[str], bool]:
    """The validate steps a step's prose asks for, and whether lint was mapped onto build."""
    text = prose.strip()
    if _NOT_ACTION.match(text) and not _RUN.search(text):
        return [], False
    without_smoke = re.sub(r"smoke[- ]tests?", "smoke", text, flags=_I)
    found = {name for name, cue in _CUES.items() if cue.search(without_smoke)}
    lint = bool(_LINT.search(text)) and "build" not in found
    return [s for s in VALIDATE_STEPS if s in found or (lint and s == "build")], lint


def _mentions(text: str, directory: str) -> bool:
    """Whether text names the directory, by path or by its last part (unless a step word)."""
    last = directory.rsplit("/", 1)[-1]
    names = [directory] + ([last] if last not in _ACTION_WORDS else [])
    return any(re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text, _I) for n in names)


def _targets(text: str, primaries: dict[str, ToolchainLike]) -> list[str]:
    """The detected directories a step names (deepest wins), else the root or all of them."""
    dirs = sorted(d for d in primaries if d != ".")
    named = [d for d in dirs if _mentions(text, d)]
    named = [d for d in named if not any(o.startswith(d + "/") for o in named)]
    if named:
        return named
    # Unnamed: the root when it has a toolchain, else every component (one phase each).
    return ["."] if "." in primaries or not dirs else dirs


def scope_size(worktree: Path, globs: Sequence[str]) -> int:
    """Total bytes of the regular files in worktree that the globs name (symlinks skipped)."""
    root, total = worktree.resolve(), 0
    for directory, subdirs, names in os.walk(root) if globs else ():
        subdirs[:] = sorted(d for d in subdirs if d != ".git")
        for path in (Path(directory, name) for name in names):
            if not path.is_symlink() and in_scope(path.relative_to(root).as_posix(), globs):
                total += path.lstat().st_size
    return total


class _Builder:
    """Accumulates phases, ids, warnings, decisions and per-step confidences."""

    def __init__(self, worktree: Path | None, detections: list[ToolchainLike] | None) -> None:
        self.worktree, self.detected = worktree, detections is not None
        self.phases, self.ids, self.suffixes = list[dict[str, Any]](), set[str](), dict[str, int]()
        self.warnings, self.decisions, self.scores = list[str](), list[str](), list[float]()
        self.primaries: dict[str, ToolchainLike] = {}
        self.globs: list[str] = []  # the current step's scope
        for item in detections or []:
            # Sorted like the executor's detect_primary, so the first per directory is its pick.
            self.primaries.setdefault(item.directory, item)

    def add(self, step: Step, raw: dict[str, Any], base_id: str, decision: str) -> bool:
        """Give the phase a unique id, validate it as PhaseSpec and keep it, or warn and drop it."""
        candidate, n = base_id, self.suffixes.get(base_id, 1)
        while candidate in self.ids:
            n += 1
            candidate = f"{base_id[: 63 - len(str(n))]}-{n}"
        self.ids.add(candidate)
        self.suffixes[base_id] = n  # the next duplicate starts here, not at -2 again
        raw = {"id": candidate, "kind": raw.pop("kind"), **raw, "scope": self.globs}
        if step.title:
            raw["name"] = step.title[:200]
        try:
            spec = PhaseSpec.model_validate(raw)
        except ValidationError as error:
            problem = error.errors()[0]["msg"]
            self.warnings.append(f"step {step.number}: phase {candidate!r} dropped: {problem}")
            return False
        self.phases.append(spec.model_dump(mode="json", exclude_unset=True))
        self.decisions.append(f"step {step.number} {_quote(step.title)} → {decision}")
        return True

    def scope(self, step: Step) -> list[str]:
        """The step's paths as scope globs (a directory becomes dir/**); unsafe ones are dropped."""
        paths = [re.sub(r"^(\./)+", "", p) for p in step.paths]
        for path in (p for p in paths if not _is_safe(p)):
            self.warnings.append(f"step {step.number}: dropped path {path!r} (outside worktree)")
        globs = [f"{p.rstrip('/')}/**" if self._is_dir(p) else p for p in paths if _is_safe(p)]
        return list(dict.fromkeys(globs))

    def _is_dir(self, path: str) -> bool:
        if path.endswith("/") or set(path) & set("*?["):
            return path.endswith("/")
        if self.worktree is not None and (self.worktree / path).exists():
            return (self.worktree / path).is_dir()
        last = path.rsplit("/", 1)[-1]
        return "/" in path and "." not in last and last not in BARE_FILES

    def step(self, step: Step) -> None:
        """Commands win; otherwise a recognized action validates; otherwise no phase."""
        for language in step.ignored_blocks:
            self.warnings.append(f"step {step.number}: ignored a ```{language} block (not shell)")
        steps, lint = actions(step.prose)
        self.globs = self.scope(step)
        if step.commands:
            self.commands(step)
        elif steps:
            self.validate(step, steps, lint)
        else:
            self.scores.append(0.0)
            what = "neither a command nor a recognized action; no phase"
            self.warnings.append(f"step {step.number} {_quote(step.title)} is {what}")

    def commands(self, step: Step) -> None:
        """One shell phase with the step's commands, in order."""
        base_id = slug(step.title, slug(step.commands[0], "step"))
        raw = {"kind": "shell", "run": list(step.commands)}
        decision = f"shell phase ({len(step.commands)} command(s))"
        self.scores.append(COMMAND_CONFIDENCE if self.add(step, raw, base_id, decision) else 0.0)

    def validate(self, step: Step, steps: list[str], lint: bool) -> None:
        """Validate phases for the step, confirmed against the detected toolchains when known."""
        note = "; lint has no step of its own, mapped to build" if lint else ""
        base_id = slug(step.title, steps[0])
        text = f"{step.prose} {step.section}"
        targets = _targets(text, self.primaries) if self.detected else ["."]
        confirmed, ok = self.detected, True
        for directory in targets:
            primary = self.primaries.get(directory)
            have = [s for s in steps if primary is not None and getattr(primary, s)]
            where = "" if directory == "." else f" in {directory}"
            label = primary.toolchain if primary else "toolchain not detected"
            if self.detected and not have:
                confirmed = False
                why = f"has no {'/'.join(steps)} commands" if primary else "has no toolchain"
                self.warnings.append(f"step {step.number}: {directory} {why}; the phase may fail")
            dropped = f"; no {', '.join(s for s in steps if s not in have)} commands, dropped"
            extra = dropped if have and have != steps else ""
            suffix = f"-{slug(directory.rsplit('/', 1)[-1], 'dir')}" if len(targets) > 1 else ""
            kept = have or steps
            raw: dict[str, Any] = {"kind": "validate", "steps": kept}
            raw |= {"cwd": directory} if directory != "." else {}
            decision = f"validate phase ({label}{where}, steps: {', '.join(kept)}{extra}{note})"
            ok = self.add(step, raw, base_id[: 63 - len(suffix)] + suffix, decision) and ok
        score = CONFIRMED_CONFIDENCE if confirmed else UNCONFIRMED_CONFIDENCE
        self.scores.append(score if ok else 0.0)


def _is_safe(path: str) -> bool:
    try:
        return " " in path or bool(check_relative_path(path, "path"))
    except ValueError:
        return False


def _detect(
    worktree: Path | None, detect: DetectFn | None, warnings: list[str]
) -> list[ToolchainLike] | None:
    """Detections sorted like the executor's detect_primary, or None when detection is off."""
    if detect is None or worktree is None:
        return None
    try:
        return sorted(detect(worktree), key=lambda d: (d.directory, -d.confidence, d.toolchain))
    except (OSError, ValueError) as error:
        warnings.append(f"toolchain detection failed: {error}")
        return None


def normalize_plan(
    text: str, *, worktree: Path | None = None, detect: DetectFn | None = None
) -> NormalizedPlan:
    """Turn a plan into PhaseSpec-valid phases; detection (given a worktree) confirms validation."""
    parsed, warnings = parse_plan(text), list[str]()
    builder = _Builder(worktree, _detect(worktree, detect, warnings))
    builder.warnings = warnings
    for step in parsed.steps:
        builder.step(step)
    if not parsed.steps:
        warnings.append("the plan has no steps")
    if not builder.detected and any(p["kind"] == "validate" for p in builder.phases):
        warnings.append("no toolchain detection: validate phases are not confirmed")
    unsafe = [d for d in parsed.deliverables if not _is_safe(d)]
    warnings += [f"dropped deliverable {d!r} (outside the worktree)" for d in unsafe]
    globs = [glob for phase in builder.phases for glob in phase.get("scope", [])]
    scores = builder.scores
    return NormalizedPlan(
        phases=builder.phases,
        confidence=round(sum(scores) / len(scores), 2) if scores else 0.0,
        warnings=warnings,
        decisions=builder.decisions,
        deliverables=[d.removeprefix("./") for d in parsed.deliverables if d not in unsafe],
        scope_size_bytes=scope_size(worktree, globs) if worktree is not None else 0,
    )


def accept(
    plan: NormalizedPlan, min_confidence: float = DEFAULT_MIN_CONFIDENCE, force: bool = False
) -> str | None:
    """Why the plan must not run (its warnings joined), or None when it may."""
    if force:
        return None
    problems = "; ".join(plan.warnings) or "no warnings"
    if not plan.phases:
        return f"the plan produced no phases: {problems}"
    if plan.confidence < min_confidence:
        return f"plan confidence {plan.confidence:.2f} is below {min_confidence:.2f}: {problems}"
    return None
