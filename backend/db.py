"""Database plumbing: metadata naming, the async engine, and each request's unit of work.

A request works on one pooled connection in one transaction (`Database`), committed before the
response is sent. Its statements are SQLAlchemy Core statements compiled once (`Statement`) and
run on the asyncpg connection underneath: SQLAlchemy's execution layer costs about twice the
database round trip for every statement it runs, and that decided whether the API kept up with
the benchmark's floor app at all (bench/README.md). ORM code still has a session, bound to the
same connection and transaction (`Database.session`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

import asyncpg
from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy import ClauseElement, MetaData, Table, event
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.sql.compiler import SQLCompiler
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
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False, autoflush=False)


def violated_constraint(error: IntegrityError) -> str | None:
    """The name of the constraint PostgreSQL reported, as named by our naming convention."""
    driver_error = getattr(error.orig, "__cause__", None)
    name = getattr(driver_error, "constraint_name", None)
    return name if isinstance(name, str) else None


# A plain SELECT that locks no rows. Anything else (INSERT, UPDATE, DELETE, or a WITH that may
# hold one of them) counts as a change.
_READ_ONLY = re.compile(
    r"\s*SELECT\b(?!.*\bFOR\s+(NO\s+KEY\s+)?(UPDATE|SHARE|KEY\s+SHARE)\b)", re.I | re.S
)

# asyncpg's flavour of PostgreSQL: `$1` placeholders and the casts asyncpg needs.
_ASYNCPG = PGDialect_asyncpg()  # type: ignore[no-untyped-call]


class Statement:
    """A Core statement compiled once into asyncpg's SQL, for `Database` to run on the driver.

    What SQLAlchemy would do at every execution happens here once (the SQL text and the order
    of the parameters) or is the caller's to do: values go in as asyncpg takes them (JSONB as
    JSON text, see `json_text`), and rows come back as asyncpg records holding what asyncpg
    decodes (a status is a plain string, JSONB a parsed value).
    """

    __slots__ = ("_given", "changes_data", "parameters", "sql")

    def __init__(self, statement: ClauseElement) -> None:
        compiled = statement.compile(dialect=_ASYNCPG)
        assert isinstance(compiled, SQLCompiler)
        computed = [*compiled.insert_prefetch, *compiled.update_prefetch]
        if computed:
            # SQLAlchemy fills these from Python-side column defaults at each execution, which
            # the driver will not: the statement must give them values of its own.
            names = ", ".join(column.name for column in computed)
            raise ValueError(f"give {names} a value in the statement: {compiled}")
        self.sql = str(compiled)
        if "POSTCOMPILE" in self.sql:
            # An `in_()` list, which SQLAlchemy expands at each execution: use `= any(:list)`.
            raise ValueError(f"expanding parameters need SQLAlchemy at execution: {compiled}")
        # In `$n` order: (name, given by the caller?, value fixed in the statement). Literals
        # written into a statement, such as `hashtextextended(:key, 0)`, are parameters too.
        self.parameters = tuple(
            (name, bind.required, bind.effective_value)
            for name in compiled.positiontup or ()
            for bind in [compiled.binds[name]]
        )
        self._given = len({name for name, given, _ in self.parameters if given})
        # Whether running it writes or locks rows, which `release_after_reading` must not drop.
        # Read from the SQL, so that `text()` statements count as well as Core ones.
        self.changes_data = _READ_ONLY.match(self.sql) is None

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        """The values for `$1, $2, ...`: the caller's by name, and the statement's literals."""
        if len(params) != self._given:
            # A name the statement does not take (a typo, or a value the statement fixes
            # itself) would otherwise be ignored without a word.
            expected = sorted({name for name, given, _ in self.parameters if given})
            raise TypeError(f"expected the parameters {expected}, got {sorted(params)}")
        return [params[name] if given else literal for name, given, literal in self.parameters]


class Record(Protocol):
    """A row as asyncpg returns it: by column name or position."""

    def __getitem__(self, key: str | int, /) -> Any: ...


AfterCommit = Callable[[], Awaitable[None]]


class Database:
    """One request's unit of work: one pooled connection and one transaction on it (or, after
    `release_after_reading`, one and then another).

    The connection is taken from the pool at the first statement, so a request refused before
    it reaches the database (a bad token, an invalid body) never holds one. The transaction is
    the driver's: it begins with that statement and `unit_of_work` ends it. ORM code gets a
    session in the same transaction (`session()`); SQLAlchemy is told the connection is in
    autocommit mode, so it never begins or commits anything by itself.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._connection: AsyncConnection | None = None
        self._driver: Any = None
        self._transaction: Any = None
        self._session: AsyncSession | None = None
        self._after_commit: list[AfterCommit] = []
        self._changed = False  # something was written or locked in the current transaction
        self._beginning = False
        self._ended = False

    # --- statements --------------------------------------------------------------------

    async def fetch_one(self, statement: Statement, /, **params: Any) -> Record | None:
        driver = self._driver or await self._begin()
        self._changed |= statement.changes_data
        row: Record | None = await driver.fetchrow(statement.sql, *statement.arguments(params))
        return row

    async def fetch_all(self, statement: Statement, /, **params: Any) -> list[Record]:
        driver = self._driver or await self._begin()
        self._changed |= statement.changes_data
        rows: list[Record] = await driver.fetch(statement.sql, *statement.arguments(params))
        return rows

    async def fetch_value(self, statement: Statement, /, **params: Any) -> Any:
        driver = self._driver or await self._begin()
        self._changed |= statement.changes_data
        return await driver.fetchval(statement.sql, *statement.arguments(params))

    async def execute(self, statement: Statement, /, **params: Any) -> None:
        driver = self._driver or await self._begin()
        self._changed = True  # a write, or a lock (`pg_advisory_xact_lock`)
        await driver.execute(statement.sql, *statement.arguments(params))

    async def execute_many(self, statement: Statement, rows: Iterable[Mapping[str, Any]]) -> None:
        driver = self._driver or await self._begin()
        self._changed = True
        await driver.executemany(statement.sql, [statement.arguments(row) for row in rows])

    async def savepoint(self) -> Any:
        """A nested transaction (SAVEPOINT): `start()`, then `commit()` or `rollback()`."""
        driver = self._driver or await self._begin()
        self._changed = True
        return driver.transaction()

    async def session(self) -> AsyncSession:
        """An ORM session in this unit's transaction, made on first use."""
        if self._session is None:
            if self._driver is None:
                await self._begin()
            assert self._connection is not None
            await self._connection.execution_options(isolation_level="AUTOCOMMIT")
            self._session = AsyncSession(
                bind=self._connection, expire_on_commit=False, autoflush=False
            )
            event.listen(self._session.sync_session, "after_flush", self._note_flush)
        return self._session

    def _note_flush(self, *_: object) -> None:
        self._changed = True

    def after_commit(self, action: AfterCommit) -> None:
        """Run `action` once this unit has committed (never if it rolls back).

        For side effects that must not announce uncommitted data, such as live-update messages.
        Best effort: a failing action is logged, the response still succeeds.
        """
        self._after_commit.append(action)

    # --- the transaction, for unit_of_work ------------------------------------------------

    async def _begin(self) -> Any:
        if self._ended:
            raise RuntimeError("this unit of work has ended")
        if self._beginning:
            # Two statements at once would each take a connection, and one would be lost.
            raise RuntimeError("a unit of work runs one statement at a time")
        self._beginning = True
        try:
            connection = await self._engine.connect()
            self._connection = connection
            driver = _driver_of(connection)
            transaction = driver.transaction()
            await transaction.start()
        except BaseException as error:
            # A BEGIN that timed out or was cancelled leaves asyncpg counting a transaction.
            if leaves_connection_out_of_step(error):
                await self.discard()
            raise
        finally:
            self._beginning = False
        self._driver, self._transaction = driver, transaction
        self._changed = False
        return driver

    async def commit(self) -> None:
        """Commit; if that fails, the transaction is rolled back and the error raised."""
        try:
            if self._session is not None:
                # Writes what the ORM still holds; SQLAlchemy's own COMMIT is a no-op here.
                await self._session.commit()
        except BaseException:
            await self.rollback()
            raise
        await self._end(commit=True)

    async def rollback(self) -> None:
        await self._end(commit=False)

    async def _end(self, *, commit: bool) -> None:
        transaction, self._transaction = self._transaction, None
        if transaction is None:
            return  # nothing began, or it has ended already
        if self._session is not None:
            await self._session.close()
        try:
            await (transaction.commit() if commit else transaction.rollback())
        except BaseException:
            # The COMMIT or ROLLBACK itself failed (the connection died or hung): the
            # connection's state is unknown, so it must not serve another request.
            await self.discard()
            raise

    async def discard(self) -> None:
        """End the unit by closing its connection, for when that connection may be out of step
        with its server (`leaves_connection_out_of_step`). PostgreSQL rolls back whatever the
        connection had open; the pool opens a new one for the next request."""
        self._transaction = None
        connection = self._connection
        if connection is None or connection.closed or connection.invalidated:
            return
        # Closed at once rather than politely: a frozen server would hold a polite goodbye
        # (SQLAlchemy waits up to 2 s for one) and so the 503 this request is about to get.
        _driver_of(connection).terminate()
        await connection.invalidate()

    async def release(self) -> None:
        """Give the connection back to the pool; the unit is over and runs nothing more."""
        self._ended = True
        await self._give_back()

    async def _give_back(self) -> None:
        connection = self._connection
        self._connection = self._driver = self._transaction = self._session = None
        if connection is not None:
            await connection.close()

    async def release_after_reading(self) -> None:
        """End a unit that has only read so far and give its connection back, before slow work
        that needs no database (a password hash): held across it, the connection would sit idle
        in a transaction while other requests wait for one.

        Entities loaded so far stay readable but are detached: a change to one is not saved. A
        later statement takes a connection and begins a new transaction.
        """
        session = self._session
        pending = session is not None and bool(session.new or session.dirty or session.deleted)
        if self._changed or pending or self._after_commit:
            raise RuntimeError("release_after_reading() would drop this unit's changes")
        await self.rollback()  # only reads to end: the same as a commit, and never a partial one
        await self._give_back()

    async def run_after_commit(self) -> None:
        for action in self._after_commit:
            try:
                await action()
            except Exception:
                logger.warning("after-commit action failed", exc_info=True)


