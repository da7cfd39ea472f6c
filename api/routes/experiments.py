"""Routes of A/B experiments: launch matched runs, read an experiment, report on it or on ad-hoc pairs."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from api.deps import CallerDep, DispatcherDep, SessionsDep, SettingsDep, SubmitterDep
from api.dispatch import enqueue_committed
from shared.analysis import ab
from shared.db import transaction

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/experiments", tags=["experiments"])


@router.post("", status_code=202, response_model=ab.ExperimentRead, responses={422: {}})
def create_experiment(
    body: ab.ExperimentCreate,
    sessions: SessionsDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    _caller: SubmitterDep,
) -> ab.ExperimentRead:
    """Store the experiment and its 2N runs in one transaction, then enqueue the runs."""
    with transaction(sessions) as session:
        created = ab.create_experiment(session, settings, body)
    for run_id in created.to_enqueue:
        enqueue_committed(sessions, dispatcher, run_id)
    with sessions() as session:
        return ab.experiment_read(session, created.experiment_id)


@router.post("/report", response_model=ab.ABReport, responses={422: {}})
def adhoc_report(
    body: ab.AdHocReportRequest, sessions: SessionsDep, _caller: CallerDep
) -> ab.ABReport:
    """Compare runs paired by position (control_runs[i] with treatment_runs[i]); nothing is stored."""
    with sessions() as session:
        return ab.adhoc_report(session, body)


@router.get("/{experiment_id}", response_model=ab.ExperimentRead)
def get_experiment(
    experiment_id: str, sessions: SessionsDep, _caller: CallerDep
) -> ab.ExperimentRead:
    """The experiment, its flags and metadata, and its pairs with their runs' statuses."""
    with sessions() as session:
        return ab.experiment_read(session, experiment_id)


@router.get("/{experiment_id}/report", response_model=ab.ABReport)
def experiment_report(experiment_id: str, sessions: SessionsDep, _caller: CallerDep) -> ab.ABReport:
    """The A/B report; each pair's validity and tokens saved are stored for the dashboard."""
    with transaction(sessions) as session:
        return ab.experiment_report(session, experiment_id)
