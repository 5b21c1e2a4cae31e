"""Database plumbing: metadata naming, the async engine, and the per-request session."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import MetaData, Table, event
from sqlalchemy.exc import DisconnectionError, IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlmodel import SQLModel

from backend.config import Settings
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
    """The Core table behind a table model, for Core queries on hot paths."""
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
        # `_discard_closed_connection` below catches what a restart leaves behind instead.
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
    event.listen(engine.sync_engine, "checkout", _discard_closed_connection)
    return engine


def _discard_closed_connection(
    dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
) -> None:
    """Hand out only connections the server has not hung up on.

    A restarting PostgreSQL terminates every session and closes its socket; asyncpg sees that as
    soon as the event loop runs, so `is_closed()` answers without a round trip. Raising
    DisconnectionError makes the pool drop this connection and check out (or open) another. A
    connection that dies silently (a network black hole) fails its first query within
    `command_timeout` instead, which answers 503 and makes the pool replace its connections.
    """
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("PostgreSQL closed this pooled connection")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False, autoflush=False)


def violated_constraint(error: IntegrityError) -> str | None:
    """The name of the constraint PostgreSQL reported, as named by our naming convention."""
    driver_error = getattr(error.orig, "__cause__", None)
    name = getattr(driver_error, "constraint_name", None)
    return name if isinstance(name, str) else None


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request, committed once before the response is sent.

    Used with `scope="function"`, so the commit runs as soon as the handler returns and a
    failed commit becomes an error response instead of a 200 for work that was lost.
    """
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as session:
        try:
            yield session
            await session.commit()
            await _run_after_commit(session)
        except DomainError as error:
            await (session.commit() if error.keep_changes else session.rollback())
            raise
        except BaseException:
            await session.rollback()
            raise


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]

AfterCommit = Callable[[], Awaitable[None]]


def after_commit(session: AsyncSession, action: AfterCommit) -> None:
    """Run `action` once the request's transaction has committed (never if it rolls back).

    For side effects that must not announce uncommitted data, such as live-update messages.
    Best effort: a failing action is logged, the response still succeeds.
    """
    session.info.setdefault("after_commit", []).append(action)


async def _run_after_commit(session: AsyncSession) -> None:
    actions: list[AfterCommit] = session.info.pop("after_commit", [])
    for action in actions:
        try:
            await action()
        except Exception:
            logger.warning("after-commit action failed", exc_info=True)
