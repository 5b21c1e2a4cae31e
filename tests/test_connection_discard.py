"""A connection that saw a client-side timeout or a cancellation mid-statement never serves
again; one that only met an error PostgreSQL reported does.

After a timeout asyncpg may still count a transaction the server never began (it marks one open
before sending BEGIN), and the next request's transaction would then be a savepoint inside it,
committed by nothing (tests/faults/test_stalled_begin.py shows the lost write this caused).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.config import Settings
from backend.db import create_engine, create_sessionmaker, unit_of_work

COMMAND_TIMEOUT_SECONDS = 0.3
SLOWER_THAN_THE_TIMEOUT = text("SELECT pg_sleep(2)")
BACKEND_PID = text("SELECT pg_backend_pid()")


@pytest.fixture
async def one_connection_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """The app's engine with a single pooled connection and a short client-side deadline, so
    that a second checkout shows whether the first connection was kept."""
    assert settings.database_url is not None
    tight = settings.model_copy(
        update={"db_pool_size": 1, "db_command_timeout_seconds": COMMAND_TIMEOUT_SECONDS}
    )
    engine = create_engine(tight, settings.database_url)
    yield engine
    await engine.dispose()


async def backend_pid(engine: AsyncEngine) -> int:
    async with unit_of_work(create_sessionmaker(engine)) as unit:
        pid: int = await unit.session.scalar(BACKEND_PID)
    return pid


async def test_a_unit_of_work_whose_statement_timed_out_closes_its_connection(
    one_connection_engine: AsyncEngine,
) -> None:
    before = await backend_pid(one_connection_engine)
    with pytest.raises(TimeoutError):
        async with unit_of_work(create_sessionmaker(one_connection_engine)) as unit:
            await unit.session.scalar(SLOWER_THAN_THE_TIMEOUT)
    assert await backend_pid(one_connection_engine) != before


async def test_a_cancelled_unit_of_work_closes_its_connection(
    one_connection_engine: AsyncEngine,
) -> None:
    before = await backend_pid(one_connection_engine)

    async def slow_request() -> None:
        async with unit_of_work(create_sessionmaker(one_connection_engine)) as unit:
            await unit.session.scalar(text("SELECT pg_sleep(0.2)"))

    task = asyncio.create_task(slow_request())
    await asyncio.sleep(0.05)  # the statement is on the wire
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await backend_pid(one_connection_engine) != before


async def test_a_session_whose_statement_timed_out_closes_its_connection(
    one_connection_engine: AsyncEngine,
) -> None:
    sessions = create_sessionmaker(one_connection_engine)
    before = await backend_pid(one_connection_engine)
    async with sessions() as session:
        with pytest.raises((TimeoutError, DBAPIError)):
            await session.execute(SLOWER_THAN_THE_TIMEOUT)
    assert await backend_pid(one_connection_engine) != before


async def test_an_error_postgres_reported_keeps_the_connection(
    one_connection_engine: AsyncEngine,
) -> None:
    before = await backend_pid(one_connection_engine)
    with pytest.raises(Exception, match="division by zero"):
        async with unit_of_work(create_sessionmaker(one_connection_engine)) as unit:
            await unit.session.scalar(text("SELECT 1 / 0"))
    # Rolled back and kept: reconnecting after every refused statement would be a cheap way
    # for anyone to make the service churn connections.
    assert await backend_pid(one_connection_engine) == before
