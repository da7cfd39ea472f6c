"""A/B analysis: flags, metadata hashes, pair validity, aggregates, and the database side (rolled back)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared import repos
from shared.analysis.ab import (
    AdHocReportRequest,
    ExperimentCreate,
    adhoc_report,
    create_experiment,
    delta_for_run,
    experiment_read,
    experiment_report,
)
from shared.analysis.ab_measure import PairResult, RunMetrics, aggregate, run_metrics
from shared.analysis.ab_metadata import (
    RunFacts,
    apply_flags,
    collect_metadata,
    hash_dict,
    model_mapping,
    parse_flags,
    spec_fingerprint,
    split_top_level,
    validate_pair,
)
from shared.errors import InvalidInput
from shared.metrics.recording import record_llm_usage, record_phase6
from shared.models import Attempt, Experiment, Phase, Run
from shared.runs import service
from shared.runs.spec import RunCreate
from shared.settings import Settings

T0 = datetime(2025, 12, 31, 12, 0, tzinfo=UTC)


def base_spec(**overrides: Any) -> RunCreate:
    data: dict[str, Any] = {
        "repo": "ab-demo",
        "goal": "make the checks pass",
        "phases": [{"id": "check", "run": "true", "max_attempts": 2}],
    }
    data.update(overrides)
    return RunCreate.model_validate(data)


def facts(run_id: str, spec: RunCreate | None = None, **overrides: Any) -> RunFacts:
    values: dict[str, Any] = {
        "run_id": run_id,
        "status": "succeeded",
        "spec": (spec or base_spec()).canonical(),
        "started_at": T0,
        "created_at": T0,
    }
    values.update(overrides)
    return RunFacts(**values)


def metrics(run_id: str, *, success: bool = True, **values: Any) -> RunMetrics:
    data: dict[str, Any] = {
        "run_id": run_id,
        "status": "succeeded" if success else "failed",
        "success": success,
        "total_tokens": 0,
        "doctor_tokens": 0,
        "doctor_calls": 0,
        "doctor_calls_skipped": 0,
        "retries": 0,
        "phases_total": 1,
        "phases_succeeded": int(success),
        "wall_time_s": 10.0,
    }
    data.update(values)
    data.setdefault("builder_tokens", data["total_tokens"] - data["doctor_tokens"])
    return RunMetrics(**data)


def pair(index: int, control: RunMetrics, treatment: RunMetrics, valid: bool = True) -> PairResult:
    return PairResult(
        index=index,
        control_run_id=control.run_id,
        treatment_run_id=treatment.run_id,
        valid=valid,
        warnings=[],
        errors=[] if valid else ["control run 'x' is running, not finished"],
        control=control,
        treatment=treatment,
        delta=None,
    )


# --- flags -----------------------------------------------------------------------------------


def test_parse_flags_reads_json_values_bare_lists_and_strings() -> None:
    flags = parse_flags(
        "hardening.enabled=false, hardening.disable=[python_missing_dep,transient_network],"
        'doctor.model_cheap=gpt-x,budgets.token_cap=5000,doctor.model_strong="1",intention.outcomes=[]'
    )
    assert flags == {
        "hardening.enabled": False,
        "hardening.disable": ["python_missing_dep", "transient_network"],
        "doctor.model_cheap": "gpt-x",
        "budgets.token_cap": 5000,
        "doctor.model_strong": "1",
        "intention.outcomes": [],
    }
    assert parse_flags("") == {}


def test_split_top_level_keeps_commas_inside_brackets_and_quotes() -> None:
    assert split_top_level('a=[1,2],b={"x":1,"y":2},c="p,q"') == [
        "a=[1,2]",
        'b={"x":1,"y":2}',
        'c="p,q"',
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("hardening.enabeld=false", "unknown flag 'hardening.enabeld'"),
        ("labels.arm=x", "unknown flag 'labels.arm'"),
        ("hardening.enabled", "expected path=value"),
        ("doctor.enabled=true,doctor.enabled=false", "'doctor.enabled' is given twice"),
    ],
)
def test_parse_flags_rejects_bad_items_naming_them(text: str, fragment: str) -> None:
    with pytest.raises(InvalidInput, match="--control") as caught:
        parse_flags(text, "--control")
    assert fragment in str(caught.value)


def test_apply_flags_sets_nested_paths_and_keeps_the_rest() -> None:
    spec = apply_flags(
        base_spec(),
        {
            "hardening.enabled": False,
            "hardening.disable": ["python_missing_dep"],
            "doctor.model_cheap": "gpt-x",
            "intention.outcomes": ["all tests pass"],
        },
    )
    assert spec.hardening.enabled is False and spec.hardening.disable == ["python_missing_dep"]
    assert spec.doctor.model_cheap == "gpt-x" and spec.doctor.enabled is True
    assert spec.intention is not None and spec.intention.outcomes == ["all tests pass"]
    assert spec.phases == base_spec().phases


def test_apply_flags_rejects_invalid_value_naming_the_flag() -> None:
    with pytest.raises(InvalidInput) as caught:
        apply_flags(base_spec(), {"doctor.max_calls_per_phase": 99}, "treatment_flags")
    assert caught.value.field == "treatment_flags.doctor.max_calls_per_phase"
    assert "less than or equal to 20" in str(caught.value)
    with pytest.raises(InvalidInput) as unknown:
        apply_flags(base_spec(), {"phases": []}, "control_flags")
    assert unknown.value.field == "control_flags.phases"


# --- metadata --------------------------------------------------------------------------------


def test_hash_dict_is_stable_across_key_order_and_sensitive_to_values() -> None:
    assert hash_dict({"a": 1, "b": {"c": [1, 2]}}) == hash_dict({"b": {"c": [1, 2]}, "a": 1})
    assert hash_dict({"a": 1}) != hash_dict({"a": 2})
    assert hash_dict({"a": [1, 2]}) != hash_dict({"a": [2, 1]})


def test_collect_metadata_reads_git_checkout_and_hashes_spec_and_models(
    make_repo: Callable[..., Path], git: Callable[..., str], tmp_path: Path
) -> None:
    checkout = make_repo({"README.md": "x\n"}, name="checkout")
    git(checkout, "remote", "add", "origin", "https://example.test/autopack.git")
    defaults = {"model_cheap": "cheap-1", "model_strong": None}
    meta = collect_metadata(checkout, base_spec(), defaults)
    assert meta.commit_sha == git(checkout, "rev-parse", "HEAD").strip()
    assert meta.remote_url == "https://example.test/autopack.git" and meta.branch == "main"
    assert meta.model_mapping == {"model_cheap": "cheap-1", "model_strong": None}
    assert meta.run_spec_hash == base_spec().spec_hash()

    again = collect_metadata(checkout, base_spec(), dict(reversed(defaults.items())))
    assert (again.model_mapping_hash, again.run_spec_hash) == (
        meta.model_mapping_hash,
        meta.run_spec_hash,
    )
    other_model = collect_metadata(checkout, base_spec(doctor={"model_cheap": "cheap-2"}), defaults)
    assert other_model.model_mapping_hash != meta.model_mapping_hash
    other_goal = collect_metadata(checkout, base_spec(goal="another goal"), defaults)
    assert other_goal.run_spec_hash != meta.run_spec_hash
    assert other_goal.model_mapping_hash == meta.model_mapping_hash

    plain = tmp_path / "not-a-checkout"
    plain.mkdir()
    outside = collect_metadata(plain, base_spec(), defaults)
    assert (outside.commit_sha, outside.remote_url, outside.branch) == (None, None, None)


def test_spec_fingerprint_ignores_labels_and_flag_paths_only() -> None:
    plain = base_spec().canonical()
    labelled = base_spec(labels={"arm": "control"}, hardening={"enabled": False}).canonical()
    assert spec_fingerprint(plain) != spec_fingerprint(labelled)
    assert spec_fingerprint(plain, ["hardening.enabled"]) == spec_fingerprint(
        labelled, ["hardening.enabled"]
    )
    assert spec_fingerprint(plain, ["hardening.enabled"]) != spec_fingerprint(
        base_spec(goal="other").canonical(), ["hardening.enabled"]
    )
    assert model_mapping(plain) == {"model_cheap": None, "model_strong": None}


# --- validity --------------------------------------------------------------------------------


def test_validate_pair_matched_runs_have_no_findings() -> None:
    assert validate_pair("c", "t", facts("c"), facts("t")) == ([], [])


def test_validate_pair_missing_unfinished_cancelled_and_same_runs_are_errors() -> None:
    warnings, errors = validate_pair("c", "t", None, facts("t", status="running"))
    assert errors == ["control run 'c' not found", "treatment run 't' is running, not finished"]
    assert warnings == []
    _, errors = validate_pair("c", "t", facts("c", status="cancelled"), facts("t"))
    assert errors == ["control run 'c' was cancelled, so its outcome measures nothing"]
    _, errors = validate_pair("c", "c", facts("c"), facts("c"))
    assert errors == ["control and treatment are the same run 'c'"]
    assert (
        validate_pair("c", "t", facts("c", status="timed_out"), facts("t", status="failed"))[1]
        == []
    )


def test_validate_pair_warns_when_started_more_than_24_hours_apart() -> None:
    day = timedelta(hours=24)
    at_limit = validate_pair("c", "t", facts("c"), facts("t", started_at=T0 + day))
    assert at_limit == ([], [])
    warnings, errors = validate_pair(
        "c", "t", facts("c", started_at=T0 + day + timedelta(minutes=6)), facts("t")
    )
    assert errors == [] and warnings == [
        "temporal drift: the runs started 24.1 h apart (more than 24 h)"
    ]
    never_started = facts("t", started_at=None, created_at=T0 - 2 * day, status="failed")
    assert validate_pair("c", "t", facts("c"), never_started)[0] == [
        "temporal drift: the runs started 48.0 h apart (more than 24 h)"
    ]


def test_validate_pair_warns_on_model_mapping_drift_unless_it_is_the_flag() -> None:
    treatment = facts("t", base_spec(doctor={"model_cheap": "gpt-x"}))
    warnings, errors = validate_pair("c", "t", facts("c"), treatment)
    assert errors == []
    assert warnings[0].startswith("model-mapping drift: control {'model_cheap': None")
    assert "'model_cheap': 'gpt-x'" in warnings[0]
    assert validate_pair("c", "t", facts("c"), treatment, ["doctor.model_cheap"]) == ([], [])
    observed = validate_pair(
        "c",
        "t",
        facts("c", doctor_models={"cheap": frozenset({"m-1"})}),
        facts("t", doctor_models={"cheap": frozenset({"m-2"}), "strong": frozenset({"s"})}),
    )
    assert observed == (
        ["model-mapping drift: cheap Doctor calls used ['m-1'] in control, ['m-2'] in treatment"],
        [],
    )


def test_validate_pair_warns_on_spec_drift_beyond_labels_and_flags() -> None:
    control = facts("c", base_spec(labels={"arm": "control"}, hardening={"enabled": False}))
    same = facts("t", base_spec(labels={"arm": "treatment"}))
    assert validate_pair("c", "t", control, same, ["hardening.enabled"]) == ([], [])
    drifted = facts("t", base_spec(goal="another goal", labels={"arm": "treatment"}))
    warnings, _ = validate_pair("c", "t", control, drifted, ["hardening.enabled"])
    assert warnings == [
        "run-spec drift: the specs differ beyond labels and the experiment's flags (in goal)"
    ]
    unflagged = validate_pair("c", "t", control, same)[0]
    assert unflagged == [
        "run-spec drift: the specs differ beyond labels and the experiment's flags (in hardening)"
    ]
    code = validate_pair(
        "c", "t", facts("c", base_commit="a" * 40), facts("t", base_commit="b" * 40)
    )
    assert code[0] == ["code drift: control ran on aaaaaaaaaaaa, treatment on bbbbbbbbbbbb"]


# --- aggregates ------------------------------------------------------------------------------


def test_aggregate_known_numbers_over_valid_pairs_only() -> None:
    pairs = [
        pair(
            0,
            metrics(
                "c0",
                success=False,
                total_tokens=1000,
                doctor_tokens=800,
                doctor_calls=2,
                retries=2,
                wall_time_s=30.0,
            ),
            metrics(
                "t0",
                total_tokens=400,
                doctor_tokens=200,
                doctor_calls=1,
                doctor_calls_skipped=1,
                retries=1,
                wall_time_s=20.0,
            ),
        ),
        pair(
            1,
            metrics(
                "c1",
                total_tokens=600,
                doctor_tokens=600,
                doctor_calls=1,
                retries=1,
                wall_time_s=12.0,
            ),
            metrics(
                "t1",
                total_tokens=600,
                doctor_tokens=0,
                doctor_calls=0,
                doctor_calls_skipped=1,
                retries=1,
                wall_time_s=14.0,
            ),
        ),
        pair(
            2,
            metrics("c2", success=False, total_tokens=900, retries=3, wall_time_s=None),
            metrics("t2", total_tokens=0, retries=0, wall_time_s=5.0),
        ),
        pair(3, metrics("c3", total_tokens=99_999), metrics("t3", total_tokens=0), valid=False),
    ]
    agg = aggregate(pairs)
    assert (agg.valid_pairs, agg.invalid_pairs) == (3, 1)
    tokens = agg.metrics["total_tokens"]  # deltas 600, 0, 900
    assert tokens.n == 3 and tokens.delta_total == 1500 and tokens.delta_median == 600
    assert tokens.delta_mean == pytest.approx(500.0)
    assert tokens.delta_stdev == pytest.approx(458.2575695)
    assert tokens.control_mean == pytest.approx(
        2500 / 3
    ) and tokens.treatment_mean == pytest.approx(1000 / 3)
    assert agg.metrics["builder_tokens"].delta_total == 1500 - 1200
    assert agg.metrics["doctor_tokens"].delta_total == 1200
    assert agg.metrics["doctor_calls"].delta_total == 2
    assert agg.metrics["doctor_calls_skipped"].delta_mean == pytest.approx(-2 / 3)
    assert agg.metrics["retries"].delta_total == 4
    wall = agg.metrics["wall_time_s"]  # pair 2 has no control wall time: deltas 10, -2
    assert wall.n == 2 and wall.delta_mean == pytest.approx(4.0)
    assert wall.delta_stdev == pytest.approx(8.485281374)
    success = agg.metrics["success"]
    assert agg.success_rate_control == pytest.approx(1 / 3) and agg.success_rate_treatment == 1.0
    assert success.delta_mean == pytest.approx(-2 / 3)
    assert (agg.tokens_control_total, agg.tokens_treatment_total, agg.tokens_saved_total) == (
        2500,
        1000,
        1500,
    )
    assert agg.tokens_saved_percent == pytest.approx(60.0)


def test_aggregate_of_one_pair_has_no_stdev_and_of_none_no_means() -> None:
    one = aggregate([pair(0, metrics("c", total_tokens=5), metrics("t", total_tokens=3))])
    assert (
        one.metrics["total_tokens"].delta_mean == 2
        and one.metrics["total_tokens"].delta_stdev is None
    )
    empty = aggregate([pair(0, metrics("c"), metrics("t"), valid=False)])
    assert empty.valid_pairs == 0 and empty.metrics["total_tokens"].delta_mean is None
    assert empty.success_rate_control is None and empty.tokens_saved_percent is None


# --- database --------------------------------------------------------------------------------


@pytest.fixture
def registered(db: Session, tmp_path: Path) -> str:
    repos.add(db, "ab-demo", str(tmp_path))
    return "ab-demo"


def finish(db: Session, run_id: str, status: str, seconds: float = 10.0) -> None:
    db.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(status=status, started_at=T0, finished_at=T0 + timedelta(seconds=seconds))
    )


def usage(db: Session, run_id: str, tokens: int, *, doctor: bool) -> None:
    record_llm_usage(
        db,
        run_id=run_id,
        provider="openai",
        model="doc-cheap" if doctor else "builder",
        role="doctor" if doctor else "builder",
        total_tokens=tokens,
        is_doctor_call=doctor,
        doctor_model_tier="cheap" if doctor else None,
    )


def test_run_metrics_counts_tokens_calls_skips_retries_and_wall_time(
    db: Session, settings: Settings, registered: str
) -> None:
    run_id = service.submit(
        db,
        settings,
        base_spec(
            phases=[{"id": "a", "run": "true"}, {"id": "b", "run": "true", "max_attempts": 3}]
        ),
    ).run.id
    finish(db, run_id, "succeeded", seconds=42.5)
    phases = {p.phase_id: p for p in db.scalars(select(Phase).where(Phase.run_id == run_id))}
    for phase_id, count in (("a", 1), ("b", 3)):
        phases[phase_id].status = "succeeded"
        for number in range(1, count + 1):
            db.add(
                Attempt(
                    run_id=run_id,
                    phase_pk=phases[phase_id].pk,
                    number=number,
                    worker="w",
                    lease_token=1,
                    status="failed" if number < count else "succeeded",
                )
            )
    usage(db, run_id, 100, doctor=False)
    usage(db, run_id, 250, doctor=True)
    usage(db, run_id, 50, doctor=True)
    record_phase6(db, run_id=run_id, phase_id="b", doctor_call_skipped=True)
    record_phase6(db, run_id=run_id, phase_id="b", doctor_call_skipped=False)
    db.flush()
    found = run_metrics(db, [run_id, "no-such-run"])
    assert list(found) == [run_id]
    assert found[run_id].model_dump() == {
        "run_id": run_id,
        "status": "succeeded",
        "success": True,
        "total_tokens": 400,
        "builder_tokens": 100,
        "doctor_tokens": 300,
        "doctor_calls": 2,
        "doctor_calls_skipped": 1,
        "retries": 2,
        "phases_total": 2,
        "phases_succeeded": 2,
        "wall_time_s": 42.5,
    }


def experiment_request(pairs: int = 2, **overrides: Any) -> ExperimentCreate:
    data: dict[str, Any] = {
        "name": "hardening on vs off",
        "spec": base_spec(labels={"team": "infra", "arm": "ignored"}).model_dump(mode="json"),
        "control_flags": {"hardening.enabled": False},
        "treatment_flags": {},
        "pairs": pairs,
        "metadata": {"commit_sha": "abc123", "operator": "alice", "run_spec_hash": "0" * 64},
    }
    data.update(overrides)
    return ExperimentCreate.model_validate(data)


def test_create_experiment_stores_runs_with_arm_flags_labels_and_alternating_order(
    db: Session, settings: Settings, registered: str
) -> None:
    created = create_experiment(db, settings, experiment_request(pairs=2))
    exp = created.experiment_id
    assert created.to_enqueue == [
        f"{exp}-0-control",
        f"{exp}-0-treatment",
        f"{exp}-1-treatment",
        f"{exp}-1-control",
    ]
    read = experiment_read(db, exp)
    assert (read.commit_sha, read.operator, read.metadata) == (
        "abc123",
        "alice",
        {"run_spec_hash": "0" * 64, "model_mapping": {}},
    )
    assert [(p.index, p.control_status, p.treatment_status, p.valid) for p in read.pairs] == [
        (0, "queued", "queued", None),
        (1, "queued", "queued", None),
    ]
    control = db.get(Run, f"{exp}-1-control")
    treatment = db.get(Run, f"{exp}-1-treatment")
    assert control is not None and treatment is not None
    assert control.labels == {"team": "infra", "arm": "control", "experiment": exp, "pair": "1"}
    assert control.spec["hardening"]["enabled"] is False
    assert treatment.spec["hardening"]["enabled"] is True
    assert read.spec_hash == base_spec(labels={"team": "infra", "arm": "ignored"}).spec_hash()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"control_flags": {"hardening.enabeld": False}}, "control_flags.hardening.enabeld"),
        ({"treatment_flags": {"doctor.enabled": "maybe"}}, "treatment_flags.doctor.enabled"),
        ({"spec": base_spec(run_id="fixed").model_dump(mode="json")}, "spec.run_id"),
        ({"spec": base_spec(repo="nowhere").model_dump(mode="json")}, "spec.repo"),
    ],
)
def test_create_experiment_rejects_bad_input_before_writing(
    db: Session, settings: Settings, registered: str, overrides: dict[str, Any], field: str
) -> None:
    before = db.scalar(select(func.count()).select_from(Experiment))
    with pytest.raises(InvalidInput) as caught:
        create_experiment(db, settings, experiment_request(**overrides))
    assert caught.value.field == field
    assert db.scalar(select(func.count()).select_from(Experiment)) == before


def test_experiment_report_stores_validity_that_delta_for_run_reads(
    db: Session, settings: Settings, registered: str
) -> None:
    exp = create_experiment(db, settings, experiment_request(pairs=2)).experiment_id
    c0, t0, c1, t1 = (f"{exp}-{i}-{arm}" for i in (0, 1) for arm in ("control", "treatment"))
    assert delta_for_run(db, t0) is None
    finish(db, c0, "failed")
    finish(db, t0, "succeeded")
    finish(db, t1, "succeeded")
    usage(db, c0, 700, doctor=True)
    usage(db, t0, 200, doctor=True)
    db.flush()
    report = experiment_report(db, exp)
    assert [(p.index, p.valid, p.errors) for p in report.pairs] == [
        (0, True, []),
        (1, False, [f"control run '{c1}' is queued, not finished"]),
    ]
    assert report.ignored_paths == ["hardening.enabled"]
    assert report.aggregate.valid_pairs == 1 and report.aggregate.tokens_saved_total == 500
    assert report.experiment is not None and report.experiment.id == exp
    delta = delta_for_run(db, t0)
    assert delta is not None and delta.model_dump() == {
        "experiment_id": exp,
        "pair_id": "0",
        "tokens_saved": 500,
    }
    assert delta_for_run(db, c0) == delta
    assert delta_for_run(db, t1) is None and delta_for_run(db, "elsewhere") is None
    stored = experiment_read(db, exp).pairs
    assert (stored[0].valid, stored[0].tokens_saved, stored[1].valid, stored[1].tokens_saved) == (
        True,
        500,
        False,
        None,
    )


def test_adhoc_report_pairs_by_position_and_rejects_mismatched_lists(
    db: Session, settings: Settings, registered: str
) -> None:
    runs = [service.submit(db, settings, base_spec()).run.id for _ in range(2)]
    for run_id in runs:
        finish(db, run_id, "succeeded")
    db.flush()
    report = adhoc_report(
        db, AdHocReportRequest(control_runs=[runs[0], "gone"], treatment_runs=[runs[1], runs[0]])
    )
    assert report.experiment is None
    assert [(p.valid, p.errors) for p in report.pairs] == [
        (True, []),
        (False, ["control run 'gone' not found"]),
    ]
    with pytest.raises(InvalidInput, match="paired by position"):
        adhoc_report(db, AdHocReportRequest(control_runs=runs, treatment_runs=runs[:1]))
    with pytest.raises(InvalidInput, match="unknown flag 'goal'"):
        adhoc_report(
            db,
            AdHocReportRequest(
                control_runs=runs[:1], treatment_runs=runs[1:], ignore_paths=["goal"]
            ),
        )