@asynccontextmanager
async def unit_of_work(engine: AsyncEngine) -> AsyncIterator[Database]:
    """A `Database`, committed when the block ends, or rolled back if it raises (unless the
    error is a DomainError that keeps its changes); after-commit actions then run."""
    database = Database(engine)
    try:
        try:
            yield database
        except DomainError as error:
            await (database.commit() if error.keep_changes else database.rollback())
            raise
        except BaseException as error:
            if leaves_connection_out_of_step(error):
                await database.discard()
            else:
                await database.rollback()
            raise
        await database.commit()
    finally:
        await database.release()
    await database.run_after_commit()


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
            async with unit_of_work(request.app.state.engine) as database:
                request.state.database = database
                return await handle(request)

        return handle_in_unit_of_work


def database_of(request: Request) -> Database:
    """The unit of work of a request served by a `UnitOfWorkRoute`."""
    database: Database | None = getattr(request.state, "database", None)
    if database is None:
        raise RuntimeError(f"{request.url.path} uses the database but is not a UnitOfWorkRoute")
    return database


async def get_database(request: Request) -> Database:
    return database_of(request)


DatabaseDep = Annotated[Database, Depends(get_database)]


async def get_session(database: DatabaseDep) -> AsyncSession:
    """The ORM session of the request's unit of work."""
    return await database.session()


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def _driver_of(connection: AsyncConnection) -> Any:
    """The asyncpg connection under SQLAlchemy's: an attribute read, no round trip."""
    pooled = connection.sync_connection
    assert pooled is not None  # a connected AsyncConnection
    return pooled.connection.driver_connection


def json_text(value: Any) -> str:
    """A value for a JSONB parameter: asyncpg takes it as JSON text, through the codec that
    SQLAlchemy's dialect installs on every connection."""
    return json.dumps(value, separators=(",", ":"))
