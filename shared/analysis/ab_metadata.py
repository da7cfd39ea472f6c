"""A/B experiment metadata and validity: flag paths, spec fingerprints, code metadata, pair checks."""

from __future__ import annotations

import copy
import getpass
import hashlib
import json
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import InvalidInput
from shared.models import LlmUsageEvent, Run, utcnow
from shared.runs.spec import RunCreate
from shared.runs.states import RUN_TERMINAL, RunStatus

# The run-spec sections an arm may vary; everything else (repo, ref, goal, phases) is what is compared.
FLAG_SECTIONS: Final = ("hardening", "doctor", "budgets", "drift", "intention")
MODEL_PATHS: Final = ("doctor.model_cheap", "doctor.model_strong")
_GIT_TIMEOUT_S: Final = 10
MAX_START_GAP: Final = timedelta(hours=24)

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


def known_flag_paths() -> list[str]:
    """Every dotted path an experiment arm may set, e.g. `hardening.enabled`."""
    paths: list[str] = []
    for section in FLAG_SECTIONS:
        annotation = RunCreate.model_fields[section].annotation
        model = next(
            (a for a in getattr(annotation, "__args__", (annotation,)) if _is_model(a)), None
        )
        if model is not None:
            paths.extend(f"{section}.{name}" for name in model.model_fields)
    return paths


def _is_model(candidate: object) -> bool:
    return isinstance(candidate, type) and issubclass(candidate, BaseModel)


def check_flag_paths(flags: Mapping[str, Any], field: str) -> None:
    """Reject a flag whose path is not a known setting, naming it (InvalidInput)."""
    known = known_flag_paths()
    for path in flags:
        if path not in known:
            raise InvalidInput(
                f"{field}: unknown flag {path!r}; known flags: {', '.join(known)}",
                field=f"{field}.{path}",
            )


def split_top_level(text: str, separator: str = ",") -> list[str]:
    """Split at separators outside brackets, braces and double quotes."""
    parts: list[str] = []
    depth, quoted, start = 0, False, 0
    for index, char in enumerate(text):
        if char == '"' and (index == 0 or text[index - 1] != "\\"):
            quoted = not quoted
        elif not quoted and char in "[{":
            depth += 1
        elif not quoted and char in "]}":
            depth = max(depth - 1, 0)
        elif not quoted and depth == 0 and char == separator:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def parse_flag_value(text: str) -> Any:
    """JSON when it parses (`false`, `3`, `["a"]`), a bare list `[a,b]` as strings, else the string."""
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [parse_flag_value(item) for item in split_top_level(inner)] if inner else []
    return text


def parse_flags(text: str, field: str = "flags") -> dict[str, Any]:
    """Parse `path=value,path=value` into a mapping; paths are checked, values parsed as JSON if they can be."""
    flags: dict[str, Any] = {}
    for item in split_top_level(text):
        if not item.strip():
            continue
        path, sep, value = item.partition("=")
        path = path.strip()
        if not sep or not path:
            raise InvalidInput(f"{field}: expected path=value, got {item.strip()!r}", field=field)
        if path in flags:
            raise InvalidInput(f"{field}: {path!r} is given twice", field=f"{field}.{path}")
        flags[path] = parse_flag_value(value)
    check_flag_paths(flags, field)
    return flags


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path in nested mappings, creating missing (or null) sections."""
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[leaf] = value


def remove_path(data: dict[str, Any], path: str) -> None:
    """Delete a dotted path from nested mappings when it is there."""
    *parents, leaf = path.split(".")
    node: Any = data
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)


def apply_flags(spec: RunCreate, flags: Mapping[str, Any], field: str = "flags") -> RunCreate:
    """The spec with each flag path set; an unknown path or an invalid value is an InvalidInput naming the flag."""
    check_flag_paths(flags, field)
    data = spec.model_dump(mode="json")
    for path, value in flags.items():
        set_path(data, path, value)
    try:
        return RunCreate.model_validate(data)
    except ValidationError as error:
        problem = error.errors()[0]
        location = ".".join(str(part) for part in problem["loc"])
        path = next((p for p in flags if location.startswith(p)), location)
        raise InvalidInput(f"{field}: {path}: {problem['msg']}", field=f"{field}.{path}") from error


def hash_dict(data: Mapping[str, Any]) -> str:
    """SHA-256 of a mapping's canonical JSON (sorted keys): stable across key order."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def model_mapping(
    spec: Mapping[str, Any],
    defaults: Mapping[str, str | None] | None = None,
    ignore_paths: Iterable[str] = (),
) -> dict[str, str | None]:
    """The Doctor's model per tier from a stored spec, falling back to defaults; ignored paths are left out."""
    doctor = spec.get("doctor") or {}
    ignored = set(ignore_paths)
    mapping: dict[str, str | None] = {}
    for path in MODEL_PATHS:
        if path in ignored:
            continue
        key = path.split(".", 1)[1]
        mapping[key] = doctor.get(key) or (defaults or {}).get(key)
    return mapping


