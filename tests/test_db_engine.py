"""Bound values (emails, phones, password hashes) stay out of errors and the logs."""

from __future__ import annotations

import asyncio
import json
import logging

import asyncpg
import pytest
from fastapi import Request
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi
from sqlalchemy.exc import DBAPIError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from backend.accounts.models import Seller
from backend.config import Settings
from backend.db import create_engine, create_sessionmaker, unit_of_work
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
    the pool; it refuses when that would commit a change early."""
    assert settings.database_url is not None
    engine = create_engine(settings, settings.database_url)
    sessionmaker = create_sessionmaker(engine)
    backend_pid = select(func.pg_backend_pid())
    pool = engine.pool
    assert isinstance(pool, QueuePool)

    async def nothing() -> None:
        return None

    try:
        async with unit_of_work(sessionmaker) as unit:
            seller = await unit.session.scalar(select(Seller).limit(1))
            await unit.release_after_reading()
            assert pool.checkedout() == 0
            if seller is not None:
                assert seller.email  # what was loaded stays readable
            # A later statement takes a connection again, in a transaction of its own.
            assert isinstance(await unit.session.scalar(backend_pid), int)
            assert pool.checkedout() == 1

            unsaved = Seller(name="-", email="unsaved@example.com", password_hash="-", zip_code="-")
            unit.session.add(unsaved)
            with pytest.raises(RuntimeError):
                await unit.release_after_reading()
            unit.session.expunge_all()  # the unit ends without writing it

            unit.after_commit(nothing)
            with pytest.raises(RuntimeError):
                await unit.release_after_reading()

        async with unit_of_work(sessionmaker) as unit:
            # A write fetched for what it returns, written as text (the partner claim), counts.
            touch = text("UPDATE sellers SET name = name WHERE false RETURNING id")
            assert (await unit.session.execute(touch)).all() == []
            with pytest.raises(RuntimeError):
                await unit.release_after_reading()
    finally:
        await engine.dispose()


async def test_a_unit_of_work_runs_nothing_once_ended_or_two_statements_at_once(
    settings: Settings,
) -> None:
    assert settings.database_url is not None
    engine = create_engine(settings, settings.database_url)
    sessionmaker = create_sessionmaker(engine)
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    backend_pid = select(func.pg_backend_pid())
    try:
        async with unit_of_work(sessionmaker) as ended:
            await ended.session.scalar(backend_pid)
        # Its connection is back in the pool, maybe serving another request by now.
        with pytest.raises(InvalidRequestError, match="closed"):
            await ended.session.scalar(backend_pid)

        async with unit_of_work(sessionmaker) as unit:
            outcomes = await asyncio.gather(
                unit.session.scalar(backend_pid),
                unit.session.scalar(backend_pid),
                return_exceptions=True,
            )
        # Two statements at once share the unit's one connection (the dialect runs them one
        # after the other), rather than each taking one and losing the other.
        first, second = outcomes
        assert isinstance(first, int)
        assert first == second
        assert pool.checkedout() == 0  # no connection left behind
    finally:
        await engine.dispose()


def as_raised(driver_error: asyncpg.PostgresError) -> DBAPIError:
    """`driver_error` as a statement raises it: translated by SQLAlchemy's asyncpg dialect to
    its DBAPI error class, then wrapped in SQLAlchemy's own exception."""
    dialect_error = AsyncAdapt_asyncpg_dbapi.Error(str(driver_error), driver_error)  # type: ignore[no-untyped-call]
    dialect_error.__cause__ = driver_error
    wrapped = DBAPIError.instance("SELECT 1", None, dialect_error, AsyncAdapt_asyncpg_dbapi.Error)
    assert isinstance(wrapped, DBAPIError)
    return wrapped


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.AdminShutdownError,  # 57P01, a fast restart
        asyncpg.exceptions.CrashShutdownError,  # 57P02, another backend crashed
        asyncpg.exceptions.CannotConnectNowError,  # 57P03, starting up
        asyncpg.exceptions.DatabaseDroppedError,  # 57P04
        asyncpg.exceptions.IdleSessionTimeoutError,  # 57P05
        asyncpg.exceptions.IdleInTransactionSessionTimeoutError,  # 25P03
        asyncpg.exceptions.QueryCanceledError,  # 57014, statement_timeout
        asyncpg.exceptions.TooManyConnectionsError,  # 53300
        asyncpg.exceptions.ConnectionDoesNotExistError,  # 08003
        asyncpg.exceptions.ProtocolViolationError,  # 08P01
    ],
)
async def test_postgresql_ending_or_refusing_the_session_is_a_503(
    error: type[asyncpg.PostgresError],
) -> None:
    """asyncpg's error as SQLAlchemy raises it, classified by its SQLSTATE."""
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [], "state": {}})
    response = await handle_database_error(request, as_raised(error("the server's message")))
    assert response.status_code == 503
    assert json.loads(bytes(response.body))["code"] == "service_unavailable"


async def test_a_refused_statement_is_still_a_500(caplog: pytest.LogCaptureFixture) -> None:
    """A constraint the code should have prevented is a bug, not an outage."""
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [], "state": {}})
    with caplog.at_level(logging.ERROR):
        response = await handle_database_error(
            request, as_raised(asyncpg.exceptions.UniqueViolationError("duplicate key"))
        )
    assert response.status_code == 500
