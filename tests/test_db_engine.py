"""Bound values (emails, phones, password hashes) stay out of errors and the logs."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from fastapi import Request
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from backend.accounts.models import Seller
from backend.config import Settings
from backend.db import Statement, create_engine, unit_of_work
from backend.error_handlers import handle_database_error, handle_unexpected_error

SECRET = "grace-hopper-secret-phone-5550100"


async def failing_statement_error(settings: Settings) -> DBAPIError:
    """The error of a statement PostgreSQL refuses because of the value bound to it."""
    assert settings.database_url is not None
    engine = create_engine(settings, settings.database_url)
    try:
        async with engine.connect() as connection:
            with pytest.raises(DBAPIError) as raised:
                await connection.execute(text("SELECT CAST(:value AS integer)"), {"value": SECRET})
    finally:
        await engine.dispose()
    return raised.value


async def test_sqlalchemy_does_not_list_the_parameters(settings: Settings) -> None:
    error = await failing_statement_error(settings)
    assert "SQL parameters hidden" in str(error)


async def test_an_unexpected_database_error_is_logged_without_its_values(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    error = await failing_statement_error(settings)
    # The driver's own message quotes the value: exactly what must not reach the log.
    assert SECRET in str(error)
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [], "state": {}})

    with caplog.at_level(logging.ERROR, logger="backend.error_handlers"):
        response = await handle_unexpected_error(request, error)

    assert response.status_code == 500
    assert SECRET.encode() not in bytes(response.body)
    logged = caplog.text
    assert "unhandled database error" in logged
    assert "test_db_engine.py" in logged  # where it was raised is still there
    assert SECRET not in logged


async def deadlock_error(db_engine: AsyncEngine) -> DBAPIError:
    """A real deadlock: two transactions each hold a row the other one wants."""
    async with db_engine.connect() as setup:
        await setup.execute(text("CREATE TABLE deadlock_demo (id int PRIMARY KEY)"))
        await setup.execute(
            text("INSERT INTO deadlock_demo VALUES (1), (2) ON CONFLICT DO NOTHING")
        )
        await setup.commit()
    lock = text("SELECT id FROM deadlock_demo WHERE id = :id FOR UPDATE")
    try:
        async with db_engine.connect() as first, db_engine.connect() as second:
            await first.execute(lock, {"id": 1})
            await second.execute(lock, {"id": 2})
            outcomes = await asyncio.gather(
                first.execute(lock, {"id": 2}),
                second.execute(lock, {"id": 1}),
                return_exceptions=True,
            )
    finally:
        async with db_engine.connect() as cleanup:
            await cleanup.execute(text("DROP TABLE deadlock_demo"))
            await cleanup.commit()
    [error] = [outcome for outcome in outcomes if isinstance(outcome, DBAPIError)]
    return error


async def test_a_deadlock_victim_is_told_to_retry_not_given_a_500(
    db_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    error = await deadlock_error(db_engine)
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": [], "state": {}})

    response = await handle_database_error(request, error)

    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    problem = json.loads(bytes(response.body))
    assert problem["code"] == "service_unavailable"
    assert "send it again" in problem["detail"]


async def test_a_unit_gives_its_connection_back_after_reading_and_only_then(
    settings: Settings,
) -> None:
    """What a login does before bcrypt: the unit's reads end and its connection goes back to
    the pool; it refuses when that would drop a change."""
    assert settings.database_url is not None
    engine = create_engine(settings, settings.database_url)
    backend_pid = Statement(select(func.pg_backend_pid()))
    pool = engine.pool
    assert isinstance(pool, QueuePool)

    async def nothing() -> None:
        return None

    try:
        async with unit_of_work(engine) as database:
            await database.fetch_value(backend_pid)
            await database.release_after_reading()
            assert pool.checkedout() == 0
            # A later statement takes a connection again, in a transaction of its own.
            assert isinstance(await database.fetch_value(backend_pid), int)
            assert pool.checkedout() == 1

            session = await database.session()
            unsaved = Seller(name="-", email="unsaved@example.com", password_hash="-", zip_code="-")
            session.add(unsaved)
            with pytest.raises(RuntimeError):
                await database.release_after_reading()
            session.expunge_all()  # the unit ends without writing it

            database.after_commit(nothing)
            with pytest.raises(RuntimeError):
                await database.release_after_reading()
    finally:
        await engine.dispose()
