"""Database plumbing: metadata naming, the async engine, and each request's unit of work.

Every request, the worker and the CLI work with the SQLModel models through SQLAlchemy's
`AsyncSession` on its asyncio engine (asyncpg underneath): a request in one session and one
transaction (`UnitOfWork`), committed before the response is sent. Database errors reach the
error handlers as SQLAlchemy's exceptions, with asyncpg's beneath them (`driver_errors`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy import MetaData, Table, event
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlmodel import SQLModel

from backend.config import Settings
from backend.context import context_of
from backend.errors import DomainError

logger = logging.getLogger(__name__)

# Stable constraint names, so migrations can drop and alter what they created.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata: MetaData = SQLModel.metadata


def table_of(model: type[SQLModel]) -> Table:
    """The Core table behind a table model, for Core statements."""
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


def utcnow() -> datetime:
    return datetime.now(UTC)


def create_engine(settings: Settings, database_url: str) -> AsyncEngine:
    engine = create_async_engine(
        database_url,
        # Bound values (emails, password hashes, recipients' phones) never reach error logs.
        hide_parameters=True,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        # No pool_pre_ping: its round trip per checkout cost ~8% of a read (bench/README.md).
        # `_discard_unusable_connection` below catches what a restart leaves behind instead.
        pool_recycle=30 * 60,
        connect_args={
            "timeout": settings.db_connect_timeout_seconds,
            # Client-side deadline for a paused or black-holed server...
            "command_timeout": settings.db_command_timeout_seconds,
            # ...and a server-side one so runaway queries free their locks.
            "server_settings": {
                "statement_timeout": str(settings.db_statement_timeout_ms),
                "idle_in_transaction_session_timeout": str(settings.db_statement_timeout_ms * 6),
                "application_name": "shiptrack",
            },
        },
    )
    event.listen(engine.sync_engine, "checkout", _discard_unusable_connection)
    return engine


def driver_errors(error: BaseException) -> list[BaseException]:
    """asyncpg's error: raised as is on the request paths, or wrapped by SQLAlchemy (its DBAPI
    adapter's error, and asyncpg's beneath that)."""
    if isinstance(error, DBAPIError):
        wrapped = error.orig
        return [e for e in (wrapped, getattr(wrapped, "__cause__", None)) if e]
    return [error]


def leaves_connection_out_of_step(error: BaseException) -> bool:
    """Whether a connection that raised `error` mid-statement may be out of step with its server.

    PostgreSQL's own error responses (a constraint, statement_timeout, a deadlock) keep the
    protocol in step: the transaction only has to be rolled back. Anything else, a client-side
    timeout or a cancellation above all, can leave a command half-sent or unanswered, or asyncpg
    counting a transaction the server never began: asyncpg marks one open before it sends BEGIN,
    so after a BEGIN that timed out, the next request's "transaction" would be a savepoint in
    the stale one and its commit would only release the savepoint (a write answered 201, then
    lost). Such a connection is closed, never reused; the server rolls back whatever was open.
    """
    if not isinstance(error, Exception):
        return True  # cancelled (asyncio.CancelledError), or the process is exiting
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    for cause in driver_errors(error):
        if isinstance(cause, asyncpg.PostgresError):
            sqlstate = getattr(cause, "sqlstate", None)
            # Class 08 is the connection itself; 57P the server ending the session.
            return not isinstance(sqlstate, str) or sqlstate.startswith(("08", "57P"))
        if isinstance(cause, OSError | asyncpg.InterfaceError | asyncpg.InternalClientError):
            return True  # OSError includes TimeoutError and the socket's own failures
    return False


def _discard_unusable_connection(
    dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
) -> None:
    """Hand out only connections that are open and idle.

    A restarting PostgreSQL terminates every session and closes its socket; asyncpg sees that as
    soon as the event loop runs, so `is_closed()` answers without a round trip. A connection
    still inside a transaction was given back by a request whose rollback could not finish. In
    both cases DisconnectionError makes the pool drop the connection and check out (or open)
    another. A connection that dies silently (a network black hole) fails its first query
    within `command_timeout` instead, which answers 503.
    """
    driver = dbapi_connection.driver_connection
    # `_top_xact`: a transaction asyncpg still counts as open although the server may never
    # have begun it (see leaves_connection_out_of_step). Connections that saw such a failure
    # are closed on the spot; this is the last line of defence should one ever come back.
    stale_transaction = getattr(driver, "_top_xact", None) is not None
    if driver.is_closed() or driver.is_in_transaction() or stale_transaction:
        raise DisconnectionError("this pooled connection cannot be used again")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose entities stay readable after the commit (responses are built from them
    then), and which flush when told to rather than before every query."""
    return async_sessionmaker(
        engine,
        class_=AsyncSession,
        expire_on_commit=False,
        autoflush=False,
        # A closed session stays closed: work after its unit of work has ended would otherwise
        # begin a new transaction that nothing commits.
        close_resets_only=False,
    )


def violated_constraint(error: IntegrityError) -> str | None:
    """The name of the constraint PostgreSQL reported, as named by our naming convention."""
    driver_error = getattr(error.orig, "__cause__", None)
    name = getattr(driver_error, "constraint_name", None)
    return name if isinstance(name, str) else None


AfterCommit = Callable[[], Awaitable[None]]


