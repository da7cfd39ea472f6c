"""A/B experiments end to end: the real API, a real worker, the `ab` CLI, the dashboard's category 4."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cli.ab import render_markdown
from shared.analysis.ab import ABReport
from shared.analysis.ab_measure import (
    CONVENTION,
    PairResult,
    RunMetrics,
    aggregate,
    metric_deltas,
)
from shared.settings import Settings
from tests.fakes.wheels import build_wheel
from tests.services import Service, service_env, wait_for_status

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"succeeded", "failed", "timed_out", "cancelled"}


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("ab-wheels"), "tinydep", "1.0", "VALUE = 42\n")


@pytest.fixture
def ab_cli(settings: Settings, api_url: str, api_key: str) -> Callable[..., Any]:
    """Run `ab ARGS` (the Typer sub-app) as a subprocess against the test API."""
    env = service_env(settings, AUTOPACK_API_URL=api_url, AUTOPACK_API_KEY=api_key, COLUMNS="200")

    def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from cli.ab import app; app()", *args],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=280,
        )

    return run


def test_hardening_experiment_treatment_fixes_missing_dependency_control_fails(
    client: httpx.Client,
    worker: Service,
    register_repo: Callable[..., str],
    make_repo: Callable[..., Path],
    git: Callable[..., str],
    wheelhouse: Path,
    ab_cli: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    repo = register_repo(
        {
            "requirements.txt": f"{wheelhouse}\n",
            "check.py": "import tinydep\nprint('value', tinydep.VALUE)\n",
        }
    )
    spec_file = tmp_path / "ab.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "repo": repo,
                "goal": "the check imports its declared dependency",
                "phases": [
                    {"id": "venv", "run": f"{sys.executable} -m venv .venv", "timeout_s": 300},
                    {
                        "id": "check",
                        "run": ".venv/bin/python check.py",
                        "max_attempts": 2,
                        "timeout_s": 300,
                    },
                ],
            }
        )
    )
    checkout = make_repo({"README.md": "code under test\n"}, name="checkout")
    git(checkout, "remote", "add", "origin", "https://example.test/autopack.git")
    report_json, report_md = tmp_path / "report.json", tmp_path / "report.md"

    launched = ab_cli(
        "launch", str(spec_file), "--control", "hardening.enabled=false", "--pairs", "2",
        "--name", "hardening off vs on", "--wait", "--timeout", "240",
        "--json", str(report_json), "--markdown", str(report_md),
        cwd=checkout,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stdout + launched.stderr
    report = json.loads(report_json.read_text())
    experiment = report["experiment"]
    exp_id = experiment["id"]
    assert experiment["control_flags"] == {"hardening.enabled": False}
    assert experiment["treatment_flags"] == {}
    assert experiment["commit_sha"] == git(checkout, "rev-parse", "HEAD").strip()
    assert (experiment["branch"], experiment["remote_url"]) == (
        "main",
        "https://example.test/autopack.git",
    )
    assert experiment["operator"] and len(experiment["metadata"]["model_mapping_hash"]) == 64
    assert len(experiment["metadata"]["run_spec_hash"]) == 64

    pairs = report["pairs"]
    assert [(p["index"], p["valid"], p["warnings"], p["errors"]) for p in pairs] == [
        (0, True, [], []),
        (1, True, [], []),
    ]
    for p in pairs:
        assert (p["control"]["status"], p["treatment"]["status"]) == ("failed", "succeeded")
        assert p["control"]["retries"] == 1 and p["treatment"]["retries"] == 1
        assert p["delta"]["total_tokens"] == 0 and p["delta"]["success"] == -1
    agg = report["aggregate"]
    assert (agg["valid_pairs"], agg["invalid_pairs"]) == (2, 0)
    assert (agg["success_rate_control"], agg["success_rate_treatment"]) == (0.0, 1.0)
    assert agg["metrics"]["total_tokens"]["delta_mean"] == 0
    assert agg["metrics"]["success"]["delta_stdev"] == 0
    assert report_md.read_text() in launched.stdout
    markdown = report_md.read_text()
    assert markdown.startswith("# A/B report: hardening off vs on\n")
    assert "- control flags: `hardening.enabled=false`" in markdown
    assert "- success rate: control 0.0%, treatment 100.0%" in markdown
    assert "- tokens: control 0, treatment 0, saved by the treatment 0\n" in markdown
    assert "| total tokens | 2 | 0 | 0 | 0 | 0 | 0 | 0 |" in markdown
    assert "The treatment succeeded more often (100.0% against 0.0%)." in markdown

    runs = client.get("/runs", params={"label": f"experiment={exp_id}"}).json()["items"]
    assert sorted((r["labels"]["pair"], r["labels"]["arm"]) for r in runs) == [
        ("0", "control"),
        ("0", "treatment"),
        ("1", "control"),
        ("1", "treatment"),
    ]
    treatment = client.get(f"/runs/{pairs[0]['treatment_run_id']}").json()
    check = [(a["status"], a["mitigation"]) for a in treatment["phases"][1]["attempts"]]
    assert check == [("failed", "python_missing_dep"), ("succeeded", None)]

    stored = client.get(f"/experiments/{exp_id}").json()["pairs"]
    assert [(p["valid"], p["tokens_saved"]) for p in stored] == [(True, 0), (True, 0)]
    metrics = client.get(
        f"/dashboard/runs/{pairs[0]['treatment_run_id']}/consolidated-metrics"
    ).json()
    assert metrics["ab_delta"] == {"experiment_id": exp_id, "pair_id": "0", "tokens_saved": 0}
    assert isinstance(metrics["ab_delta"]["tokens_saved"], int)
    outsider = client.post(
        "/runs",
        json={"repo": repo, "goal": "g", "start": False, "phases": [{"id": "a", "run": "true"}]},
    ).json()["id"]
    assert client.get(f"/dashboard/runs/{outsider}/consolidated-metrics").json()["ab_delta"] == {
        "experiment_id": None,
        "pair_id": None,
        "tokens_saved": None,
    }

    controls = ",".join(p["control_run_id"] for p in pairs)
    treatments = ",".join(p["treatment_run_id"] for p in pairs)
    adhoc_json = tmp_path / "adhoc.json"
    adhoc = ab_cli(
        "report", "--control-runs", controls, "--treatment-runs", treatments,
        "--json", str(adhoc_json),
    )  # fmt: skip
    assert adhoc.returncode == 0, adhoc.stderr
    assert "# A/B report: ad-hoc pairs" in adhoc.stdout
    unlabelled = json.loads(adhoc_json.read_text())
    assert unlabelled["experiment"] is None and unlabelled["aggregate"]["valid_pairs"] == 2
    assert unlabelled["pairs"][0]["warnings"] == [
        "run-spec drift: the specs differ beyond labels and the experiment's flags (in hardening)"
    ]
    ignoring = ab_cli(
        "report", "--control-runs", controls, "--treatment-runs", treatments,
        "--ignore-paths", "hardening.enabled",
    )  # fmt: skip
    assert ignoring.returncode == 0 and "### Warnings" not in ignoring.stdout


def test_pair_with_unfinished_run_is_invalid_and_excluded(
    client: httpx.Client,
    worker: Service,
    register_repo: Callable[..., str],
    ab_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    body = {
        "name": "unfinished pair",
        "spec": {
            "repo": register_repo(),
            "goal": "echo",
            "start": False,
            "phases": [{"id": "a", "run": "true"}],
        },
        "control_flags": {"doctor.enabled": False},
        "treatment_flags": {"doctor.enabled": True},
        "pairs": 2,
    }
    created = client.post("/experiments", json=body)
    assert created.status_code == 202, created.text
    experiment = created.json()
    exp_id = experiment["id"]
    assert [(p["control_status"], p["treatment_status"]) for p in experiment["pairs"]] == [
        ("created", "created"),
        ("created", "created"),
    ]
    (c0, t0), (c1, t1) = ((p["control_run_id"], p["treatment_run_id"]) for p in experiment["pairs"])
    for run_id in (c0, t0, t1):
        assert client.post(f"/runs/{run_id}/execute").status_code == 202
    for run_id in (c0, t0, t1):
        assert wait_for_status(client, run_id, TERMINAL, timeout=120)["status"] == "succeeded"

    report = client.get(f"/experiments/{exp_id}/report").json()
    assert [(p["valid"], p["errors"]) for p in report["pairs"]] == [
        (True, []),
        (False, [f"control run '{c1}' is created, not finished"]),
    ]
    assert report["pairs"][1]["delta"] is None
    agg = report["aggregate"]
    assert (agg["valid_pairs"], agg["invalid_pairs"]) == (1, 1)
    assert agg["metrics"]["success"]["n"] == 1
    assert (agg["success_rate_control"], agg["success_rate_treatment"]) == (1.0, 1.0)
    stored = client.get(f"/experiments/{exp_id}").json()["pairs"]
    assert [(p["valid"], p["tokens_saved"]) for p in stored] == [(True, 0), (False, None)]
    assert stored[1]["errors"] == [f"control run '{c1}' is created, not finished"]
    dashboard = client.get(f"/dashboard/runs/{t1}/consolidated-metrics").json()
    assert dashboard["ab_delta"]["tokens_saved"] is None

    shown = ab_cli("report", exp_id)
    assert shown.returncode == 0, shown.stderr
    assert "## Summary: 1 valid pair(s) of 2" in shown.stdout
    assert (
        "## Invalid pairs (excluded from the summary)\n\n"
        f"- pair 1: control run '{c1}' is created, not finished"
    ) in shown.stdout
    assert "Only 1 valid pair(s)" in shown.stdout


def test_experiment_input_errors_name_the_field(
    client: httpx.Client,
    api_url: str,
    register_repo: Callable[..., str],
    ab_cli: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    repo = register_repo()
    spec = {"repo": repo, "goal": "g", "phases": [{"id": "a", "run": "true"}]}
    bad = client.post(
        "/experiments",
        json={"spec": spec, "control_flags": {"hardening.enabeld": False}, "pairs": 1},
    )
    assert bad.status_code == 422
    [detail] = bad.json()["detail"]
    assert detail["field"] == "control_flags.hardening.enabeld"
    assert "unknown flag 'hardening.enabeld'" in detail["msg"]
    assert client.get("/runs", params={"repo": repo}).json()["items"] == []
    assert client.post("/experiments", json={"spec": spec, "pairs": 0}).status_code == 422
    mismatched = client.post(
        "/experiments/report", json={"control_runs": ["a", "b"], "treatment_runs": ["c"]}
    )
    assert mismatched.status_code == 422 and mismatched.json()["detail"][0]["field"] == (
        "treatment_runs"
    )
    assert client.get("/experiments/exp-nope").status_code == 404
    assert httpx.get(f"{api_url}/experiments/exp-nope").status_code == 401

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    typo = ab_cli("launch", str(spec_file), "--pairs", "1", "--treatment", "doctor.enabled=maybe")
    assert typo.returncode == 2 and "Traceback" not in typo.stderr
    assert "--treatment: doctor.enabled: Input should be a valid boolean" in typo.stderr
    both = ab_cli("report", "exp-x", "--control-runs", "a", "--treatment-runs", "b")
    assert both.returncode == 2 and "not both" in both.stderr


def test_markdown_report_shows_known_deltas_warnings_and_exclusions() -> None:
    def run(run_id: str, success: bool, tokens: int, doctor: int, calls: int) -> RunMetrics:
        return RunMetrics(
            run_id=run_id,
            status="succeeded" if success else "failed",
            success=success,
            total_tokens=tokens,
            builder_tokens=tokens - doctor,
            doctor_tokens=doctor,
            doctor_calls=calls,
            doctor_calls_skipped=0 if calls else 1,
            retries=calls,
            phases_total=1,
            phases_succeeded=int(success),
            wall_time_s=10.0 + calls,
        )

    def pair(index: int, control: RunMetrics, treatment: RunMetrics, **extra: Any) -> PairResult:
        valid = not extra.get("errors")
        return PairResult(
            index=index,
            control_run_id=control.run_id,
            treatment_run_id=treatment.run_id,
            valid=valid,
            warnings=extra.get("warnings", []),
            errors=extra.get("errors", []),
            control=control,
            treatment=treatment,
            delta=metric_deltas(control, treatment) if valid else None,
        )

    pairs = [
        pair(0, run("c0", False, 1200, 1200, 2), run("t0", True, 0, 0, 0)),
        pair(1, run("c1", True, 800, 600, 1), run("t1", True, 200, 0, 0), warnings=["temporal drift: the runs started 30.0 h apart (more than 24 h)"]),
        pair(2, run("c2", True, 5, 0, 0), run("t2", True, 5, 0, 0), errors=["treatment run 't2' is running, not finished"]),
    ]  # fmt: skip
    report = ABReport(
        experiment=None,
        generated_at=datetime(2025, 12, 31, tzinfo=UTC),
        convention=CONVENTION,
        ignored_paths=["doctor.enabled"],
        pairs=pairs,
        aggregate=aggregate(pairs),
    )
    markdown = render_markdown(report)
    assert "| total tokens | 2 | 1000 | 100 | 900 | 900 | 424.26 | 1800 |" in markdown
    assert "| Doctor calls made | 2 | 1.50 | 0 | 1.50 | 1.50 | 0.71 | 3 |" in markdown
    assert "- tokens: control 2000, treatment 200, saved by the treatment 1800 (90.0% of the control's)" in markdown  # fmt: skip
    assert "The treatment spent 900 fewer tokens per pair on average." in markdown
    assert "| 2 | `c2` | `t2` | no | n/a | n/a | n/a | n/a | 1/1 | n/a | n/a |" in markdown
    assert "- pair 1: temporal drift: the runs started 30.0 h apart (more than 24 h)" in markdown
    assert "- pair 2: treatment run 't2' is running, not finished" in markdown
