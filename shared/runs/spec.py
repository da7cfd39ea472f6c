"""The run spec a client submits, validated with pydantic; errors name the field path."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
PHASE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
# A git ref or commit a client may name: no leading '-', no '..', no '@{', nothing git would read as an option.
_REF_RE = re.compile(
    r"^(?!-)(?!.*\.\.)(?!.*//)(?!.*@\{)(?!.*\.lock$)(?!.*[/.]$)[A-Za-z0-9._/+-]{1,255}$"
)

RepoName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=500)]


def check_relative_path(value: str, what: str) -> str:
    """Reject paths that could leave the worktree: absolute, '..', home or NUL."""
    if not value or "\x00" in value or "\\" in value:
        raise ValueError(f"{what} must be a non-empty POSIX path without NUL or backslashes")
    path = PurePosixPath(value)
    if path.is_absolute() or value.startswith("~"):
        raise ValueError(f"{what} must be relative to the worktree, got {value!r}")
    if ".." in path.parts:
        raise ValueError(f"{what} must not contain '..', got {value!r}")
    return value


class StrictModel(BaseModel):
    """Unknown fields are errors, so a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Intention(StrictModel):
    """The optional anchor rendered into LLM context: what must hold, what must not happen."""

    outcomes: list[ShortText] = Field(default_factory=list, max_length=50)
    non_goals: list[ShortText] = Field(default_factory=list, max_length=50)
    constraints: list[ShortText] = Field(default_factory=list, max_length=50)


# Spec fields added after the first release, as paths into the canonical spec: omitted from the
# spec hash while unset (None). Append every new optional field here.
ADDED_LATER: tuple[tuple[str, ...], ...] = (("budgets", "max_disk_mb"),)


class Concurrency(StrictModel):
    """At most `limit` runs with `key` execute at once, across all workers.

    On conflict, `queue` waits for a slot (first come, first served by submission time),
    `cancel_new` ends the new run `cancelled` naming the key, `cancel_running` asks the oldest
    running run(s) of the key to cancel and starts the new one. Enforced at lease time by
    shared/runs/concurrency.py.
    """

    key: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    limit: int = Field(default=1, ge=1, le=1000)
    on_conflict: Literal["queue", "cancel_new", "cancel_running"] = "queue"


class Budgets(StrictModel):
    """Caps on what a run may spend."""

    token_cap: int | None = Field(default=None, ge=0)
    max_duration_s: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    max_queue_wait_s: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    # Largest size of the run's worktree in MB (2**20 bytes), capped by AUTOPACK_RUN_DISK_LIMIT_MB.
    max_disk_mb: int | None = Field(default=None, ge=1)


class Hardening(StrictModel):
    """How failure hardening may act for this run."""

    enabled: bool = True
    disable: list[Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,100}$")]] = Field(
        default_factory=list, max_length=100
    )
    allow_undeclared_installs: bool = False


class DriftOptions(StrictModel):
    """Goal-drift checking after each phase that changed files."""

    mode: Literal["off", "advisory", "blocking"] = "advisory"
    threshold: float = Field(default=0.1, ge=0.0, le=1.0)


class DoctorOptions(StrictModel):
    """Whether and how much the Doctor (LLM fallback) may be asked for this run."""

    enabled: bool = True
    max_calls_per_phase: int | None = Field(default=None, ge=0, le=20)
    max_calls_per_run: int | None = Field(default=None, ge=0, le=100)
    # The run's model mapping (defaults: AUTOPACK_DOCTOR_MODEL_CHEAP / _STRONG); A/B arms vary these.
    model_cheap: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    model_strong: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None


ValidateStep = Literal["install", "build", "test", "smoke"]