class UnitOfWork:
    """One request's work on the database: one `AsyncSession`, committed once, before the
    response is sent, or rolled back.

    The session takes a pooled connection at its first statement (SQLAlchemy's autobegin), so a
    request refused before it reaches the database (a bad token, an invalid body) never holds
    one. Repositories and services flush, never commit.
    """

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.session = sessionmaker()
        self._after_commit: list[AfterCommit] = []

    def after_commit(self, action: AfterCommit) -> None:
        """Run `action` once this unit has committed (never if it rolls back).

        For side effects that must not announce uncommitted data, such as live-update messages.
        Best effort: a failing action is logged, the response still succeeds.
        """
        self._after_commit.append(action)

    async def commit(self) -> None:
        """Commit; if that fails, the transaction is rolled back (or, if the connection may be
        out of step, closed) and the error raised."""
        try:
            await self.session.commit()
        except BaseException as error:
            await self.abandon(error)
            raise

    async def abandon(self, error: BaseException) -> None:
        """End the unit after `error`: roll back, or close the connection if the error may have
        left it out of step with its server (`leaves_connection_out_of_step`)."""
        if leaves_connection_out_of_step(error):
            await self.discard()
            return
        try:
            await self.session.rollback()
        except BaseException:
            # The ROLLBACK itself failed (the connection died or hung): never reuse it.
            await self.discard()
            raise

    async def discard(self) -> None:
        """Close the session's connection at once rather than give it back: PostgreSQL rolls
        back whatever it had open, and the pool opens a new one for the next request. Closed
        without a goodbye: a frozen server would hold a polite one (SQLAlchemy waits up to 2 s)
        and so the 503 this request is about to get."""
        driver = self.session.info.pop(_DRIVER, None)
        if driver is not None:
            driver.terminate()
        await self.session.invalidate()

    async def release_after_reading(self) -> None:
        """End a unit that has only read so far and give its connection back, before slow work
        that needs no database (a password hash): held across it, the connection would sit idle
        in a transaction while other requests wait for one.

        Entities loaded so far stay readable (`expire_on_commit=False`). A later statement
        takes a connection and begins a new transaction.
        """
        session = self.session
        if session.new or session.dirty or session.deleted or self._after_commit:
            raise RuntimeError("release_after_reading() would end this unit's changes early")
        if session.info.get(_WROTE):
            raise RuntimeError("release_after_reading() would commit this unit's writes early")
        await session.commit()  # reads only: the same as a rollback, and entities stay loaded

    async def close(self) -> None:
        await self.session.close()

    async def run_after_commit(self) -> None:
        for action in self._after_commit:
            try:
                await action()
            except Exception:
                logger.warning("after-commit action failed", exc_info=True)


# The asyncpg connection of a session's transaction, for `UnitOfWork.discard`.
_DRIVER = "driver_connection"


@event.listens_for(Session, "after_begin")
def _note_driver(session: Session, transaction: SessionTransaction, connection: Any) -> None:
    session.info[_DRIVER] = connection.connection.driver_connection


# Set in a session's `info` once it has run anything but a SELECT (an INSERT, UPDATE or DELETE,
# or a flush of the ORM's changes), until its transaction ends.
_WROTE = "wrote"


@event.listens_for(Session, "do_orm_execute")
def _note_write(state: ORMExecuteState) -> None:
    if not state.is_select:
        state.session.info[_WROTE] = True


@event.listens_for(Session, "after_flush")
def _note_flush(session: Session, *_: object) -> None:
    session.info[_WROTE] = True


@event.listens_for(Session, "after_transaction_end")
def _forget_writes(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_WROTE, None)
        session.info.pop(_DRIVER, None)


@asynccontextmanager
async def unit_of_work(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[UnitOfWork]:
    """A `UnitOfWork`, committed when the block ends, or rolled back if it raises (unless the
    error is a DomainError that keeps its changes); after-commit actions then run."""
    unit = UnitOfWork(sessionmaker)
    try:
        try:
            yield unit
        except DomainError as error:
            if error.keep_changes:
                await unit.commit()
            else:
                await unit.abandon(error)
            raise
        except BaseException as error:
            await unit.abandon(error)
            raise
        await unit.commit()
    finally:
        await unit.close()
    await unit.run_after_commit()


class UnitOfWorkRoute(APIRoute):
    """A route whose request runs in one unit of work, committed before the response is sent.

    The handler's response is complete (serialized, or a stream not yet started) when the unit
    commits, so a commit that fails becomes an error response, never a 200 for lost work. A route
    class rather than a dependency with `yield`: FastAPI's machinery for the latter cost about
    7% of a read (bench/README.md). Routers that use the database are declared with it.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_in_unit_of_work(request: Request) -> Response:
            async with unit_of_work(context_of(request).sessionmaker) as unit:
                request.state.unit_of_work = unit
                return await handle(request)

        return handle_in_unit_of_work


def unit_of_work_of(request: Request) -> UnitOfWork:
    """The unit of work of a request served by a `UnitOfWorkRoute`."""
    unit: UnitOfWork | None = getattr(request.state, "unit_of_work", None)
    if unit is None:
        raise RuntimeError(f"{request.url.path} uses the database but is not a UnitOfWorkRoute")
    return unit


async def get_unit_of_work(request: Request) -> UnitOfWork:
    return unit_of_work_of(request)


UnitOfWorkDep = Annotated[UnitOfWork, Depends(get_unit_of_work)]


async def get_session(request: Request) -> AsyncSession:
    """The request's session (its unit of work's)."""
    return unit_of_work_of(request).session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
