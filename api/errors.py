"""Map Autopack errors to HTTP answers; never leak a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError

from shared.errors import (
    AutopackError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    NotMigrated,
    Transient,
    Unauthorized,
)

logger = logging.getLogger(__name__)

STATUS = {
    NotFound: 404,
    Conflict: 409,
    InvalidInput: 422,
    Unauthorized: 401,
    Forbidden: 403,
    Transient: 503,
    NotMigrated: 503,
}


def field_path(loc: tuple[object, ...] | list[object]) -> str:
    """('body', 'phases', 1, 'id') -> 'phases[1].id'."""
    parts = [p for p in loc if p != "body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


async def _autopack_error(request: Request, error: Exception) -> JSONResponse:
    status = next((code for cls, code in STATUS.items() if isinstance(error, cls)), 500)
    body: dict[str, object] = {"detail": str(error)}
    if isinstance(error, InvalidInput) and error.field:
        body = {
            "detail": [
                {
                    "loc": ["body", error.field],
                    "field": error.field,
                    "msg": str(error),
                    "type": "value_error",
                }
            ]
        }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    details = [
        {
            "loc": list(item.get("loc", ())),
            "field": field_path(item.get("loc", ())),
            "msg": item.get("msg", ""),
            "type": item.get("type", ""),
        }
        for item in error.errors()
    ]
    return JSONResponse({"detail": details}, status_code=422)


async def _database_rejected(request: Request, error: Exception) -> JSONResponse:
    logger.info(
        "database rejected a value on %s %s: %s",
        request.method,
        request.url.path,
        type(getattr(error, "orig", error)).__name__,
    )
    return JSONResponse(
        {"detail": "a value in the request is not acceptable (bad characters or out of range)"},
        status_code=422,
    )


async def _database_down(request: Request, error: Exception) -> JSONResponse:
    logger.warning("database unavailable: %s", type(error).__name__)
    return JSONResponse({"detail": "database unavailable, retry later"}, status_code=503)


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def install(app: FastAPI) -> None:
    """Register the handlers on the app."""
    app.add_exception_handler(AutopackError, _autopack_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DataError, _database_rejected)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(Exception, _unexpected)