class PhaseSpec(StrictModel):
    """One step of a run: shell commands, a patch to apply, or validation inferred from the toolchain."""

    id: Annotated[str, StringConstraints(pattern=PHASE_ID_PATTERN)]
    name: Annotated[str, StringConstraints(max_length=200)] | None = None
    kind: Literal["shell", "validate", "patch"] = "shell"
    run: list[Annotated[str, StringConstraints(min_length=1, max_length=20_000)]] | None = Field(
        default=None, min_length=1, max_length=100
    )
    patch: Annotated[str, StringConstraints(min_length=1, max_length=1_000_000)] | None = None
    steps: list[ValidateStep] | None = Field(default=None, min_length=1, max_length=4)
    cwd: str | None = None
    scope: list[str] = Field(default_factory=list, max_length=200)
    max_attempts: int = Field(default=1, ge=1, le=20)
    timeout_s: int = Field(default=600, ge=1, le=7 * 24 * 3600)
    # Names of worker-held secrets (AUTOPACK_SECRETS) to put in the environment; values never leave the worker.
    secret_env: list[Annotated[str, StringConstraints(pattern=ENV_NAME_PATTERN)]] = Field(
        default_factory=list, max_length=50
    )
    env: dict[
        Annotated[str, StringConstraints(pattern=ENV_NAME_PATTERN)],
        Annotated[str, StringConstraints(max_length=10_000)],
    ] = Field(default_factory=dict, max_length=100)

    @field_validator("run", mode="before")
    @classmethod
    def _one_command_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("cwd")
    @classmethod
    def _cwd_inside(cls, value: str | None) -> str | None:
        return None if value is None else check_relative_path(value, "cwd")

    @field_validator("scope")
    @classmethod
    def _scope_inside(cls, value: list[str]) -> list[str]:
        return [check_relative_path(glob, "scope glob") for glob in value]

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> PhaseSpec:
        needs = {"shell": "run", "patch": "patch"}.get(self.kind)
        if needs and getattr(self, needs) is None:
            raise ValueError(f"a {self.kind} phase needs `{needs}`")
        extra = [
            f
            for f in ("run", "patch", "steps")
            if getattr(self, f) is not None
            and f != needs
            and not (self.kind == "validate" and f == "steps")
        ]
        if extra:
            raise ValueError(f"a {self.kind} phase does not take `{'`, `'.join(extra)}`")
        if self.kind == "validate" and self.steps is None:
            self.steps = ["install", "test"]
        return self


class RunCreate(StrictModel):
    """What a client submits: a goal, a repository and ordered phases."""

    run_id: Annotated[str, StringConstraints(pattern=RUN_ID_PATTERN)] | None = None
    repo: RepoName
    ref: str = "main"
    goal: Annotated[str, StringConstraints(min_length=1, max_length=4000)]
    intention: Intention | None = None
    labels: dict[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")],
        Annotated[str, StringConstraints(max_length=200)],
    ] = Field(default_factory=dict, max_length=50)
    concurrency: Concurrency | None = None
    budgets: Budgets = Field(default_factory=Budgets)
    hardening: Hardening = Field(default_factory=Hardening)
    doctor: DoctorOptions = Field(default_factory=DoctorOptions)
    drift: DriftOptions = Field(default_factory=DriftOptions)
    start: bool = True
    # Free text / markdown the worker normalizes into phases in the worktree, instead of `phases`.
    plan: Annotated[str, StringConstraints(min_length=1, max_length=100_000)] | None = None
    plan_policy: Literal["normal", "force"] = "normal"
    phases: list[PhaseSpec] = Field(default_factory=list, max_length=100, validate_default=True)

    @field_validator("phases")
    @classmethod
    def _phases_or_plan(cls, value: list[PhaseSpec], info: ValidationInfo) -> list[PhaseSpec]:
        plan = info.data.get("plan")
        if plan and value:
            raise ValueError("give either phases or a plan, not both")
        if not plan and not value:
            raise ValueError("at least one phase is required (or a plan)")
        return value

    @field_validator("ref")
    @classmethod
    def _ref_is_safe(cls, value: str) -> str:
        if not _REF_RE.match(value):
            raise ValueError(
                f"ref {value!r} is not a valid branch, tag or commit name "
                "(no leading '-', '..', '@{', spaces or control characters)"
            )
        return value

    @model_validator(mode="after")
    def _phase_ids_unique(self) -> RunCreate:
        seen: set[str] = set()
        for phase in self.phases:
            if phase.id in seen:
                raise ValueError(f"duplicate phase id {phase.id!r}")
            seen.add(phase.id)
        return self

    def canonical(self) -> dict[str, Any]:
        """The spec as stored: JSON-safe, defaults filled, without the id and start flag."""
        return self.model_dump(mode="json", exclude={"run_id", "start"})

    def spec_hash(self) -> str:
        """A stable hash of the canonical spec, for idempotency and drift checks.

        Fields added to the spec after its first release are left out while unset, so a spec that
        does not use them hashes as it did before they existed (a resubmission after an upgrade is
        the same run, not a 409).
        """
        canonical = self.canonical()
        for path in ADDED_LATER:
            *parents, name = path
            holder: Any = canonical
            for parent in parents:
                holder = holder.get(parent) if isinstance(holder, dict) else None
            if isinstance(holder, dict) and holder.get(name, 0) is None:
                del holder[name]
        blob = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()
