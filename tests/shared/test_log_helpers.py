"""Periodic jobs' failure logs: one line for an unreachable database, a traceback for anything else."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from shared.logs import warn_failed
from tests.services import free_port

logger = logging.getLogger("tests.log_helpers")


def test_unreachable_database_is_one_line_other_errors_keep_their_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A real refused connection: nothing listens on this port.
    engine = create_engine(
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x",
        connect_args={"connect_timeout": 2},
    )
    with pytest.raises(OperationalError) as refused, engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    engine.dispose()
    caplog.set_level(logging.WARNING, logger=logger.name)
    warn_failed(logger, "sweep failed", refused.value)
    try:
        raise ValueError("a bug")
    except ValueError as bug:
        warn_failed(logger, "sweep failed", bug)
    outage, other = caplog.records
    assert outage.getMessage().startswith("sweep failed; will retry (database unreachable: ")
    assert "\n" not in outage.getMessage() and outage.exc_info is None
    assert other.getMessage() == "sweep failed; will retry" and other.exc_info is not None
    assert other.exc_info[1] is not None and str(other.exc_info[1]) == "a bug"
