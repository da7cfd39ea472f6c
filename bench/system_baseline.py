"""The API reference of `bench.system`: a bare FastAPI app that inserts or reads one row.

Served like `autopack api` (uvicorn, one process, no access log, same event loop and HTTP
parser), with synchronous handlers on SQLAlchemy Core and psycopg, and the same pool as
`shared.db.make_engine` (pool_size 5, max_overflow 10, pre-ping). No authentication, no
validation beyond a small pydantic model, no broker.

    BENCH_BASELINE_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/db \
        python -m bench.system_baseline --port 8123
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    insert,
    select,
)

metadata = MetaData()
items = Table(
    "bench_baseline_items",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)


class ItemIn(BaseModel):
    """What a client posts."""

    name: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)


class ItemOut(ItemIn):
    """What the API answers."""

    id: int


def create_app() -> FastAPI:
    """The baseline app on BENCH_BASELINE_DATABASE_URL; the table is created at start-up."""
    url = os.environ["BENCH_BASELINE_DATABASE_URL"]
    engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        metadata.create_all(engine)
        yield
        engine.dispose()

    app = FastAPI(title="bench baseline", lifespan=lifespan)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/items", status_code=201, response_model=ItemOut)
    def create_item(item: ItemIn) -> ItemOut:
        with engine.begin() as conn:
            new_id = conn.execute(
                insert(items).values(name=item.name, payload=item.payload).returning(items.c.id)
            ).scalar_one()
        return ItemOut(id=int(new_id), name=item.name, payload=item.payload)

    @app.get("/items/{item_id}", response_model=ItemOut)
    def read_item(item_id: int) -> ItemOut:
        with engine.connect() as conn:
            row = conn.execute(
                select(items.c.id, items.c.name, items.c.payload).where(items.c.id == item_id)
            ).one_or_none()
        if row is None:
            raise HTTPException(status_code=404, detail="not found")
        return ItemOut(id=int(row.id), name=str(row.name), payload=dict(row.payload))

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        "bench.system_baseline:create_app",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=1,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