def spec_fingerprint(spec: Mapping[str, Any], ignore_paths: Iterable[str] = ()) -> str:
    """Hash of a stored spec without its labels, run id, start flag and the experiment's flag paths."""
    data = copy.deepcopy(dict(spec))
    for key in ("labels", "run_id", "start"):
        data.pop(key, None)
    for path in ignore_paths:
        remove_path(data, path)
    return hash_dict(data)


def _git(cwd: Path, *args: str) -> str | None:
    """One line of git output in cwd, or None when git fails or prints nothing."""
    try:
        result = subprocess.run(
            ["git", "-C", str(cwd), *args],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = result.stdout.strip()
    return value if result.returncode == 0 and value else None


def operator_name() -> str | None:
    """Who launches the experiment: $USER (or the login name), None when unknown."""
    try:
        return getpass.getuser() or None
    except (KeyError, OSError):
        return None


class ExperimentMetadata(BaseModel):
    """Reproducibility context of an experiment: the code under test, who launched it, the hashes."""

    model_config = ConfigDict(extra="forbid")

    commit_sha: Annotated[str, StringConstraints(max_length=64)] | None = None
    remote_url: Annotated[str, StringConstraints(max_length=2000)] | None = None
    branch: Annotated[str, StringConstraints(max_length=255)] | None = None
    operator: Annotated[str, StringConstraints(max_length=200)] | None = None
    model_mapping: dict[str, str | None] = Field(default_factory=dict, max_length=10)
    model_mapping_hash: Sha256 | None = None
    run_spec_hash: Sha256 | None = None
    collected_at: datetime | None = None


def collect_metadata(
    cwd: Path, spec: RunCreate, default_models: Mapping[str, str | None]
) -> ExperimentMetadata:
    """Metadata of the git checkout at cwd (nulls outside one) and the hashes of the spec and model mapping."""
    mapping = model_mapping(spec.canonical(), default_models)
    return ExperimentMetadata(
        commit_sha=_git(cwd, "rev-parse", "HEAD"),
        remote_url=_git(cwd, "remote", "get-url", "origin"),
        branch=_git(cwd, "branch", "--show-current"),
        operator=operator_name(),
        model_mapping=mapping,
        model_mapping_hash=hash_dict(mapping),
        run_spec_hash=spec.spec_hash(),
        collected_at=utcnow(),
    )


@dataclass(frozen=True)
class RunFacts:
    """What the validity checks look at in one run."""

    run_id: str
    status: str
    spec: Mapping[str, Any]
    started_at: datetime | None
    created_at: datetime
    base_commit: str | None = None
    doctor_models: Mapping[str, frozenset[str]] = field(default_factory=dict)


def run_facts(session: Session, run_ids: Iterable[str]) -> dict[str, RunFacts]:
    """What the validity checks need of each existing run, including the models its Doctor used."""
    ids = sorted(set(run_ids))
    if not ids:
        return {}
    models: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for run_id, tier, model in session.execute(
        select(LlmUsageEvent.run_id, LlmUsageEvent.doctor_model_tier, LlmUsageEvent.model)
        .where(LlmUsageEvent.run_id.in_(ids), LlmUsageEvent.is_doctor_call.is_(True))
        .distinct()
    ).tuples():
        if run_id is not None:
            models[run_id][tier or "unknown"].add(model)
    return {
        run.id: RunFacts(
            run_id=run.id,
            status=run.status,
            spec=run.spec,
            started_at=run.started_at,
            created_at=run.created_at,
            base_commit=run.base_commit,
            doctor_models={tier: frozenset(m) for tier, m in models[run.id].items()},
        )
        for run in session.scalars(select(Run).where(Run.id.in_(ids)))
    }


def _run_errors(arm: str, run_id: str, facts: RunFacts | None) -> list[str]:
    if facts is None:
        return [f"{arm} run {run_id!r} not found"]
    if facts.status == RunStatus.CANCELLED:
        return [f"{arm} run {run_id!r} was cancelled, so its outcome measures nothing"]
    if RunStatus(facts.status) not in RUN_TERMINAL:
        return [f"{arm} run {run_id!r} is {facts.status}, not finished"]
    return []


def _differing_sections(
    control: Mapping[str, Any], treatment: Mapping[str, Any], ignore: Sequence[str]
) -> list[str]:
    """Top-level spec keys whose values differ once labels and the varied paths are set aside."""
    trimmed: list[dict[str, Any]] = []
    for spec in (control, treatment):
        data = {k: v for k, v in spec.items() if k not in {"labels", "run_id", "start"}}
        data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
        for path in ignore:
            remove_path(data, path)
        trimmed.append(data)
    keys = sorted({*trimmed[0], *trimmed[1]})
    return [k for k in keys if trimmed[0].get(k) != trimmed[1].get(k)]


def validate_pair(
    control_id: str,
    treatment_id: str,
    control: RunFacts | None,
    treatment: RunFacts | None,
    ignore_paths: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """(warnings, errors) of a pair: missing or unfinished runs are errors; drift of any kind a warning."""
    errors: list[str] = []
    if control_id == treatment_id:
        errors.append(f"control and treatment are the same run {control_id!r}")
    errors += _run_errors("control", control_id, control)
    errors += _run_errors("treatment", treatment_id, treatment)
    if control is None or treatment is None:
        return [], errors
    warnings: list[str] = []
    mapping_c = model_mapping(control.spec, ignore_paths=ignore_paths)
    mapping_t = model_mapping(treatment.spec, ignore_paths=ignore_paths)
    if mapping_c != mapping_t:
        warnings.append(f"model-mapping drift: control {mapping_c}, treatment {mapping_t}")
    for tier in sorted(set(control.doctor_models) & set(treatment.doctor_models)):
        used_c, used_t = control.doctor_models[tier], treatment.doctor_models[tier]
        if used_c != used_t:
            warnings.append(
                f"model-mapping drift: {tier} Doctor calls used {sorted(used_c)} in control, "
                f"{sorted(used_t)} in treatment"
            )
    if spec_fingerprint(control.spec, ignore_paths) != spec_fingerprint(
        treatment.spec, ignore_paths
    ):
        sections = _differing_sections(control.spec, treatment.spec, ignore_paths)
        warnings.append(
            "run-spec drift: the specs differ beyond labels and the experiment's flags"
            + (f" (in {', '.join(sections)})" if sections else "")
        )
    if (
        control.base_commit
        and treatment.base_commit
        and control.base_commit != treatment.base_commit
    ):
        warnings.append(
            f"code drift: control ran on {control.base_commit[:12]}, "
            f"treatment on {treatment.base_commit[:12]}"
        )
    start_c = control.started_at or control.created_at
    start_t = treatment.started_at or treatment.created_at
    gap = abs(start_c - start_t)
    if gap > MAX_START_GAP:
        warnings.append(
            f"temporal drift: the runs started {gap.total_seconds() / 3600:.1f} h apart "
            f"(more than {MAX_START_GAP.total_seconds() / 3600:.0f} h)"
        )
    return warnings, errors
