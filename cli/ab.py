"""`autopack ab`: launch A/B experiments over the API and report their deltas as Markdown and JSON."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Annotated, Any, Final

import httpx
import typer

from cli.client import make_client, request
from cli.common import EXIT_FAILED, console, fail, load_spec
from cli.context import load_settings
from shared.analysis.ab import MAX_PAIRS, ABReport, ExperimentSummary
from shared.analysis.ab_measure import PairResult
from shared.analysis.ab_metadata import apply_flags, collect_metadata, parse_flags
from shared.errors import InvalidInput
from shared.runs.states import TERMINAL_RUN_STATUSES

app = typer.Typer(
    help="A/B experiments: matched control/treatment runs and the measured deltas between them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

LABELS: Final = {
    "total_tokens": "total tokens",
    "builder_tokens": "builder tokens",
    "doctor_tokens": "Doctor tokens",
    "doctor_calls": "Doctor calls made",
    "doctor_calls_skipped": "Doctor calls skipped",
    "success": "success (1/0)",
    "retries": "retries",
    "wall_time_s": "wall time (s)",
}
FEW_PAIRS: Final = 3

JsonOption = Annotated[
    Path | None, typer.Option("--json", help="Also write the report as JSON to this file.")
]
MarkdownOption = Annotated[
    Path | None, typer.Option("--markdown", help="Also write the Markdown report to this file.")
]


def _num(value: float | None) -> str:
    """A number for a table: integers plainly, others to two decimals, n/a for none."""
    if value is None:
        return "n/a"
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _flags_text(flags: dict[str, Any]) -> str:
    if not flags:
        return "none (the base spec)"
    return ", ".join(f"`{path}={json.dumps(value)}`" for path, value in flags.items())


def _header(experiment: ExperimentSummary | None, report: ABReport) -> list[str]:
    if experiment is None:
        return [
            "# A/B report: ad-hoc pairs",
            "",
            f"- ignored setting paths: {', '.join(report.ignored_paths) or 'none'}",
        ]
    meta = experiment.metadata
    code = (
        f"commit `{experiment.commit_sha or 'unknown'}` on branch `{experiment.branch or 'unknown'}`"
        f" of `{experiment.remote_url or 'no remote'}`, launched by `{experiment.operator or 'unknown'}`"
    )
    return [
        f"# A/B report: {experiment.name or experiment.id}",
        "",
        f"- experiment: `{experiment.id}`, created {experiment.created_at:%Y-%m-%d %H:%M:%S} UTC",
        f"- control flags: {_flags_text(experiment.control_flags)}",
        f"- treatment flags: {_flags_text(experiment.treatment_flags)}",
        f"- code under test: {code}",
        f"- base run spec sha256 `{experiment.spec_hash}`; model mapping "
        f"{json.dumps(meta.get('model_mapping', {}))} sha256 `{meta.get('model_mapping_hash', 'n/a')}`",
    ]


def _summary(report: ABReport) -> list[str]:
    agg = report.aggregate
    lines = [
        f"## Summary: {agg.valid_pairs} valid pair(s) of {len(report.pairs)}",
        "",
        "| metric | n | control mean | treatment mean | Δ mean | Δ median | Δ stdev | Δ total |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, label in LABELS.items():
        m = agg.metrics[name]
        lines.append(
            f"| {label} | {m.n} | {_num(m.control_mean)} | {_num(m.treatment_mean)} | "
            f"{_num(m.delta_mean)} | {_num(m.delta_median)} | {_num(m.delta_stdev)} | "
            f"{_num(m.delta_total)} |"
        )
    share = (
        ""
        if agg.tokens_saved_percent is None
        else f" ({agg.tokens_saved_percent:.1f}% of the control's)"
    )
    lines += [
        "",
        f"- success rate: control {_percent(agg.success_rate_control)}, "
        f"treatment {_percent(agg.success_rate_treatment)}",
        f"- tokens: control {agg.tokens_control_total}, treatment {agg.tokens_treatment_total}, "
        f"saved by the treatment {agg.tokens_saved_total}{share}",
    ]
    return lines


def _interpretation(report: ABReport) -> list[str]:
    agg = report.aggregate
    if agg.valid_pairs == 0:
        return ["## Interpretation", "", "No valid pair: nothing can be concluded yet."]
    tokens = agg.metrics["total_tokens"].delta_mean or 0.0
    if tokens > 0:
        verdict = f"The treatment spent {_num(tokens)} fewer tokens per pair on average."
    elif tokens < 0:
        verdict = f"The treatment spent {_num(-tokens)} more tokens per pair on average."
    else:
        verdict = "Both arms spent the same tokens."
    control, treatment = agg.success_rate_control or 0.0, agg.success_rate_treatment or 0.0
    if treatment != control:
        better = "more" if treatment > control else "less"
        verdict += f" The treatment succeeded {better} often ({_percent(treatment)} against {_percent(control)})."
    else:
        verdict += f" Both arms succeeded equally often ({_percent(treatment)})."
    lines = ["## Interpretation", "", verdict]
    if agg.valid_pairs < FEW_PAIRS:
        lines.append(
            f"Only {agg.valid_pairs} valid pair(s): treat this as an indication, not a measurement."
        )
    return lines


def _pair_row(pair: PairResult) -> str:
    d = pair.delta
    success = (
        f"{int(pair.control.success)}/{int(pair.treatment.success)}"
        if pair.control and pair.treatment
        else "n/a"
    )
    cells = (
        [d.total_tokens, d.doctor_tokens, d.doctor_calls, d.doctor_calls_skipped]
        if d
        else [None] * 4
    )
    tail = [d.retries, d.wall_time_s] if d else [None, None]
    return (
        f"| {pair.index} | `{pair.control_run_id}` | `{pair.treatment_run_id}` | "
        f"{'yes' if pair.valid else 'no'} | "
        + " | ".join(_num(v) for v in cells)
        + f" | {success} | "
        + " | ".join(_num(v) for v in tail)
        + " |"
    )


def _pairs(report: ABReport) -> list[str]:
    lines = [
        "## Pairs",
        "",
        "| pair | control run | treatment run | valid | Δ total tokens | Δ Doctor tokens "
        "| Δ Doctor calls | Δ Doctor skips | success c/t | Δ retries | Δ wall time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(_pair_row(pair) for pair in report.pairs),
    ]
    warned = [(p.index, w) for p in report.pairs for w in p.warnings]
    if warned:
        lines += ["", "### Warnings", "", *(f"- pair {i}: {w}" for i, w in warned)]
    invalid = [p for p in report.pairs if not p.valid]
    if invalid:
        lines += ["", "## Invalid pairs (excluded from the summary)", ""]
        lines += [f"- pair {p.index}: {'; '.join(p.errors) or 'no metrics'}" for p in invalid]
    return lines


def render_markdown(report: ABReport) -> str:
    """The report as Markdown: header, summary statistics, interpretation, pairs, invalid pairs."""
    sections = [
        _header(report.experiment, report),
        [f"Convention: {report.convention}."],
        _summary(report),
        _interpretation(report),
        _pairs(report),
    ]
    return "\n\n".join("\n".join(section) for section in sections) + "\n"


def _emit(report: ABReport, json_file: Path | None, markdown_file: Path | None) -> None:
    """Print the Markdown report; write the JSON and Markdown files asked for."""
    markdown = render_markdown(report)
    typer.echo(markdown)
    if json_file is not None:
        json_file.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    if markdown_file is not None:
        markdown_file.write_text(markdown, encoding="utf-8")


def _parse(option: str, text: str) -> dict[str, Any]:
    try:
        return parse_flags(text, option)
    except InvalidInput as error:
        fail(str(error))


def _run_ids(option: str, text: str) -> list[str]:
    ids = [item.strip() for item in text.split(",") if item.strip()]
    if not ids:
        fail(f"{option}: give comma-separated run ids")
    return ids


def _wait(client: httpx.Client, experiment_id: str, timeout_s: float | None) -> None:
    """Poll the experiment with backoff until every run is terminal (exit 1 past the timeout)."""
    delay, deadline = 0.5, (time.monotonic() + timeout_s) if timeout_s else None
    with console.status(f"waiting for {experiment_id}") as status:
        while True:
            pairs = request(client, "GET", f"/experiments/{experiment_id}").json()["pairs"]
            states = [s for p in pairs for s in (p["control_status"], p["treatment_status"])]
            done = sum(s in TERMINAL_RUN_STATUSES for s in states)
            status.update(f"{experiment_id}: {done} of {len(states)} runs finished")
            if done == len(states):
                return
            if deadline and time.monotonic() > deadline:
                fail(
                    f"{experiment_id}: {done} of {len(states)} runs finished after {timeout_s}s",
                    EXIT_FAILED,
                )
            time.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 1.5, 5)


@app.command("launch")
def launch_command(
    spec_file: Annotated[
        Path, typer.Argument(metavar="SPEC", help="Base run file (YAML or JSON).")
    ],
    pairs: Annotated[int, typer.Option("--pairs", min=1, max=MAX_PAIRS, help="Pairs to run.")],
    control: Annotated[
        str,
        typer.Option(
            "--control", help="Control flags: path=value,... (e.g. hardening.enabled=false)."
        ),
    ] = "",
    treatment: Annotated[
        str, typer.Option("--treatment", help="Treatment flags: path=value,...")
    ] = "",
    name: Annotated[str | None, typer.Option("--name", help="A name for the experiment.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for every run, then report.")] = False,
    timeout: Annotated[
        float | None, typer.Option(help="Give up waiting after this many seconds.")
    ] = None,
    json_file: JsonOption = None,
    markdown_file: MarkdownOption = None,
) -> None:
    """Launch N control/treatment pairs of a run spec, recording the code under test and the hashes."""
    spec = load_spec(spec_file)
    flags = {"control": _parse("--control", control), "treatment": _parse("--treatment", treatment)}
    for arm, arm_flags in flags.items():
        try:
            apply_flags(spec, arm_flags, f"--{arm}")
        except InvalidInput as error:
            fail(str(error))
    settings = load_settings()
    defaults = {
        "model_cheap": settings.doctor_model_cheap,
        "model_strong": settings.doctor_model_strong,
    }
    metadata = collect_metadata(Path.cwd(), spec, defaults)
    body = {
        "name": name,
        "spec": spec.model_dump(mode="json", exclude_none=True),
        "control_flags": flags["control"],
        "treatment_flags": flags["treatment"],
        "pairs": pairs,
        "metadata": metadata.model_dump(mode="json"),
    }
    with make_client(settings) as client:
        experiment = request(client, "POST", "/experiments", json=body).json()
        console.print(f"launched experiment [bold]{experiment['id']}[/]: {pairs} pair(s)")
        for pair in experiment["pairs"]:
            console.print(
                f"  pair {pair['index']}: control {pair['control_run_id']}, "
                f"treatment {pair['treatment_run_id']}",
                highlight=False,
            )
        if not wait:
            return
        _wait(client, experiment["id"], timeout)
        report = request(client, "GET", f"/experiments/{experiment['id']}/report").json()
    _emit(ABReport.model_validate(report), json_file, markdown_file)


@app.command("report")
def report_command(
    experiment: Annotated[
        str | None,
        typer.Argument(metavar="[EXPERIMENT]", help="Experiment id.", show_default=False),
    ] = None,
    control_runs: Annotated[
        str | None, typer.Option("--control-runs", help="Ad-hoc: control run ids, a,b,...")
    ] = None,
    treatment_runs: Annotated[
        str | None, typer.Option("--treatment-runs", help="Ad-hoc: treatment run ids, c,d,...")
    ] = None,
    ignore_paths: Annotated[
        str | None,
        typer.Option("--ignore-paths", help="Ad-hoc: setting paths the arms differ in on purpose."),
    ] = None,
    json_file: JsonOption = None,
    markdown_file: MarkdownOption = None,
) -> None:
    """Report an experiment (and store its pairs' validity), or ad-hoc pairs given by position."""
    adhoc = control_runs is not None or treatment_runs is not None
    if adhoc == (experiment is not None):
        fail("give an experiment id, or --control-runs and --treatment-runs (not both)")
    with make_client(load_settings()) as client:
        if experiment is not None:
            response = request(client, "GET", f"/experiments/{experiment}/report")
        else:
            body = {
                "control_runs": _run_ids("--control-runs", control_runs or ""),
                "treatment_runs": _run_ids("--treatment-runs", treatment_runs or ""),
                "ignore_paths": [p.strip() for p in (ignore_paths or "").split(",") if p.strip()],
            }
            response = request(client, "POST", "/experiments/report", json=body)
    _emit(ABReport.model_validate(response.json()), json_file, markdown_file)
