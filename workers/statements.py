"""The worker's per-run SQL, built once at import and executed on the session's connection.

Building a statement (`update(Run).where(...)`) and running it through the ORM costs about
0.5 ms of CPU per statement here, several times the database's own work: coercing each
expression, computing the cache key, and the ORM's bulk-update bookkeeping. A run makes about
twenty such writes, all on its critical path, so they are prepared once with bind parameters and
executed as Core statements (`session.connection().execute(STATEMENT, params)`): the compiled
form comes from the cache at once, and the transaction is still the session's.

Every statement here is plain SQL that PostgreSQL and SQLite both run; the idempotent inserts
have one form per dialect (`ON CONFLICT DO NOTHING`). On PostgreSQL, the two transactions on every
run's path that hold several statements, an attempt's start and the run's end, are each one
statement instead: data-modifying CTEs, every part gated on the fence's row, so a lost lease or a
cancel request writes nothing but what the separate statements would have written. That saves
about 0.6 ms of Python per statement (the attempt's start: 4.6 -> 2.7 ms in-process).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    Connection,
    Executable,
    Table,
    TextClause,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from shared.models import Attempt, AttemptLog, Phase, Repository, Run
from shared.runs.states import AttemptStatus, PhaseStatus, RunStatus

runs = cast(Table, Run.__table__)
phases = cast(Table, Phase.__table__)
attempts = cast(Table, Attempt.__table__)
attempt_logs = cast(Table, AttemptLog.__table__)
repositories = cast(Table, Repository.__table__)

# --- the lease ------------------------------------------------------------------------------------

ACQUIRED_REPO_URL = "autopack_repo_url"

# Lock the run row while our token holds it; the cancel flag comes back in the same statement.
FENCE = (
    update(runs)
    .where(runs.c.id == bindparam("p_run_id"), runs.c.lease_token == bindparam("p_token"))
    .values(updated_at=bindparam("p_now"))
    .returning(runs.c.cancel_requested)
)
# The same, also writing the commit the run started from (the first write after resolving it).
FENCE_WITH_BASE = FENCE.values(base_commit=bindparam("p_base"))

# A delivery's common case in one statement: take a queued run that has no concurrency key and
# whose queue deadline has not passed, or a running one whose lease expired (a takeover), and
# return the whole row with its repository's registered URL (ACQUIRED_REPO_URL). Anything else (a key to admit under, a deadline to enforce, a run held or
# ended) goes the general way (RunExecutor._claim).
ACQUIRE_PLAIN = (
    update(runs)
    .where(
        runs.c.id == bindparam("p_run_id"),
        runs.c.concurrency_key.is_(None),
        or_(
            and_(
                runs.c.status == RunStatus.QUEUED.value,
                or_(
                    runs.c.queue_deadline_at.is_(None),
                    runs.c.queue_deadline_at >= bindparam("p_now"),
                ),
            ),
            and_(
                runs.c.status == RunStatus.RUNNING.value,
                or_(
                    runs.c.lease_expires_at.is_(None),
                    runs.c.lease_expires_at < bindparam("p_now"),
                ),
            ),
        ),
    )
    .values(
        status=RunStatus.RUNNING.value,
        lease_owner=bindparam("p_owner"),
        lease_expires_at=bindparam("p_expires"),
        lease_token=runs.c.lease_token + 1,
        started_at=func.coalesce(runs.c.started_at, bindparam("p_now")),
        updated_at=bindparam("p_now"),
    )
    .returning(
        *runs.c,
        # The repository's registered source, read in the same statement.
        select(repositories.c.url)
        .where(repositories.c.name == runs.c.repo)
        .scalar_subquery()
        .label(ACQUIRED_REPO_URL),
    )
)

# PostgreSQL: ACQUIRE_PLAIN and the run's phases in one statement, the claim as a CTE joined to
# the phases: a row per phase in order (PHASE_PREFIX on the phase's columns), or one row with them
# NULL for a run without phases; no row when ACQUIRE_PLAIN takes nothing.
PHASE_PREFIX = "phase_"
_CLAIMED = ACQUIRE_PLAIN.cte("claimed")
CLAIM_PLAIN_PG = (
    select(_CLAIMED, *(column.label(f"{PHASE_PREFIX}{column.name}") for column in phases.c))
    .select_from(_CLAIMED.outerjoin(phases, phases.c.run_id == _CLAIMED.c.id))
    .order_by(phases.c.position)
)

# --- attempts -------------------------------------------------------------------------------------

START_PHASE = (
    update(phases)
    .where(phases.c.pk == bindparam("p_phase_pk"))
    .values(
        status=PhaseStatus.RUNNING.value,
        started_at=func.coalesce(
            phases.c.started_at, bindparam("p_now", type_=phases.c.started_at.type)
        ),
        attempts_count=bindparam("p_number"),
    )
)

RECORD_PGID = (
    update(attempts)
    .where(attempts.c.id == bindparam("p_attempt_id"))
    .values(pgid=bindparam("p_pgid"))
)

# What an attempt's end writes (store_attempt's `ended`), and its log's columns (`log`).
ATTEMPT_END_COLUMNS = (
    "status",
    "finished_at",
    "exit_code",
    "signal",
    "failure_class",
    "failure_reason",
    "output_tail",
    "log_path",
    "mitigation",
)
ATTEMPT_LOG_COLUMNS = ("content", "truncated", "size_bytes")

STORE_ATTEMPT = (
    update(attempts)
    .where(attempts.c.id == bindparam("p_attempt_id"))
    .values({name: bindparam(f"p_{name}") for name in ATTEMPT_END_COLUMNS})
)

# An insert that does nothing when the row exists (a retried write whose first commit landed).
INSERT_ATTEMPT: dict[str, Executable] = {
    "postgresql": pg_insert(attempts).on_conflict_do_nothing().returning(attempts.c.id),
    "sqlite": sqlite_insert(attempts).on_conflict_do_nothing().returning(attempts.c.id),
}
INSERT_ATTEMPT_LOG: dict[str, Executable] = {
    "postgresql": pg_insert(attempt_logs).on_conflict_do_nothing(),
    "sqlite": sqlite_insert(attempt_logs).on_conflict_do_nothing(),
}

# --- phases and the run's end ---------------------------------------------------------------------

PHASE_SUCCEEDED = (
    update(phases)
    .where(phases.c.pk == bindparam("p_phase_pk"))
    .values(
        status=PhaseStatus.SUCCEEDED.value,
        finished_at=bindparam("p_now"),
        checkpoint_commit=bindparam("p_checkpoint"),
    )
)

RUN_CHECKPOINT = (
    update(runs)
    .where(runs.c.id == bindparam("p_run_id"))
    .values(checkpoint_commit=bindparam("p_checkpoint"))
)

# Nothing of an ended run stays running (an internal error can stop it between an attempt's end
# and its phase's).
END_RUNNING_ATTEMPTS = (
    update(attempts)
    .where(
        attempts.c.run_id == bindparam("p_run_id"),
        attempts.c.status == AttemptStatus.RUNNING.value,
    )
    .values(
        status=AttemptStatus.FAILED.value,
        finished_at=bindparam("p_now"),
        failure_reason=bindparam("p_reason"),
    )
)

# A phase left running failed; one the run ended before never runs (`left_status`: skipped, or
# cancelled when the run was).
END_OPEN_PHASES = (
    update(phases)
    .where(
        phases.c.run_id == bindparam("p_run_id"),
        phases.c.status.in_([PhaseStatus.RUNNING.value, PhaseStatus.PENDING.value]),
    )
    .values(
        status=case(
            (phases.c.status == PhaseStatus.RUNNING.value, PhaseStatus.FAILED.value),
            else_=bindparam("p_left_status", type_=phases.c.status.type),
        ),
        finished_at=bindparam("p_now"),
    )
)

_RUN_END_VALUES: dict[str, Any] = {
    "failure_reason": bindparam("p_reason", type_=runs.c.failure_reason.type),
    "result_commit": bindparam("p_result_commit"),
    "result_diffstat": bindparam("p_diffstat"),
    "finished_at": bindparam("p_now"),
    "updated_at": bindparam("p_now"),
    "lease_owner": None,
    "lease_expires_at": None,
    # NULL keeps what is stored: the checkpoint when no phase succeeded now, the base when written.
    "checkpoint_commit": func.coalesce(
        bindparam("p_checkpoint", type_=runs.c.checkpoint_commit.type), runs.c.checkpoint_commit
    ),
    "base_commit": func.coalesce(
        bindparam("p_base", type_=runs.c.base_commit.type), runs.c.base_commit
    ),
}

# The end of a run that is running under our lease. It is also the fence of the transaction that
# ends the run: while it matches, it holds the run row's lock until commit.
FINISH_RUN = (
    update(runs)
    .where(
        runs.c.id == bindparam("p_run_id"),
        runs.c.lease_token == bindparam("p_token"),
        runs.c.status == RunStatus.RUNNING.value,
    )
    .values(status=bindparam("p_status"), **_RUN_END_VALUES)
)

# A cancel request arrived while the run was finishing: it ends cancelled, as asked; a reason given
# with the request (a superseding run's) is kept. Run after a fence.
FINISH_CANCELLING = (
    update(runs)
    .where(runs.c.id == bindparam("p_run_id"), runs.c.status == RunStatus.CANCELLING.value)
    .values(
        {
            **_RUN_END_VALUES,
            "status": RunStatus.CANCELLED.value,
            "failure_reason": func.coalesce(
                runs.c.failure_reason,
                bindparam("p_cancel_reason", type_=runs.c.failure_reason.type),
            ),
        }
    )
)


# --- PostgreSQL: one statement per transaction -----------------------------------------------------

# An attempt's start: the fence (also writing a pending base), then, unless cancellation was
# requested, the phase marked running and the attempt inserted (nothing when it exists: a retried
# write). One row (cancel flag, the new attempt's id or NULL) while the token holds the run; none
# when it does not.
START_ATTEMPT_PG: TextClause = text(
    """
    WITH fence AS (
        UPDATE runs SET updated_at = :p_now, base_commit = coalesce(:p_base, base_commit)
        WHERE id = :p_run_id AND lease_token = :p_token
        RETURNING cancel_requested
    ), started AS (
        UPDATE phases
        SET status = 'running', started_at = coalesce(started_at, :p_now),
            attempts_count = :p_number
        WHERE pk = :p_phase_pk AND EXISTS (SELECT 1 FROM fence WHERE NOT cancel_requested)
        RETURNING pk
    ), inserted AS (
        INSERT INTO attempts
            (run_id, phase_pk, number, worker, lease_token, status, started_at, commands, host)
        SELECT :p_run_id, pk, :p_number, :p_worker, :p_token, 'running', :p_now,
               CAST(:p_commands AS json), :p_host
        FROM started
        ON CONFLICT DO NOTHING
        RETURNING id
    )
    SELECT cancel_requested, (SELECT id FROM inserted) FROM fence
    """
).bindparams(bindparam("p_commands", type_=JSON))

# The run's end with its last phase's success and that phase's succeeded attempt (status, output,
# log), all gated on FINISH_RUN's row: while the run is running under the token, everything is
# written; otherwise nothing, and the caller goes the general way. Returns a row per run ended.
# The attempt's and log's column lists come from the constants above (names, never input).
FINISH_WITH_LAST_PHASE_PG: TextClause = text(
    f"""
    WITH finished AS (
        UPDATE runs
        SET status = :p_status, failure_reason = :p_reason, result_commit = :p_result_commit,
            result_diffstat = :p_diffstat, finished_at = :p_now, updated_at = :p_now,
            lease_owner = NULL, lease_expires_at = NULL,
            checkpoint_commit = coalesce(:p_checkpoint, checkpoint_commit),
            base_commit = coalesce(:p_base, base_commit)
        WHERE id = :p_run_id AND lease_token = :p_token AND status = 'running'
        RETURNING id
    ), attempt AS (
        UPDATE attempts
        SET {", ".join(f"{name} = :a_{name}" for name in ATTEMPT_END_COLUMNS)}
        WHERE id = :a_attempt_id AND EXISTS (SELECT 1 FROM finished)
        RETURNING id
    ), log AS (
        INSERT INTO attempt_logs (attempt_id, {", ".join(ATTEMPT_LOG_COLUMNS)})
        SELECT :a_attempt_id, {", ".join(f":l_{name}" for name in ATTEMPT_LOG_COLUMNS)}
        FROM finished
        ON CONFLICT DO NOTHING
        RETURNING attempt_id
    ), phase AS (
        UPDATE phases
        SET status = 'succeeded', finished_at = :ph_now, checkpoint_commit = :ph_checkpoint
        WHERE pk = :ph_pk AND EXISTS (SELECT 1 FROM finished)
        RETURNING pk
    )
    SELECT id FROM finished
    """  # noqa: S608
)


def start_attempt_pg(
    connection: Connection,
    run_id: str,
    token: int,
    now: datetime,
    base: str | None,
    phase_pk: int,
    number: int,
    worker: str,
    commands: list[str],
    host: str,
) -> tuple[bool, int | None] | None:
    """START_ATTEMPT_PG: (cancel requested, the new attempt's id or None); None when the lease is
    lost. Nothing but the fence is written when cancellation was requested."""
    row = connection.execute(
        START_ATTEMPT_PG,
        {
            "p_now": now,
            "p_base": base,
            "p_run_id": run_id,
            "p_token": token,
            "p_phase_pk": phase_pk,
            "p_number": number,
            "p_worker": worker,
            "p_commands": commands,
            "p_host": host,
        },
    ).first()
    if row is None:
        return None
    return bool(row[0]), None if row[1] is None else int(row[1])


def finish_with_last_phase_pg(
    connection: Connection,
    run: dict[str, Any],
    attempt_id: int,
    ended: dict[str, Any],
    log: dict[str, Any],
    *,
    phase_pk: int,
    checkpoint: str,
    phase_now: datetime,
) -> bool:
    """FINISH_WITH_LAST_PHASE_PG (`run`: finish_run's parameters with the prefix, `ended` and `log`:
    store_attempt's); whether the run was running under the token (else nothing was written)."""
    params = {
        **run,
        **{f"a_{key}": value for key, value in ended.items()},
        **{f"l_{key}": value for key, value in log.items()},
        "a_attempt_id": attempt_id,
        "ph_pk": phase_pk,
        "ph_checkpoint": checkpoint,
        "ph_now": phase_now,
    }
    return connection.execute(FINISH_WITH_LAST_PHASE_PG, params).first() is not None


# --- execution ------------------------------------------------------------------------------------


def fence(
    connection: Connection, run_id: str, token: int, now: datetime, base: str | None = None
) -> bool | None:
    """Lock the run row if `token` still holds it: its cancel flag, or None when it does not."""
    params: dict[str, Any] = {"p_run_id": run_id, "p_token": token, "p_now": now}
    if base is not None:
        params["p_base"] = base
    flag = connection.execute(FENCE if base is None else FENCE_WITH_BASE, params).scalar()
    return None if flag is None else bool(flag)


def start_attempt(
    connection: Connection, phase_pk: int, number: int, now: datetime, attempt: dict[str, Any]
) -> int | None:
    """Mark the phase running and insert the attempt; its id, or None when it already existed."""
    connection.execute(START_PHASE, {"p_phase_pk": phase_pk, "p_number": number, "p_now": now})
    inserted = connection.execute(INSERT_ATTEMPT[connection.dialect.name], attempt).scalar()
    return None if inserted is None else int(inserted)


def record_pgid(connection: Connection, attempt_id: int, pgid: int) -> None:
    """Remember the process group of an attempt's running command."""
    connection.execute(RECORD_PGID, {"p_attempt_id": attempt_id, "p_pgid": pgid})


def store_attempt(
    connection: Connection, attempt_id: int, ended: dict[str, Any], log: dict[str, Any]
) -> None:
    """Write an attempt's end (`ended`: STORE_ATTEMPT's values without the prefix) and its log."""
    params = {f"p_{key}": value for key, value in ended.items()}
    connection.execute(STORE_ATTEMPT, {**params, "p_attempt_id": attempt_id})
    connection.execute(
        INSERT_ATTEMPT_LOG[connection.dialect.name], {**log, "attempt_id": attempt_id}
    )


def phase_succeeded(
    connection: Connection, phase_pk: int, checkpoint: str, now: datetime, run_id: str | None
) -> None:
    """Mark a phase succeeded; with run_id, move the run's checkpoint to its commit too."""
    connection.execute(
        PHASE_SUCCEEDED, {"p_phase_pk": phase_pk, "p_checkpoint": checkpoint, "p_now": now}
    )
    if run_id is not None:
        connection.execute(RUN_CHECKPOINT, {"p_run_id": run_id, "p_checkpoint": checkpoint})


def end_open_work(
    connection: Connection, run_id: str, now: datetime, attempt_reason: str, left_status: str
) -> None:
    """Fail the run's attempts and phases left running; end its pending phases as left_status."""
    connection.execute(
        END_RUNNING_ATTEMPTS, {"p_run_id": run_id, "p_now": now, "p_reason": attempt_reason}
    )
    connection.execute(
        END_OPEN_PHASES, {"p_run_id": run_id, "p_now": now, "p_left_status": left_status}
    )


def finish_run(connection: Connection, params: dict[str, Any]) -> bool:
    """End the run if it is running under the token (which fences the transaction); whether it
    was. params: finish_params()."""
    return bool(connection.execute(FINISH_RUN, params).rowcount)


def finish_params(
    run_id: str,
    token: int,
    status: str,
    now: datetime,
    *,
    reason: str | None,
    result_commit: str | None,
    diffstat: str | None,
    checkpoint: str | None,
    base: str | None,
) -> dict[str, Any]:
    """The run's end as FINISH_RUN and FINISH_WITH_LAST_PHASE_PG take it."""
    return {
        "p_run_id": run_id,
        "p_token": token,
        "p_status": status,
        "p_now": now,
        "p_reason": reason,
        "p_result_commit": result_commit,
        "p_diffstat": diffstat,
        "p_checkpoint": checkpoint,
        "p_base": base,
    }


def finish_cancelling(
    connection: Connection,
    run_id: str,
    now: datetime,
    *,
    reason: str | None,
    result_commit: str | None,
    diffstat: str | None,
    checkpoint: str | None,
) -> bool:
    """End a run whose cancellation was requested, as cancelled (call after a fence); whether it was."""
    return bool(
        connection.execute(
            FINISH_CANCELLING,
            {
                "p_run_id": run_id,
                "p_now": now,
                "p_cancel_reason": reason or "cancelled by request",
                "p_result_commit": result_commit,
                "p_diffstat": diffstat,
                "p_checkpoint": checkpoint,
                "p_base": None,
            },
        ).rowcount
    )
